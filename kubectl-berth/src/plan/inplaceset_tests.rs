use serde_json::{Value, json};

use super::*;

fn template(image: &str, cpu: &str) -> Value {
    json!({"metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": image, "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]}})
}

fn set(extra: Value) -> InplaceSet {
    let mut spec = json!({"replicas": 4, "selector": {"matchLabels": {"app": "web"}}, "template": template("web:1", "100m"),
        "podManagementPolicy": "Parallel"});
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(json!({"apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet",
        "metadata": {"name": "web", "uid": "u1"}, "spec": spec,
        "status": {"updateRevision": "web-a", "currentRevision": "web-a"}}))
    .unwrap()
}

fn revision() -> ControllerRevision {
    serde_json::from_value(
        json!({"metadata": {"name": "web-a"}, "revision": 1, "data": {"template": template("web:1", "100m")}}),
    )
    .unwrap()
}

fn pod(ordinal: i32, node: &str, labels: Value) -> Pod {
    let mut l =
        json!({"app": "web", "controller-revision-hash": "web-a", "apps.kubernetes.io/pod-index": ordinal.to_string()});
    l.as_object_mut().unwrap().extend(labels.as_object().unwrap().clone());
    serde_json::from_value(json!({"metadata": {"name": format!("web-{ordinal}"), "labels": l},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "web:1",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}))
    .unwrap()
}

fn node(name: &str, cpu: &str) -> Node {
    serde_json::from_value(
        json!({"metadata": {"name": name}, "status": {"allocatable": {"cpu": cpu, "memory": "1Gi"}}}),
    )
    .unwrap()
}

fn report(set: &InplaceSet, new_template: Value, pods: &[Pod], nodes: &[Node]) -> Report {
    let mut spec = set.spec.clone();
    spec.template = serde_json::from_value(new_template).unwrap();
    let inputs = Inputs {
        set,
        new_spec: &spec,
        pods,
        revisions: &[revision()],
        nodes,
        node_pods: pods,
        now: "2026-11-23T10:00:00Z".parse().unwrap(),
    };
    plan(&inputs).unwrap()
}

fn four_pods() -> Vec<Pod> {
    vec![pod(0, "n0", json!({})), pod(1, "n1", json!({})), pod(2, "n0", json!({})), pod(3, "n1", json!({}))]
}

fn summary(r: &Report) -> Vec<(String, Option<usize>, Update)> {
    r.pods.iter().map(|p| (p.pod.clone(), p.batch, p.update)).collect()
}

#[test]
fn an_image_change_goes_in_place_highest_ordinal_first_and_the_partition_keeps_the_rest() {
    let s = set(json!({"updateStrategy": {"partition": 1, "maxUnavailable": 2}}));
    let r = report(&s, template("web:2", "100m"), &four_pods(), &[node("n0", "1"), node("n1", "1")]);
    assert_eq!(
        summary(&r),
        [
            ("web-3".into(), Some(0), Update::InPlace),
            ("web-2".into(), Some(0), Update::InPlace),
            ("web-1".into(), Some(0), Update::InPlace),
            ("web-0".into(), None, Update::Kept)
        ]
    );
    assert_eq!(r.pods[0].detail, "app=web:2");
    assert_eq!(r.batch_targets, [3]);
    assert_eq!(r.max_unavailable, 2);
    // In place: requests unchanged; 2 pods of 100m on each 1-CPU node.
    assert_eq!((r.nodes[0].cpu_requested_now, r.nodes[0].cpu_requested_after), (200, 200));
    assert!(r.ok());
    let text = render(&r);
    assert!(text.starts_with("InplaceSet web: web-a -> web-"), "{text}");
    assert!(text.contains("0       1       web-3   n1     web-a      in place   app=web:2\n"), "{text}");
    assert!(text.contains("-       -       web-0   n0     web-a      kept       held by the partition\n"), "{text}");
    assert!(text.contains("n0     200m -> 200m   1                 800m"), "{text}");
}

#[test]
fn batches_follow_the_rollout_plan_and_the_priority_order() {
    let s = set(json!({
        "rolloutPlan": {"batches": [{"replicas": 1, "pause": {"manual": true}}, {"replicas": "50%"}, {"replicas": "100%"}]},
        "updateStrategy": {"priority": {"weights": [{"weight": 10, "matchSelector": {"matchLabels": {"canary": "yes"}}}]}}
    }));
    let mut pods = four_pods();
    pods[1] = pod(1, "n1", json!({"canary": "yes"}));
    let r = report(&s, template("web:2", "100m"), &pods, &[]);
    assert_eq!(
        summary(&r),
        [
            ("web-1".into(), Some(0), Update::InPlace),
            ("web-3".into(), Some(1), Update::InPlace),
            ("web-2".into(), Some(2), Update::InPlace),
            ("web-0".into(), Some(2), Update::InPlace)
        ],
        "the canary first, then from the highest ordinal; 1, 2, 4 pods at the new revision"
    );
    assert_eq!(r.batch_targets, [1, 2, 4]);
}

#[test]
fn a_resource_change_goes_as_a_resize_and_shows_the_node_over_committed() {
    let s = set(json!({}));
    let r = report(&s, template("web:1", "600m"), &four_pods(), &[node("n0", "1"), node("n1", "2")]);
    assert!(r.pods.iter().all(|p| p.update == Update::InPlace), "{:?}", r.pods);
    assert_eq!(r.pods[0].detail, "resize app cpu=600m");
    // Two pods per node grow from 100m to 600m each.
    assert_eq!((r.nodes[0].cpu_requested_now, r.nodes[0].cpu_requested_after), (200, 1200));
    assert!(!r.nodes[0].fits());
    assert!(r.nodes[1].fits());
    assert!(!r.ok());
    assert!(render(&r).contains("OVER by 200m"), "{}", render(&r));
    // Under Recreate the same change deletes and creates each pod.
    let s = set(json!({"updateStrategy": {"type": "Recreate"}}));
    let r = report(&s, template("web:1", "600m"), &four_pods(), &[node("n0", "1")]);
    assert!(r.pods.iter().all(|p| p.update == Update::Recreate && p.detail == "updateStrategy.type is Recreate"));
    assert_eq!(r.nodes[0].cpu_requested_after, 1200);
}

#[test]
fn in_place_only_blocks_what_cannot_go_in_place_and_scale_changes_are_named() {
    let s = set(json!({"replicas": 3, "updateStrategy": {"type": "InPlaceOnly"}}));
    let mut new = template("web:1", "100m");
    new["spec"]["containers"][0]["command"] = json!(["serve"]);
    let r = report(&s, new, &four_pods(), &[]);
    assert!(!r.ok());
    let blocked = &r.pods[0];
    assert_eq!(
        (blocked.update, blocked.detail.as_str()),
        (Update::Blocked, "InPlaceOnly refuses: spec.containers[app].command changed")
    );
    assert_eq!(r.pods.last().map(|p| (p.pod.as_str(), p.update)), Some(("web-3", Update::Delete)));

    let grown = set(json!({"replicas": 5}));
    let r = report(&grown, template("web:2", "100m"), &four_pods(), &[]);
    assert_eq!(r.pods[0].pod, "web-4");
    assert_eq!(r.pods[0].update, Update::Create);
    assert_eq!((r.unscheduled_cpu, r.unscheduled_memory), (100, 64 << 20));
}
