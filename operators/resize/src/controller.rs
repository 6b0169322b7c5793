//! Feeds Created resize requests to [`crate::feasibility`], each node's one
//! after the other (different nodes in parallel, up to `node_workers`), and
//! writes the decision: `berth.dev/resize-state` Accepted or
//! Rejected with the numbers in `berth.dev/resize-message`, and an Event.
//! The node's pods are listed fresh for each decision (all of them, not only
//! berth's), so the sum is the node's real one.
//!
//! Accepting a request the kubelet applies, the new resources go to
//! `pods/resize` first and Accepted is written second. In the other order
//! the kubelet takes the Accepted write for a sync that waits for its next
//! PLEG relist (its previous sync, for the Created write, was moments
//! before), and the resize, arriving during that wait, is queued behind it
//! for the relist after: up to 1 s, where a resize alone is carried out at
//! once (the kubelet asks for an on-demand relist for it).

use std::{collections::BTreeSet, sync::Arc, time::Duration};

pub use berth_api::resize_pod::ResizeMode;
use berth_api::{keys, resize::ResizeState, resize_pod};
use berth_inplace::pods::{CachedPod, PodCache};
use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::core::v1::{Node, Pod},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::json;
use tracing::{info, warn};

use crate::feasibility::{decide_node, overdue};

pub const FIELD_MANAGER: &str = "berth-manager";
/// How often every cached pod is looked at again, in case a change was missed.
const RESYNC: Duration = Duration::from_secs(10);

/// The node of a pod waiting for a decision.
fn waiting_node(pod: &CachedPod) -> Option<String> {
    let state = pod.annotation(keys::RESIZE_STATE)?.parse::<ResizeState>().ok()?;
    (state == ResizeState::Created).then(|| pod.node().map(String::from)).flatten()
}

/// How the controller works.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long an Accepted request may wait for the node agent.
    pub deadline: Duration,
    /// Nodes decided at once (at least one).
    pub node_workers: usize,
    /// The node agents' mode: which accepted requests the kubelet applies.
    pub mode: ResizeMode,
}

/// Decides requests until the process ends: `pods` is the manager's shared
/// cache (to notice requests), `changes` its stream of changed pods.
pub async fn run(
    client: Client,
    pods: PodCache,
    changes: impl Stream<Item = Arc<CachedPod>> + Send + 'static,
    settings: Settings,
) {
    let Settings { deadline, node_workers, mode } = settings;
    if pods.wait_until_ready().await.is_err() {
        warn!("pod cache never became ready");
        return;
    }
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let recorder = Recorder::new(client.clone(), reporter);
    // Nodes with a waiting request: from changes as they come, and from the whole cache on each resync.
    let noticed = changes.filter_map(|pod| futures::future::ready(waiting_node(&pod).map(|n| BTreeSet::from([n]))));
    let resync = futures::stream::unfold(pods.clone(), |pods| async move {
        tokio::time::sleep(RESYNC).await;
        let requests = pods.matching(|p| p.annotation(keys::RESIZE_STATE).is_some());
        let nodes: BTreeSet<String> = requests.iter().filter_map(|p| waiting_node(p)).collect();
        Some((nodes, pods))
    });
    let deadline = SignedDuration::try_from(deadline).unwrap_or(SignedDuration::MAX);
    let mut work = Box::pin(futures::stream::select(noticed, resync).ready_chunks(256));
    // A node appears once per round and rounds do not overlap, so each
    // decision for a node sees every earlier one; nodes are independent.
    while let Some(batches) = work.next().await {
        let nodes = batches.into_iter().flatten().collect::<BTreeSet<_>>();
        futures::stream::iter(nodes)
            .for_each_concurrent(node_workers.max(1), |node| {
                let (client, recorder) = (&client, &recorder);
                async move {
                    if let Err(e) = decide(client, recorder, &node, mode).await {
                        warn!(node = %node, error = %e, "resize feasibility pass failed; retried on the next change or resync");
                    }
                }
            })
            .await;
        expire(&client, &recorder, &pods, deadline).await;
    }
}

async fn decide(client: &Client, recorder: &Recorder, node_name: &str, mode: ResizeMode) -> Result<(), kube::Error> {
    let node = Api::<Node>::all(client.clone()).get(node_name).await?;
    let on_node = ListParams::default().fields(&format!("spec.nodeName={node_name}"));
    let pods = Api::<Pod>::all(client.clone()).list(&on_node).await?.items;
    // The decisions are computed together, so they can be written in any
    // order; a write that fails (pod changed) is decided again next pass.
    let writes = decide_node(&node, &pods).into_iter().filter_map(|decision| {
        let pod = pods.iter().find(|p| {
            p.metadata.namespace.as_deref() == Some(decision.namespace.as_str()) && p.name_any() == decision.name
        })?;
        Some(write_decision(client, recorder, node_name, pod, decision, mode))
    });
    let results: Vec<Result<(), kube::Error>> =
        futures::stream::iter(writes).buffer_unordered(WRITES_PER_NODE).collect().await;
    results.into_iter().collect()
}

