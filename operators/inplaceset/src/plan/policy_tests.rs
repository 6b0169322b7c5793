//! Planner tests for podsToDelete, claims, surge, priority, rollout plans and retries.

use berth_api::inplaceset::{RetryRecord, RolloutStatus};
use k8s_openapi::jiff::SignedDuration;

use super::*;
use crate::{observed::ClaimView, plan::rollout};

fn claim(name: &str, ordinal: i32, owned_by_set: bool) -> ClaimView {
    ClaimView { name: name.into(), ordinal, owned_by_set, terminating: false }
}

fn with_claims(extra: Value) -> Value {
    let mut v = json!({"podManagementPolicy": "Parallel", "volumeClaimTemplates": [
        {"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}
    ]});
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    v
}

#[test]
fn pods_to_delete_are_deleted_within_max_unavailable_and_unknown_names_dropped() {
    let s = spec(4, json!({"scaleStrategy": {"podsToDelete": ["web-1", "web-2", "web-9"]}}));
    let p = plan(&observed(s, ready_pods(4, "r2")));
    assert_eq!(summary(&p), ["delete web-1", "forget web-9"], "web-2 waits: maxUnavailable is 1");
    // An unavailable pod costs nothing more.
    let s = spec(4, json!({"scaleStrategy": {"podsToDelete": ["web-1", "web-2"]}}));
    let mut pods = ready_pods(4, "r2");
    pods[2].ready = false;
    assert_eq!(summary(&plan(&observed(s, pods))), ["delete web-2"], "web-1 waits while web-2 is unavailable");
}

#[test]
fn a_pod_being_deleted_on_request_is_not_also_updated() {
    let s = spec(2, json!({"updateStrategy": {"maxUnavailable": 2}, "scaleStrategy": {"podsToDelete": ["web-1"]}}));
    let p = plan(&observed(s, ready_pods(2, "r1")));
    assert_eq!(summary(&p), ["delete web-1", "in-place web-0@r2"]);
}

#[test]
fn claims_are_created_before_their_pod_and_only_once() {
    let mut o = observed(spec(2, with_claims(json!({}))), vec![]);
    o.claims = vec![claim("data-web-0", 0, false)];
    assert_eq!(summary(&plan(&o)), ["create 0@r2", "create-claim data-web-1", "create 1@r2"]);
}

#[test]
fn claims_follow_the_retention_policy() {
    // whenScaled Retain (default): the claim of a scaled-away pod stays.
    let mut o = observed(spec(1, with_claims(json!({}))), ready_pods(1, "r2"));
    o.claims = vec![claim("data-web-0", 0, false), claim("data-web-1", 1, false)];
    assert!(summary(&plan(&o)).is_empty());
    // whenScaled Delete: deleted once the pod is gone, not before.
    let policy = json!({"persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"}});
    o.spec = spec(1, with_claims(policy.clone()));
    assert_eq!(summary(&plan(&o)), ["delete-claim data-web-1"]);
    o.pods = ready_pods(2, "r2");
    assert_eq!(summary(&plan(&o)), ["scale-down web-1"], "its pod first");
    // whenDeleted Delete: the set owns every claim; Retain: it owns none.
    o.spec = spec(2, with_claims(json!({"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}})));
    assert_eq!(summary(&plan(&o)), ["own data-web-0", "own data-web-1"]);
    o.claims[0].owned_by_set = true;
    o.spec = spec(2, with_claims(json!({})));
    assert_eq!(summary(&plan(&o)), ["disown data-web-0"]);
}

#[test]
fn surge_pods_keep_capacity_while_pods_are_recreated_then_go() {
    let s = spec(3, json!({"updateStrategy": {"type": "Recreate", "maxSurge": 1}}));
    // First a surge pod at the next ordinal; the budget (maxUnavailable 1) allows one recreate.
    let p = plan(&observed(s.clone(), ready_pods(3, "r1")));
    assert_eq!(summary(&p), ["create 3@r2", "recreate web-2"]);
    // With the surge pod available the budget is two.
    let mut pods = ready_pods(3, "r1");
    pods.push(pod(3, "r2", true));
    assert_eq!(summary(&plan(&observed(s.clone(), pods))), ["recreate web-2", "recreate web-1"]);
    // All recreated but web-0 not yet available: the surge pod stays.
    let mut pods = ready_pods(4, "r2");
    pods[0].ready = false;
    assert!(summary(&plan(&observed(s.clone(), pods))).is_empty());
    // Done: it goes.
    assert_eq!(summary(&plan(&observed(s, ready_pods(4, "r2")))), ["scale-down web-3"]);
}

#[test]
fn in_place_updates_need_no_surge() {
    let s = spec(3, json!({"updateStrategy": {"maxSurge": 1}}));
    let p = plan(&observed(s, ready_pods(3, "r1")));
    assert_eq!(summary(&p), ["in-place web-2@r2"]);
}

#[test]
fn priority_weights_choose_which_pods_update_first_and_which_the_partition_keeps() {
    let priority = json!({"weights": [
        {"weight": 50, "matchSelector": {"matchLabels": {"canary": "true"}}},
        {"weight": -10, "matchSelector": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}}
    ]});
    let mut pods = ready_pods(4, "r1");
    pods[0].labels.insert("canary".into(), "true".into());
    pods[3].labels.insert("zone".into(), "b".into());
    let s = spec(4, json!({"updateStrategy": {"priority": priority, "maxUnavailable": 4}}));
    assert_eq!(
        summary(&plan(&observed(s, pods.clone()))),
        ["in-place web-0@r2", "in-place web-2@r2", "in-place web-1@r2", "in-place web-3@r2"]
    );
    // A partition of 2 keeps the two lowest-priority pods.
    let s = spec(4, json!({"updateStrategy": {"priority": priority, "maxUnavailable": 4, "partition": 2}}));
    assert_eq!(summary(&plan(&observed(s, pods))), ["in-place web-0@r2", "in-place web-2@r2"]);
}

fn batches(extra: Value) -> Value {
    let mut plan = json!({"batches": [
        {"replicas": 2, "pause": {"manual": true}},
        {"replicas": "50%", "pause": {"seconds": 60}},
        {"replicas": "100%"}
    ]});
    plan.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    json!({"podManagementPolicy": "Parallel", "updateStrategy": {"maxUnavailable": 10}, "rolloutPlan": plan})
}

/// Pods 0..10, the top `updated` at r2.
fn fleet(updated: i32) -> Vec<PodView> {
    (0..10).map(|i| pod(i, if i >= 10 - updated { "r2" } else { "r1" }, true)).collect()
}

fn rollout_state(p: &Plan) -> (i32, &str) {
    let r = p.rollout.as_ref().unwrap();
    (r.current_batch, r.state.as_str())
}

#[test]
fn a_rollout_plan_moves_batch_by_batch_with_manual_and_timed_pauses() {
    let s = spec(10, batches(json!({})));
    let mut o = observed(s.clone(), fleet(0));
    let p = plan(&o);
    assert_eq!(rollout_state(&p), (0, rollout::PROGRESSING));
    assert_eq!(summary(&p), ["in-place web-9@r2", "in-place web-8@r2"], "batch 0 is 2 pods");
    assert_eq!(p.partition, 8);

    // Batch 0 available: paused for approval; nothing more moves.
    o.previous.rollout = p.rollout.clone();
    o.pods = fleet(2);
    let p = plan(&o);
    assert_eq!(rollout_state(&p), (0, rollout::PAUSED));
    assert!(summary(&p).is_empty());

    // Approved: batch 1 (50% = 5 pods).
    o.previous.rollout = p.rollout.clone();
    o.spec = spec(10, batches(json!({"approvedBatches": 1})));
    let p = plan(&o);
    assert_eq!(rollout_state(&p), (1, rollout::PROGRESSING));
    assert_eq!(summary(&p), ["in-place web-7@r2", "in-place web-6@r2", "in-place web-5@r2"]);

    // Batch 1 available: a 60 s pause, then batch 2.
    o.previous.rollout = p.rollout.clone();
    o.pods = fleet(5);
    let p = plan(&o);
    assert_eq!(rollout_state(&p), (1, rollout::PAUSED));
    assert_eq!(p.requeue_after, Some(SignedDuration::from_secs(60)));
    o.previous.rollout = p.rollout.clone();
    o.now = at("2026-11-22T10:00:59Z");
    assert_eq!(rollout_state(&plan(&o)), (1, rollout::PAUSED));
    o.now = at("2026-11-22T10:01:00Z");
    let p = plan(&o);
    assert_eq!(rollout_state(&p), (2, rollout::PROGRESSING));
    assert_eq!(p.partition, 0);
    assert_eq!(summary(&p).len(), 5);

    o.previous.rollout = p.rollout.clone();
    o.pods = fleet(10);
    assert_eq!(rollout_state(&plan(&o)), (2, rollout::SUCCEEDED));
}

#[test]
fn a_new_set_has_nothing_to_roll_out() {
    let mut o = observed(spec(10, batches(json!({}))), vec![]);
    o.current_revision = None;
    let p = plan(&o);
    assert_eq!(rollout_state(&p), (2, rollout::SUCCEEDED));
    assert_eq!(summary(&p).len(), 10, "every pod created at the update revision");
    assert!(summary(&p).iter().all(|a| a.ends_with("@r2")));
}

fn stuck_batch(o: &mut Observed) {
    o.previous.rollout = Some(RolloutStatus {
        revision: "r2".into(),
        current_batch: 0,
        state: rollout::PROGRESSING.into(),
        batch_started_at: Some(at("2026-11-22T09:49:00Z").into()),
        ..Default::default()
    });
    o.pods = fleet(2);
    o.pods[9].ready = false;
}

#[test]
fn a_batch_past_its_deadline_stops_the_rollout() {
    let mut o = observed(spec(10, batches(json!({"batchDeadlineSeconds": 600}))), vec![]);
    stuck_batch(&mut o);
    let p = plan(&o);
    assert_eq!(rollout_state(&p), (0, rollout::FAILED));
    let message = p.rollout.as_ref().unwrap().message.clone().unwrap();
    assert_eq!(message, "batch 0 had 1 of 2 pods updated and available after 600s; the rollout is stopped");
    assert!(summary(&p).is_empty(), "held: nothing else moves");
}

#[test]
fn a_failed_batch_rolls_back_in_place_when_asked() {
    let mut o = observed(spec(10, batches(json!({"rollbackOnFailure": true}))), vec![]);
    stuck_batch(&mut o);
    let p = plan(&o);
    assert_eq!(rollout_state(&p), (0, rollout::ROLLED_BACK));
    assert_eq!(p.rollout.as_ref().unwrap().rolled_back_to.as_deref(), Some("r1"));
    // web-9 is unavailable already; web-8 moves within maxUnavailable.
    assert_eq!(summary(&p), ["in-place web-9@r1", "in-place web-8@r1"]);
    // Once back, it stays rolled back until the template changes.
    o.previous.rollout = p.rollout.clone();
    o.pods = fleet(0);
    let p = plan(&o);
    assert_eq!(rollout_state(&p), (0, rollout::ROLLED_BACK));
    assert!(summary(&p).is_empty());
    o.update_revision = "r3".into();
    assert_eq!(rollout_state(&plan(&o)), (0, rollout::PROGRESSING), "a new revision starts a new rollout");
}

#[test]
fn failed_pods_are_recreated_and_with_a_retry_policy_kept_off_their_node() {
    let mut pods = ready_pods(3, "r2");
    pods[1].failed = true;
    pods[1].ready = false;
    pods[1].stuck_since = Some(at("2026-11-22T09:58:00Z"));
    // Without a policy, as a StatefulSet: recreated at once, anywhere.
    assert_eq!(summary(&plan(&observed(spec(3, parallel()), pods.clone()))), ["recreate web-1"]);
    // With one: after afterSeconds, away from its node.
    let policy = |after: i32| json!({"podManagementPolicy": "Parallel", "retryOnOtherNodes": {"afterSeconds": after}});
    assert!(summary(&plan(&observed(spec(3, policy(300)), pods.clone()))).is_empty(), "not yet");
    let p = plan(&observed(spec(3, policy(60)), pods.clone()));
    assert_eq!(summary(&p), ["retry web-1 #1 off node-a"]);
    assert_eq!(p.retries, [RetryRecord { pod: "web-1".into(), attempts: 1, avoided_nodes: vec!["node-a".into()] }]);
    // The pod created again avoids the recorded nodes.
    let mut o = observed(spec(3, policy(60)), vec![pods[0].clone(), pods[2].clone()]);
    o.previous.retries = p.retries.clone();
    assert_eq!(summary(&plan(&o)), ["create 1@r2 avoiding node-a"]);
    // Attempts are bounded (3 by default).
    let mut o = observed(spec(3, policy(60)), pods);
    o.previous.retries = vec![RetryRecord { pod: "web-1".into(), attempts: 3, avoided_nodes: vec![] }];
    let p = plan(&o);
    assert!(summary(&p).is_empty());
    assert_eq!(p.blocked, [Blocked::RetriesExhausted { name: "web-1".into(), attempts: 3 }]);
}

#[test]
fn unschedulable_pods_are_retried_after_the_bound_and_records_of_removed_ordinals_dropped() {
    let mut pods = ready_pods(2, "r2");
    pods[1].ready = false;
    pods[1].node = None;
    pods[1].stuck_since = Some(at("2026-11-22T09:50:00Z"));
    let mut o = observed(spec(2, json!({"retryOnOtherNodes": {"afterSeconds": 300}})), pods);
    o.previous.retries = vec![RetryRecord { pod: "web-7".into(), attempts: 1, avoided_nodes: vec![] }];
    let p = plan(&o);
    assert_eq!(summary(&p), ["retry web-1 #1"]);
    assert_eq!(p.retries, [RetryRecord { pod: "web-1".into(), attempts: 1, avoided_nodes: vec![] }]);
}

#[test]
fn a_recreate_update_goes_through_the_pre_delete_hook() {
    let hook = json!({"preDelete": {"labels": {"example.com/hold": "true"}}});
    let s = spec(2, json!({"updateStrategy": {"type": "Recreate"}, "lifecycle": hook}));
    let p = plan(&observed(s.clone(), ready_pods(2, "r1")));
    assert_eq!(summary(&p), ["web-1 -> PreparingDelete (hooked)"]);
    // Held while the label is there; recreated once it is gone.
    let mut pods = ready_pods(2, "r1");
    pods[1].lifecycle = Some(LifecycleState::PreparingDelete);
    pods[1].labels.insert("example.com/hold".into(), "true".into());
    assert!(summary(&plan(&observed(s.clone(), pods.clone()))).is_empty(), "held; web-0 waits for the budget");
    pods[1].labels.clear();
    assert_eq!(summary(&plan(&observed(s.clone(), pods.clone()))), ["recreate web-1"]);
    // If the partition moves over it before it is released, the delete is cancelled.
    pods[1].labels.insert("example.com/hold".into(), "true".into());
    let s = spec(2, json!({"updateStrategy": {"type": "Recreate", "partition": 2}, "lifecycle": hook}));
    assert_eq!(summary(&plan(&observed(s, pods))), ["web-1 -> Normal"]);
}

#[test]
fn an_update_finished_half_way_leaves_updating() {
    let mut pods = ready_pods(2, "r2");
    pods[1].lifecycle = Some(LifecycleState::Updating);
    // No postUpdate hook: straight back to Normal; with one: held in Updated.
    assert_eq!(summary(&plan(&observed(spec(2, json!({})), pods.clone()))), ["web-1 -> Normal"]);
    let hook = json!({"lifecycle": {"postUpdate": {"labels": {"example.com/check": "true"}}}});
    assert_eq!(summary(&plan(&observed(spec(2, hook), pods))), ["web-1 -> Updated (hooked)"]);
}
