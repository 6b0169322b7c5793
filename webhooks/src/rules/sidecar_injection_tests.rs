use k8s_openapi::api::{apps::v1::ControllerRevision, core::v1::Namespace};
use kube::core::admission::AdmissionReview;
use serde_json::{Value, json};

use super::*;

fn set(name: &str, spec: Value) -> SidecarSet {
    let mut spec = spec;
    if spec.get("selector").is_none() {
        spec["selector"] = json!({"matchLabels": {"app": "web"}});
    }
    SidecarSet::new(name, serde_json::from_value(spec).unwrap())
}

fn pod() -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "prod", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    }))
    .unwrap()
}

fn namespace(name: &str, labels: Value) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

fn rule(sets: Vec<SidecarSet>, revisions: Vec<ControllerRevision>) -> SidecarInjectionRule {
    let namespaces = vec![namespace("prod", json!({"kubernetes.io/metadata.name": "prod", "env": "prod"}))];
    SidecarInjectionRule {
        caches: Caches::fixed(sets, namespaces, revisions),
        manager_namespace: "berth-system".into(),
    }
}

/// The pod as the apiserver has it after applying the rule's patch.
fn patched(rule: &SidecarInjectionRule, pod: &Pod, namespace: &str) -> Result<Option<(Pod, Vec<String>)>, String> {
    Ok(rule.decide(pod, namespace)?.map(|(patch, sets)| {
        let mut doc = serde_json::to_value(pod).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        (serde_json::from_value(doc).unwrap(), sets)
    }))
}

fn container_names(pod: &Pod) -> Vec<&str> {
    pod.spec.as_ref().unwrap().containers.iter().map(|c| c.name.as_str()).collect()
}

fn recorded(pod: &Pod) -> berth_api::sidecarset::InjectedRevisions {
    berth_api::sidecarset::injected_revisions(pod.metadata.annotations.as_ref()).unwrap()
}

#[test]
fn the_patch_carries_the_injection_and_nothing_else() {
    let logs = set("logs", json!({"containers": [{"name": "log", "image": "log:1"}]}));
    let rule = rule(vec![logs.clone()], vec![]);
    let (patch, sets) = rule.decide(&pod(), "prod").unwrap().unwrap();
    assert_eq!(sets, ["logs"]);
    let paths: Vec<String> = patch.0.iter().map(|op| op.path().to_string()).collect();
    assert_eq!(paths, ["/metadata/labels", "/metadata/annotations", "/spec/containers", "/spec/readinessGates"]);
    let (out, _) = patched(&rule, &pod(), "prod").unwrap().unwrap();
    assert_eq!(container_names(&out), ["app", "log"]);
    assert_eq!(out.metadata.labels.as_ref().unwrap()[keys::MANAGED], "true");
    assert_eq!(recorded(&out)["logs"], revision("logs", &logs.spec, 0));
    // Injecting the injected pod again changes nothing.
    assert!(rule.decide(&out, "prod").unwrap().is_none());
}

#[test]
fn the_collision_count_names_the_recorded_revision() {
    let mut logs = set("logs", json!({"containers": [{"name": "log", "image": "log:1"}]}));
    logs.status = Some(berth_api::sidecarset::SidecarSetStatus { collision_count: Some(2), ..Default::default() });
    let (out, _) = patched(&rule(vec![logs.clone()], vec![]), &pod(), "prod").unwrap().unwrap();
    assert_eq!(recorded(&out)["logs"], revision("logs", &logs.spec, 2));
}

#[test]
fn pods_no_set_selects_are_left_alone() {
    let db =
        set("db", json!({"selector": {"matchLabels": {"app": "db"}}, "containers": [{"name": "x", "image": "x"}]}));
    let other_ns = set(
        "dev-only",
        json!({"namespaceSelector": {"matchLabels": {"env": "dev"}}, "containers": [{"name": "y", "image": "y"}]}),
    );
    let mut deleting = set("deleting", json!({"containers": [{"name": "z", "image": "z"}]}));
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    assert!(rule(vec![db, other_ns, deleting], vec![]).decide(&pod(), "prod").unwrap().is_none());
}

#[test]
fn namespace_labels_come_from_the_cache_or_default_to_the_name() {
    let prod = set(
        "prod-only",
        json!({"namespaceSelector": {"matchLabels": {"env": "prod"}}, "containers": [{"name": "y", "image": "y"}]}),
    );
    let by_name = set(
        "by-name",
        json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "fresh"}},
               "containers": [{"name": "z", "image": "z"}]}),
    );
    let rule = rule(vec![prod, by_name], vec![]);
    assert_eq!(patched(&rule, &pod(), "prod").unwrap().unwrap().1, ["prod-only"]);
    // A namespace the cache has not seen yet.
    assert_eq!(patched(&rule, &pod(), "fresh").unwrap().unwrap().1, ["by-name"]);
}

