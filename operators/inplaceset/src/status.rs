//! The InplaceSet status a planning pass reports. Pure.

use berth_api::InplaceSetStatus;
use berth_inplace::conditions::Conditions;
use k8s_openapi::jiff::SignedDuration;

use crate::{
    Blocked, Observed,
    plan::{Plan, rollout},
};

/// Status after observing `o` and planning `plan`; `failed_creates` are the
/// errors the executor met creating pods. Conditions keep their last
/// transition time from the previous status while their status is unchanged.
pub fn status(o: &Observed, plan: &Plan, generation: Option<i64>, failed_creates: &[String]) -> InplaceSetStatus {
    let previous = &o.previous;
    let pods: Vec<_> = o.pods.iter().filter(|p| !p.terminating).collect();
    let count = |f: &dyn Fn(&&crate::PodView) -> bool| pods.iter().filter(|p| f(p)).count() as i32;
    let updated = |p: &&crate::PodView| p.revision.as_deref() == Some(o.update_revision.as_str());
    let replicas = pods.len() as i32;
    let updated_replicas = count(&updated);
    let all_updated = updated_replicas == replicas && replicas == o.spec.replicas;
    let current_revision = if all_updated {
        Some(o.update_revision.clone())
    } else {
        o.current_revision.clone().or(Some(o.update_revision.clone()))
    };
    let expected_updated_replicas = (o.spec.replicas - plan.partition).max(0);
    let available_replicas = count(&|p| o.available(p));
    let rollout_done = updated_replicas >= expected_updated_replicas && replicas == o.spec.replicas;

    // Progress: the revision changed, or more pods updated or available than last time.
    let now = o.now;
    let progressed = previous.update_revision.as_deref() != Some(o.update_revision.as_str())
        || updated_replicas > previous.updated_replicas
        || available_replicas > previous.available_replicas
        || previous.last_progress_time.is_none();
    let last_progress_time = if progressed { Some(now.into()) } else { previous.last_progress_time.clone() };
    let deadline = SignedDuration::from_secs(o.spec.progress_deadline_seconds.map_or(600, i64::from));
    let stalled = last_progress_time.as_ref().is_some_and(|t| now.duration_since(t.0) > deadline);

    let blocked: Vec<String> = plan.blocked.iter().map(describe).collect();
    let conditions = Conditions { previous: &previous.conditions, generation, now };
    let condition = |type_: &str, ok: bool, reason: &str, message: String| conditions.set(type_, ok, reason, message);
    let ready_replicas = count(&|p| p.ready);
    let rollout_state = plan.rollout.as_ref().map(|r| r.state.as_str());
    let (progressing, reason) = match rollout_state {
        _ if rollout_done => (false, "RolloutComplete"),
        _ if o.spec.update_strategy.paused => (false, "Paused"),
        Some(rollout::FAILED) => (false, "BatchDeadlineExceeded"),
        Some(rollout::ROLLED_BACK) => (false, "RolledBack"),
        Some(rollout::PAUSED) => (false, "BatchPaused"),
        _ if stalled => (false, PROGRESS_DEADLINE_EXCEEDED),
        _ => (true, "RollingOut"),
    };
    let mut progress_message = format!(
        "{updated_replicas} of {expected_updated_replicas} pods to update are at revision {}",
        o.update_revision
    );
    if let Some(message) = plan.rollout.as_ref().and_then(|r| r.message.as_ref()) {
        progress_message = format!("{progress_message}; {message}");
    } else if reason == PROGRESS_DEADLINE_EXCEEDED {
        progress_message = format!("{progress_message}; no progress for over {}s", deadline.as_secs());
    }
    let conditions = vec![
        condition(
            "Available",
            ready_replicas >= o.spec.replicas,
            if ready_replicas >= o.spec.replicas { "AllReplicasReady" } else { "ReplicasNotReady" },
            format!("{ready_replicas} of {} pods are Ready", o.spec.replicas),
        ),
        condition("Progressing", progressing, reason, progress_message),
        condition("Paused", o.spec.update_strategy.paused, "UpdateStrategyPaused", String::new()),
        condition(
            "FailedCreate",
            !failed_creates.is_empty(),
            if failed_creates.is_empty() { "NoFailure" } else { "FailedCreate" },
            summary(failed_creates),
        ),
        condition(
            "FailedUpdate",
            !blocked.is_empty(),
            if blocked.is_empty() { "NoFailure" } else { "UpdateBlocked" },
            summary(&blocked),
        ),
    ];
    InplaceSetStatus {
        observed_generation: generation,
        replicas,
        ready_replicas,
        available_replicas,
        updated_replicas,
        updated_ready_replicas: count(&|p| updated(p) && p.serving()),
        expected_updated_replicas,
        current_revision,
        update_revision: Some(o.update_revision.clone()),
        collision_count: previous.collision_count,
        label_selector: Some(berth_api::selector::to_kubectl(&o.spec.selector)),
        last_progress_time,
        rollout: plan.rollout.clone(),
        retries: plan.retries.clone(),
        conditions,
    }
}

