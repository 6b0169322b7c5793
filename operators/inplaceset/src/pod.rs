//! The pod an InplaceSet creates for an ordinal.

use std::collections::BTreeMap;

use berth_api::{
    InplaceSet,
    inplaceset::{ClaimRetention, claim_name, mount_claims},
    keys,
};
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaim, Pod,
    PodReadinessGate, PodTemplateSpec,
};
use kube::{Resource, ResourceExt};

/// Pod `<set>-<ordinal>` from `template` at `revision`: the template's
/// metadata plus the revision, ordinal and set labels, an owner reference,
/// the in-place readiness gate, its claims mounted, and kept off `avoid_nodes`.
pub fn new_pod(
    set: &InplaceSet,
    ordinal: i32,
    revision: &str,
    template: &PodTemplateSpec,
    avoid_nodes: &[String],
) -> Pod {
    let name = format!("{}-{ordinal}", set.name_any());
    let mut template = template.clone();
    mount_claims(&mut template, &set.spec.volume_claim_templates, &set.name_any(), ordinal);
    let mut metadata = template.metadata.clone().unwrap_or_default();
    let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(keys::CONTROLLER_REVISION_HASH.into(), revision.into());
    labels.insert(keys::POD_INDEX.into(), ordinal.to_string());
    labels.insert(keys::INPLACESET_NAME.into(), set.name_any());
    labels.insert(keys::MANAGED.into(), "true".into());
    // A preNormal hook holds the new pod (not Ready) until released.
    let pre_normal = set.spec.lifecycle.as_ref().and_then(|l| l.pre_normal.as_ref());
    if let Some(hook) = pre_normal {
        labels.extend(hook.labels.clone());
        metadata.finalizers.get_or_insert_with(Vec::new).extend(hook.finalizers.clone());
    }
    metadata.annotations.get_or_insert_with(BTreeMap::new).insert(
        keys::LIFECYCLE_STATE.into(),
        berth_api::lifecycle::LifecycleState::initial(pre_normal.is_some()).as_str().into(),
    );
    metadata.name = Some(name.clone());
    metadata.generate_name = None;
    metadata.namespace = set.namespace();
    metadata.owner_references = set.controller_owner_ref(&()).map(|r| vec![r]);
    let mut spec = template.spec.clone().unwrap_or_default();
    let gates = spec.readiness_gates.get_or_insert_with(Vec::new);
    if !gates.iter().any(|g| g.condition_type == keys::INPLACE_UPDATE_READY) {
        gates.push(PodReadinessGate { condition_type: keys::INPLACE_UPDATE_READY.into() });
    }
    spec.hostname.get_or_insert(name);
    if !avoid_nodes.is_empty() {
        avoid(spec.affinity.get_or_insert_with(Affinity::default), avoid_nodes);
    }
    Pod { metadata, spec: Some(spec), status: None }
}

/// Adds "not on these nodes" to every required node-affinity term (terms are
/// ORed, so each needs it), or one term saying only that.
fn avoid(affinity: &mut Affinity, nodes: &[String]) {
    let not_these =
        NodeSelectorRequirement { key: "metadata.name".into(), operator: "NotIn".into(), values: Some(nodes.to_vec()) };
    let required = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default)
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(NodeSelector::default);
    if required.node_selector_terms.is_empty() {
        required.node_selector_terms.push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        term.match_fields.get_or_insert_with(Vec::new).push(not_these.clone());
    }
}

