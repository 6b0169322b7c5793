//! `describe pod`: a pod's place in berth's state machines: lifecycle state,
//! the in-place update in flight and the readiness gate, the resize request
//! and its state. [`view`] is pure.

use std::collections::BTreeMap;

use berth_api::{inplace::InPlaceUpdateState, keys};
use berth_inplace::progress::{Progress, progress};
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::ResourceExt;
use serde::Serialize;
use serde_json::Value;

use crate::table;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    pub name: String,
    pub namespace: String,
    pub node: Option<String>,
    pub inplaceset: Option<String>,
    pub revision: Option<String>,
    pub phase: Option<String>,
    pub ready: String,
    pub lifecycle_state: Option<String>,
    /// The `berth.dev/InPlaceUpdateReady` readiness gate condition.
    pub readiness_gate: Option<GateView>,
    pub in_place_update: Option<InPlaceView>,
    pub resize: Option<ResizeView>,
    pub containers: Vec<ContainerView>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GateView {
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub since: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InPlaceView {
    pub revision: String,
    pub started: String,
    /// Where it stands: in progress, resized (images next), resize refused, done.
    pub phase: String,
    /// Container → what it waits for.
    pub waiting: BTreeMap<String, String>,
    pub done: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResizeView {
    pub state: Option<String>,
    pub request: Option<Value>,
    pub message: Option<String>,
    pub accepted_at: Option<String>,
    /// What the node agent read back from the runtime.
    pub applied: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub requests: String,
    pub limits: String,
    /// As the kubelet reports them running.
    pub running: String,
    pub restarts: i32,
}

fn resources(map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>) -> String {
    let parts: Vec<String> = map.into_iter().flatten().map(|(k, v)| format!("{k}={}", v.0)).collect();
    if parts.is_empty() { "-".into() } else { parts.join(",") }
}

/// Annotation value, parsed as JSON when it is JSON.
fn json_or_text(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()))
}

pub fn view(pod: &Pod) -> PodView {
    let annotations = pod.annotations();
    let get = |k: &str| annotations.get(k).cloned();
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let gate = conditions.iter().find(|c| c.type_ == keys::INPLACE_UPDATE_READY).map(|c| GateView {
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        since: c.last_transition_time.as_ref().map(|t| t.0),
    });
    let in_place = match (get(keys::INPLACE_UPDATE_STATE), progress(pod)) {
        (Some(raw), Ok(p)) => {
            let state = InPlaceUpdateState::parse(&raw).unwrap_or_default();
            let (phase, waiting, done) = match p {
                Progress::InProgress { waiting, .. } => ("in progress".to_string(), waiting, false),
                Progress::Resized { .. } => {
                    ("resize Applied; images and labels next".to_string(), BTreeMap::new(), false)
                }
                Progress::Refused { reason, .. } => (
                    format!("resize refused ({reason}): recreate, or blocked under InPlaceOnly"),
                    BTreeMap::new(),
                    false,
                ),
                Progress::Done { .. } | Progress::Idle => ("done, finishing".to_string(), BTreeMap::new(), true),
            };
            Some(InPlaceView { revision: state.revision, started: state.update_timestamp, phase, waiting, done })
        }
        (Some(raw), Err(e)) => Some(InPlaceView {
            revision: "?".into(),
            started: "?".into(),
            phase: format!("unreadable: {e}: {raw}"),
            waiting: BTreeMap::new(),
            done: false,
        }),
        (None, _) => None,
    };
    let resize = (get(keys::RESIZE_STATE).is_some() || get(keys::RESIZE).is_some()).then(|| ResizeView {
        state: get(keys::RESIZE_STATE),
        request: get(keys::RESIZE).map(|r| json_or_text(&r)),
        message: get(keys::RESIZE_MESSAGE),
        accepted_at: get(keys::RESIZE_ACCEPTED_AT),
        applied: get(keys::RESIZE_APPLIED).map(|r| json_or_text(&r)),
    });
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default();
    let containers = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| {
            let st = statuses.iter().find(|s| s.name == c.name);
            let running = st.and_then(|s| s.resources.as_ref()).map(|r| {
                format!("requests {} limits {}", resources(r.requests.as_ref()), resources(r.limits.as_ref()))
            });
            ContainerView {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                requests: resources(c.resources.as_ref().and_then(|r| r.requests.as_ref())),
                limits: resources(c.resources.as_ref().and_then(|r| r.limits.as_ref())),
                running: running.unwrap_or_else(|| "-".into()),
                restarts: st.map_or(0, |s| s.restart_count),
            }
        })
        .collect();
    let ready = conditions.iter().find(|c| c.type_ == "Ready").map_or("Unknown".into(), |c| c.status.clone());
    PodView {
        name: pod.name_any(),
        namespace: pod.namespace().unwrap_or_default(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        inplaceset: pod.labels().get(keys::INPLACESET_NAME).cloned(),
        revision: pod.labels().get(keys::CONTROLLER_REVISION_HASH).cloned(),
        phase: pod.status.as_ref().and_then(|s| s.phase.clone()),
        ready,
        lifecycle_state: get(keys::LIFECYCLE_STATE),
        readiness_gate: gate,
        in_place_update: in_place,
        resize,
        containers,
    }
}

