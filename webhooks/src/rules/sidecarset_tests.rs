use kube::core::admission::AdmissionReview;
use serde_json::json;

use super::*;

fn spec(v: Value) -> SidecarSetSpec {
    let mut v = v;
    if v.get("selector").is_none() {
        v["selector"] = json!({"matchLabels": {"app": "web"}});
    }
    if v.get("containers").is_none() && v.get("initContainers").is_none() {
        v["containers"] = json!([{"name": "log", "image": "log:1"}]);
    }
    serde_json::from_value(v).unwrap()
}

fn set(name: &str, v: Value) -> SidecarSet {
    SidecarSet::new(name, spec(v))
}

fn selector(v: Value) -> LabelSelector {
    serde_json::from_value(v).unwrap()
}

#[test]
fn a_plain_set_is_valid() {
    assert!(own_problems(&spec(json!({}))).is_empty());
    let native = spec(json!({"initContainers": [{"name": "proxy", "image": "p", "restartPolicy": "Always"}]}));
    assert!(own_problems(&native).is_empty());
}

#[test]
fn a_set_must_inject_something_with_distinct_names() {
    let empty: SidecarSetSpec = serde_json::from_value(json!({"selector": {"matchLabels": {"app": "web"}}})).unwrap();
    assert_eq!(
        own_problems(&empty),
        ["spec.containers and spec.initContainers are both empty: the SidecarSet would inject nothing"]
    );
    let twice = spec(json!({
        "initContainers": [{"name": "proxy", "image": "p"}],
        "containers": [{"name": "proxy", "image": "p"}, {"name": "log", "image": "l"}, {"name": "log", "image": "l"}],
        "volumes": [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}]
    }));
    assert_eq!(
        own_problems(&twice),
        [
            "container name \"proxy\" appears twice (spec.initContainers and spec.containers); a pod's containers \
             and init containers need distinct names",
            "container name \"log\" appears twice (spec.containers and spec.containers); a pod's containers and \
             init containers need distinct names",
            "volume name \"v\" appears twice in spec.volumes",
        ]
    );
}

#[test]
fn selectors_must_be_well_formed_and_not_empty() {
    let found = own_problems(&spec(json!({"selector": {}})));
    assert!(found[0].starts_with("spec.selector is empty, which would inject into every pod"), "{found:?}");
    let bad = json!({"matchExpressions": [{"key": "app", "operator": "In", "values": []}]});
    assert_eq!(
        own_problems(&spec(json!({"selector": bad.clone(), "namespaceSelector": bad.clone(),
                                  "updateStrategy": {"selector": bad}}))),
        [
            "spec.selector.matchExpressions[0]: operator In needs at least one value",
            "spec.namespaceSelector.matchExpressions[0]: operator In needs at least one value",
            "spec.updateStrategy.selector.matchExpressions[0]: operator In needs at least one value",
        ]
    );
}

#[test]
fn selectors_are_disjoint_only_when_one_key_cannot_satisfy_both() {
    let overlap = |a: Value, b: Value| may_overlap(Some(&selector(a)), Some(&selector(b)));
    let ml = |k: &str, v: &str| json!({"matchLabels": {k: v}});
    let expr = |k: &str, op: &str, vs: &[&str]| {
        if vs.is_empty() {
            json!({"matchExpressions": [{"key": k, "operator": op}]})
        } else {
            json!({"matchExpressions": [{"key": k, "operator": op, "values": vs}]})
        }
    };
    assert!(!overlap(ml("app", "a"), ml("app", "b")));
    assert!(overlap(ml("app", "a"), ml("app", "a")));
    assert!(overlap(ml("app", "a"), ml("tier", "b")), "different keys: a pod may carry both");
    assert!(!overlap(ml("app", "a"), expr("app", "In", &["b", "c"])));
    assert!(overlap(ml("app", "a"), expr("app", "In", &["a", "c"])));
    assert!(!overlap(expr("app", "In", &["a", "b"]), expr("app", "NotIn", &["b", "a"])));
    assert!(overlap(expr("app", "In", &["a", "b"]), expr("app", "NotIn", &["a"])));
    assert!(!overlap(expr("app", "Exists", &[]), expr("app", "DoesNotExist", &[])));
    assert!(!overlap(ml("app", "a"), expr("app", "DoesNotExist", &[])));
    assert!(overlap(expr("app", "NotIn", &["a"]), expr("app", "DoesNotExist", &[])));
    assert!(overlap(json!({}), ml("app", "a")));
    assert!(may_overlap(None, Some(&selector(ml("env", "prod")))), "no namespace selector: every namespace");
}

