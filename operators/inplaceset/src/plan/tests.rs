use std::collections::BTreeMap;

use berth_api::{InplaceSetSpec, InplaceSetStatus, lifecycle::LifecycleState};
use berth_inplace::progress::Progress;
use k8s_openapi::{api::core::v1::PodTemplateSpec, jiff::Timestamp};
use serde_json::{Value, json};

use super::*;
use crate::{Observed, PodView};

fn template(image: &str, cpu: &str) -> PodTemplateSpec {
    serde_json::from_value(json!({
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": image, "resources": {"limits": {"cpu": cpu}}}]}
    }))
    .unwrap()
}

fn spec(replicas: i32, extra: Value) -> InplaceSetSpec {
    let mut v = json!({
        "replicas": replicas,
        "selector": {"matchLabels": {"app": "web"}},
        "template": serde_json::to_value(template("web:2", "1")).unwrap(),
    });
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(v).unwrap()
}

use crate::observed::test_pod as pod;

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// A template whose change from the others only a recreate can carry.
fn command_template() -> PodTemplateSpec {
    let mut t = template("web:1", "1");
    t.spec.as_mut().unwrap().containers[0].command = Some(vec!["serve".into()]);
    t
}

/// Revision r1 runs web:1; r2 (the update revision) runs web:2; r3 changes the
/// command (recreate only); r4 runs web:2 with twice the cpu (a resize first).
fn observed(spec: InplaceSetSpec, pods: Vec<PodView>) -> Observed {
    Observed {
        name: "web".into(),
        spec,
        pods,
        update_revision: "r2".into(),
        current_revision: Some("r1".into()),
        templates: BTreeMap::from([
            ("r1".into(), template("web:1", "1")),
            ("r2".into(), template("web:2", "1")),
            ("r3".into(), command_template()),
            ("r4".into(), template("web:2", "2")),
        ]),
        claims: vec![],
        previous: InplaceSetStatus::default(),
        now: at("2026-11-22T10:00:00Z"),
    }
}

fn ready_pods(n: i32, revision: &str) -> Vec<PodView> {
    (0..n).map(|i| pod(i, revision, true)).collect()
}

/// Actions as short strings, for readable assertions.
fn summary(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .map(|a| match a {
            Action::Create { ordinal, revision, avoid_nodes } if avoid_nodes.is_empty() => {
                format!("create {ordinal}@{revision}")
            }
            Action::Create { ordinal, revision, avoid_nodes } => {
                format!("create {ordinal}@{revision} avoiding {}", avoid_nodes.join(","))
            }
            Action::DeleteRequested { name } => format!("delete {name}"),
            Action::ForgetPodToDelete { name } => format!("forget {name}"),
            Action::Retry { name, node, attempt } => {
                format!("retry {name} #{attempt}{}", node.as_ref().map(|n| format!(" off {n}")).unwrap_or_default())
            }
            Action::CreateClaim { name, .. } => format!("create-claim {name}"),
            Action::DeleteClaim { name } => format!("delete-claim {name}"),
            Action::SetClaimOwner { name, owned } => format!("{} {name}", if *owned { "own" } else { "disown" }),
            Action::ScaleDown { name } => format!("scale-down {name}"),
            Action::Recreate { name, .. } => format!("recreate {name}"),
            Action::StartInPlace { name, revision, .. } => format!("in-place {name}@{revision}"),
            Action::StartResize { name, revision, .. } => format!("resize {name}@{revision}"),
            Action::FinishInPlace { name } => format!("finish {name}"),
            Action::OpenGate { name, .. } => format!("open-gate {name}"),
            Action::CloseGate { name } => format!("close-gate {name}"),
            Action::Transition { name, to, hook } => {
                format!("{name} -> {to}{}", if hook.is_some() { " (hooked)" } else { "" })
            }
        })
        .collect()
}

fn parallel() -> Value {
    json!({"podManagementPolicy": "Parallel"})
}

