//! `rollout status`: a watch on the InplaceSet, one line per change of its
//! progress, until the rollout completes or fails. [`verdict`] and
//! [`progress_line`] are pure.

use std::time::Duration;

use berth_api::InplaceSet;
use berth_inplaceset::{plan::rollout as plan_rollout, status::PROGRESS_DEADLINE_EXCEEDED};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    Api, Client, ResourceExt,
    runtime::{watcher, watcher::Event},
};

use crate::error::{Error, Exit, Result};

/// Where a rollout stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    InProgress,
    /// Waiting on a person: the set is paused, or a manual batch pause awaits approval.
    Paused(String),
    Done,
    /// It will not finish by itself: why.
    Failed(String),
}

fn condition<'a>(set: &'a InplaceSet, type_: &str) -> Option<&'a Condition> {
    set.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// The verdict on the set as last observed by the controller.
pub fn verdict(set: &InplaceSet) -> Verdict {
    let Some(status) = &set.status else { return Verdict::InProgress };
    if status.observed_generation < set.metadata.generation {
        return Verdict::InProgress;
    }
    let name = set.name_any();
    if let Some(c) = condition(set, "Progressing").filter(|c| c.status == "False") {
        let fatal = [PROGRESS_DEADLINE_EXCEEDED, "BatchDeadlineExceeded", "RolledBack"];
        if fatal.contains(&c.reason.as_str()) {
            return Verdict::Failed(format!("{}: {}", c.reason, c.message));
        }
    }
    if let Some(c) = condition(set, "FailedUpdate").filter(|c| c.status == "True") {
        return Verdict::Failed(format!("{}: {}", c.reason, c.message));
    }
    let rollout = status.rollout.as_ref().filter(|r| Some(&r.revision) == status.update_revision.as_ref());
    if let Some(r) = rollout.filter(|r| [plan_rollout::FAILED, plan_rollout::ROLLED_BACK].contains(&r.state.as_str())) {
        return Verdict::Failed(format!("rollout {}: {}", r.state, r.message.clone().unwrap_or_default()));
    }
    let replicas = set.spec.replicas;
    let numbers_done = status.replicas == replicas
        && status.updated_replicas >= status.expected_updated_replicas
        && status.updated_ready_replicas >= status.expected_updated_replicas
        && status.available_replicas >= replicas;
    // With a plan, the numbers say only that the current batch is done.
    let plan_done = set.spec.rollout_plan.is_none() || rollout.is_some_and(|r| r.state == plan_rollout::SUCCEEDED);
    if numbers_done && plan_done {
        return Verdict::Done;
    }
    if set.spec.update_strategy.paused {
        return Verdict::Paused(format!(
            "paused (spec.updateStrategy.paused); resume: kubectl berth rollout resume {name}"
        ));
    }
    if let (Some(r), Some(plan)) = (rollout, &set.spec.rollout_plan) {
        let manual =
            plan.batches.get(r.current_batch.max(0) as usize).and_then(|b| b.pause.as_ref()).is_some_and(|p| p.manual);
        if r.state == plan_rollout::PAUSED && manual && plan.approved_batches <= r.current_batch {
            return Verdict::Paused(format!(
                "batch {} done, waiting for approval; approve: kubectl berth rollout resume {name}",
                r.current_batch
            ));
        }
    }
    Verdict::InProgress
}

/// One line saying where the rollout is: pods, batch, pause, notable conditions.
pub fn progress_line(set: &InplaceSet) -> String {
    let Some(status) = &set.status else { return "waiting for the controller to report status".into() };
    if status.observed_generation < set.metadata.generation {
        return format!(
            "waiting for the controller to observe generation {} (it reports {})",
            set.metadata.generation.unwrap_or(0),
            status.observed_generation.unwrap_or(0)
        );
    }
    let replicas = set.spec.replicas;
    let mut line = format!(
        "revision {}: {} of {} updated, {} updated ready, {} of {replicas} available",
        status.update_revision.as_deref().unwrap_or("?"),
        status.updated_replicas,
        status.expected_updated_replicas,
        status.updated_ready_replicas,
        status.available_replicas,
    );
    if let (Some(plan), Some(r)) = (&set.spec.rollout_plan, &status.rollout) {
        let targets = plan_rollout::batch_targets(plan, replicas).unwrap_or_default();
        let target = targets.get(r.current_batch.max(0) as usize).copied().unwrap_or(0);
        line.push_str(&format!(
            "; batch {} of 0..{} (to {target} pods): {}",
            r.current_batch,
            plan.batches.len() - 1,
            r.state
        ));
    }
    if set.spec.update_strategy.paused {
        line.push_str("; paused");
    }
    for type_ in ["FailedCreate", "FailedUpdate"] {
        if let Some(c) = condition(set, type_).filter(|c| c.status == "True") {
            line.push_str(&format!("; {type_}: {}", c.message));
        }
    }
    if let Some(c) = condition(set, "Progressing").filter(|c| c.status == "False" && c.reason != "RolloutComplete") {
        line.push_str(&format!("; Progressing=False {}", c.reason));
    }
    line
}

