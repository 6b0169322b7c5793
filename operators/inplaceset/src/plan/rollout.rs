//! Rollout plans: which batch is running, and the partition it implies.

use berth_api::inplaceset::{RolloutPlan, RolloutStatus};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use berth_inplace::scaled;

use crate::Observed;

/// States of [`RolloutStatus::state`].
pub const PROGRESSING: &str = "Progressing";
pub const PAUSED: &str = "Paused";
pub const SUCCEEDED: &str = "Succeeded";
pub const FAILED: &str = "Failed";
pub const ROLLED_BACK: &str = "RolledBack";

const DEFAULT_BATCH_DEADLINE: i64 = 600;

/// One planning pass's view of the rollout plan.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutStep {
    pub status: RolloutStatus,
    /// Pods (in update order) that stay on the old revision.
    pub partition: i32,
    /// A failed batch without rollback: no more pods change.
    pub hold: bool,
    /// A timed pause ends then.
    pub requeue_after: Option<SignedDuration>,
}

/// Advances the rollout plan by at most one step. `None` without a plan.
pub fn step(o: &Observed, replicas: i32) -> Result<Option<RolloutStep>, String> {
    let Some(plan) = &o.spec.rollout_plan else { return Ok(None) };
    let targets = batch_targets(plan, replicas)?;
    let last = plan.batches.len() - 1;
    let now = o.now;
    let previous = o.previous.rollout.as_ref().filter(|r| r.revision == o.update_revision);
    let old_revision = o.current_revision.clone().filter(|c| *c != o.update_revision);
    let mut s = previous.cloned().unwrap_or_else(|| RolloutStatus {
        revision: o.update_revision.clone(),
        current_batch: 0,
        // A new set, or one whose pods all run this revision: nothing to roll out.
        state: if old_revision.is_some() { PROGRESSING } else { SUCCEEDED }.into(),
        batch_started_at: Some(now.into()),
        ..Default::default()
    });
    if old_revision.is_none() && s.state == SUCCEEDED {
        s.current_batch = last as i32;
    }
    let i = (s.current_batch.max(0) as usize).min(last);
    let mut requeue_after = None;
    let elapsed = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.as_ref().map_or(SignedDuration::ZERO, |t| now.duration_since(t.0))
    };
    let next = |s: &mut RolloutStatus, now: Timestamp| {
        s.current_batch += 1;
        s.state = PROGRESSING.into();
        s.batch_started_at = Some(now.into());
        s.batch_ready_at = None;
    };
    match s.state.as_str() {
        PROGRESSING => {
            let ready = updated_available(o);
            let deadline =
                SignedDuration::from_secs(plan.batch_deadline_seconds.map_or(DEFAULT_BATCH_DEADLINE, i64::from));
            if ready >= targets[i] {
                s.batch_ready_at = Some(now.into());
                s.message = None;
                match &plan.batches[i].pause {
                    _ if i == last => s.state = SUCCEEDED.into(),
                    None => next(&mut s, now),
                    Some(pause) => {
                        s.state = PAUSED.into();
                        if !pause.manual {
                            requeue_after = Some(SignedDuration::from_secs(pause.seconds.unwrap_or(0).max(0).into()));
                        }
                    }
                }
            } else if elapsed(&s.batch_started_at) > deadline {
                let why = format!(
                    "batch {i} had {ready} of {} pods updated and available after {}s",
                    targets[i],
                    deadline.as_secs()
                );
                match old_revision.filter(|_| plan.rollback_on_failure) {
                    Some(back) => {
                        s.message = Some(format!("{why}; rolled back to {back}"));
                        s.rolled_back_to = Some(back);
                        s.state = ROLLED_BACK.into();
                    }
                    None => {
                        s.message = Some(format!("{why}; the rollout is stopped"));
                        s.state = FAILED.into();
                    }
                }
            }
        }
        PAUSED => {
            let pause = plan.batches[i].pause.clone().unwrap_or_default();
            if pause.manual {
                if plan.approved_batches > i as i32 {
                    next(&mut s, now);
                }
            } else {
                let wait = SignedDuration::from_secs(pause.seconds.unwrap_or(0).max(0).into());
                let waited = elapsed(&s.batch_ready_at);
                if waited >= wait {
                    next(&mut s, now);
                } else {
                    requeue_after = Some(wait - waited);
                }
            }
        }
        _ => {}
    }
    let i = (s.current_batch.max(0) as usize).min(last);
    let partition = if s.state == ROLLED_BACK { 0 } else { replicas - targets[i] };
    Ok(Some(RolloutStep { hold: s.state == FAILED, status: s, partition: partition.max(0), requeue_after }))
}

/// Pods at the new revision once each batch is done (percents rounded up).
pub fn batch_targets(plan: &RolloutPlan, replicas: i32) -> Result<Vec<i32>, String> {
    if plan.batches.is_empty() {
        return Err("batches: at least one batch is needed".into());
    }
    let mut targets = Vec::new();
    for (i, batch) in plan.batches.iter().enumerate() {
        targets.push(scaled::resolve_up(Some(&batch.replicas), replicas).map_err(|e| format!("batches[{i}]: {e}"))?);
    }
    Ok(targets)
}

/// Pods of the wanted ordinals at the update revision and available.
fn updated_available(o: &Observed) -> i32 {
    let wanted = o.spec.ordinals();
    o.pods
        .iter()
        .filter(|p| wanted.contains(&p.ordinal))
        .filter(|p| p.revision.as_deref() == Some(o.update_revision.as_str()) && o.available(p))
        .count() as i32
}