#[test]
fn parallel_scale_up_creates_every_missing_ordinal() {
    let p = plan(&observed(spec(3, parallel()), vec![pod(1, "r2", true)]));
    assert_eq!(summary(&p), ["create 0@r2", "create 2@r2"]);
}

#[test]
fn ordered_scale_up_creates_one_pod_after_the_lower_ones_are_ready() {
    assert_eq!(summary(&plan(&observed(spec(3, json!({})), vec![]))), ["create 0@r2"]);
    assert_eq!(summary(&plan(&observed(spec(3, json!({})), vec![pod(0, "r2", true)]))), ["create 1@r2"]);
    assert!(summary(&plan(&observed(spec(3, json!({})), vec![pod(0, "r2", false)]))).is_empty());
}

#[test]
fn pods_below_the_partition_are_created_at_the_current_revision() {
    let p = plan(&observed(
        spec(3, json!({"podManagementPolicy": "Parallel", "updateStrategy": {"partition": 2}})),
        vec![],
    ));
    assert_eq!(summary(&p), ["create 0@r1", "create 1@r1", "create 2@r2"]);
}

#[test]
fn scale_down_removes_the_highest_ordinals_first() {
    assert_eq!(
        summary(&plan(&observed(spec(1, parallel()), ready_pods(3, "r2")))),
        ["scale-down web-2", "scale-down web-1"]
    );
    assert_eq!(summary(&plan(&observed(spec(1, json!({})), ready_pods(3, "r2")))), ["scale-down web-2"]);
    let mut pods = ready_pods(3, "r2");
    pods[2].terminating = true;
    assert!(summary(&plan(&observed(spec(1, json!({})), pods))).is_empty(), "ordered waits for the terminating pod");
}

#[test]
fn an_image_change_rolls_in_place_from_the_highest_ordinal_within_max_unavailable() {
    let p = plan(&observed(spec(4, json!({})), ready_pods(4, "r1")));
    assert_eq!(summary(&p), ["in-place web-3@r2"]);
    let Action::StartInPlace { changes, .. } = &p.actions[0] else { unreachable!() };
    assert_eq!(changes.images, BTreeMap::from([("app".to_string(), "web:2".to_string())]));

    let p = plan(&observed(spec(4, json!({"updateStrategy": {"maxUnavailable": "50%"}})), ready_pods(4, "r1")));
    assert_eq!(summary(&p), ["in-place web-3@r2", "in-place web-2@r2"]);
}

#[test]
fn pods_mid_update_count_against_max_unavailable() {
    let mut pods = ready_pods(4, "r1");
    pods[3].revision = Some("r2".into());
    pods[3].progress = Progress::InProgress {
        revision: "r2".into(),
        started: at("2026-11-22T09:59:00Z"),
        waiting: BTreeMap::from([("app".into(), "restarting".into())]),
    };
    let p = plan(&observed(spec(4, json!({"updateStrategy": {"maxUnavailable": 2}})), pods.clone()));
    assert_eq!(summary(&p), ["in-place web-2@r2"], "one slot is taken by web-3");
    let p = plan(&observed(spec(4, json!({})), pods));
    assert!(summary(&p).is_empty(), "maxUnavailable 1 is used up");
}

#[test]
fn a_pod_with_its_gate_closed_counts_against_max_unavailable_while_the_kubelet_still_says_ready() {
    // The cache holds the gate's closing (the first write of an update) but
    // not yet the update's start, and the kubelet has not synced the gate.
    let mut pods = ready_pods(4, "r1");
    pods[3].gate_open = false;
    let p = plan(&observed(spec(4, json!({})), pods));
    let actions = summary(&p);
    assert!(!actions.iter().any(|a| a.starts_with("in-place web-2")), "no budget left for web-2: {actions:?}");
    assert!(actions.iter().all(|a| a.contains("web-3")), "only web-3 is acted on: {actions:?}");
}

#[test]
fn unavailable_pods_are_updated_without_spending_the_budget() {
    let mut pods = ready_pods(4, "r1");
    pods[1].ready = false;
    let p = plan(&observed(spec(4, json!({})), pods));
    assert_eq!(summary(&p), ["in-place web-1@r2"], "web-1 is already down; healthy pods wait");
}

