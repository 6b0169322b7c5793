//! The SidecarSet status a planning pass reports. Pure.

use berth_api::{SidecarSetStatus, sidecarset::SidecarSetUpdateStrategyType};
use berth_inplace::{conditions::Conditions, progress::Progress};

use crate::plan::{Blocked, Observed, Plan};

/// Pods named in a condition message at most; the count says the rest.
const NAMED: usize = 10;

/// Status after observing `o` and planning `plan`; conditions keep their last
/// transition time from `previous` while their status is unchanged.
pub fn status(
    o: &Observed,
    plan: &Plan,
    generation: Option<i64>,
    previous: Option<&SidecarSetStatus>,
    collision_count: Option<i32>,
) -> SidecarSetStatus {
    let pods: Vec<_> = o.pods.iter().filter(|p| !p.terminating).collect();
    let updated = |p: &&&crate::plan::SidecarPod| p.records[&o.name].revision == o.latest.revision;
    let count = |f: &dyn Fn(&&&crate::plan::SidecarPod) -> bool| pods.iter().filter(|p| f(p)).count() as i32;
    let matched = pods.len() as i32;
    let updated_pods = count(&updated);
    let not_in_place: Vec<String> = plan
        .blocked
        .iter()
        .filter_map(|b| match b {
            Blocked::NotInPlace { namespace, name } => Some(format!("{namespace}/{name}")),
            _ => None,
        })
        .collect();
    let others: Vec<String> = plan.blocked.iter().filter_map(describe_other).collect();
    let strategy = &o.spec.update_strategy;

    let now = o.now;
    let previous_conditions = previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let builder = Conditions { previous: previous_conditions, generation, now };
    let condition = |type_: &str, ok: bool, reason: &str, message: String| builder.set(type_, ok, reason, message);
    let all_updated = updated_pods == matched;
    let updated_reason = match () {
        _ if all_updated => "AllPodsUpdated",
        _ if strategy.type_ == SidecarSetUpdateStrategyType::NotUpdate => "NotUpdate",
        _ if strategy.paused => "Paused",
        _ if !others.is_empty() => "UpgradeStuck",
        _ => "Upgrading",
    };
    let mut updated_message = format!("{updated_pods} of {matched} pods run revision {}", o.latest.revision);
    if !others.is_empty() {
        updated_message = format!("{updated_message}; {}", others.join("; "));
    }
    let conditions = vec![
        condition("Updated", all_updated, updated_reason, updated_message),
        condition("Paused", strategy.paused, "UpdateStrategyPaused", String::new()),
        condition(
            "NotInPlaceUpdatable",
            !not_in_place.is_empty(),
            if not_in_place.is_empty() { "AllInPlace" } else { "NeedRecreate" },
            name_some(&not_in_place, &o.latest.revision),
        ),
    ];
    SidecarSetStatus {
        observed_generation: generation,
        matched_pods: matched,
        updated_pods,
        ready_pods: count(&|p| p.ready),
        updated_ready_pods: count(&|p| updated(p) && p.ready && matches!(p.progress, Progress::Idle)),
        latest_revision: Some(o.latest.revision.clone()),
        collision_count,
        not_updatable_pods: not_in_place.len() as i32,
        conditions,
    }
}

/// The message of NotInPlaceUpdatable: how many pods, the first few by name.
fn name_some(pods: &[String], revision: &str) -> String {
    if pods.is_empty() {
        return String::new();
    }
    let mut names = pods.iter().take(NAMED).cloned().collect::<Vec<_>>().join(", ");
    if pods.len() > NAMED {
        names = format!("{names} and {} more", pods.len() - NAMED);
    }
    format!(
        "{} pods get revision {revision} only when recreated: it changes more than sidecar images ({names})",
        pods.len()
    )
}

/// One line for an Overdue or InvalidSpec item.
fn describe_other(b: &Blocked) -> Option<String> {
    match b {
        Blocked::Overdue { namespace, name, waiting } => Some(format!(
            "{namespace}/{name}: sidecar upgrade not complete after its deadline: {}",
            waiting.iter().map(|(c, why)| format!("{c} {why}")).collect::<Vec<_>>().join(", ")
        )),
        Blocked::InvalidSpec(message) => Some(message.clone()),
        Blocked::NotInPlace { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    use berth_api::SidecarSetSpec;
    use serde_json::json;

    use super::*;
    use crate::{plan::SidecarPod, revision::revision};

    fn spec(image: &str) -> SidecarSetSpec {
        serde_json::from_value(json!({"selector": {"matchLabels": {"app": "web"}},
            "containers": [{"name": "log", "image": image}]}))
        .unwrap()
    }

    fn pod(i: usize, at: &SidecarSetSpec) -> SidecarPod {
        SidecarPod {
            namespace: "prod".into(),
            name: format!("web-{i}"),
            version: Some("1".into()),
            labels: BTreeMap::new(),
            records: BTreeMap::from([("logs".into(), revision("logs", at, 0))]),
            images: BTreeMap::new(),
            ready: true,
            gate_open: true,
            has_gate: true,
            terminating: false,
            progress: Progress::Idle,
            in_inplaceset: false,
        }
    }

    fn find<'a>(s: &'a SidecarSetStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn counts_and_conditions_follow_the_pods() {
        let (old, new) = (spec("log:1"), spec("log:2"));
        let mut pods: Vec<_> = (0..3).map(|i| pod(i, &old)).collect();
        pods[0] = pod(0, &new);
        pods[1].ready = false;
        let o = Observed {
            name: "logs".into(),
            latest: revision("logs", &new, 0),
            spec: new,
            pods,
            now: "2026-11-22T10:00:00Z".parse().unwrap(),
        };
        let s = status(&o, &Plan::default(), Some(2), None, None);
        assert_eq!((s.matched_pods, s.updated_pods, s.ready_pods, s.updated_ready_pods), (3, 1, 2, 1));
        assert_eq!(s.latest_revision.as_deref(), Some(o.latest.revision.as_str()));
        let c = find(&s, "Updated");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Upgrading"));
        assert_eq!(find(&s, "NotInPlaceUpdatable").status, "False");
    }

    #[test]
    fn pods_needing_recreation_are_counted_and_named() {
        let new = spec("log:2");
        let o = Observed {
            name: "logs".into(),
            latest: revision("logs", &new, 0),
            spec: new,
            pods: vec![],
            now: "2026-11-22T10:00:00Z".parse().unwrap(),
        };
        let blocked =
            (0..12).map(|i| Blocked::NotInPlace { namespace: "prod".into(), name: format!("web-{i}") }).collect();
        let s = status(&o, &Plan { actions: vec![], blocked }, None, None, None);
        assert_eq!(s.not_updatable_pods, 12);
        let c = find(&s, "NotInPlaceUpdatable");
        assert_eq!(c.status, "True");
        assert!(c.message.starts_with("12 pods get revision logs-"), "{}", c.message);
        assert!(c.message.ends_with("prod/web-9 and 2 more)"), "{}", c.message);
    }
}
