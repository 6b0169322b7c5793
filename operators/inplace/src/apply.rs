//! The API calls of an in-place update, shared by every workload's executor:
//! the readiness gate, the guarded start patch, the finish. Decisions stay in
//! the planners; these only carry them out.

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api,
    api::{Patch, PatchParams},
};

use berth_api::resize::ResizeRequest;

use crate::{InPlaceChanges, patch};

/// Sets the pod's [`berth_api::keys::INPLACE_UPDATE_READY`] condition: False
/// takes it out of Service endpoints ahead of an update, True brings it back.
pub async fn set_gate(
    pods: &Api<Pod>,
    name: &str,
    open: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> kube::Result<()> {
    let condition = Patch::Strategic(patch::readiness_patch(open, reason, message, now));
    pods.patch_status(name, &PatchParams::default(), &condition).await.map(|_| ())
}

/// Sends the start patch of an update to `revision` (recorded in
/// `revision_label`, or only in `changes.annotations` when `None`). The kubelet
/// rewrites the pod's status as the gate closes, so the resourceVersion-guarded
/// patch can meet a newer pod: re-read and retry while `marker` (what the plan
/// was made from, e.g. the pod's revision) is unchanged; if it moved, another
/// pass re-plans and this returns `Ok(false)`.
pub async fn start(
    pods: &Api<Pod>,
    name: &str,
    revision: &str,
    revision_label: Option<&str>,
    changes: &InPlaceChanges,
    marker: impl Fn(&Pod) -> Option<String>,
    now: Timestamp,
) -> kube::Result<bool> {
    let build = |pod: &Pod| patch::start_patch_labelled(pod, changes, revision, revision_label, now);
    guarded(pods, name, marker, build).await
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
    guarded(pods, name, marker, |pod: &Pod| patch::start_resize_patch(pod, request, revision, now)).await
}

/// Sends the resourceVersion-guarded patch `build` makes from the pod,
/// re-reading and retrying on a conflict while `marker` is unchanged.
async fn guarded(
    pods: &Api<Pod>,
    name: &str,
    marker: impl Fn(&Pod) -> Option<String>,
    build: impl Fn(&Pod) -> serde_json::Value,
) -> kube::Result<bool> {
    let mut current = pods.get(name).await?;
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

/// Ends a completed update: gate True, in-place state removed.
pub async fn finish(pods: &Api<Pod>, name: &str, now: Timestamp) -> kube::Result<()> {
    set_gate(pods, name, true, "InPlaceUpdated", "", now).await?;
    pods.patch(name, &PatchParams::default(), &Patch::Strategic(patch::finish_patch())).await.map(|_| ())
}