#[test]
fn the_partition_keeps_lower_ordinals_at_the_old_revision() {
    let big_budget = |partition: Value| json!({"updateStrategy": {"partition": partition, "maxUnavailable": 10}});
    let p = plan(&observed(spec(4, big_budget(json!(2))), ready_pods(4, "r1")));
    assert_eq!(summary(&p), ["in-place web-3@r2", "in-place web-2@r2"]);
    let p = plan(&observed(spec(4, big_budget(json!("75%"))), ready_pods(4, "r1")));
    assert_eq!(summary(&p), ["in-place web-3@r2"]);
    let p = plan(&observed(spec(4, big_budget(json!(4))), ready_pods(4, "r1")));
    assert!(summary(&p).is_empty());
}

#[test]
fn a_change_that_cannot_go_in_place_recreates_or_blocks_per_strategy() {
    let pods = vec![pod(0, "r3", true)];
    let p = plan(&observed(spec(1, json!({})), pods.clone()));
    assert_eq!(
        p.actions,
        [Action::Recreate { name: "web-0".into(), reasons: vec!["spec.containers[app].command changed".into()] }]
    );

    let p = plan(&observed(spec(1, json!({"updateStrategy": {"type": "InPlaceOnly"}})), pods));
    assert!(p.actions.is_empty());
    assert_eq!(
        p.blocked,
        [Blocked::NotInPlace { name: "web-0".into(), reasons: vec!["spec.containers[app].command changed".into()] }]
    );
}

#[test]
fn a_cpu_change_resizes_first_then_changes_images_in_place() {
    let mut o = observed(spec(2, json!({})), ready_pods(2, "r1"));
    o.update_revision = "r4".into();
    let p = plan(&o);
    assert_eq!(summary(&p), ["resize web-1@r4"], "one at a time: a resizing pod counts as unavailable");
    let Action::StartResize { request, .. } = &p.actions[0] else { unreachable!() };
    assert_eq!(serde_json::to_value(request).unwrap(), json!({"containers": {"app": {"limits": {"cpu": "2"}}}}));

    // While the request is in flight nothing else moves (maxUnavailable 1).
    let resizing = Progress::InProgress {
        revision: "r4".into(),
        started: at("2026-11-22T09:59:00Z"),
        waiting: BTreeMap::from([("resize".into(), "Accepted: waiting for the node agent".into())]),
    };
    o.pods[1].progress = resizing;
    assert!(summary(&plan(&o)).is_empty());

    // Applied: the image follows, without the resources, still at no further cost.
    o.pods[1].progress = Progress::Resized { revision: "r4".into() };
    let p = plan(&o);
    assert_eq!(summary(&p), ["in-place web-1@r4"]);
    let Action::StartInPlace { changes, .. } = &p.actions[0] else { unreachable!() };
    assert!(changes.resources.is_empty());
    assert_eq!(changes.images, BTreeMap::from([("app".to_string(), "web:2".to_string())]));
}

#[test]
fn a_refused_resize_recreates_or_blocks_per_strategy_and_a_stale_one_is_dropped() {
    let refused = |revision: &str| Progress::Refused {
        revision: revision.into(),
        reason: "resize Rejected: cpu: 2 requested, 1 free".into(),
    };
    let mut o = observed(spec(1, json!({})), ready_pods(1, "r1"));
    o.update_revision = "r4".into();
    o.pods[0].progress = refused("r4");
    assert_eq!(
        plan(&o).actions,
        [Action::Recreate { name: "web-0".into(), reasons: vec!["resize Rejected: cpu: 2 requested, 1 free".into()] }]
    );

    o.spec = spec(1, json!({"updateStrategy": {"type": "InPlaceOnly"}}));
    o.pods[0].gate_open = false;
    assert_eq!(summary(&plan(&o)), ["open-gate web-0"], "the pod runs its old revision: back into endpoints");
    o.pods[0].gate_open = true;
    let p = plan(&o);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(
        p.blocked,
        [Blocked::NotInPlace {
            name: "web-0".into(),
            reasons: vec!["resize Rejected: cpu: 2 requested, 1 free".into()]
        }]
    );

    // The template moved on: the old phase's record goes, then the pod is planned afresh.
    o.update_revision = "r2".into();
    assert_eq!(summary(&plan(&o)), ["finish web-0"]);
    o.pods[0].progress = Progress::Resized { revision: "r4".into() };
    assert_eq!(summary(&plan(&o)), ["finish web-0"]);
}

