//! InplaceSet state cross-checks: the pods a set owns against its spec and
//! status.
//!
//! A set is *settled* when its controller has observed its latest spec
//! (`status.observedGeneration == metadata.generation`) and reports no rollout
//! or scale in progress (its Progressing condition is not True: complete,
//! paused, or stalled past its deadline). A settled set must run exactly
//! `spec.replicas` live pods (owned through a controller reference, not
//! terminating), all Running. While Progressing a recreate update or a surge
//! legitimately changes the count, so only the ordinals are checked then: two
//! live pods never share one, in any state. A controller that never observes
//! a spec change is a warning (it may just be busy).

use std::collections::BTreeMap;

use berth_api::{InplaceSet, keys};
use k8s_openapi::api::core::v1::Pod;

use crate::{Finding, Kind, ObjectRef};

pub fn check(sets: &[InplaceSet], pods: &[Pod]) -> Vec<Finding> {
    let mut owned: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        for o in pod.metadata.owner_references.iter().flatten().filter(|o| o.controller == Some(true)) {
            owned.entry(o.uid.as_str()).or_default().push(pod);
        }
    }
    let mut findings = Vec::new();
    for set in sets.iter().filter(|s| s.metadata.deletion_timestamp.is_none()) {
        let ns = set.metadata.namespace.as_deref().unwrap_or_default();
        let name = set.metadata.name.as_deref().unwrap_or_default();
        let me = ObjectRef::namespaced("InplaceSet", ns, name);
        let live = set.metadata.uid.as_deref().and_then(|uid| owned.get(uid)).cloned().unwrap_or_default();

        let mut by_ordinal: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for p in &live {
            if let Some(o) = p.metadata.labels.as_ref().and_then(|l| l.get(keys::POD_INDEX)) {
                by_ordinal.entry(o).or_default().push(p.metadata.name.as_deref().unwrap_or_default());
            }
        }
        for (ordinal, names) in by_ordinal.iter().filter(|(_, n)| n.len() > 1) {
            findings.push(Finding::violation(
                Kind::DuplicateOrdinal,
                me.clone(),
                format!("{} live pods carry ordinal {ordinal}: {}", names.len(), names.join(", ")),
            ));
        }

        let status = set.status.clone().unwrap_or_default();
        let (generation, observed) = (set.metadata.generation, status.observed_generation);
        if observed != generation {
            findings.push(Finding::warning(
                Kind::InplaceSetNotObserved,
                me,
                format!(
                    "the controller has not observed generation {} (status is of generation {}); is berth-manager running?",
                    generation.unwrap_or(0),
                    observed.map_or("none".to_string(), |g| g.to_string())
                ),
            ));
            continue;
        }
        let progressing = status.conditions.iter().any(|c| c.type_ == "Progressing" && c.status == "True");
        if progressing {
            continue;
        }
        let want = set.spec.replicas;
        let running =
            live.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).count();
        if live.len() as i32 != want || running as i32 != want {
            let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
            for p in &live {
                *phases.entry(p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("no phase")).or_default() +=
                    1;
            }
            let phases: Vec<_> = phases.iter().map(|(k, v)| format!("{v} {k}")).collect();
            findings.push(Finding::violation(
                Kind::InplaceSetReplicas,
                me,
                format!(
                    "spec.replicas {want}, but {} live pods ({}), {running} of them Running; the set is not rolling \
                     out (status: {} replicas, {} ready, generation {} observed)",
                    live.len(),
                    if phases.is_empty() { "none".to_string() } else { phases.join(", ") },
                    status.replicas,
                    status.ready_replicas,
                    generation.unwrap_or(0),
                ),
            ));
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{Severity, testing::*};

    fn set(replicas: i32, generation: i64, observed: i64, progressing: bool) -> InplaceSet {
        serde_json::from_value(json!({
            "apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet",
            "metadata": {"namespace": "a", "name": "web", "uid": "set-uid", "generation": generation},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}}},
            "status": {"observedGeneration": observed, "replicas": replicas, "readyReplicas": replicas,
                       "conditions": [{"type": "Progressing", "status": if progressing {"True"} else {"False"},
                         "reason": "RolloutComplete", "message": "", "lastTransitionTime": "2026-11-23T00:00:00Z"}]}
        }))
        .unwrap()
    }

    fn member(ordinal: u32, phase: &str) -> Pod {
        with(
            pod("a", &format!("web-{ordinal}"), "n0", &[("app", "web")], "1", "1Gi"),
            json!({"metadata": {
                "labels": {keys::POD_INDEX: ordinal.to_string()},
                "ownerReferences": [{"apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet", "name": "web",
                                     "uid": "set-uid", "controller": true}]},
                "status": {"phase": phase}}),
        )
    }

    #[test]
    fn a_settled_set_with_all_its_pods_is_clean() {
        let pods = [member(0, "Running"), member(1, "Running"), member(2, "Running")];
        assert_eq!(check(&[set(3, 2, 2, false)], &pods), vec![]);
    }

    #[test]
    fn a_settled_set_short_of_pods_is_a_violation() {
        let pods =
            [member(0, "Running"), member(2, "Running"), pod("a", "stranger", "n0", &[("app", "web")], "1", "1")];
        let f = check(&[set(3, 2, 2, false)], &pods);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].severity, f[0].kind), (Severity::Violation, Kind::InplaceSetReplicas));
        assert_eq!(
            f[0].message,
            "spec.replicas 3, but 2 live pods (2 Running), 2 of them Running; the set is not rolling out (status: \
             3 replicas, 3 ready, generation 2 observed)"
        );
        // A terminating pod is on its way out; a Pending one does not run.
        let leaving = with(member(1, "Running"), json!({"metadata": {"deletionTimestamp": "2026-11-23T00:00:00Z"}}));
        assert_eq!(check(&[set(3, 2, 2, false)], &[member(0, "Running"), leaving, member(2, "Running")]).len(), 1);
        let f = check(&[set(3, 2, 2, false)], &[member(0, "Running"), member(1, "Pending"), member(2, "Running")]);
        assert!(f[0].message.contains("3 live pods (1 Pending, 2 Running), 2 of them Running"), "{f:?}");
    }

    #[test]
    fn a_set_in_progress_or_not_yet_observed_is_not_counted() {
        let pods = [member(0, "Running")];
        assert_eq!(check(&[set(3, 2, 2, true)], &pods), vec![], "rolling out or scaling");
        let f = check(&[set(3, 3, 2, false)], &pods);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].severity, f[0].kind), (Severity::Warning, Kind::InplaceSetNotObserved));
        assert!(f[0].message.starts_with("the controller has not observed generation 3 (status is of generation 2)"));
    }

    #[test]
    fn two_live_pods_for_one_ordinal_are_a_violation_even_mid_rollout() {
        let mut twin = member(1, "Running");
        twin.metadata.name = Some("web-1-twin".into());
        let f = check(&[set(2, 2, 2, true)], &[member(0, "Running"), member(1, "Running"), twin]);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, Kind::DuplicateOrdinal);
        assert_eq!(f[0].message, "2 live pods carry ordinal 1: web-1, web-1-twin");
    }
}
