//! Per-pod volumes: `volumeClaimTemplates` and what happens to their claims.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodTemplateSpec, Volume};
use serde::{Deserialize, Serialize};

/// What happens to a pod's PersistentVolumeClaims when the set is deleted or scaled down.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRetentionPolicy {
    /// When the InplaceSet is deleted: Retain (the default) keeps the claims; Delete removes them
    /// (the claims are owned by the set, so the garbage collector deletes them with it).
    #[serde(default)]
    pub when_deleted: ClaimRetention,
    /// When a pod is removed because replicas went down (or its ordinal was reserved): Retain (the
    /// default) keeps its claims for a later scale-up; Delete removes them once the pod is gone.
    #[serde(default)]
    pub when_scaled: ClaimRetention,
}

/// Keep or delete a claim.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClaimRetention {
    /// Keep the claim.
    #[default]
    Retain,
    /// Delete the claim.
    Delete,
}

/// Name of the claim of `template` for pod `<set>-<ordinal>`, as a StatefulSet names it.
pub fn claim_name(template: &PersistentVolumeClaim, set: &str, ordinal: i32) -> String {
    format!("{}-{set}-{ordinal}", template.metadata.name.as_deref().unwrap_or_default())
}

/// The ordinal a claim named `<template>-<set>-<ordinal>` belongs to.
pub fn claim_ordinal(claim: &str, template: &str, set: &str) -> Option<i32> {
    claim
        .strip_prefix(template)?
        .strip_prefix('-')?
        .strip_prefix(set)?
        .strip_prefix('-')?
        .parse()
        .ok()
        .filter(|o| *o >= 0)
}

/// Mounts the claims of `ordinal` into `template`: a volume per claim template,
/// replacing a template volume of the same name.
pub fn mount_claims(template: &mut PodTemplateSpec, claims: &[PersistentVolumeClaim], set: &str, ordinal: i32) {
    if claims.is_empty() {
        return;
    }
    let spec = template.spec.get_or_insert_with(Default::default);
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    for claim in claims {
        let name = claim.metadata.name.clone().unwrap_or_default();
        volumes.retain(|v| v.name != name);
        volumes.push(Volume {
            name,
            persistent_volume_claim: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(claim, set, ordinal),
                read_only: None,
            }),
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claim(name: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"]}})).unwrap()
    }

    #[test]
    fn claims_are_named_and_parsed_like_a_statefulsets() {
        assert_eq!(claim_name(&claim("data"), "web", 3), "data-web-3");
        assert_eq!(claim_ordinal("data-web-3", "data", "web"), Some(3));
        assert_eq!(claim_ordinal("data-web-x", "data", "web"), None);
        assert_eq!(claim_ordinal("data-webby-3", "data", "web"), None);
        assert_eq!(claim_ordinal("logs-web-3", "data", "web"), None);
    }

    #[test]
    fn claims_replace_template_volumes_of_the_same_name() {
        let mut t: PodTemplateSpec = serde_json::from_value(json!({"spec": {"containers": [], "volumes": [
            {"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}
        ]}}))
        .unwrap();
        mount_claims(&mut t, &[claim("data"), claim("logs")], "web", 2);
        let volumes = t.spec.unwrap().volumes.unwrap();
        let names: Vec<_> = volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["tmp", "data", "logs"]);
        assert_eq!(volumes[1].persistent_volume_claim.as_ref().unwrap().claim_name, "data-web-2");
        assert!(volumes[1].empty_dir.is_none());
    }
}
