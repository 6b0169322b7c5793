//! The SidecarSet upgrade planner: the set, its latest revision and the pods
//! it injected in, actions out. No I/O. Only a sidecar image change goes in
//! place; any other change waits for the pod to be recreated, and is reported.

use std::collections::BTreeMap;

use berth_api::{
    SidecarSetSpec, keys, selector,
    sidecarset::{InjectedRevision, InjectedRevisions, SidecarSetUpdateStrategyType, injected_revisions},
};
use berth_inplace::{
    InPlaceChanges,
    progress::{Progress, progress},
    scaled,
};
use k8s_openapi::{api::core::v1::Pod, jiff::SignedDuration, jiff::Timestamp};

/// How long a sidecar upgrade may take before it is reported as stuck.
pub const UPGRADE_DEADLINE: SignedDuration = SignedDuration::from_secs(300);

/// A pod carrying this SidecarSet's sidecars, as the planner needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarPod {
    pub namespace: String,
    pub name: String,
    /// Its resourceVersion: writes made on what the plan saw are guarded by it.
    pub version: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// What every SidecarSet injected (the annotation is rewritten whole).
    pub records: InjectedRevisions,
    /// Container name → image, from the pod spec.
    pub images: BTreeMap<String, String>,
    pub ready: bool,
    /// Its in-place readiness gate condition is True.
    pub gate_open: bool,
    /// It has that readiness gate at all (injected with it).
    pub has_gate: bool,
    pub terminating: bool,
    pub progress: Progress,
    /// Owned by an InplaceSet, whose controller opens its gate and closes out its updates.
    pub in_inplaceset: bool,
}

impl SidecarPod {
    /// Reads a pod; `Ok(None)` if `set` injected nothing into it.
    pub fn from_pod(set: &str, pod: &Pod) -> Result<Option<Self>, String> {
        let meta = &pod.metadata;
        let records = injected_revisions(meta.annotations.as_ref())?;
        if !records.contains_key(set) {
            return Ok(None);
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let images = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
            .collect();
        let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
        let condition = |type_: &str| conditions.iter().any(|c| c.type_ == type_ && c.status == "True");
        let name = meta.name.clone().unwrap_or_default();
        Ok(Some(Self {
            namespace: meta.namespace.clone().unwrap_or_default(),
            progress: progress(pod).map_err(|e| format!("pod {name}: {e}"))?,
            name,
            version: meta.resource_version.clone(),
            labels: meta.labels.clone().unwrap_or_default(),
            records,
            images,
            ready: condition("Ready"),
            gate_open: condition(keys::INPLACE_UPDATE_READY),
            has_gate: spec.readiness_gates.iter().flatten().any(|g| g.condition_type == keys::INPLACE_UPDATE_READY),
            terminating: meta.deletion_timestamp.is_some(),
            in_inplaceset: meta.labels.as_ref().is_some_and(|l| l.contains_key(keys::INPLACESET_NAME)),
        }))
    }

    fn record<'a>(&'a self, set: &str) -> &'a InjectedRevision {
        &self.records[set]
    }

    /// Ready, its readiness gate (if it has one) open, not going away, no
    /// in-place update in flight. A cache can hold the gate's closing before
    /// the upgrade's start, while the kubelet's Ready has not followed yet.
    fn available(&self) -> bool {
        self.ready && (self.gate_open || !self.has_gate) && !self.terminating && matches!(self.progress, Progress::Idle)
    }
}

/// Everything one planning pass reads.
#[derive(Clone, Debug)]
pub struct Observed {
    pub name: String,
    pub spec: SidecarSetSpec,
    /// The revision of the current spec.
    pub latest: InjectedRevision,
    pub pods: Vec<SidecarPod>,
    pub now: Timestamp,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Gate False, then the new sidecar images and the updated record, in place.
    Upgrade { namespace: String, name: String, changes: InPlaceChanges },
    /// The upgrade completed: gate True, in-place state removed.
    Finish { namespace: String, name: String },
    /// A pod injected with the readiness gate, idle, whose gate is not open.
    /// `version`: the resourceVersion the plan saw ([`berth_inplace::apply::reopen_gate`]).
    OpenGate { namespace: String, name: String, version: Option<String> },
}

impl Action {
    /// `namespace/name` of the pod the action changes.
    pub fn pod(&self) -> String {
        match self {
            Action::Upgrade { namespace, name, .. }
            | Action::Finish { namespace, name }
            | Action::OpenGate { namespace, name, .. } => {
                format!("{namespace}/{name}")
            }
        }
    }
}

