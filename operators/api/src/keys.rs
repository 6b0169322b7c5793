//! Annotation, label and condition names. Every component imports these;
//! none writes the strings itself.

/// Prefix of every berth-owned annotation and label.
pub const PREFIX: &str = "berth.dev/";

// Labels.
/// Standard label naming the revision a pod was created from (as StatefulSet).
pub const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";
/// Standard label carrying a pod's ordinal (as StatefulSet).
pub const POD_INDEX: &str = "apps.kubernetes.io/pod-index";
/// Names the InplaceSet that owns a pod; lets one label selector find a set's pods cheaply.
pub const INPLACESET_NAME: &str = "berth.dev/inplaceset";
/// Names the SidecarSet a ControllerRevision (in the manager's namespace) belongs to.
pub const SIDECARSET_NAME: &str = "berth.dev/sidecarset";
/// On every pod a berth controller manages (InplaceSet pods, pods with injected
/// sidecars), value "true": the manager's one shared pod watch selects on it.
pub const MANAGED: &str = "berth.dev/managed";

// Annotations.
/// Pod lifecycle state (see [`crate::lifecycle::LifecycleState`]).
pub const LIFECYCLE_STATE: &str = "berth.dev/lifecycle-state";
/// Desired per-container resources of an in-place resize (see [`crate::resize::ResizeRequest`]).
pub const RESIZE: &str = "berth.dev/resize";
/// State of the resize request (see [`crate::resize::ResizeState`]).
pub const RESIZE_STATE: &str = "berth.dev/resize-state";
/// When the manager accepted the current resize (RFC 3339): an Accepted request
/// older than the manager's deadline expires to Failed.
pub const RESIZE_ACCEPTED_AT: &str = "berth.dev/resize-accepted-at";
/// Human-readable reason for the current resize state (the numbers behind a Rejected or Failed).
pub const RESIZE_MESSAGE: &str = "berth.dev/resize-message";
/// What the node agent verified in the runtime's cgroups after its last
/// Applied resize through CRI (see [`crate::resize::AppliedResources`]): the
/// auditor compares it with the request.
pub const RESIZE_APPLIED: &str = "berth.dev/resize-applied";
/// Marks a pod whose resources the node agent changes itself through CRI,
/// bypassing the kubelet's `pods/resize` path.
pub const RESIZE_AGENT_MANAGED: &str = "berth.dev/resize-agent-managed";
/// Record of an in-place update in flight: revision, changed containers, start time.
pub const INPLACE_UPDATE_STATE: &str = "berth.dev/inplace-update-state";
/// SidecarSet name → revision injected into a pod.
pub const SIDECARSET_REVISIONS: &str = "berth.dev/sidecarset-revisions";

// Pod conditions.
/// Readiness gate every InplaceSet pod carries: False while an in-place update
/// is in progress (the pod leaves Service endpoints), True once it completed.
pub const INPLACE_UPDATE_READY: &str = "berth.dev/InPlaceUpdateReady";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn berth_keys_use_the_berth_prefix() {
        for key in [
            INPLACESET_NAME,
            MANAGED,
            SIDECARSET_NAME,
            LIFECYCLE_STATE,
            RESIZE,
            RESIZE_STATE,
            RESIZE_MESSAGE,
            RESIZE_ACCEPTED_AT,
            RESIZE_AGENT_MANAGED,
            INPLACE_UPDATE_STATE,
            SIDECARSET_REVISIONS,
            INPLACE_UPDATE_READY,
        ] {
            assert!(key.starts_with(PREFIX), "{key} lacks prefix {PREFIX}");
            let name = &key[PREFIX.len()..];
            // A qualified name part: at most 63 chars of [A-Za-z0-9-_.].
            assert!(!name.is_empty() && name.len() <= 63, "{key}: name part length");
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)), "{key}: illegal character");
        }
    }
}
