use serde_json::{Value, json};

use super::*;
use crate::revision::revision;

fn spec(image: &str, env: &str, strategy: Value) -> SidecarSetSpec {
    serde_json::from_value(json!({
        "selector": {"matchLabels": {"app": "web"}},
        "containers": [{"name": "log", "image": image, "env": [{"name": "LEVEL", "value": env}]}],
        "updateStrategy": strategy
    }))
    .unwrap()
}

/// Pod `web-i` injected by `logs` at the revision of `injected`.
fn pod(i: usize, injected: &SidecarSetSpec, ready: bool) -> SidecarPod {
    let record = revision("logs", injected, 0);
    SidecarPod {
        namespace: "prod".into(),
        name: format!("web-{i}"),
        version: Some("1".into()),
        labels: BTreeMap::from([("app".into(), "web".into())]),
        records: BTreeMap::from([("logs".into(), record)]),
        images: BTreeMap::from([
            ("app".into(), "app:1".into()),
            ("log".into(), injected.containers[0].image.clone().unwrap()),
        ]),
        ready,
        gate_open: true,
        has_gate: true,
        terminating: false,
        progress: Progress::Idle,
        in_inplaceset: false,
    }
}

fn observed(latest: SidecarSetSpec, pods: Vec<SidecarPod>) -> Observed {
    Observed {
        name: "logs".into(),
        latest: revision("logs", &latest, 0),
        spec: latest,
        pods,
        now: "2026-11-22T10:00:00Z".parse().unwrap(),
    }
}

fn summary(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .map(|a| match a {
            Action::Upgrade { name, changes, .. } => {
                let images: Vec<_> = changes.images.iter().map(|(c, i)| format!("{c}={i}")).collect();
                format!("upgrade {name} {}", images.join(","))
            }
            Action::Finish { name, .. } => format!("finish {name}"),
            Action::OpenGate { name, .. } => format!("open-gate {name}"),
        })
        .collect()
}

#[test]
fn an_image_change_upgrades_only_the_sidecar_within_max_unavailable() {
    let old = spec("log:1", "info", json!({}));
    let new = spec("log:2", "info", json!({"maxUnavailable": 2}));
    let p = plan(&observed(new.clone(), (0..4).map(|i| pod(i, &old, true)).collect()));
    assert_eq!(summary(&p), ["upgrade web-0 log=log:2", "upgrade web-1 log=log:2"]);
    // The record moves to the latest revision, other SidecarSets' entries kept.
    let Action::Upgrade { changes, .. } = &p.actions[0] else { panic!() };
    let record: InjectedRevisions =
        serde_json::from_str(changes.annotations[keys::SIDECARSET_REVISIONS].as_deref().unwrap()).unwrap();
    assert_eq!(record["logs"], revision("logs", &new, 0));
    assert!(!changes.images.contains_key("app"), "the app container is never touched");
}

#[test]
fn pods_mid_upgrade_or_unready_use_up_the_budget() {
    let old = spec("log:1", "info", json!({}));
    let new = spec("log:2", "info", json!({"maxUnavailable": 2}));
    let mut pods: Vec<_> = (0..4).map(|i| pod(i, &old, true)).collect();
    pods[3].progress = Progress::InProgress {
        revision: "x".into(),
        started: "2026-11-22T09:59:00Z".parse().unwrap(),
        waiting: BTreeMap::new(),
    };
    assert_eq!(summary(&plan(&observed(new.clone(), pods.clone()))), ["upgrade web-0 log=log:2"]);
    // An unready pod is upgraded first, at no cost.
    pods[2].ready = false;
    assert_eq!(summary(&plan(&observed(new, pods))), ["upgrade web-2 log=log:2"]);
}

#[test]
fn a_pod_with_its_gate_closed_uses_up_the_budget_while_the_kubelet_still_says_ready() {
    // The cache holds the gate's closing but not yet the upgrade's start.
    let old = spec("log:1", "info", json!({}));
    let new = spec("log:2", "info", json!({"maxUnavailable": 1}));
    let mut pods: Vec<_> = (0..4).map(|i| pod(i, &old, true)).collect();
    pods[3].gate_open = false;
    let actions = summary(&plan(&observed(new, pods)));
    assert!(actions.iter().all(|a| a.contains("web-3")), "only web-3 is acted on: {actions:?}");
}