#[test]
fn in_place_only_blocking_one_pod_leaves_the_budget_to_the_next() {
    let pods = vec![pod(0, "r1", true), pod(1, "r3", true)];
    let p = plan(&observed(spec(2, json!({"updateStrategy": {"type": "InPlaceOnly"}})), pods));
    assert_eq!(summary(&p), ["in-place web-0@r2"]);
    assert_eq!(p.blocked.len(), 1);
}

#[test]
fn recreate_strategy_recreates_even_in_place_changes() {
    let p = plan(&observed(spec(1, json!({"updateStrategy": {"type": "Recreate"}})), ready_pods(1, "r1")));
    assert_eq!(
        p.actions,
        [Action::Recreate { name: "web-0".into(), reasons: vec!["updateStrategy.type is Recreate".into()] }]
    );
}

#[test]
fn paused_and_on_delete_update_nothing_but_still_scale() {
    for strategy in [json!({"paused": true}), json!({"type": "OnDelete"})] {
        let p = plan(&observed(
            spec(3, json!({"podManagementPolicy": "Parallel", "updateStrategy": strategy})),
            ready_pods(2, "r1"),
        ));
        assert_eq!(summary(&p), ["create 2@r2"], "{strategy}");
    }
}

#[test]
fn finished_updates_complete_and_stuck_ones_are_reported() {
    let mut pods = ready_pods(2, "r2");
    pods[0].progress = Progress::Done { revision: "r2".into() };
    pods[1].progress = Progress::InProgress {
        revision: "r2".into(),
        started: at("2026-11-22T09:50:00Z"),
        waiting: BTreeMap::from([("app".into(), "restarted, not ready yet".into())]),
    };
    let p = plan(&observed(spec(2, json!({})), pods));
    assert_eq!(summary(&p), ["finish web-0"]);
    assert_eq!(
        p.blocked,
        [Blocked::Overdue {
            name: "web-1".into(),
            waiting: BTreeMap::from([("app".into(), "restarted, not ready yet".into())])
        }]
    );
}

#[test]
fn a_malformed_partition_blocks_the_plan_with_the_reason() {
    let p = plan(&observed(spec(2, json!({"updateStrategy": {"partition": "half"}})), ready_pods(2, "r1")));
    assert!(p.actions.is_empty());
    assert_eq!(
        p.blocked,
        [Blocked::InvalidSpec("spec.updateStrategy.partition: \"half\" is not a percentage from 0% to 100%".into())]
    );
}

#[test]
fn pod_view_reads_the_ordinal_from_the_label_or_the_name() {
    let from = |v: Value| PodView::from_pod("web", &serde_json::from_value(v).unwrap());
    let by_label = from(
        json!({"metadata": {"name": "x", "labels": {"apps.kubernetes.io/pod-index": "7", "controller-revision-hash": "r1"}}}),
    );
    assert_eq!(by_label.as_ref().map(|p| (p.ordinal, p.revision.clone())), Ok((7, Some("r1".into()))));
    assert_eq!(from(json!({"metadata": {"name": "web-12"}})).map(|p| p.ordinal), Ok(12));
    let err = from(json!({"metadata": {"name": "other-1"}})).unwrap_err();
    assert_eq!(err, "pod other-1: no ordinal in label apps.kubernetes.io/pod-index or name web-<ordinal>");
}

