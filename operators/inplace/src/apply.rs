//! The API calls of an in-place update, shared by every workload's executor:
//! the readiness gate, the guarded start patch, the finish. Decisions stay in
//! the planners; these only carry them out.

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};

use berth_api::{inplace::InPlaceUpdateState, keys, resize::ResizeRequest};
use serde_json::json;

use crate::{
    InPlaceChanges, patch,
    progress::{Progress, progress},
};

/// Sets the pod's [`berth_api::keys::INPLACE_UPDATE_READY`] condition: False
/// takes it out of Service endpoints ahead of an update, True brings it back.
/// Returns the pod as written: a next write can start from it, not a read.
pub async fn set_gate(
    pods: &Api<Pod>,
    name: &str,
    open: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> kube::Result<Pod> {
    let condition = Patch::Strategic(patch::readiness_patch(open, reason, message, now));
    pods.patch_status(name, &PatchParams::default(), &condition).await
}

/// Opens the gate of a pod the plan saw closed with no update under way.
/// A cache that holds the gate's closing but not yet the update's start
/// looks the same, so the write is guarded by the resourceVersion the plan
/// saw (`seen`): it lands only on that very pod. If the pod moved on since,
/// it is read afresh: nothing is sent (`Ok(false)`) if it has an update in
/// progress, or if it changed again before the write (the next pass plans
/// again). One write for a pod the cache holds as it is, where a read before
/// every write cost a quorum read per new pod.
pub async fn reopen_gate(pods: &Api<Pod>, name: &str, seen: Option<&str>, now: Timestamp) -> kube::Result<bool> {
    if let Some(seen) = seen
        && open_gate_at(pods, name, seen, now).await?
    {
        return Ok(true);
    }
    let current = pods.get(name).await?;
    if matches!(progress(&current), Ok(Progress::InProgress { .. } | Progress::Done { .. } | Progress::Resized { .. }))
    {
        return Ok(false);
    }
    open_gate_at(pods, name, current.metadata.resource_version.as_deref().unwrap_or_default(), now).await
}

/// Opens the gate if the pod is still at `version`; `Ok(false)` if it moved on.
async fn open_gate_at(pods: &Api<Pod>, name: &str, version: &str, now: Timestamp) -> kube::Result<bool> {
    let mut patch = patch::readiness_patch(true, "Ready", "", now);
    patch["metadata"]["resourceVersion"] = json!(version);
    match pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(patch)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sends the start patch of an update to `revision` (recorded in
/// `revision_label`, or only in `changes.annotations` when `None`), built from
/// `pod` (as the gate write returned it: one read fewer per pod). The kubelet
/// rewrites the pod's status as the gate closes, so the resourceVersion-guarded
/// patch can meet a newer pod: re-read and retry while `marker` (what the plan
/// was made from, e.g. the pod's revision) is unchanged; if it moved, another
/// pass re-plans and this returns `Ok(false)`.
pub async fn start(
    pods: &Api<Pod>,
    pod: Pod,
    revision: &str,
    revision_label: Option<&str>,
    changes: &InPlaceChanges,
    marker: impl Fn(&Pod) -> Option<String>,
    now: Timestamp,
) -> kube::Result<bool> {
    let build = |pod: &Pod| patch::start_patch_labelled(pod, changes, revision, revision_label, now);
    guarded(pods, pod, (revision, false), marker, build).await
}

/// Starts the resize phase of an update to `revision`: submits `request`
/// (see [`patch::start_resize_patch`]), retried on conflicts like [`start`].
pub async fn start_resize(
    pods: &Api<Pod>,
    name: &str,
    revision: &str,
    request: &ResizeRequest,
    marker: impl Fn(&Pod) -> Option<String>,
    now: Timestamp,
) -> kube::Result<bool> {
    let build = |pod: &Pod| patch::start_resize_patch(pod, request, revision, now);
    guarded(pods, pods.get(name).await?, (revision, true), marker, build).await
}

/// Sends the resourceVersion-guarded patch `build` makes from `current`,
/// re-reading and retrying on a conflict while `marker` is unchanged.
/// Nothing is sent (`Ok(false)`) if the fresh pod shows the start already
/// made: a plan from a stale cache (a new leader, a relist) would otherwise
/// start it again and record the new containers as the ones from before,
/// and the update would wait forever for a change that already happened.
async fn guarded(
    pods: &Api<Pod>,
    mut current: Pod,
    (revision, resize): (&str, bool),
    marker: impl Fn(&Pod) -> Option<String>,
    build: impl Fn(&Pod) -> serde_json::Value,
) -> kube::Result<bool> {
    let name = &current.name_any();
    if already_started(&current, revision, resize, &marker) {
        return Ok(false);
    }
    let planned_from = marker(&current);
    for attempt in 1.. {
        match pods.patch(name, &PatchParams::default(), &Patch::Strategic(build(&current))).await {
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => {
                current = pods.get(name).await?;
                if marker(&current) != planned_from {
                    return Ok(false);
                }
            }
            result => return result.map(|_| true),
        }
    }
    unreachable!("the loop returns")
}

/// Whether `pod` is already at `revision` (its marker says so) or has this
/// phase of the update to it in flight.
fn already_started(pod: &Pod, revision: &str, resize: bool, marker: impl Fn(&Pod) -> Option<String>) -> bool {
    let in_flight = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(keys::INPLACE_UPDATE_STATE))
        .and_then(|s| InPlaceUpdateState::parse(s).ok())
        .is_some_and(|s| s.revision == revision && s.resize == resize);
    in_flight || marker(pod).as_deref() == Some(revision)
}

/// Ends a completed update: gate True, in-place state removed.
pub async fn finish(pods: &Api<Pod>, name: &str, now: Timestamp) -> kube::Result<()> {
    set_gate(pods, name, true, "InPlaceUpdated", "", now).await?;
    pods.patch(name, &PatchParams::default(), &Patch::Strategic(patch::finish_patch())).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(label: &str, state: Option<InPlaceUpdateState>) -> Pod {
        let mut annotations = serde_json::Map::new();
        if let Some(s) = state {
            annotations.insert(keys::INPLACE_UPDATE_STATE.into(), json!(s.to_annotation()));
        }
        serde_json::from_value(json!({"metadata": {"name": "web-0",
            "labels": {keys::CONTROLLER_REVISION_HASH: label}, "annotations": annotations}}))
        .unwrap()
    }

    fn revision_label(p: &Pod) -> Option<String> {
        p.metadata.labels.as_ref()?.get(keys::CONTROLLER_REVISION_HASH).cloned()
    }

    #[test]
    fn a_start_planned_from_a_stale_pod_is_not_made_twice() {
        let record = |revision: &str, resize: bool| InPlaceUpdateState {
            revision: revision.into(),
            update_timestamp: "2026-11-23T05:00:00Z".into(),
            resize,
            ..Default::default()
        };
        // Fresh pod, nothing in flight: start.
        assert!(!already_started(&pod("r1", None), "r2", false, revision_label));
        // Already relabelled (started, maybe finished): do not start again.
        assert!(already_started(&pod("r2", None), "r2", false, revision_label));
        // The same phase in flight: do not start again.
        assert!(already_started(&pod("r1", Some(record("r2", true))), "r2", true, revision_label));
        // The resize phase done, the rest follows; or an older revision's record: start.
        assert!(!already_started(&pod("r1", Some(record("r2", true))), "r2", false, revision_label));
        assert!(!already_started(&pod("r1", Some(record("r0", false))), "r2", false, revision_label));
    }
}