#[test]
fn a_name_another_overlapping_set_injects_differently_is_refused_naming_both() {
    let others = [
        set(
            "mesh",
            json!({"containers": [{"name": "proxy", "image": "p:1"}], "volumes": [{"name": "certs", "emptyDir": {}}]}),
        ),
        set("init-mesh", json!({"initContainers": [{"name": "log", "image": "log:1"}]})),
    ];
    let mine = spec(json!({
        "containers": [{"name": "proxy", "image": "p:2"}, {"name": "log", "image": "log:1"}],
        "volumes": [{"name": "certs", "hostPath": {"path": "/certs"}}]
    }));
    let found = clashes("mine", &mine, &others);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found[0].starts_with("container \"log\" is also injected by SidecarSet init-mesh as an init container"),
        "{found:?}"
    );
    assert!(
        found[1].starts_with("container \"proxy\" is also injected by SidecarSet mesh, with different content"),
        "{found:?}"
    );
    assert!(
        found[2].starts_with("volume \"certs\" is also injected by SidecarSet mesh with different content"),
        "{found:?}"
    );

    // Identical content, disjoint selectors or namespaces, itself, or a set being deleted: no clash.
    let same = spec(
        json!({"containers": [{"name": "proxy", "image": "p:1"}], "volumes": [{"name": "certs", "emptyDir": {}}]}),
    );
    assert!(clashes("mine", &same, &others).is_empty());
    let elsewhere =
        spec(json!({"selector": {"matchLabels": {"app": "db"}}, "containers": [{"name": "proxy", "image": "p:2"}]}));
    let scoped = |ns: &str| {
        let mut s = set(
            "mesh",
            json!({"namespaceSelector": {"matchLabels": {"team": ns}}, "containers": [{"name": "proxy", "image": "p:1"}]}),
        );
        s.spec.selector = selector(json!({"matchLabels": {"app": "web"}}));
        s
    };
    let mine_in = |ns: &str| {
        spec(
            json!({"namespaceSelector": {"matchLabels": {"team": ns}}, "containers": [{"name": "proxy", "image": "p:2"}]}),
        )
    };
    assert!(clashes("mine", &elsewhere, &others).is_empty());
    assert!(clashes("mine", &mine_in("a"), &[scoped("b")]).is_empty());
    assert_eq!(clashes("mine", &mine_in("a"), &[scoped("a")]).len(), 1);
    assert!(clashes("mesh", &mine, &others[..1]).is_empty(), "an update is not judged against itself");
    let mut deleting = others[0].clone();
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    assert!(clashes("mine", &mine, &[deleting]).is_empty());
}

fn request(operation: &str, new: &SidecarSet, old: Option<&SidecarSet>) -> AdmissionRequest<DynamicObject> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "uid-1", "kind": {"group": "apps.berth.dev", "version": "v1alpha1", "kind": "SidecarSet"},
            "resource": {"group": "apps.berth.dev", "version": "v1alpha1", "resource": "sidecarsets"},
            "name": new.name_any(), "operation": operation,
            "userInfo": {"username": "alice"}, "object": new, "oldObject": old, "dryRun": false}
    }))
    .unwrap();
    review.try_into().unwrap()
}

#[test]
fn review_names_the_set_and_every_problem() {
    let mesh = set("mesh", json!({"containers": [{"name": "proxy", "image": "p:1"}]}));
    let rule = SidecarSetRule { caches: Caches::fixed(vec![mesh.clone()], vec![], vec![]) };
    let mut mine = set("mine", json!({"selector": {}, "containers": [{"name": "proxy", "image": "p:2"}]}));
    mine.metadata.resource_version = None;
    let response = rule.review(&request("CREATE", &mine, None));
    assert!(!response.allowed);
    let message = &response.result.message;
    assert!(message.starts_with("SidecarSet mine: spec.selector is empty"), "{message}");
    assert!(message.contains("; container \"proxy\" is also injected by SidecarSet mesh"), "{message}");
    // The update of mesh itself to a new image is fine.
    let mut newer = mesh.clone();
    newer.spec.containers[0].image = Some("p:3".into());
    assert!(rule.review(&request("UPDATE", &newer, Some(&mesh))).allowed);
    // An unchanged spec passes even when it is invalid today (metadata writes stay possible).
    assert!(rule.review(&request("UPDATE", &mine, Some(&mine))).allowed);
    let unsynced = SidecarSetRule { caches: Caches::fixed(vec![], vec![], vec![]).unsynced() };
    assert!(unsynced.review(&request("CREATE", &newer, None)).result.message.contains("has not loaded"));
}
