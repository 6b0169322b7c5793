//! The manager's one pod watch, shared by every controller: pods labelled
//! [`keys::MANAGED`], trimmed of what no controller reads, in one cache that
//! each controller reads, plus a stream of changed pods per controller.
//!
//! The fan-out is a broadcast channel rather than kube-runtime's shared
//! reflector: there, a subscriber that meets an object deleted before it read
//! it stops being woken (its stream returns Pending with no waker), and its
//! full buffer then holds back the watch for every controller. Here a
//! controller that falls behind loses triggers (logged; its periodic
//! requeue catches up) and never blocks the others; deletions are delivered too.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodSpec, PodStatus};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store, store::Writer},
        watcher,
    },
};
use tokio::sync::broadcast;

use berth_api::keys;

/// Changed pods buffered per subscriber; one further behind loses the oldest.
const BUFFER: usize = 16384;

/// The shared pod cache: a store to read, subscriptions to react to changes,
/// and the watch that fills them (run it once).
pub struct SharedPods {
    store: Store<Pod>,
    writer: Writer<Pod>,
    changes: broadcast::Sender<Arc<Pod>>,
}

impl Default for SharedPods {
    fn default() -> Self {
        let (store, writer) = reflector::store();
        Self { store, writer, changes: broadcast::channel(BUFFER).0 }
    }
}

impl SharedPods {
    /// A read handle on the cache.
    pub fn store(&self) -> Store<Pod> {
        self.store.clone()
    }

    /// The pods that change (applied or deleted) from now on; every controller takes one.
    pub fn subscribe(&self) -> impl Stream<Item = Arc<Pod>> + Send + 'static {
        futures::stream::unfold(self.changes.subscribe(), |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(pod) => return Some((pod, rx)),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "a controller fell behind the pod watch; it catches up on its requeue");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    /// Watches the managed pods until the process ends.
    pub async fn run(self, client: Client) {
        let config = watcher::Config::default().labels(&format!("{}=true", keys::MANAGED));
        let changes = self.changes;
        watcher(Api::<Pod>::all(client), config)
            .default_backoff()
            .modify(trim)
            .reflect(self.writer)
            .touched_objects()
            .for_each(|event| {
                match event {
                    // No subscriber yet is fine: they read the store when they start.
                    Ok(pod) => drop(changes.send(Arc::new(pod))),
                    Err(e) => tracing::warn!(error = %e, "pod watch error (retrying)"),
                }
                futures::future::ready(())
            })
            .await;
    }
}

