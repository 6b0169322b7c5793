//! Names for template revisions: a hash of the template, as the
//! `controller-revision-hash` label and ControllerRevision names use.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use sha2::{Digest, Sha256};

/// A stable 10-character hash of `template`. `collision_count` (from the
/// workload's status) changes the hash when two templates would collide.
pub fn template_hash(template: &PodTemplateSpec, collision_count: i32) -> String {
    // k8s-openapi serializes struct fields in a fixed order and maps sorted.
    let bytes = serde_json::to_vec(template).expect("PodTemplateSpec serializes");
    let mut hasher = Sha256::new();
    hasher.update(&bytes);
    if collision_count > 0 {
        hasher.update(collision_count.to_be_bytes());
    }
    hasher.finalize()[..5].iter().map(|b| format!("{b:02x}")).collect()
}

/// The revision name of a workload's template: `<workload>-<hash>`.
pub fn revision_name(workload: &str, template: &PodTemplateSpec, collision_count: i32) -> String {
    format!("{workload}-{}", template_hash(template, collision_count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"b": "2", "a": "1"}},
            "spec": {"containers": [{"name": "app", "image": image}]}
        }))
        .unwrap()
    }

    #[test]
    fn equal_templates_hash_equal_and_changes_do_not() {
        assert_eq!(template_hash(&template("web:1"), 0), template_hash(&template("web:1"), 0));
        assert_ne!(template_hash(&template("web:1"), 0), template_hash(&template("web:2"), 0));
        assert_ne!(template_hash(&template("web:1"), 0), template_hash(&template("web:1"), 1));
    }

    #[test]
    fn the_hash_is_a_valid_label_value_and_does_not_drift() {
        let hash = template_hash(&template("web:1"), 0);
        assert_eq!(hash.len(), 10);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        // Pinned: a different value would relabel every pod of every set on upgrade.
        assert_eq!(revision_name("web", &template("web:1"), 0), format!("web-{hash}"));
        assert_eq!(hash, "43a0dbe37a");
    }
}
