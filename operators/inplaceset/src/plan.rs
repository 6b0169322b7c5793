//! The InplaceSet planner: observed state in, actions out. No I/O.

use std::collections::BTreeMap;

use berth_api::{
    inplaceset::{LifecycleHook, PodManagementPolicy, UpdateStrategyType},
    lifecycle::LifecycleState,
};
use berth_inplace::{InPlaceChanges, UpdatePlan, plan_update, progress::Progress};
use k8s_openapi::jiff::SignedDuration;

use crate::{Observed, PodView, scaled};

/// How long an in-place update may take before it is reported as stuck.
pub const IN_PLACE_DEADLINE: SignedDuration = SignedDuration::from_secs(300);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create pod `<set>-<ordinal>` from `revision`.
    Create { ordinal: i32, revision: String },
    /// Delete a pod beyond `replicas`.
    ScaleDown { name: String },
    /// Delete a pod so it is created again from the update revision.
    Recreate { name: String, reasons: Vec<String> },
    /// Take the pod out of endpoints ahead of its update (PreparingUpdate,
    /// readiness gate False); the update starts after the grace period.
    CloseGate { name: String },
    /// Readiness gate False, then apply `changes` in place.
    StartInPlace { name: String, revision: String, changes: InPlaceChanges },
    /// The update completed: readiness gate True, state annotation removed.
    FinishInPlace { name: String },
    /// A pod with no update in flight whose readiness gate is not True (new,
    /// or an update start that failed half way): open it.
    OpenGate { name: String },
    /// Move the pod's lifecycle state, adding the hook's labels and finalizers
    /// (which hold it there until someone removes them).
    Transition { name: String, to: LifecycleState, hook: Option<LifecycleHook> },
}

/// Why part of the spec is not being carried out; reported as a condition and an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// Under InPlaceOnly, a pod whose change cannot be made in place.
    NotInPlace { name: String, reasons: Vec<String> },
    /// An in-place update past its deadline: containers not back.
    Overdue { name: String, waiting: BTreeMap<String, String> },
    /// The spec cannot be planned at all.
    InvalidSpec(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub blocked: Vec<Blocked>,
}

pub fn plan(o: &Observed) -> Plan {
    let mut out = Plan::default();
    let replicas = o.spec.replicas.max(0);
    let strategy = &o.spec.update_strategy;
    let (partition, max_unavailable) = match (
        scaled::resolve(strategy.partition.as_ref(), replicas, 0),
        scaled::resolve(strategy.max_unavailable.as_ref(), replicas, 1),
    ) {
        (Ok(p), Ok(m)) => (p, m.max(1)),
        (Err(e), _) => return invalid(format!("spec.updateStrategy.partition: {e}")),
        (_, Err(e)) => return invalid(format!("spec.updateStrategy.maxUnavailable: {e}")),
    };
    let ordered = o.spec.pod_management_policy == PodManagementPolicy::OrderedReady;
    let mut by_ordinal: BTreeMap<i32, &PodView> = BTreeMap::new();
    for pod in &o.pods {
        by_ordinal.entry(pod.ordinal).or_insert(pod);
    }

    let hooks = o.spec.lifecycle.clone().unwrap_or_default();
    let released = |pod: &PodView, hook: &Option<LifecycleHook>| {
        hook.as_ref().is_none_or(|h| h.released(&pod.labels, &pod.finalizers))
    };
    // The ordinals the spec wants, in order; the partition counts positions here.
    let wanted = o.spec.ordinals();
    let below_partition =
        |pod: &PodView| wanted.iter().position(|w| *w == pod.ordinal).is_some_and(|pos| (pos as i32) < partition);

    // Finished or stuck in-place updates; gates left closed; hooks released;
    // updates cancelled before they began (the target moved back to the pod).
    for pod in o.pods.iter().filter(|p| !p.terminating) {
        let to_normal = match pod.lifecycle {
            Some(LifecycleState::PreparingUpdate) => {
                matches!(pod.progress, Progress::Idle)
                    && (pod.revision.as_deref() == Some(o.update_revision.as_str()) || below_partition(pod))
            }
            Some(LifecycleState::PreparingNormal) => released(pod, &hooks.pre_normal),
            Some(LifecycleState::Updated) => {
                matches!(pod.progress, Progress::Idle) && released(pod, &hooks.post_update)
            }
            _ => false,
        };
        if to_normal {
            out.actions.push(Action::Transition { name: pod.name.clone(), to: LifecycleState::Normal, hook: None });
        }
        match &pod.progress {
            Progress::Idle
                if !pod.gate_open
                    && !matches!(
                        pod.lifecycle,
                        Some(LifecycleState::PreparingNormal | LifecycleState::PreparingUpdate)
                    ) =>
            {
                out.actions.push(Action::OpenGate { name: pod.name.clone() })
            }
            Progress::Done { .. } => out.actions.push(Action::FinishInPlace { name: pod.name.clone() }),
            p @ Progress::InProgress { waiting, .. } if p.is_overdue(o.now, IN_PLACE_DEADLINE) => {
                out.blocked.push(Blocked::Overdue { name: pod.name.clone(), waiting: waiting.clone() })
            }
            _ => {}
        }
    }

    // Scale down: pods at ordinals not wanted, highest first; OrderedReady one at a time.
    let excess: Vec<_> = by_ordinal.iter().rev().filter(|(ord, _)| !wanted.contains(ord)).map(|(_, p)| *p).collect();
    if ordered && excess.iter().any(|p| p.terminating) {
        // Wait for the pod on its way out.
    } else {
        for pod in excess.iter().filter(|p| !p.terminating).take(if ordered { 1 } else { usize::MAX }) {
            let name = pod.name.clone();
            match (&hooks.pre_delete, pod.lifecycle) {
                (None, _) => out.actions.push(Action::ScaleDown { name }),
                (Some(_), Some(LifecycleState::PreparingDelete)) if released(pod, &hooks.pre_delete) => {
                    out.actions.push(Action::ScaleDown { name })
                }
                (Some(_), Some(LifecycleState::PreparingDelete)) => {} // held by the hook
                (Some(hook), _) => out.actions.push(Action::Transition {
                    name,
                    to: LifecycleState::PreparingDelete,
                    hook: Some(hook.clone()),
                }),
            }
        }
    }

    // Scale up: missing ordinals; OrderedReady only the lowest, once every lower pod is Ready.
    for (position, ordinal) in wanted.iter().enumerate() {
        match by_ordinal.get(ordinal) {
            Some(pod) if ordered && (!pod.ready || pod.terminating) => break,
            Some(_) => continue,
            None => {
                let revision = match &o.current_revision {
                    Some(current) if (position as i32) < partition => current.clone(),
                    _ => o.update_revision.clone(),
                };
                out.actions.push(Action::Create { ordinal: *ordinal, revision });
                if ordered {
                    break;
                }
            }
        }
    }

    if !strategy.paused && strategy.type_ != UpdateStrategyType::OnDelete {
        plan_updates(o, &by_ordinal, &wanted, partition, max_unavailable, &mut out);
    }
    out
}