fn or_none(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("<none>")
}

pub fn render(v: &PodView, now: Timestamp) -> String {
    let mut out = String::new();
    let mut field = |k: &str, v: &str| out.push_str(&format!("{:<22}{v}\n", format!("{k}:")));
    field("Name", &v.name);
    field("Namespace", &v.namespace);
    field("Node", or_none(&v.node));
    field("InplaceSet", or_none(&v.inplaceset));
    field("Revision", or_none(&v.revision));
    field("Phase", or_none(&v.phase));
    field("Ready", &v.ready);
    field("Lifecycle state", or_none(&v.lifecycle_state));
    let gate = match &v.readiness_gate {
        Some(g) => {
            let mut s = format!("{}={}", keys::INPLACE_UPDATE_READY, g.status);
            if let Some(r) = &g.reason {
                s.push_str(&format!(" ({r})"));
            }
            if let Some(t) = g.since {
                s.push_str(&format!(" for {}", table::age(t, now)));
            }
            if let Some(m) = g.message.as_ref().filter(|m| !m.is_empty()) {
                s.push_str(&format!(": {m}"));
            }
            s
        }
        None => "<not reported>".into(),
    };
    field("Readiness gate", &gate);
    match &v.in_place_update {
        None => field("In-place update", "<none in flight>"),
        Some(u) => {
            field("In-place update", &format!("to {} since {}: {}", u.revision, u.started, u.phase));
            for (c, why) in &u.waiting {
                field("  waiting", &format!("{c}: {why}"));
            }
        }
    }
    match &v.resize {
        None => field("Resize", "<none>"),
        Some(r) => {
            field("Resize", or_none(&r.state));
            if let Some(req) = &r.request {
                field("  request", &req.to_string());
            }
            if let Some(m) = &r.message {
                field("  message", m);
            }
            if let Some(a) = &r.accepted_at {
                field("  accepted at", a);
            }
            if let Some(a) = &r.applied {
                field("  applied (runtime)", &a.to_string());
            }
        }
    }
    out.push_str("Containers:\n");
    let rows: Vec<Vec<String>> = v
        .containers
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.image.clone(),
                c.requests.clone(),
                c.limits.clone(),
                c.running.clone(),
                c.restarts.to_string(),
            ]
        })
        .collect();
    for line in table::table(&["NAME", "IMAGE", "REQUESTS", "LIMITS", "RUNNING", "RESTARTS"], &rows).lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_pod_mid_update_and_mid_resize_shows_both_machines() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "prod",
                "labels": {"berth.dev/inplaceset": "web", "controller-revision-hash": "web-b"},
                "annotations": {
                    "berth.dev/lifecycle-state": "Updating",
                    "berth.dev/inplace-update-state": r#"{"revision":"web-b","updateTimestamp":"2026-11-23T10:00:00Z","containers":{"app":{"imageId":"sha256:a1","containerId":"cri://c1"}}}"#,
                    "berth.dev/resize": r#"{"containers":{"app":{"requests":{"cpu":"500m"}}}}"#,
                    "berth.dev/resize-state": "Accepted",
                    "berth.dev/resize-message": "fits node n1: cpu 900m of 8000m"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "web:2",
                "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "1"}}}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"},
                    {"type": "berth.dev/InPlaceUpdateReady", "status": "False", "reason": "InPlaceUpdating",
                     "lastTransitionTime": "2026-11-23T10:00:00Z"}],
                "containerStatuses": [{"name": "app", "image": "web:1", "imageID": "sha256:a1", "containerID": "cri://c1",
                    "ready": true, "restartCount": 0, "resources": {"requests": {"cpu": "250m"}}}]}
        }))
        .unwrap();
        let v = view(&pod);
        assert_eq!(v.lifecycle_state.as_deref(), Some("Updating"));
        let update = v.in_place_update.clone().unwrap();
        assert_eq!(update.waiting["app"], "still running the container from before the update");
        assert_eq!(v.resize.as_ref().unwrap().state.as_deref(), Some("Accepted"));
        let text = render(&v, "2026-11-23T10:02:00Z".parse().unwrap());
        for want in [
            "Lifecycle state:      Updating\n",
            "Readiness gate:       berth.dev/InPlaceUpdateReady=False (InPlaceUpdating) for 2m\n",
            "In-place update:      to web-b since 2026-11-23T10:00:00Z: in progress\n",
            "  waiting:            app: still running the container from before the update\n",
            "Resize:               Accepted\n",
            "  message:            fits node n1: cpu 900m of 8000m\n",
            "  app    web:2   cpu=250m   cpu=1    requests cpu=250m limits -   0\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