/// Keeps only what the controllers read, so a cached pod costs a fraction
/// of the full object: metadata (without managed fields or kubectl's copy of
/// the last applied object); per container its name, image, resources and
/// restart policy; the node, the readiness gates; the phase, start time,
/// conditions and, per container status, its identity, image, readiness,
/// restarts and resources. Everything else (volumes, env, probes, affinity,
/// IPs, container states...) is dropped. A controller that needs more reads
/// the pod from the API.
fn trim(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.annotations_mut().remove("kubectl.kubernetes.io/last-applied-configuration");
    if let Some(spec) = pod.spec.take() {
        let slim = |c: Container| Container {
            name: c.name,
            image: c.image,
            resources: c.resources,
            restart_policy: c.restart_policy,
            ..Container::default()
        };
        pod.spec = Some(PodSpec {
            containers: spec.containers.into_iter().map(slim).collect(),
            init_containers: spec.init_containers.map(|cs| cs.into_iter().map(slim).collect()),
            node_name: spec.node_name,
            readiness_gates: spec.readiness_gates,
            ..PodSpec::default()
        });
    }
    if let Some(status) = pod.status.take() {
        let slim = |c: ContainerStatus| ContainerStatus {
            name: c.name,
            image: c.image,
            image_id: c.image_id,
            container_id: c.container_id,
            ready: c.ready,
            restart_count: c.restart_count,
            resources: c.resources,
            ..ContainerStatus::default()
        };
        let slim_all = |cs: Option<Vec<ContainerStatus>>| cs.map(|cs| cs.into_iter().map(slim).collect());
        pod.status = Some(PodStatus {
            phase: status.phase,
            start_time: status.start_time,
            conditions: status.conditions,
            container_statuses: slim_all(status.container_statuses),
            init_container_statuses: slim_all(status.init_container_statuses),
            ..PodStatus::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Arc<Pod> {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        Arc::new(p)
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_change_and_a_laggard_blocks_no_one() {
        let shared = SharedPods::default();
        let (mut a, b) = (Box::pin(shared.subscribe()), Box::pin(shared.subscribe()));
        for i in 0..3 {
            shared.changes.send(pod(&format!("p{i}"))).unwrap();
        }
        let names = |p: Option<Arc<Pod>>| p.and_then(|p| p.metadata.name.clone()).unwrap();
        assert_eq!(names(a.next().await), "p0");
        assert_eq!(names(a.next().await), "p1");
        assert_eq!(names(a.next().await), "p2");
        // b reads nothing yet; sending far past its buffer never waits.
        for i in 3..BUFFER + 10 {
            shared.changes.send(pod(&format!("p{i}"))).unwrap();
        }
        let mut b = b;
        let first = names(b.next().await);
        assert_ne!(first, "p0", "b lost the oldest changes and goes on from there");
        let last = format!("p{}", BUFFER + 9);
        assert!(
            b.take(BUFFER).any(|p| futures::future::ready(p.metadata.name.as_deref() == Some(last.as_str()))).await
        );
    }

    #[test]
    fn trimming_keeps_what_the_controllers_read_and_drops_the_rest() {
        let full = serde_json::json!({
            "metadata": {"name": "web-0", "labels": {"app": "web"}, "annotations": {"a": "b"},
                "ownerReferences": [{"apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet", "name": "web", "uid": "u"}],
                "finalizers": ["f"]},
            "spec": {
                "nodeName": "n1",
                "readinessGates": [{"conditionType": keys::INPLACE_UPDATE_READY}],
                "containers": [{"name": "app", "image": "web:1", "env": [{"name": "A", "value": "1"}],
                    "resources": {"requests": {"cpu": "1"}}, "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
                "initContainers": [{"name": "proxy", "image": "p:1", "restartPolicy": "Always", "command": ["x"]}],
                "volumes": [{"name": "v", "emptyDir": {}}],
                "tolerations": [{"key": "k", "operator": "Exists"}]
            },
            "status": {
                "phase": "Running", "startTime": "2026-11-23T05:00:00Z", "podIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "image": "web:1", "imageID": "sha256:a", "containerID": "cri://1",
                    "ready": true, "restartCount": 2, "state": {"running": {"startedAt": "2026-11-23T05:00:00Z"}},
                    "resources": {"requests": {"cpu": "1"}}}]
            }
        });
        let mut p: Pod = serde_json::from_value(full).unwrap();
        trim(&mut p);
        let mut kept = serde_json::to_value(&p).unwrap();
        kept.as_object_mut().unwrap().retain(|k, _| k != "apiVersion" && k != "kind");
        assert_eq!(
            kept,
            serde_json::json!({
                "metadata": {"name": "web-0", "labels": {"app": "web"}, "annotations": {"a": "b"},
                    "ownerReferences": [{"apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet", "name": "web", "uid": "u"}],
                    "finalizers": ["f"]},
                "spec": {
                    "nodeName": "n1",
                    "readinessGates": [{"conditionType": keys::INPLACE_UPDATE_READY}],
                    "containers": [{"name": "app", "image": "web:1", "resources": {"requests": {"cpu": "1"}}}],
                    "initContainers": [{"name": "proxy", "image": "p:1", "restartPolicy": "Always"}]
                },
                "status": {
                    "phase": "Running", "startTime": "2026-11-23T05:00:00Z",
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [{"name": "app", "image": "web:1", "imageID": "sha256:a",
                        "containerID": "cri://1", "ready": true, "restartCount": 2, "resources": {"requests": {"cpu": "1"}}}]
                }
            })
        );
        // What the planners read comes through unchanged.
        assert_eq!(crate::progress::progress(&p), Ok(crate::progress::Progress::Idle));
    }

    #[test]
    fn trimming_drops_managed_fields_and_the_last_applied_copy() {
        let mut p: Pod = serde_json::from_value(serde_json::json!({"metadata": {
            "name": "a", "managedFields": [{"manager": "kubectl"}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "me"}
        }}))
        .unwrap();
        trim(&mut p);
        assert!(p.metadata.managed_fields.unwrap_or_default().is_empty());
        assert_eq!(p.metadata.annotations.unwrap().into_keys().collect::<Vec<_>>(), ["keep"]);
    }
}