/// Why a pod is not being upgraded; surfaced in status and Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// More than images changed: the new sidecar waits for the pod's recreation.
    NotInPlace { namespace: String, name: String },
    /// An upgrade past its deadline.
    Overdue { namespace: String, name: String, waiting: BTreeMap<String, String> },
    /// The spec cannot be planned.
    InvalidSpec(String),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub blocked: Vec<Blocked>,
}

pub fn plan(o: &Observed) -> Plan {
    let mut out = Plan::default();
    let pods: Vec<&SidecarPod> = o.pods.iter().filter(|p| !p.terminating).collect();
    // An InplaceSet's pods have their gate and finished updates handled by it
    // (a closed gate may be its drain before an update).
    for pod in pods.iter().filter(|p| !p.in_inplaceset) {
        let (namespace, name) = (pod.namespace.clone(), pod.name.clone());
        match &pod.progress {
            Progress::Done { .. } => out.actions.push(Action::Finish { namespace, name }),
            p @ Progress::InProgress { waiting, .. } if p.is_overdue(o.now, UPGRADE_DEADLINE) => {
                out.blocked.push(Blocked::Overdue { namespace, name, waiting: waiting.clone() })
            }
            Progress::Idle if pod.has_gate && !pod.gate_open => {
                out.actions.push(Action::OpenGate { namespace, name, version: pod.version.clone() })
            }
            _ => {}
        }
    }
    let strategy = &o.spec.update_strategy;
    if strategy.type_ == SidecarSetUpdateStrategyType::NotUpdate || strategy.paused {
        return out;
    }
    let total = pods.len() as i32;
    let (partition, max_unavailable) = match (
        scaled::resolve(strategy.partition.as_ref(), total, 0),
        scaled::resolve(strategy.max_unavailable.as_ref(), total, 1),
    ) {
        (Ok(p), Ok(m)) => (p, m.max(1)),
        (Err(e), _) => return invalid(out, format!("spec.updateStrategy.partition: {e}")),
        (_, Err(e)) => return invalid(out, format!("spec.updateStrategy.maxUnavailable: {e}")),
    };

    let outdated = |p: &&&SidecarPod| p.record(&o.name).revision != o.latest.revision;
    let in_scope = |p: &&&SidecarPod| strategy.selector.as_ref().is_none_or(|s| selector::matches(s, &p.labels));
    // Not-updatable pods are reported whatever the budget.
    for pod in pods.iter().filter(outdated) {
        if pod.record(&o.name).without_image != o.latest.without_image {
            out.blocked.push(Blocked::NotInPlace { namespace: pod.namespace.clone(), name: pod.name.clone() });
        }
    }
    // The partition keeps `partition` pods at the old revision: those already
    // updated count toward the rest first.
    let updated = pods.iter().filter(|p| !outdated(p)).count() as i32;
    let mut to_update = (total - partition - updated).max(0);
    let mut budget = max_unavailable - pods.iter().filter(|p| !p.available()).count() as i32;
    // Unavailable pods first (upgrading them costs nothing), then by namespace/name.
    let mut candidates: Vec<&&SidecarPod> = pods
        .iter()
        .filter(outdated)
        .filter(in_scope)
        .filter(|p| matches!(p.progress, Progress::Idle))
        .filter(|p| p.record(&o.name).without_image == o.latest.without_image)
        .collect();
    candidates.sort_by_key(|p| (p.available(), p.namespace.clone(), p.name.clone()));
    for pod in candidates {
        if to_update <= 0 {
            break;
        }
        if pod.available() {
            if budget <= 0 {
                break;
            }
            budget -= 1;
        }
        to_update -= 1;
        out.actions.push(Action::Upgrade {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            changes: changes(o, pod),
        });
    }
    out
}

/// New images for this set's containers that differ, and the pod's record
/// with this set's entry at the latest revision.
fn changes(o: &Observed, pod: &SidecarPod) -> InPlaceChanges {
    let mut changes = InPlaceChanges::default();
    for c in o.spec.init_containers.iter().chain(&o.spec.containers) {
        let image = c.image.clone().unwrap_or_default();
        if pod.images.get(&c.name) != Some(&image) {
            changes.images.insert(c.name.clone(), image);
        }
    }
    let mut records = pod.records.clone();
    records.insert(o.name.clone(), o.latest.clone());
    let record = serde_json::to_string(&records).expect("records serialize");
    changes.annotations.insert(keys::SIDECARSET_REVISIONS.into(), Some(record));
    changes
}

fn invalid(mut out: Plan, message: String) -> Plan {
    out.blocked.push(Blocked::InvalidSpec(message));
    out
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
