//! What the planner sees: the set's spec and a compact view of each pod.

use std::collections::BTreeMap;

use berth_api::{InplaceSetSpec, InplaceSetStatus, keys, lifecycle::LifecycleState};
use berth_inplace::progress::{Progress, progress};
use k8s_openapi::{
    api::core::v1::{Pod, PodTemplateSpec},
    jiff::{SignedDuration, Timestamp},
};

/// A pod as the planner needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    /// Its resourceVersion: writes made on what the plan saw are guarded by it.
    pub version: Option<String>,
    pub ordinal: i32,
    /// Its `controller-revision-hash` label.
    pub revision: Option<String>,
    pub ready: bool,
    /// When it last became Ready.
    pub ready_since: Option<Timestamp>,
    /// Its [`keys::INPLACE_UPDATE_READY`] readiness-gate condition is True.
    pub gate_open: bool,
    /// When that condition last became False.
    pub gate_closed_since: Option<Timestamp>,
    pub terminating: bool,
    pub progress: Progress,
    /// Its [`keys::LIFECYCLE_STATE`]; `None` for a pod created without one (treated as Normal).
    pub lifecycle: Option<LifecycleState>,
    /// Its labels and finalizers, which lifecycle hooks wait on.
    pub labels: BTreeMap<String, String>,
    pub finalizers: Vec<String>,
    /// The node it is bound to.
    pub node: Option<String>,
    /// Phase Failed: it will not run again where it is.
    pub failed: bool,
    /// Since when it has been Failed, or unschedulable.
    pub stuck_since: Option<Timestamp>,
}

impl PodView {
    /// Reads a pod of the set named `set`; its ordinal comes from the
    /// pod-index label, else from the `<set>-<ordinal>` name.
    pub fn from_pod(set: &str, pod: &Pod) -> Result<Self, String> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let ordinal = labels
            .get(keys::POD_INDEX)
            .map(String::as_str)
            .or_else(|| name.strip_prefix(set).and_then(|rest| rest.strip_prefix('-')))
            .and_then(|s| s.parse::<i32>().ok())
            .filter(|o| *o >= 0)
            .ok_or_else(|| format!("pod {name}: no ordinal in label {} or name {set}-<ordinal>", keys::POD_INDEX))?;
        let find = |type_: &str| {
            pod.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        };
        let condition = |type_: &str| find(type_).is_some_and(|c| c.status == "True");
        Ok(Self {
            name,
            version: pod.metadata.resource_version.clone(),
            ordinal,
            revision: labels.get(keys::CONTROLLER_REVISION_HASH).cloned(),
            ready: condition("Ready"),
            ready_since: find("Ready")
                .filter(|c| c.status == "True")
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0),
            gate_open: condition(keys::INPLACE_UPDATE_READY),
            gate_closed_since: find(keys::INPLACE_UPDATE_READY)
                .filter(|c| c.status == "False")
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            progress: progress(pod).map_err(|e| format!("pod {}: {e}", pod.metadata.name.as_deref().unwrap_or("")))?,
            lifecycle: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(keys::LIFECYCLE_STATE))
                .map(|s| s.parse::<LifecycleState>())
                .transpose()
                .map_err(|e| format!("pod {}: {e}", pod.metadata.name.as_deref().unwrap_or("")))?,
            finalizers: pod.metadata.finalizers.clone().unwrap_or_default(),
            labels,
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            failed: pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"),
            stuck_since: stuck_since(pod),
        })
    }

    /// Normal in the lifecycle machine: not held by a hook, no update under way.
    pub fn settled(&self) -> bool {
        matches!(self.lifecycle, None | Some(LifecycleState::Normal))
    }

    /// Serving: Ready, its readiness gate open, not on its way out, not
    /// mid-update (a pod whose resize was refused runs its old revision
    /// untouched). A closed gate takes the pod out of endpoints before the
    /// kubelet's Ready follows, and a cache can hold the gate's closing before
    /// the update's start: such a pod is not serving.
    pub fn serving(&self) -> bool {
        self.ready
            && self.gate_open
            && !self.terminating
            && matches!(self.progress, Progress::Idle | Progress::Refused { .. })
    }
}

/// Since when the pod has been Failed (its Ready condition's last change, else
/// its start) or unschedulable (its PodScheduled=False/Unschedulable condition).
fn stuck_since(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref()?;
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let since =
        |type_: &str| conditions.iter().find(|c| c.type_ == type_).and_then(|c| c.last_transition_time.as_ref());
    if status.phase.as_deref() == Some("Failed") {
        return since("Ready").or(status.start_time.as_ref()).map(|t| t.0).or(Some(Timestamp::UNIX_EPOCH));
    }
    conditions
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
}

/// A ready, idle pod view for tests.
#[cfg(test)]
pub(crate) fn test_pod(ordinal: i32, revision: &str, ready: bool) -> PodView {
    PodView {
        name: format!("web-{ordinal}"),
        version: Some("1".into()),
        ordinal,
        revision: Some(revision.into()),
        ready,
        ready_since: Some(Timestamp::UNIX_EPOCH),
        gate_open: true,
        gate_closed_since: None,
        terminating: false,
        progress: Progress::Idle,
        lifecycle: None,
        labels: BTreeMap::new(),
        finalizers: vec![],
        node: Some("node-a".into()),
        failed: false,
        stuck_since: None,
    }
}

/// A PersistentVolumeClaim of the set, as the planner needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimView {
    pub name: String,
    /// Ordinal of the pod it belongs to.
    pub ordinal: i32,
    /// It has an owner reference to the set (so it goes when the set goes).
    pub owned_by_set: bool,
    pub terminating: bool,
}

/// Everything one planning pass reads.
#[derive(Clone, Debug)]
pub struct Observed {
    pub name: String,
    pub spec: InplaceSetSpec,
    pub pods: Vec<PodView>,
    /// Revision name of the current template.
    pub update_revision: String,
    /// Revision the pods below the partition stay at (from the set's status).
    pub current_revision: Option<String>,
    /// Revision name → template, for every revision a pod still runs.
    pub templates: BTreeMap<String, PodTemplateSpec>,
    /// Claims created from volumeClaimTemplates.
    pub claims: Vec<ClaimView>,
    /// The status last written: rollout progress, retries, condition times.
    pub previous: InplaceSetStatus,
    pub now: Timestamp,
}

impl Observed {
    /// Available: serving for at least `minReadySeconds`.
    pub fn available(&self, pod: &PodView) -> bool {
        let min_ready = SignedDuration::from_secs(self.spec.min_ready_seconds.unwrap_or(0).max(0).into());
        pod.serving()
            && pod.settled()
            && pod.ready_since.is_none_or(|since| self.now.duration_since(since) >= min_ready)
    }
}
