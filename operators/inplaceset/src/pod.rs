//! The pod an InplaceSet creates for an ordinal.

use std::collections::BTreeMap;

use berth_api::{InplaceSet, keys};
use k8s_openapi::api::core::v1::{Pod, PodReadinessGate, PodTemplateSpec};
use kube::{Resource, ResourceExt};

/// Pod `<set>-<ordinal>` from `template` at `revision`: the template's
/// metadata plus the revision, ordinal and set labels, an owner reference,
/// and the in-place readiness gate.
pub fn new_pod(set: &InplaceSet, ordinal: i32, revision: &str, template: &PodTemplateSpec) -> Pod {
    let name = format!("{}-{ordinal}", set.name_any());
    let mut metadata = template.metadata.clone().unwrap_or_default();
    let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(keys::CONTROLLER_REVISION_HASH.into(), revision.into());
    labels.insert(keys::POD_INDEX.into(), ordinal.to_string());
    labels.insert(keys::INPLACESET_NAME.into(), set.name_any());
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
    Pod { metadata, spec: Some(spec), status: None }
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
        let pod = new_pod(&set, 3, "web-abc", &set.spec.template);
        assert_eq!(pod.metadata.name.as_deref(), Some("web-3"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("prod"));
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels["app"], "web");
        assert_eq!(labels["controller-revision-hash"], "web-abc");
        assert_eq!(labels["apps.kubernetes.io/pod-index"], "3");
        assert_eq!(labels["berth.dev/inplaceset"], "web");
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("InplaceSet", "u-1", Some(true)));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.readiness_gates.unwrap()[0].condition_type, "berth.dev/InPlaceUpdateReady");
        assert_eq!(spec.hostname.as_deref(), Some("web-3"));
    }
}