/// Claim `<template>-<set>-<ordinal>`, labelled with the set and ordinal, and
/// owned by the set when `whenDeleted` is Delete.
pub fn new_claim(set: &InplaceSet, template: &PersistentVolumeClaim, ordinal: i32) -> PersistentVolumeClaim {
    let mut claim = template.clone();
    claim.metadata.name = Some(claim_name(template, &set.name_any(), ordinal));
    claim.metadata.namespace = set.namespace();
    let labels = claim.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(keys::INPLACESET_NAME.into(), set.name_any());
    labels.insert(keys::POD_INDEX.into(), ordinal.to_string());
    let policy = set.spec.persistent_volume_claim_retention_policy.clone().unwrap_or_default();
    claim.metadata.owner_references =
        set.controller_owner_ref(&()).filter(|_| policy.when_deleted == ClaimRetention::Delete).map(|mut r| {
            r.controller = Some(false);
            vec![r]
        });
    claim.status = None;
    claim
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_pod_carries_identity_ownership_and_the_readiness_gate() {
        let set: InplaceSet = serde_json::from_value(json!({
            "apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet",
            "metadata": {"name": "web", "namespace": "prod", "uid": "u-1"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "web:1"}]}}}
        }))
        .unwrap();
        let pod = new_pod(&set, 3, "web-abc", &set.spec.template, &[]);
        assert_eq!(pod.metadata.name.as_deref(), Some("web-3"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("prod"));
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels["app"], "web");
        assert_eq!(labels["controller-revision-hash"], "web-abc");
        assert_eq!(labels["apps.kubernetes.io/pod-index"], "3");
        assert_eq!(labels["berth.dev/inplaceset"], "web");
        assert_eq!(labels["berth.dev/managed"], "true", "seen by the shared pod watch");
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("InplaceSet", "u-1", Some(true)));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.readiness_gates.unwrap()[0].condition_type, "berth.dev/InPlaceUpdateReady");
        assert_eq!(spec.hostname.as_deref(), Some("web-3"));
    }

    fn set_with(extra: serde_json::Value) -> InplaceSet {
        let mut spec = json!({"selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "web:1"}]}}});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet",
            "metadata": {"name": "web", "namespace": "prod", "uid": "u-1"}, "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn a_retried_pod_is_kept_off_the_nodes_it_failed_on_in_every_affinity_term() {
        let set = set_with(json!({}));
        let mut template = set.spec.template.clone();
        let pod = new_pod(&set, 0, "r", &template, &["node-a".into(), "node-b".into()]);
        let terms = pod.spec.unwrap().affinity.unwrap().node_affinity.unwrap();
        let terms = terms.required_during_scheduling_ignored_during_execution.unwrap().node_selector_terms;
        assert_eq!(terms.len(), 1);
        let field = &terms[0].match_fields.as_ref().unwrap()[0];
        assert_eq!((field.key.as_str(), field.operator.as_str()), ("metadata.name", "NotIn"));
        assert_eq!(field.values.as_deref(), Some(&["node-a".to_string(), "node-b".to_string()][..]));

        template.spec.as_mut().unwrap().affinity = Some(
            serde_json::from_value(json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}
            ]}}}))
            .unwrap(),
        );
        let pod = new_pod(&set, 0, "r", &template, &["node-a".into()]);
        let terms = pod.spec.unwrap().affinity.unwrap().node_affinity.unwrap();
        let terms = terms.required_during_scheduling_ignored_during_execution.unwrap().node_selector_terms;
        assert_eq!(terms.len(), 2, "the user's terms stay");
        assert!(
            terms
                .iter()
                .all(|t| t.match_fields.as_ref().unwrap()[0].values.as_deref() == Some(&["node-a".to_string()][..]))
        );
        assert!(terms.iter().all(|t| t.match_expressions.is_some()));
    }

    #[test]
    fn claims_are_mounted_named_labelled_and_owned_per_policy() {
        let claim = json!([{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}}]);
        let set = set_with(json!({"volumeClaimTemplates": claim}));
        let pod = new_pod(&set, 2, "r", &set.spec.template, &[]);
        let volume = &pod.spec.unwrap().volumes.unwrap()[0];
        assert_eq!(volume.persistent_volume_claim.as_ref().unwrap().claim_name, "data-web-2");
        let pvc = new_claim(&set, &set.spec.volume_claim_templates[0], 2);
        assert_eq!(pvc.metadata.name.as_deref(), Some("data-web-2"));
        assert_eq!(pvc.metadata.labels.as_ref().unwrap()["apps.kubernetes.io/pod-index"], "2");
        assert!(pvc.metadata.owner_references.is_none(), "Retain by default");
        let set = set_with(json!({"volumeClaimTemplates": claim,
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}}));
        let owners = new_claim(&set, &set.spec.volume_claim_templates[0], 2).metadata.owner_references.unwrap();
        assert_eq!((owners[0].uid.as_str(), owners[0].controller), ("u-1", Some(false)));
    }
}