#[test]
fn a_closed_gate_on_an_idle_pod_is_opened() {
    let mut pods = ready_pods(2, "r2");
    pods[0].gate_open = false;
    pods[0].ready = false;
    pods[1].gate_open = false;
    pods[1].terminating = true;
    pods[0].version = Some("4711".into());
    let planned = plan(&observed(spec(2, json!({})), pods));
    assert_eq!(summary(&planned), ["open-gate web-0"]);
    // The write is guarded by what the plan saw: it lands only on that version of the pod.
    assert_eq!(planned.actions[0], Action::OpenGate { name: "web-0".into(), version: Some("4711".into()) });
}

#[test]
fn pods_ready_for_less_than_min_ready_seconds_are_not_yet_available() {
    let mut pods = ready_pods(3, "r1");
    pods[0].ready_since = Some(at("2026-11-22T09:59:55Z")); // ready 5 s before `now`
    let p = plan(&observed(spec(3, json!({"minReadySeconds": 10})), pods.clone()));
    assert_eq!(summary(&p), ["in-place web-0@r2"], "web-0 counts as unavailable: the budget only covers it");
    let p = plan(&observed(spec(3, json!({"minReadySeconds": 3})), pods));
    assert_eq!(summary(&p), ["in-place web-2@r2"]);
}

#[test]
fn ordinals_start_where_the_spec_says_and_skip_reserved_ones() {
    let p = plan(&observed(spec(3, json!({"podManagementPolicy": "Parallel", "ordinals": {"start": 5}})), vec![]));
    assert_eq!(summary(&p), ["create 5@r2", "create 6@r2", "create 7@r2"]);

    // Reserving a running pod's ordinal removes it and starts the next ordinal.
    let p = plan(&observed(
        spec(3, json!({"podManagementPolicy": "Parallel", "reserveOrdinals": [1]})),
        ready_pods(3, "r2"),
    ));
    assert_eq!(summary(&p), ["scale-down web-1", "create 3@r2"]);
}

#[test]
fn the_partition_counts_positions_among_the_wanted_ordinals() {
    let pods = vec![pod(0, "r1", true), pod(2, "r1", true), pod(3, "r1", true)];
    let extra = json!({"reserveOrdinals": [1], "updateStrategy": {"partition": 1, "maxUnavailable": 3}});
    let p = plan(&observed(spec(3, extra), pods));
    assert_eq!(summary(&p), ["in-place web-3@r2", "in-place web-2@r2"], "web-0 holds the one kept position");
}

fn hooked(hook: &str) -> Value {
    json!({"lifecycle": {hook: {"labels": {"hold": "yes"}, "finalizers": ["ex.com/drain"]}}})
}

fn held(mut p: PodView, state: LifecycleState) -> PodView {
    p.lifecycle = Some(state);
    p.labels.insert("hold".into(), "yes".into());
    p
}

fn in_state(mut p: PodView, state: LifecycleState) -> PodView {
    p.lifecycle = Some(state);
    p
}

#[test]
fn a_pre_update_hook_holds_the_pod_before_the_update_starts() {
    let p = plan(&observed(spec(1, hooked("preUpdate")), ready_pods(1, "r1")));
    assert_eq!(summary(&p), ["web-0 -> PreparingUpdate (hooked)"]);
    let p =
        plan(&observed(spec(1, hooked("preUpdate")), vec![held(pod(0, "r1", true), LifecycleState::PreparingUpdate)]));
    assert!(summary(&p).is_empty(), "held by the label");
    let mut finalizer_only = in_state(pod(0, "r1", true), LifecycleState::PreparingUpdate);
    finalizer_only.finalizers.push("ex.com/drain".into());
    assert!(
        summary(&plan(&observed(spec(1, hooked("preUpdate")), vec![finalizer_only]))).is_empty(),
        "held by the finalizer"
    );
    let p = plan(&observed(
        spec(1, hooked("preUpdate")),
        vec![in_state(pod(0, "r1", true), LifecycleState::PreparingUpdate)],
    ));
    assert_eq!(summary(&p), ["in-place web-0@r2"], "released");
}

