//! What the planner sees: the set's spec and a compact view of each pod.

use std::collections::BTreeMap;

use berth_api::{InplaceSetSpec, keys, lifecycle::LifecycleState};
use berth_inplace::progress::{Progress, progress};
use k8s_openapi::{
    api::core::v1::{Pod, PodTemplateSpec},
    jiff::{SignedDuration, Timestamp},
};

/// A pod as the planner needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
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
        })
    }

    /// Normal in the lifecycle machine: not held by a hook, no update under way.
    pub fn settled(&self) -> bool {
        matches!(self.lifecycle, None | Some(LifecycleState::Normal))
    }

    /// Serving: Ready, not on its way out, not mid-update.
    pub fn serving(&self) -> bool {
        self.ready && !self.terminating && matches!(self.progress, Progress::Idle)
    }
}

/// A ready, idle pod view for tests.
#[cfg(test)]
pub(crate) fn test_pod(ordinal: i32, revision: &str, ready: bool) -> PodView {
    PodView {
        name: format!("web-{ordinal}"),
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
    }
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
