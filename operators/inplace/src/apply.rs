//! The API calls of an in-place update, shared by every workload's executor:
//! the readiness gate, the guarded start patch, the finish. Decisions stay in
//! the planners; these only carry them out.

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api,
    api::{Patch, PatchParams},
};

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
    let mut current = pods.get(name).await?;
    let planned_from = marker(&current);
    for attempt in 1.. {
        let start = patch::start_patch_labelled(&current, changes, revision, revision_label, now);
        match pods.patch(name, &PatchParams::default(), &Patch::Strategic(start)).await {
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