/// Rolls the pods at positions [partition, replicas) of the wanted ordinals to
/// the update revision, highest first, never letting more than
/// `max_unavailable` pods be unavailable.
fn plan_updates(
    o: &Observed,
    by_ordinal: &BTreeMap<i32, &PodView>,
    wanted: &[i32],
    partition: i32,
    max_unavailable: i32,
    out: &mut Plan,
) {
    let present_unavailable =
        wanted.iter().filter_map(|ord| by_ordinal.get(ord)).filter(|p| !o.available(p)).count() as i32;
    let missing = wanted.iter().filter(|ord| !by_ordinal.contains_key(ord)).count() as i32;
    let mut budget = max_unavailable - present_unavailable - missing;
    let Some(new_template) = o.templates.get(&o.update_revision) else {
        out.blocked.push(Blocked::InvalidSpec(format!("template of update revision {} not found", o.update_revision)));
        return;
    };
    let updatable = wanted.get(partition.max(0) as usize..).unwrap_or_default();
    let hooks = o.spec.lifecycle.clone().unwrap_or_default();
    let grace = SignedDuration::from_secs(
        o.spec.update_strategy.in_place_update_strategy.as_ref().map_or(0, |s| s.grace_period_seconds.max(0)).into(),
    );
    let candidates = updatable.iter().rev().filter_map(|ord| by_ordinal.get(ord).copied()).filter(|p| {
        p.revision.as_deref() != Some(o.update_revision.as_str())
            && !p.terminating
            && matches!(p.progress, Progress::Idle)
            && (p.settled() || p.lifecycle == Some(LifecycleState::PreparingUpdate))
    });
    for pod in candidates {
        let preparing = pod.lifecycle == Some(LifecycleState::PreparingUpdate);
        if preparing && !hooks.pre_update.as_ref().is_none_or(|h| h.released(&pod.labels, &pod.finalizers)) {
            continue; // held by the preUpdate hook
        }
        // An unavailable pod is already counted; updating it costs nothing more.
        if o.available(pod) {
            if budget <= 0 {
                continue;
            }
            budget -= 1;
        }
        let update = match pod.revision.as_ref().and_then(|r| o.templates.get(r)) {
            Some(old) => plan_update(old, new_template),
            None => UpdatePlan::Recreate(vec![format!("revision {:?} of the pod is unknown", pod.revision)]),
        };
        let name = pod.name.clone();
        let action = match (update, o.spec.update_strategy.type_) {
            (UpdatePlan::Recreate(reasons), UpdateStrategyType::InPlaceOnly) => {
                out.blocked.push(Blocked::NotInPlace { name, reasons });
                if o.available(pod) {
                    budget += 1;
                }
                continue;
            }
            (UpdatePlan::Recreate(reasons), _) => Action::Recreate { name, reasons },
            (UpdatePlan::InPlace(_), UpdateStrategyType::Recreate) => {
                Action::Recreate { name, reasons: vec!["updateStrategy.type is Recreate".into()] }
            }
            (UpdatePlan::InPlace(_), _) if !preparing && hooks.pre_update.is_some() => {
                Action::Transition { name, to: LifecycleState::PreparingUpdate, hook: hooks.pre_update.clone() }
            }
            // Out of endpoints first; containers change once the grace period has passed.
            (UpdatePlan::InPlace(_), _) if grace > SignedDuration::ZERO && (!preparing || pod.gate_open) => {
                Action::CloseGate { name }
            }
            (UpdatePlan::InPlace(_), _)
                if grace > SignedDuration::ZERO
                    && pod.gate_closed_since.is_some_and(|since| o.now.duration_since(since) < grace) =>
            {
                continue; // draining
            }
            (UpdatePlan::InPlace(changes), _) => {
                Action::StartInPlace { name, revision: o.update_revision.clone(), changes }
            }
            // Same template under another revision name: relabel only.
            (UpdatePlan::Unchanged, _) => {
                Action::StartInPlace { name, revision: o.update_revision.clone(), changes: InPlaceChanges::default() }
            }
        };
        out.actions.push(action);
    }
}

fn invalid(message: String) -> Plan {
    Plan { actions: vec![], blocked: vec![Blocked::InvalidSpec(message)] }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