/// The `pods/resize` patch to send before writing Accepted: for a request
/// the kubelet applies, whose resources the spec does not hold yet.
pub fn kubelet_resize(pod: &Pod, mode: ResizeMode) -> Option<serde_json::Value> {
    if resize_pod::agent_managed(pod, mode) {
        return None;
    }
    let (_, request) = crate::feasibility::resize_of(pod)?;
    resize_pod::resize_patch(pod.spec.as_ref()?, &request.ok()?).ok().flatten()
}

/// Decisions of one node written at once.
const WRITES_PER_NODE: usize = 16;

async fn write_decision(
    client: &Client,
    recorder: &Recorder,
    node_name: &str,
    pod: &Pod,
    decision: crate::feasibility::Decision,
    mode: ResizeMode,
) -> Result<(), kube::Error> {
    let (state, message, type_, reason) = match &decision.outcome {
        Ok(m) => (ResizeState::Accepted, m, EventType::Normal, "ResizeAccepted"),
        Err(m) => (ResizeState::Rejected, m, EventType::Warning, "ResizeRejected"),
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), &decision.namespace);
    let mut version = pod.resource_version();
    if state == ResizeState::Accepted
        && let Some(mut patch) = kubelet_resize(pod, mode)
    {
        // Guarded too: only the pod the decision was made for is resized.
        patch["metadata"] = json!({"resourceVersion": version});
        match api.patch_resize(&decision.name, &PatchParams::default(), &Patch::Strategic(patch)).await {
            Ok(resized) => version = resized.resource_version(),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => return Ok(()),
            // The node agent sends it again and records what the apiserver says.
            Err(e) => warn!(pod = %decision.name, error = %e, "pods/resize refused; left to the node agent"),
        }
    }
    // Guarded: a pod changed since the list (or the resize) is decided again next pass.
    let accepted_at = (state == ResizeState::Accepted).then(|| Timestamp::now().to_string());
    let patch = json!({"metadata": {"resourceVersion": version, "annotations": {
        keys::RESIZE_STATE: state.as_str(), keys::RESIZE_MESSAGE: message, keys::RESIZE_ACCEPTED_AT: accepted_at}}});
    match api.patch(&decision.name, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    }
    info!(pod = %decision.name, namespace = %decision.namespace, node = %node_name, %state, %message, "resize decided");
    let event =
        Event { type_, reason: reason.into(), note: Some(message.clone()), action: "Resize".into(), secondary: None };
    if let Err(e) = recorder.publish(&event, &pod.object_ref(&())).await {
        warn!(pod = %decision.name, error = %e, "could not record Event");
    }
    Ok(())
}

/// Accepted requests the node agent never finished: Failed with the reason
/// (the manager's Expire transition), so none stays Accepted forever.
async fn expire(client: &Client, recorder: &Recorder, pods: &PodCache, deadline: SignedDuration) {
    let now = Timestamp::now();
    // Only pods with a request are unpacked.
    let requests = pods.matching(|p| p.annotation(keys::RESIZE_STATE).is_some());
    for pod in requests.iter().map(|p| p.pod()) {
        let Some(why) = overdue(&pod, now, deadline) else { continue };
        let patch = json!({"metadata": {"resourceVersion": pod.resource_version(), "annotations": {
            keys::RESIZE_STATE: ResizeState::Failed.as_str(), keys::RESIZE_MESSAGE: why}}});
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => {
                warn!(pod = %pod.name_any(), reason = %why, "resize expired");
                let event = Event {
                    type_: EventType::Warning,
                    reason: "ResizeExpired".into(),
                    note: Some(why),
                    action: "Resize".into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&event, &pod.object_ref(&())).await {
                    warn!(pod = %pod.name_any(), error = %e, "could not record Event");
                }
            }
            Err(e) => {
                warn!(pod = %pod.name_any(), error = %e, "could not expire the resize; retried on the next resync")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: serde_json::Value, cpu: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "a",
                "resources": {"requests": {"cpu": cpu}, "limits": {"cpu": "2"}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn only_requests_the_kubelet_applies_are_sent_to_pods_resize_before_accepted() {
        let request = json!({keys::RESIZE_STATE: "Created", keys::RESIZE: r#"{"containers":{"app":{"requests":{"cpu":"800m"}}}}"#});
        let patch = kubelet_resize(&pod(request.clone(), "500m"), ResizeMode::Auto).expect("kubelet path");
        assert_eq!(patch["spec"]["containers"][0]["resources"]["requests"]["cpu"], "800m");
        assert_eq!(kubelet_resize(&pod(request.clone(), "500m"), ResizeMode::Agent), None, "agent mode: CRI");
        assert_eq!(kubelet_resize(&pod(request.clone(), "800m"), ResizeMode::Auto), None, "already in the spec");
        let mut managed = request.clone();
        managed[keys::RESIZE_AGENT_MANAGED] = json!("true");
        assert_eq!(kubelet_resize(&pod(managed, "500m"), ResizeMode::Auto), None, "agent-managed pod: CRI");
        let unreadable = json!({keys::RESIZE_STATE: "Created", keys::RESIZE: "{"});
        assert_eq!(kubelet_resize(&pod(unreadable, "500m"), ResizeMode::Auto), None, "decided Rejected, nothing sent");
    }
}