/// The Progressing condition's reason when a rollout stalls.
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// Lines shown in a condition message or Event before the rest is counted.
const SHOWN: usize = 5;

/// `lines` joined with "; ", the first few only, then how many more: a
/// thousand blocked pods make a readable condition, not a megabyte.
pub fn summary(lines: &[String]) -> String {
    let mut text = lines.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
    if lines.len() > SHOWN {
        text.push_str(&format!("; and {} more", lines.len() - SHOWN));
    }
    text
}

/// "created pod web-3", or "created 40 pods: web-0, web-1, … (and 35 more)".
pub fn pods_note(verb: &str, pods: &[String]) -> String {
    match pods {
        [one] => format!("{verb} pod {one}"),
        _ => {
            let shown = pods.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
            let more = if pods.len() > SHOWN { format!(" and {} more", pods.len() - SHOWN) } else { String::new() };
            format!("{verb} {} pods: {shown}{more}", pods.len())
        }
    }
}

/// One line per blocked item, for the condition message and Events.
pub fn describe(b: &Blocked) -> String {
    match b {
        Blocked::NotInPlace { name, reasons } => {
            format!("{name} cannot be updated in place under InPlaceOnly: {}", reasons.join(", "))
        }
        Blocked::Overdue { name, waiting } => format!(
            "{name}: in-place update not complete after its deadline: {}",
            waiting.iter().map(|(c, why)| format!("{c} {why}")).collect::<Vec<_>>().join(", ")
        ),
        Blocked::RetriesExhausted { name, attempts } => {
            format!("{name} is still unschedulable or Failed after {attempts} recreations on other nodes")
        }
        Blocked::InvalidSpec(message) => message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    use berth_api::InplaceSetSpec;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    use super::*;
    use crate::{PodView, observed::test_pod as pod};

    fn observed(pods: Vec<PodView>) -> Observed {
        let spec: InplaceSetSpec = serde_json::from_value(json!({
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
            "template": {"metadata": {"labels": {"app": "web"}}}
        }))
        .unwrap();
        Observed {
            name: "web".into(),
            spec,
            pods,
            update_revision: "r2".into(),
            current_revision: Some("r1".into()),
            templates: BTreeMap::new(),
            claims: vec![],
            previous: InplaceSetStatus::default(),
            now: Timestamp::UNIX_EPOCH,
        }
    }

    fn find<'a>(s: &'a InplaceSetStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn counts_pods_by_readiness_and_revision() {
        let o = observed(vec![pod(0, "r1", true), pod(1, "r2", true), pod(2, "r2", false)]);
        let s = status(&o, &Plan::default(), Some(4), &[]);
        assert_eq!((s.replicas, s.ready_replicas, s.updated_replicas, s.updated_ready_replicas), (3, 2, 2, 1));
        assert_eq!(s.current_revision.as_deref(), Some("r1"));
        assert_eq!(s.update_revision.as_deref(), Some("r2"));
        assert_eq!(s.expected_updated_replicas, 3, "no partition");
        assert_eq!(s.label_selector.as_deref(), Some("app=web,tier in (a,b)"));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(find(&s, "Progressing").status, "True");
        assert_eq!(find(&s, "Available").message, "2 of 3 pods are Ready");
    }

    #[test]
    fn a_complete_rollout_makes_the_update_revision_current() {
        let o = observed(vec![pod(0, "r2", true), pod(1, "r2", true), pod(2, "r2", true)]);
        let s = status(&o, &Plan::default(), None, &[]);
        assert_eq!(s.current_revision.as_deref(), Some("r2"));
        assert_eq!(find(&s, "Progressing").reason, "RolloutComplete");
        assert_eq!(find(&s, "Available").status, "True");
    }

    #[test]
    fn blocked_updates_surface_in_the_failed_update_condition() {
        let o = observed(vec![pod(0, "r1", true)]);
        let plan = Plan {
            actions: vec![],
            blocked: vec![Blocked::NotInPlace {
                name: "web-0".into(),
                reasons: vec!["spec.hostNetwork changed".into()],
            }],
            ..Plan::default()
        };
        let s = status(&o, &plan, None, &[]);
        let c = find(&s, "FailedUpdate");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "UpdateBlocked"));
        assert_eq!(c.message, "web-0 cannot be updated in place under InPlaceOnly: spec.hostNetwork changed");
    }

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time() {
        let mut o = observed(vec![pod(0, "r1", true)]);
        o.now = "2026-11-22T10:00:00Z".parse().unwrap();
        let first = status(&o, &Plan::default(), None, &[]);
        let mut previous = first.clone();
        for c in &mut previous.conditions {
            c.last_transition_time = Timestamp::UNIX_EPOCH.into();
        }
        o.previous = previous;
        let second = status(&o, &Plan::default(), None, &[]);
        assert_eq!(find(&second, "Available").last_transition_time, Timestamp::UNIX_EPOCH.into());
    }

    #[test]
    fn a_rollout_without_progress_past_its_deadline_is_reported() {
        let mut o = observed(vec![pod(0, "r1", true), pod(1, "r2", true), pod(2, "r2", false)]);
        o.spec.progress_deadline_seconds = Some(60);
        o.now = "2026-11-22T10:00:00Z".parse().unwrap();
        let first = status(&o, &Plan::default(), None, &[]);
        assert_eq!(first.last_progress_time, Some(o.now.into()), "the first pass counts as progress");
        o.previous = first;
        o.now = "2026-11-22T10:00:59Z".parse().unwrap();
        let within = status(&o, &Plan::default(), None, &[]);
        assert_eq!(find(&within, "Progressing").reason, "RollingOut");
        o.previous = within;
        o.now = "2026-11-22T10:01:01Z".parse().unwrap();
        let late = status(&o, &Plan::default(), None, &[]);
        let c = find(&late, "Progressing");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", PROGRESS_DEADLINE_EXCEEDED));
        assert!(c.message.ends_with("no progress for over 60s"), "{}", c.message);
        // One more pod available is progress: the clock restarts.
        o.previous = late;
        o.pods[2].ready = true;
        let moving = status(&o, &Plan::default(), None, &[]);
        assert_eq!(find(&moving, "Progressing").reason, "RollingOut");
        assert_eq!(moving.last_progress_time, Some(o.now.into()));
    }

    #[test]
    fn a_partition_counts_as_complete_once_the_pods_above_it_are_updated() {
        let o = observed(vec![pod(0, "r1", true), pod(1, "r2", true), pod(2, "r2", true)]);
        let s = status(&o, &Plan { partition: 1, ..Plan::default() }, None, &[]);
        assert_eq!(s.expected_updated_replicas, 2);
        assert_eq!(find(&s, "Progressing").reason, "RolloutComplete");
        assert_eq!(s.current_revision.as_deref(), Some("r1"), "pods below the partition stay current");
    }

    #[test]
    fn failed_creates_surface_in_their_condition() {
        let o = observed(vec![]);
        let s = status(&o, &Plan::default(), None, &["web-0: pods \"web-0\" is forbidden: exceeded quota".into()]);
        let c = find(&s, "FailedCreate");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "FailedCreate"));
        assert!(c.message.contains("exceeded quota"));
        assert_eq!(find(&status(&o, &Plan::default(), None, &[]), "FailedCreate").status, "False");
    }

    #[test]
    fn long_lists_are_summarised() {
        let lines: Vec<String> = (0..8).map(|i| format!("web-{i}: quota")).collect();
        assert_eq!(summary(&lines[..2]), "web-0: quota; web-1: quota");
        assert_eq!(summary(&lines), "web-0: quota; web-1: quota; web-2: quota; web-3: quota; web-4: quota; and 3 more");
        let pods: Vec<String> = (0..7).map(|i| format!("web-{i}")).collect();
        assert_eq!(pods_note("created", &pods[..1]), "created pod web-0");
        assert_eq!(pods_note("created", &pods[..2]), "created 2 pods: web-0, web-1");
        assert_eq!(pods_note("created", &pods), "created 7 pods: web-0, web-1, web-2, web-3, web-4 and 2 more");
    }
}