#[test]
fn a_pod_held_before_its_update_counts_against_max_unavailable() {
    let mut pods = ready_pods(3, "r1");
    pods[2] = held(pods[2].clone(), LifecycleState::PreparingUpdate);
    let p = plan(&observed(spec(3, hooked("preUpdate")), pods));
    assert!(summary(&p).is_empty(), "web-2 holds the only slot");
}

#[test]
fn a_post_update_hook_holds_the_pod_in_updated() {
    let p = plan(&observed(spec(1, hooked("postUpdate")), vec![held(pod(0, "r2", true), LifecycleState::Updated)]));
    assert!(summary(&p).is_empty());
    let p = plan(&observed(spec(1, hooked("postUpdate")), vec![in_state(pod(0, "r2", true), LifecycleState::Updated)]));
    assert_eq!(summary(&p), ["web-0 -> Normal"]);
    let p = plan(&observed(spec(1, json!({})), vec![in_state(pod(0, "r2", true), LifecycleState::Updated)]));
    assert_eq!(summary(&p), ["web-0 -> Normal"], "no hook: straight on");
}

#[test]
fn a_pre_delete_hook_holds_the_pod_before_scale_down() {
    let p = plan(&observed(spec(1, hooked("preDelete")), ready_pods(2, "r2")));
    assert_eq!(summary(&p), ["web-1 -> PreparingDelete (hooked)"]);
    let pods = vec![pod(0, "r2", true), held(pod(1, "r2", true), LifecycleState::PreparingDelete)];
    assert!(summary(&plan(&observed(spec(1, hooked("preDelete")), pods))).is_empty());
    let pods = vec![pod(0, "r2", true), in_state(pod(1, "r2", true), LifecycleState::PreparingDelete)];
    assert_eq!(summary(&plan(&observed(spec(1, hooked("preDelete")), pods))), ["scale-down web-1"]);
}

#[test]
fn a_pre_normal_hook_keeps_the_gate_closed_until_released() {
    let mut new = held(pod(0, "r2", false), LifecycleState::PreparingNormal);
    new.gate_open = false;
    assert!(summary(&plan(&observed(spec(1, hooked("preNormal")), vec![new.clone()]))).is_empty());
    new.labels.clear();
    assert_eq!(summary(&plan(&observed(spec(1, hooked("preNormal")), vec![new]))), ["web-0 -> Normal"]);
}

#[test]
fn a_grace_period_closes_the_gate_and_waits_before_changing_containers() {
    let graced = || json!({"updateStrategy": {"inPlaceUpdateStrategy": {"gracePeriodSeconds": 30}}});
    assert_eq!(summary(&plan(&observed(spec(1, graced()), ready_pods(1, "r1")))), ["close-gate web-0"]);

    let mut draining = in_state(pod(0, "r1", false), LifecycleState::PreparingUpdate);
    draining.gate_open = false;
    draining.gate_closed_since = Some(at("2026-11-22T09:59:50Z")); // 10 s before `now`
    assert!(summary(&plan(&observed(spec(1, graced()), vec![draining.clone()]))).is_empty(), "still draining");
    draining.gate_closed_since = Some(at("2026-11-22T09:59:00Z"));
    assert_eq!(summary(&plan(&observed(spec(1, graced()), vec![draining]))), ["in-place web-0@r2"]);
}

#[test]
fn an_update_target_moved_back_before_the_update_began_cancels_it() {
    // Rolled back to what the pod runs, while it waited in PreparingUpdate with its gate closed.
    let mut waiting = in_state(pod(0, "r2", false), LifecycleState::PreparingUpdate);
    waiting.gate_open = false;
    assert_eq!(summary(&plan(&observed(spec(1, json!({})), vec![waiting.clone()]))), ["web-0 -> Normal"]);
    // Or the partition moved above it.
    waiting.revision = Some("r1".into());
    let p = plan(&observed(spec(1, json!({"updateStrategy": {"partition": 1}})), vec![waiting]));
    assert_eq!(summary(&p), ["web-0 -> Normal"]);
}

#[path = "policy_tests.rs"]
mod policy;
