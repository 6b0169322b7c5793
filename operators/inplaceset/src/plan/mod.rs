//! The InplaceSet planner: observed state in, actions out. No I/O.

mod claims;
pub mod order;
mod repair;
pub mod rollout;
pub mod runs;
mod update;

use std::collections::{BTreeMap, BTreeSet};

use berth_api::{
    inplaceset::{LifecycleHook, PodManagementPolicy, RetryRecord, RolloutStatus, UpdateStrategyType},
    lifecycle::LifecycleState,
    resize::ResizeRequest,
};
use berth_inplace::{InPlaceChanges, progress::Progress};
use k8s_openapi::jiff::SignedDuration;

use berth_inplace::scaled;

use crate::{Observed, PodView};

/// How long an in-place update may take before it is reported as stuck.
pub const IN_PLACE_DEADLINE: SignedDuration = SignedDuration::from_secs(300);

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create pod `<set>-<ordinal>` from `revision`, kept off `avoid_nodes`.
    Create { ordinal: i32, revision: String, avoid_nodes: Vec<String> },
    /// Delete a pod beyond `replicas`.
    ScaleDown { name: String },
    /// Delete a pod so it is created again (from the update revision, or because it Failed).
    Recreate { name: String, reasons: Vec<String> },
    /// Delete a pod named in `scaleStrategy.podsToDelete`, then drop the name from the list.
    DeleteRequested { name: String },
    /// Drop a name with no pod from `scaleStrategy.podsToDelete`.
    ForgetPodToDelete { name: String },
    /// Delete a pod stuck Failed or unschedulable; it is created again away from `node`.
    Retry { name: String, node: Option<String>, attempt: i32 },
    /// Take the pod out of endpoints ahead of its update (PreparingUpdate,
    /// readiness gate False); the update starts after the grace period.
    CloseGate { name: String },
    /// Readiness gate False, then apply `changes` in place.
    StartInPlace { name: String, revision: String, changes: InPlaceChanges },
    /// First phase of an update changing cpu/memory: submit `request` (the
    /// pod keeps serving); the rest follows once it is Applied.
    StartResize { name: String, revision: String, request: ResizeRequest },
    /// The update completed: readiness gate True, state annotation removed.
    FinishInPlace { name: String },
    /// A pod with no update in flight whose readiness gate is not True (new,
    /// or an update start that failed half way): open it.
    /// `version`: the resourceVersion the plan saw ([`berth_inplace::apply::reopen_gate`]).
    OpenGate { name: String, version: Option<String> },
    /// Move the pod's lifecycle state, adding the hook's labels and finalizers
    /// (which hold it there until someone removes them).
    Transition { name: String, to: LifecycleState, hook: Option<LifecycleHook> },
    /// Create claim `name` from volume claim template `template` for pod `ordinal`.
    CreateClaim { name: String, template: String, ordinal: i32 },
    /// Delete a claim of a pod scaled away (whenScaled: Delete).
    DeleteClaim { name: String },
    /// Add (`owned`) or remove the claim's owner reference to the set (whenDeleted).
    SetClaimOwner { name: String, owned: bool },
}