#[test]
fn a_change_beyond_images_is_reported_not_applied() {
    let old = spec("log:1", "info", json!({}));
    let new = spec("log:2", "debug", json!({"maxUnavailable": 4}));
    let p = plan(&observed(new, (0..2).map(|i| pod(i, &old, true)).collect()));
    assert!(summary(&p).is_empty());
    assert_eq!(
        p.blocked,
        [
            Blocked::NotInPlace { namespace: "prod".into(), name: "web-0".into() },
            Blocked::NotInPlace { namespace: "prod".into(), name: "web-1".into() }
        ]
    );
}

#[test]
fn partition_paused_not_update_and_selector_limit_the_upgrade() {
    let old = spec("log:1", "info", json!({}));
    let pods = |n| (0..n).map(|i| pod(i, &old, true)).collect::<Vec<_>>();
    let with = |strategy| observed(spec("log:2", "info", strategy), pods(4));
    assert_eq!(summary(&plan(&with(json!({"maxUnavailable": 4, "partition": 3})))), ["upgrade web-0 log=log:2"]);
    assert_eq!(summary(&plan(&with(json!({"maxUnavailable": 4, "partition": "50%"})))).len(), 2);
    assert!(summary(&plan(&with(json!({"paused": true})))).is_empty());
    assert!(summary(&plan(&with(json!({"type": "NotUpdate"})))).is_empty());
    let mut o = with(json!({"maxUnavailable": 4, "selector": {"matchLabels": {"canary": "true"}}}));
    o.pods[2].labels.insert("canary".into(), "true".into());
    assert_eq!(summary(&plan(&o)), ["upgrade web-2 log=log:2"]);
    // A partition counts pods already updated toward the updated side.
    let new = spec("log:2", "info", json!({"maxUnavailable": 4, "partition": 2}));
    let mut mixed = pods(4);
    mixed[0] = pod(0, &new, true);
    assert_eq!(summary(&plan(&observed(new, mixed))), ["upgrade web-1 log=log:2"]);
}

#[test]
fn finished_upgrades_close_out_and_new_pods_get_their_gate_opened() {
    let s = spec("log:2", "info", json!({}));
    let mut pods: Vec<_> = (0..3).map(|i| pod(i, &s, true)).collect();
    pods[0].progress = Progress::Done { revision: "logs-x".into() };
    pods[1].gate_open = false;
    pods[2].gate_open = false;
    pods[2].has_gate = false;
    assert_eq!(summary(&plan(&observed(s.clone(), pods.clone()))), ["finish web-0", "open-gate web-1"]);
    // An InplaceSet's pods are left to its controller (a closed gate may be its drain).
    for p in &mut pods {
        p.in_inplaceset = true;
    }
    assert!(summary(&plan(&observed(s, pods))).is_empty());
}

#[test]
fn a_pod_is_read_with_its_record_and_images() {
    let s = spec("log:1", "info", json!({}));
    let record = serde_json::to_string(&BTreeMap::from([("logs", revision("logs", &s, 0))])).unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0", "namespace": "prod", "annotations": {keys::SIDECARSET_REVISIONS: record}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}, {"name": "log", "image": "log:1"}],
                 "readinessGates": [{"conditionType": keys::INPLACE_UPDATE_READY}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap();
    let view = SidecarPod::from_pod("logs", &pod).unwrap().unwrap();
    assert_eq!(view.images["log"], "log:1");
    assert!(view.ready && view.has_gate && !view.gate_open);
    assert!(SidecarPod::from_pod("other", &pod).unwrap().is_none(), "not injected by another set");
    let mut bad = pod.clone();
    bad.metadata.annotations = Some(BTreeMap::from([(keys::SIDECARSET_REVISIONS.into(), "{".into())]));
    assert!(SidecarPod::from_pod("logs", &bad).unwrap_err().contains("is not a sidecar record"));
}