fn stored(name: &str, set: &str, spec: &SidecarSetSpec) -> ControllerRevision {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "berth-system", "labels": {keys::SIDECARSET_NAME: set}},
        "revision": 1,
        "data": {"spec": spec, "injected": revision(set, spec, 0)}
    }))
    .unwrap()
}

#[test]
fn a_pinned_revision_injects_the_stored_content_under_the_current_selectors() {
    let old = set("logs", json!({"containers": [{"name": "log", "image": "log:1"}]}));
    let old_revision = revision("logs", &old.spec, 0);
    let mut current = set(
        "logs",
        json!({"selector": {"matchLabels": {"app": "web"}}, "containers": [{"name": "log", "image": "log:2"}],
               "injectionStrategy": {"revision": old_revision.revision}}),
    );
    // The stored revision once selected other pods: the current selector decides.
    let mut stored_spec = old.spec.clone();
    stored_spec.selector = serde_json::from_value(json!({"matchLabels": {"app": "gone"}})).unwrap();
    let rule1 = rule(vec![current.clone()], vec![stored(&old_revision.revision, "logs", &stored_spec)]);
    let (out, _) = patched(&rule1, &pod(), "prod").unwrap().unwrap();
    let log = out.spec.as_ref().unwrap().containers.iter().find(|c| c.name == "log").unwrap();
    assert_eq!(log.image.as_deref(), Some("log:1"));
    assert_eq!(recorded(&out)["logs"].revision, old_revision.revision);

    // A revision of another SidecarSet does not count; the message lists the known ones.
    let rule2 = rule(vec![current.clone()], vec![stored(&old_revision.revision, "other", &old.spec)]);
    let err = rule2.decide(&pod(), "prod").unwrap_err();
    let latest = revision("logs", &current.spec, 0).revision;
    assert_eq!(
        err,
        format!(
            "SidecarSet logs pins spec.injectionStrategy.revision {pinned}, but no ControllerRevision {pinned} \
             labelled berth.dev/sidecarset=logs exists in namespace berth-system; known revisions: {latest} (the \
             current spec). Pin one of those or remove the pin",
            pinned = old_revision.revision
        )
    );

    // Pinning the current revision needs no ControllerRevision.
    current.spec.injection_strategy.as_mut().unwrap().revision = Some(latest.clone());
    let rule3 = rule(vec![current], vec![]);
    assert_eq!(recorded(&patched(&rule3, &pod(), "prod").unwrap().unwrap().0)["logs"].revision, latest);
}

#[test]
fn conflicts_refuse_the_pod_naming_both_sets() {
    let a = set("alpha", json!({"containers": [{"name": "proxy", "image": "p:1"}]}));
    let b = set("beta", json!({"containers": [{"name": "proxy", "image": "p:2"}]}));
    let err = rule(vec![b, a], vec![]).decide(&pod(), "prod").unwrap_err();
    assert_eq!(
        err,
        "sidecar injection conflict: container \"proxy\" of SidecarSet beta clashes with container \"proxy\" of \
         SidecarSet alpha"
    );
}

#[test]
fn unloaded_caches_refuse_rather_than_skip_injection() {
    let mut rule = rule(vec![], vec![]);
    rule.caches = rule.caches.unsynced();
    assert!(rule.decide(&pod(), "prod").unwrap_err().contains("has not loaded the SidecarSets yet"));
}

fn review(operation: &str, pod: &Pod) -> AdmissionRequest<DynamicObject> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "uid-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "web-1", "namespace": "prod", "operation": operation,
            "userInfo": {"username": "alice"}, "object": pod, "dryRun": false}
    }))
    .unwrap();
    review.try_into().unwrap()
}

#[test]
fn review_answers_with_a_json_patch_on_create_only() {
    let rule = rule(vec![set("logs", json!({"containers": [{"name": "log", "image": "log:1"}]}))], vec![]);
    let mut typed = pod();
    typed.metadata.namespace = None;
    let response = rule.review(&review("CREATE", &typed));
    assert!(response.allowed);
    let patch: Value = serde_json::from_slice(response.patch.as_ref().unwrap()).unwrap();
    assert_eq!(patch[2]["op"], "add");
    assert_eq!(patch[2]["path"], "/spec/containers");
    assert_eq!(patch[2]["value"][1]["name"], "log");
    let update = rule.review(&review("UPDATE", &typed));
    assert!(update.allowed && update.patch.is_none());

    let clash = rule.review(&review(
        "CREATE",
        &serde_json::from_value(json!({
            "metadata": {"name": "web-1", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "log", "image": "mine"}]}
        }))
        .unwrap(),
    ));
    assert!(!clash.allowed);
    assert!(clash.result.message.contains("container \"log\" of SidecarSet logs clashes with the pod's own"));
}