impl Action {
    /// The pod the action changes, if any.
    pub fn pod_name(&self) -> Option<&str> {
        match self {
            Action::ScaleDown { name }
            | Action::Recreate { name, .. }
            | Action::DeleteRequested { name }
            | Action::Retry { name, .. }
            | Action::CloseGate { name }
            | Action::StartInPlace { name, .. }
            | Action::StartResize { name, .. }
            | Action::FinishInPlace { name }
            | Action::OpenGate { name, .. }
            | Action::Transition { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// Why part of the spec is not being carried out; reported as a condition and an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// Under InPlaceOnly, a pod whose change cannot be made in place.
    NotInPlace { name: String, reasons: Vec<String> },
    /// An in-place update past its deadline: containers not back.
    Overdue { name: String, waiting: BTreeMap<String, String> },
    /// A pod still stuck after `retryOnOtherNodes.maxAttempts` recreations.
    RetriesExhausted { name: String, attempts: i32 },
    /// The spec cannot be planned at all.
    InvalidSpec(String),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub blocked: Vec<Blocked>,
    /// Where the rollout plan stands after this pass, if the set has one.
    pub rollout: Option<RolloutStatus>,
    /// Pods recreated elsewhere, with their attempts (kept in status).
    pub retries: Vec<RetryRecord>,
    /// Plan again this soon even if nothing changes (a timed pause ends).
    pub requeue_after: Option<SignedDuration>,
    /// Pods (in update order) kept at the old revision: from the partition or the rollout plan.
    pub partition: i32,
}

pub fn plan(observed: &Observed) -> Plan {
    let o = observed;
    let mut out = Plan { retries: o.previous.retries.clone(), ..Plan::default() };
    let replicas = o.spec.replicas.max(0);
    let strategy = &o.spec.update_strategy;
    let (max_unavailable, max_surge) = match (
        scaled::resolve(strategy.max_unavailable.as_ref(), replicas, 1),
        scaled::resolve_up(strategy.max_surge.as_ref(), replicas),
    ) {
        (Ok(m), Ok(s)) => (m.max(1), s),
        (Err(e), _) => return invalid(format!("spec.updateStrategy.maxUnavailable: {e}")),
        (_, Err(e)) => return invalid(format!("spec.updateStrategy.maxSurge: {e}")),
    };
    let step = match rollout::step(o, replicas) {
        Ok(step) => step,
        Err(e) => return invalid(format!("spec.rolloutPlan.{e}")),
    };
    let partition = match (&step, scaled::resolve(strategy.partition.as_ref(), replicas, 0)) {
        (Some(step), _) => step.partition,
        (None, Ok(p)) => p,
        (None, Err(e)) => return invalid(format!("spec.updateStrategy.partition: {e}")),
    };
    out.partition = partition;
    let hold = step.as_ref().is_some_and(|s| s.hold);
    out.requeue_after = step.as_ref().and_then(|s| s.requeue_after);
    out.rollout = step.map(|s| s.status);
    // After a failed batch is rolled back, the pods move to the previous revision.
    let rolled_back;
    let o = match out.rollout.as_ref().and_then(|r| r.rolled_back_to.clone()) {
        Some(back) => {
            rolled_back = Observed { update_revision: back, ..observed.clone() };
            &rolled_back
        }
        None => observed,
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
    // The ordinals the spec wants; the partition keeps the last of them in update order.
    let wanted = o.spec.ordinals();
    let order = order::update_order(o, &wanted, &by_ordinal);
    let to_update: BTreeSet<i32> = order.iter().take((replicas - partition).max(0) as usize).copied().collect();
    let below_partition = |pod: &PodView| wanted.contains(&pod.ordinal) && !to_update.contains(&pod.ordinal);

    // Surge pods run past the last ordinal while pods are recreated, until all are available.
    let updating = !strategy.paused && !hold && strategy.type_ != UpdateStrategyType::OnDelete;
    let surge_slots = order::surge_ordinals(&o.spec, &wanted, max_surge);
    let surge_up = surge_slots.iter().any(|ord| by_ordinal.contains_key(ord));
    let settling = wanted.iter().any(|ord| by_ordinal.get(ord).is_none_or(|p| !o.available(p)));
    let surge: Vec<i32> =
        if updating && (update::recreates_pending(o, &by_ordinal, &to_update) || (surge_up && settling)) {
            surge_slots
        } else {
            vec![]
        };
    let keep = |ord: i32| wanted.contains(&ord) || surge.contains(&ord);

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
            // Held for a recreate the target no longer needs (the partition or the template moved back).
            Some(LifecycleState::PreparingDelete) if wanted.contains(&pod.ordinal) => {
                pod.revision.as_deref() == Some(o.update_revision.as_str()) || below_partition(pod)
            }
            // The update record is gone but the move out of Updating did not land (a pod finished before one write did both).
            Some(LifecycleState::Updating) if matches!(pod.progress, Progress::Idle) => {
                let hook = hooks.post_update.clone();
                let to = LifecycleState::after_update(hook.is_some());
                out.actions.push(Action::Transition { name: pod.name.clone(), to, hook });
                false
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
                out.actions.push(Action::OpenGate { name: pod.name.clone(), version: pod.version.clone() })
            }
            Progress::Done { .. } => out.actions.push(Action::FinishInPlace { name: pod.name.clone() }),
            // A resize phase for a revision no longer the target: drop its record, then plan afresh.
            Progress::Resized { revision } | Progress::Refused { revision, .. } if *revision != o.update_revision => {
                out.actions.push(Action::FinishInPlace { name: pod.name.clone() })
            }
            // Refused: it keeps running its old revision; back into endpoints if the update had taken it out.
            Progress::Refused { .. } if !pod.gate_open && pod.lifecycle != Some(LifecycleState::PreparingDelete) => {
                out.actions.push(Action::OpenGate { name: pod.name.clone(), version: pod.version.clone() })
            }
            p @ Progress::InProgress { waiting, .. } if p.is_overdue(o.now, IN_PLACE_DEADLINE) => {
                out.blocked.push(Blocked::Overdue { name: pod.name.clone(), waiting: waiting.clone() })
            }
            _ => {}
        }
    }

    // Scale down: pods at ordinals not kept, highest first; OrderedReady one at a time.
    let excess: Vec<_> = by_ordinal.iter().rev().filter(|(ord, _)| !keep(**ord)).map(|(_, p)| *p).collect();
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

    // Scale up: missing ordinals, claims first; OrderedReady only the lowest, once every lower pod is Ready.
    for ordinal in wanted.iter().chain(&surge) {
        match by_ordinal.get(ordinal) {
            Some(pod) if ordered && (!pod.ready || pod.terminating) => break,
            Some(_) => continue,
            None => {
                let revision = match &o.current_revision {
                    Some(current) if wanted.contains(ordinal) && !to_update.contains(ordinal) => current.clone(),
                    _ => o.update_revision.clone(),
                };
                let name = format!("{}-{ordinal}", o.name);
                let avoid_nodes = o
                    .previous
                    .retries
                    .iter()
                    .find(|r| r.pod == name)
                    .map(|r| r.avoided_nodes.clone())
                    .unwrap_or_default();
                out.actions.extend(claims::missing(o, *ordinal));
                out.actions.push(Action::Create { ordinal: *ordinal, revision, avoid_nodes });
                if ordered {
                    break;
                }
            }
        }
    }
    claims::retention(o, &keep, &by_ordinal, &mut out);
    repair::retries(o, &keep, &mut out);

    // The unavailability budget: surge pods that are available widen it.
    let unavailable = wanted.iter().filter_map(|ord| by_ordinal.get(ord)).filter(|p| !o.available(p)).count();
    let missing = wanted.iter().filter(|ord| !by_ordinal.contains_key(ord)).count();
    let surge_available = surge.iter().filter_map(|ord| by_ordinal.get(ord)).filter(|p| o.available(p)).count();
    let mut budget = max_unavailable + surge_available as i32 - unavailable as i32 - missing as i32;
    let by_name: BTreeMap<&str, &PodView> = o.pods.iter().map(|p| (p.name.as_str(), p)).collect();
    repair::pods_to_delete(o, &by_name, &mut budget, &mut out);
    if updating {
        update::plan_updates(o, &by_ordinal, &order, &to_update, budget, &mut out);
    }
    let name_kept = |pod: &str| {
        pod.strip_prefix(o.name.as_str())
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.parse().ok())
            .is_some_and(keep)
    };
    out.retries = repair::records(o, &name_kept, &out.actions);
    out
}

fn invalid(message: String) -> Plan {
    Plan { blocked: vec![Blocked::InvalidSpec(message)], ..Plan::default() }
}

#[cfg(test)]
mod tests;