/// Watches set `name` and prints its progress until an outcome, or `timeout` (zero: none).
pub async fn run(client: Client, namespace: &str, name: &str, timeout: Duration) -> Result<Exit> {
    let api: Api<InplaceSet> = Api::namespaced(client, namespace);
    api.get(name).await.map_err(|e| Error::from_get(e, "InplaceSet", name, namespace))?;
    // A quorum read to start from, never a stale cache.
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .list_semantic(watcher::ListSemantic::MostRecent);
    let mut events = Box::pin(watcher(api, config));
    let deadline = (!timeout.is_zero()).then(|| tokio::time::Instant::now() + timeout);
    let mut last = String::new();
    loop {
        let next = match deadline {
            Some(at) => match tokio::time::timeout_at(at, events.next()).await {
                Ok(next) => next,
                Err(_) => {
                    eprintln!("error: timed out after {timeout:?} waiting for InplaceSet {name:?}: {last}");
                    return Ok(Exit::Timeout);
                }
            },
            None => events.next().await,
        };
        let set = match next {
            None => return Err(Error::Invalid("the watch ended".into())),
            Some(Err(e)) => {
                eprintln!("warning: watch: {e} (retrying)");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Some(Ok(Event::Delete(_))) => {
                return Err(Error::Invalid(format!("InplaceSet {name:?} was deleted during the rollout")));
            }
            Some(Ok(Event::Apply(set) | Event::InitApply(set))) => set,
            Some(Ok(_)) => continue,
        };
        let line = progress_line(&set);
        let verdict = verdict(&set);
        if line != last {
            println!("{line}");
            if let Verdict::Paused(why) = &verdict {
                println!("  {why}");
            }
            last = line;
        }
        match verdict {
            Verdict::Done => {
                let status = set.status.unwrap_or_default();
                println!(
                    "InplaceSet {name:?} successfully rolled out: revision {}, {} of {} pods updated",
                    status.update_revision.unwrap_or_default(),
                    status.updated_replicas,
                    set.spec.replicas
                );
                return Ok(Exit::Success);
            }
            Verdict::Failed(why) => {
                eprintln!("error: InplaceSet {name:?} rollout failed: {why}");
                return Ok(Exit::Failed);
            }
            Verdict::InProgress | Verdict::Paused(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn set(spec: serde_json::Value, status: serde_json::Value) -> InplaceSet {
        let mut s = json!({"replicas": 4, "selector": {}, "template": {}});
        s.as_object_mut().unwrap().extend(spec.as_object().unwrap().clone());
        serde_json::from_value(json!({"apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet",
            "metadata": {"name": "web", "generation": 2}, "spec": s, "status": status}))
        .unwrap()
    }

    fn status(updated: i32, ready: i32, available: i32, extra: serde_json::Value) -> serde_json::Value {
        let mut s = json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": updated,
            "updatedReadyReplicas": ready, "availableReplicas": available, "expectedUpdatedReplicas": 4,
            "updateRevision": "web-b", "currentRevision": "web-a"});
        s.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        s
    }

    fn cond(type_: &str, status: &str, reason: &str, message: &str) -> serde_json::Value {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-11-23T10:00:00Z"})
    }

    #[test]
    fn done_only_when_the_controller_saw_this_generation_and_every_expected_pod_is_ready() {
        assert_eq!(verdict(&set(json!({}), status(4, 4, 4, json!({})))), Verdict::Done);
        assert_eq!(verdict(&set(json!({}), status(4, 3, 3, json!({})))), Verdict::InProgress, "one not ready");
        assert_eq!(verdict(&set(json!({}), status(2, 2, 4, json!({})))), Verdict::InProgress);
        let stale = status(4, 4, 4, json!({"observedGeneration": 1}));
        assert_eq!(verdict(&set(json!({}), stale)), Verdict::InProgress, "old generation");
        // A partition: two pods expected, both ready, the others available at the old revision.
        let partitioned = status(2, 2, 4, json!({"expectedUpdatedReplicas": 2}));
        assert_eq!(verdict(&set(json!({}), partitioned)), Verdict::Done);
    }

    #[test]
    fn deadlines_rollbacks_and_blocked_updates_fail() {
        let stalled = status(
            1,
            1,
            3,
            json!({"conditions": [cond("Progressing", "False", "ProgressDeadlineExceeded", "1 of 4")]}),
        );
        assert_eq!(verdict(&set(json!({}), stalled)), Verdict::Failed("ProgressDeadlineExceeded: 1 of 4".into()));
        let blocked = status(
            1,
            1,
            3,
            json!({"conditions": [cond("FailedUpdate", "True", "UpdateBlocked", "web-3 cannot be updated in place")]}),
        );
        assert!(matches!(verdict(&set(json!({}), blocked)), Verdict::Failed(m) if m.contains("web-3 cannot")));
        let rolled_back = status(
            0,
            0,
            4,
            json!({"rollout": {"revision": "web-b", "currentBatch": 1, "state": "RolledBack", "message": "batch 1 had 1 of 2"}}),
        );
        let plan = json!({"rolloutPlan": {"batches": [{"replicas": 1}, {"replicas": "100%"}]}});
        assert_eq!(verdict(&set(plan, rolled_back)), Verdict::Failed("rollout RolledBack: batch 1 had 1 of 2".into()));
    }

    #[test]
    fn a_plan_is_done_when_its_last_batch_succeeded_and_a_manual_pause_waits_for_approval() {
        let plan =
            json!({"rolloutPlan": {"batches": [{"replicas": 1, "pause": {"manual": true}}, {"replicas": "100%"}]}});
        // Batch 0 done: the numbers look complete (expected 1), but the plan is not.
        let paused = status(
            1,
            1,
            4,
            json!({"expectedUpdatedReplicas": 1,
            "rollout": {"revision": "web-b", "currentBatch": 0, "state": "Paused"}}),
        );
        let s = set(plan.clone(), paused);
        assert!(matches!(verdict(&s), Verdict::Paused(m) if m.contains("batch 0 done, waiting for approval")));
        assert_eq!(
            progress_line(&s),
            "revision web-b: 1 of 1 updated, 1 updated ready, 4 of 4 available; batch 0 of 0..1 (to 1 pods): Paused"
        );
        let mut approved = plan.clone();
        approved["rolloutPlan"]["approvedBatches"] = json!(1);
        let s = set(
            approved,
            status(
                1,
                1,
                4,
                json!({"expectedUpdatedReplicas": 1,
            "rollout": {"revision": "web-b", "currentBatch": 0, "state": "Paused"}}),
            ),
        );
        assert_eq!(verdict(&s), Verdict::InProgress, "approved: the controller moves on");
        let done = status(4, 4, 4, json!({"rollout": {"revision": "web-b", "currentBatch": 1, "state": "Succeeded"}}));
        assert_eq!(verdict(&set(plan, done)), Verdict::Done);
    }

    #[test]
    fn a_paused_set_says_how_to_resume_and_the_line_shows_problems() {
        let s = set(
            json!({"updateStrategy": {"paused": true}}),
            status(
                1,
                1,
                4,
                json!({"conditions": [
            cond("FailedCreate", "True", "FailedCreate", "web-3: quota"),
            cond("Progressing", "False", "Paused", "")]}),
            ),
        );
        assert_eq!(
            verdict(&s),
            Verdict::Paused("paused (spec.updateStrategy.paused); resume: kubectl berth rollout resume web".into())
        );
        assert_eq!(
            progress_line(&s),
            "revision web-b: 1 of 4 updated, 1 updated ready, 4 of 4 available; paused; FailedCreate: web-3: quota; Progressing=False Paused"
        );
    }
}
