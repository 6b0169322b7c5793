//! The InplaceSet status a planning pass reports. Pure.

use berth_api::InplaceSetStatus;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Condition, jiff::Timestamp};

use crate::{Blocked, Observed, plan::Plan};

/// Status after observing `o` and planning `plan`. Conditions keep their
/// last transition time from `previous` while their status is unchanged.
pub fn status(
    o: &Observed,
    plan: &Plan,
    generation: Option<i64>,
    previous: Option<&InplaceSetStatus>,
) -> InplaceSetStatus {
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

    let blocked: Vec<String> = plan.blocked.iter().map(describe).collect();
    let now = Timestamp::now();
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let old = previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_));
        let status = if ok { "True" } else { "False" };
        let since = old.filter(|c| c.status == status).map(|c| c.last_transition_time.clone());
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: since.unwrap_or_else(|| now.into()),
        }
    };
    let ready_replicas = count(&|p| p.ready);
    let conditions = vec![
        condition(
            "Available",
            ready_replicas >= o.spec.replicas,
            if ready_replicas >= o.spec.replicas { "AllReplicasReady" } else { "ReplicasNotReady" },
            format!("{ready_replicas} of {} pods are Ready", o.spec.replicas),
        ),
        condition(
            "Progressing",
            !all_updated && !o.spec.update_strategy.paused,
            if all_updated {
                "RolloutComplete"
            } else if o.spec.update_strategy.paused {
                "Paused"
            } else {
                "RollingOut"
            },
            format!("{updated_replicas} of {} pods at revision {}", o.spec.replicas, o.update_revision),
        ),
        condition("Paused", o.spec.update_strategy.paused, "UpdateStrategyPaused", String::new()),
        condition(
            "FailedUpdate",
            !blocked.is_empty(),
            if blocked.is_empty() { "NoFailure" } else { "UpdateBlocked" },
            blocked.join("; "),
        ),
    ];
    InplaceSetStatus {
        observed_generation: generation,
        replicas,
        ready_replicas,
        available_replicas: count(&|p| o.available(p)),
        updated_replicas,
        updated_ready_replicas: count(&|p| updated(p) && p.serving()),
        expected_updated_replicas: o.spec.replicas
            - crate::scaled::resolve(o.spec.update_strategy.partition.as_ref(), o.spec.replicas, 0).unwrap_or(0),
        current_revision,
        update_revision: Some(o.update_revision.clone()),
        collision_count: previous.and_then(|s| s.collision_count),
        label_selector: Some(selector_string(o)),
        conditions,
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
        Blocked::InvalidSpec(message) => message.clone(),
    }
}

/// The selector as `kubectl` writes it, for the scale subresource.
fn selector_string(o: &Observed) -> String {
    let mut parts: Vec<String> =
        o.spec.selector.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    for e in o.spec.selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use berth_api::InplaceSetSpec;
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
            now: Timestamp::UNIX_EPOCH,
        }
    }

    fn find<'a>(s: &'a InplaceSetStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn counts_pods_by_readiness_and_revision() {
        let o = observed(vec![pod(0, "r1", true), pod(1, "r2", true), pod(2, "r2", false)]);
        let s = status(&o, &Plan::default(), Some(4), None);
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
        let s = status(&o, &Plan::default(), None, None);
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
        };
        let s = status(&o, &plan, None, None);
        let c = find(&s, "FailedUpdate");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "UpdateBlocked"));
        assert_eq!(c.message, "web-0 cannot be updated in place under InPlaceOnly: spec.hostNetwork changed");
    }

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time() {
        let o = observed(vec![pod(0, "r1", true)]);
        let first = status(&o, &Plan::default(), None, None);
        let mut previous = first.clone();
        for c in &mut previous.conditions {
            c.last_transition_time = Timestamp::UNIX_EPOCH.into();
        }
        let second = status(&o, &Plan::default(), None, Some(&previous));
        assert_eq!(find(&second, "Available").last_transition_time, Timestamp::UNIX_EPOCH.into());
    }
}
