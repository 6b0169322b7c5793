//! Moving pods to the update revision: in place where the diff allows, within
//! the unavailability budget, through the lifecycle hooks.

use std::collections::{BTreeMap, BTreeSet};

use berth_api::{inplaceset::UpdateStrategyType, lifecycle::LifecycleState};
use berth_inplace::{InPlaceChanges, UpdatePlan, plan_update, progress::Progress};
use k8s_openapi::jiff::SignedDuration;

use super::{Action, Blocked, Plan};
use crate::{Observed, PodView};

/// How `pod` would move to the update revision. A pod whose resize for it was
/// refused (Rejected or Failed) can move only by a recreate.
fn diff(o: &Observed, pod: &PodView) -> UpdatePlan {
    if let Progress::Refused { revision, reason } = &pod.progress
        && *revision == o.update_revision
    {
        return UpdatePlan::Recreate(vec![reason.clone()]);
    }
    let Some(new) = o.templates.get(&o.update_revision) else {
        return UpdatePlan::Recreate(vec![format!("template of revision {} not found", o.update_revision)]);
    };
    match pod.revision.as_ref().and_then(|r| o.templates.get(r)) {
        Some(old) => plan_update(old, new),
        None => UpdatePlan::Recreate(vec![format!("revision {:?} of the pod is unknown", pod.revision)]),
    }
}

/// No update in flight, or only a resize phase for the update revision that
/// has ended (Applied: the rest follows; refused: a recreate, or a stop).
fn ready_to_move(o: &Observed, pod: &PodView) -> bool {
    match &pod.progress {
        Progress::Idle => true,
        Progress::Resized { revision } | Progress::Refused { revision, .. } => *revision == o.update_revision,
        Progress::InProgress { .. } | Progress::Done { .. } => false,
    }
}

/// Whether some pod still to update will be deleted and created again (so
/// surge pods are worth running).
pub fn recreates_pending(o: &Observed, by_ordinal: &BTreeMap<i32, &PodView>, to_update: &BTreeSet<i32>) -> bool {
    let kind = o.spec.update_strategy.type_;
    if matches!(kind, UpdateStrategyType::OnDelete | UpdateStrategyType::InPlaceOnly) {
        return false;
    }
    to_update.iter().filter_map(|ord| by_ordinal.get(ord)).any(|p| {
        p.revision.as_deref() != Some(o.update_revision.as_str())
            && (kind == UpdateStrategyType::Recreate || matches!(diff(o, p), UpdatePlan::Recreate(_)))
    })
}

/// Rolls the pods at `to_update` ordinals to the update revision in `order`,
/// never letting more than `budget` further pods become unavailable.
pub fn plan_updates(
    o: &Observed,
    by_ordinal: &BTreeMap<i32, &PodView>,
    order: &[i32],
    to_update: &BTreeSet<i32>,
    mut budget: i32,
    out: &mut Plan,
) {
    if !o.templates.contains_key(&o.update_revision) {
        out.blocked.push(Blocked::InvalidSpec(format!("template of update revision {} not found", o.update_revision)));
        return;
    }
    let hooks = o.spec.lifecycle.clone().unwrap_or_default();
    let grace = SignedDuration::from_secs(
        o.spec.update_strategy.in_place_update_strategy.as_ref().map_or(0, |s| s.grace_period_seconds.max(0)).into(),
    );
    let taken: BTreeSet<String> = out.actions.iter().filter_map(|a| a.pod_name().map(String::from)).collect();
    let candidates = order.iter().filter(|ord| to_update.contains(ord)).filter_map(|ord| by_ordinal.get(ord).copied());
    let candidates = candidates.filter(|p| {
        p.revision.as_deref() != Some(o.update_revision.as_str())
            && !p.terminating
            && !taken.contains(&p.name)
            && ready_to_move(o, p)
            && (p.settled()
                || matches!(p.lifecycle, Some(LifecycleState::PreparingUpdate | LifecycleState::PreparingDelete)))
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
        let name = pod.name.clone();
        let deleting = pod.lifecycle == Some(LifecycleState::PreparingDelete);
        let action = match (diff(o, pod), o.spec.update_strategy.type_) {
            (UpdatePlan::Recreate(reasons), UpdateStrategyType::InPlaceOnly) => {
                out.blocked.push(Blocked::NotInPlace { name, reasons });
                if o.available(pod) {
                    budget += 1;
                }
                continue;
            }
            (UpdatePlan::Recreate(_), _) | (UpdatePlan::InPlace(_), UpdateStrategyType::Recreate)
                if !deleting && hooks.pre_delete.is_some() =>
            {
                Action::Transition { name, to: LifecycleState::PreparingDelete, hook: hooks.pre_delete.clone() }
            }
            _ if deleting && !hooks.pre_delete.as_ref().is_none_or(|h| h.released(&pod.labels, &pod.finalizers)) => {
                continue; // held by the preDelete hook
            }
            (UpdatePlan::Recreate(reasons), _) => Action::Recreate { name, reasons },
            (UpdatePlan::InPlace(_), UpdateStrategyType::Recreate) => {
                Action::Recreate { name, reasons: vec!["updateStrategy.type is Recreate".into()] }
            }
            // Marked for deletion, but the change no longer needs it: the cancel is planned elsewhere.
            _ if deleting => continue,
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
            // cpu/memory first, as a resize request; the rest once it is Applied.
            (UpdatePlan::InPlace(changes), _) if !matches!(pod.progress, Progress::Resized { .. }) => {
                match changes.resize_request() {
                    Some(request) => Action::StartResize { name, revision: o.update_revision.clone(), request },
                    None => Action::StartInPlace { name, revision: o.update_revision.clone(), changes },
                }
            }
            (UpdatePlan::InPlace(changes), _) => {
                Action::StartInPlace { name, revision: o.update_revision.clone(), changes: changes.without_resources() }
            }
            // Same template under another revision name: relabel only.
            (UpdatePlan::Unchanged, _) => {
                Action::StartInPlace { name, revision: o.update_revision.clone(), changes: InPlaceChanges::default() }
            }
        };
        out.actions.push(action);
    }
}
