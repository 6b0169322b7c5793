//! The pod patches that carry out an in-place update, in the order the
//! executor sends them: the readiness gate goes False first (the pod leaves
//! Service endpoints), then the spec and metadata change, then, once
//! [`crate::progress`] says Done, the gate goes True again.

use berth_api::{
    inplace::{ContainerBefore, InPlaceUpdateState},
    keys,
    resize::{ResizeRequest, ResizeState},
};
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use serde_json::{Map, Value, json};

use crate::InPlaceChanges;

/// Status patch (strategic merge, `pods/status`) setting the pod's
/// [`keys::INPLACE_UPDATE_READY`] readiness-gate condition.
pub fn readiness_patch(ready: bool, reason: &str, message: &str, now: Timestamp) -> Value {
    json!({"status": {"conditions": [{
        "type": keys::INPLACE_UPDATE_READY,
        "status": if ready { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastTransitionTime": now.to_string(),
    }]}})
}

/// Strategic-merge patch that starts the update: new images (containers are
/// merged by name), label and annotation changes, the revision label, and the
/// [`InPlaceUpdateState`] recording what each changed container ran before.
/// It carries the observed resourceVersion, so it fails (409) if the pod
/// changed since it was planned.
pub fn start_patch(pod: &Pod, changes: &InPlaceChanges, revision: &str, now: Timestamp) -> Value {
    start_patch_labelled(pod, changes, revision, Some(keys::CONTROLLER_REVISION_HASH), now)
}

/// [`start_patch`] for an update that is not the pod owner's revision (a
/// sidecar upgrade): `revision_label` names the label carrying `revision`, or
/// none (the caller records it in `changes.annotations`).
pub fn start_patch_labelled(
    pod: &Pod,
    changes: &InPlaceChanges,
    revision: &str,
    revision_label: Option<&str>,
    now: Timestamp,
) -> Value {
    let spec = pod.spec.clone().unwrap_or_default();
    let is_init = |name: &str| spec.init_containers.iter().flatten().any(|c| c.name == name);
    let (mut containers, mut init_containers) = (Vec::new(), Vec::new());
    for (name, image) in &changes.images {
        let entry = json!({"name": name, "image": image});
        if is_init(name) { init_containers.push(entry) } else { containers.push(entry) }
    }

    let state = InPlaceUpdateState {
        revision: revision.to_string(),
        update_timestamp: now.to_string(),
        containers: changes.images.keys().map(|name| (name.clone(), running(pod, name))).collect(),
        resize: false,
    };
    let mut labels: Map<String, Value> = changes.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    if let Some(label) = revision_label {
        labels.insert(label.to_string(), json!(revision));
    }
    let mut annotations: Map<String, Value> = changes.annotations.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    annotations.insert(keys::INPLACE_UPDATE_STATE.to_string(), json!(state.to_annotation()));

    let mut patch = json!({"metadata": {
        "resourceVersion": pod.metadata.resource_version,
        "labels": labels,
        "annotations": annotations,
    }});
    if !containers.is_empty() {
        patch["spec"]["containers"] = json!(containers);
    }
    if !init_containers.is_empty() {
        patch["spec"]["initContainers"] = json!(init_containers);
    }
    patch
}

/// Merge patch that starts the first phase of an update changing cpu/memory:
/// a resize request (Created) for the feasibility check and the node agent,
/// and an [`InPlaceUpdateState`] marked `resize` so progress follows the
/// request. Images, labels and the revision label come after it is Applied;
/// the pod keeps serving meanwhile. Guarded by the resourceVersion.
pub fn start_resize_patch(pod: &Pod, request: &ResizeRequest, revision: &str, now: Timestamp) -> Value {
    let state = InPlaceUpdateState {
        revision: revision.to_string(),
        update_timestamp: now.to_string(),
        resize: true,
        ..Default::default()
    };
    json!({"metadata": {
        "resourceVersion": pod.metadata.resource_version,
        "annotations": {
            keys::RESIZE: serde_json::to_string(request).expect("plain struct serializes"),
            keys::RESIZE_STATE: ResizeState::Created.as_str(),
            keys::RESIZE_MESSAGE: format!("submitted by berth for the rollout to revision {revision}"),
            keys::RESIZE_ACCEPTED_AT: null,
            keys::RESIZE_APPLIED: null,
            keys::INPLACE_UPDATE_STATE: state.to_annotation(),
        },
    }})
}

/// Patch that ends the update: the state annotation is removed.
pub fn finish_patch() -> Value {
    json!({"metadata": {"annotations": {keys::INPLACE_UPDATE_STATE: null}}})
}

/// What the named container runs now, from the pod's status.
fn running(pod: &Pod, name: &str) -> ContainerBefore {
    let status = pod.status.as_ref();
    let statuses = status.and_then(|s| s.container_statuses.as_ref()).into_iter().flatten();
    let init = status.and_then(|s| s.init_container_statuses.as_ref()).into_iter().flatten();
    statuses
        .chain(init)
        .find(|c| c.name == name)
        .map(|c| ContainerBefore {
            image_id: c.image_id.clone(),
            container_id: c.container_id.clone().unwrap_or_default(),
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "resourceVersion": "42", "labels": {"app": "web"}},
            "spec": {
                "containers": [{"name": "app", "image": "web:1"}],
                "initContainers": [{"name": "proxy", "image": "proxy:1", "restartPolicy": "Always"}]
            },
            "status": {
                "containerStatuses": [{"name": "app", "image": "web:1", "imageID": "sha256:a1", "containerID": "cri://c1",
                    "ready": true, "restartCount": 0}],
                "initContainerStatuses": [{"name": "proxy", "image": "proxy:1", "imageID": "sha256:p1", "containerID": "cri://p1",
                    "ready": true, "restartCount": 0}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_resize_phase_submits_a_request_and_leaves_images_and_the_revision_label_alone() {
        let request: ResizeRequest = r#"{"containers":{"app":{"requests":{"cpu":"750m"}}}}"#.parse().unwrap();
        let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let patch = start_resize_patch(&pod(), &request, "web-abc", now);
        let annotations = &patch["metadata"]["annotations"];
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(annotations[keys::RESIZE_STATE], "Created");
        assert_eq!(annotations[keys::RESIZE].as_str().unwrap().parse::<ResizeRequest>().unwrap(), request);
        assert_eq!(annotations[keys::RESIZE_ACCEPTED_AT], Value::Null, "a stale acceptance time is cleared");
        let state = InPlaceUpdateState::parse(annotations[keys::INPLACE_UPDATE_STATE].as_str().unwrap()).unwrap();
        assert!(state.resize && state.containers.is_empty() && state.revision == "web-abc", "{state:?}");
        assert!(patch.get("spec").is_none() && patch["metadata"].get("labels").is_none(), "{patch}");
    }

    #[test]
    fn start_patch_changes_images_metadata_and_records_the_state() {
        let changes = InPlaceChanges {
            images: BTreeMap::from([("app".into(), "web:2".into()), ("proxy".into(), "proxy:2".into())]),
            labels: BTreeMap::from([("tier".into(), Some("edge".into())), ("old".into(), None)]),
            annotations: BTreeMap::from([("note".into(), None)]),
            resources: BTreeMap::new(),
        };
        let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let patch = start_patch(&pod(), &changes, "web-abc", now);
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(patch["spec"]["containers"], json!([{"name": "app", "image": "web:2"}]));
        assert_eq!(patch["spec"]["initContainers"], json!([{"name": "proxy", "image": "proxy:2"}]));
        assert_eq!(
            patch["metadata"]["labels"],
            json!({"tier": "edge", "old": null, "controller-revision-hash": "web-abc"})
        );
        assert_eq!(patch["metadata"]["annotations"]["note"], Value::Null);
        let state =
            InPlaceUpdateState::parse(patch["metadata"]["annotations"][keys::INPLACE_UPDATE_STATE].as_str().unwrap())
                .unwrap();
        assert_eq!(state.revision, "web-abc");
        assert_eq!(state.update_timestamp, "2026-11-22T10:00:00Z");
        assert_eq!(
            state.containers["app"],
            ContainerBefore { image_id: "sha256:a1".into(), container_id: "cri://c1".into() }
        );
        assert_eq!(state.containers["proxy"].container_id, "cri://p1");
    }

    #[test]
    fn a_metadata_only_update_sends_no_spec() {
        let changes =
            InPlaceChanges { labels: BTreeMap::from([("tier".into(), Some("x".into()))]), ..Default::default() };
        let patch = start_patch(&pod(), &changes, "web-abc", Timestamp::UNIX_EPOCH);
        assert!(patch.get("spec").is_none(), "{patch}");
    }

    #[test]
    fn readiness_patch_sets_the_gate_condition() {
        let patch = readiness_patch(false, "InPlaceUpdating", "updating app", Timestamp::UNIX_EPOCH);
        let condition = &patch["status"]["conditions"][0];
        assert_eq!(condition["type"], "berth.dev/InPlaceUpdateReady");
        assert_eq!(condition["status"], "False");
        assert_eq!(condition["reason"], "InPlaceUpdating");
        assert_eq!(condition["lastTransitionTime"], "1970-01-01T00:00:00Z");
    }
}
