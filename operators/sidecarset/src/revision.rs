//! Naming a SidecarSet's injected content: a hash over what goes into pods,
//! and the same hash with images left out (equal: only images changed, which
//! can be upgraded in place).

use berth_api::{SidecarSetSpec, sidecarset::InjectedRevision};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// What injection puts into a pod; a change to any of it is a new revision.
fn injected_content(spec: &SidecarSetSpec) -> Value {
    json!({
        "containers": spec.containers,
        "initContainers": spec.init_containers,
        "volumes": spec.volumes,
        "shareVolumePolicy": spec.share_volume_policy,
        "transferEnv": spec.transfer_env,
    })
}

fn hash(value: &Value, collision_count: i32) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(value).expect("JSON serializes"));
    if collision_count > 0 {
        hasher.update(collision_count.to_be_bytes());
    }
    hasher.finalize()[..5].iter().map(|b| format!("{b:02x}")).collect()
}

/// The revision `<sidecarset>-<hash>` of `spec`, its image-less hash, and
/// the names of the containers it injects.
pub fn revision(name: &str, spec: &SidecarSetSpec, collision_count: i32) -> InjectedRevision {
    let content = injected_content(spec);
    let mut without_image = content.clone();
    for list in ["containers", "initContainers"] {
        for container in without_image[list].as_array_mut().into_iter().flatten() {
            container["image"] = Value::Null;
        }
    }
    InjectedRevision {
        revision: format!("{name}-{}", hash(&content, collision_count)),
        without_image: hash(&without_image, 0),
        containers: spec.init_containers.iter().chain(&spec.containers).map(|c| c.name.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(image: &str, env: &str) -> SidecarSetSpec {
        serde_json::from_value(json!({
            "selector": {"matchLabels": {"app": "web"}},
            "containers": [{"name": "log", "image": image, "env": [{"name": "LEVEL", "value": env}]}],
            "initContainers": [{"name": "proxy", "image": "proxy:1", "restartPolicy": "Always"}]
        }))
        .unwrap()
    }

    #[test]
    fn an_image_change_keeps_the_image_less_hash_and_anything_else_changes_it() {
        let base = revision("logs", &spec("log:1", "info"), 0);
        assert!(base.revision.starts_with("logs-") && base.revision.len() == "logs-".len() + 10);
        assert_eq!(base.containers, ["proxy", "log"]);
        let image = revision("logs", &spec("log:2", "info"), 0);
        assert_ne!(image.revision, base.revision);
        assert_eq!(image.without_image, base.without_image, "only the image changed");
        let env = revision("logs", &spec("log:1", "debug"), 0);
        assert_ne!(env.without_image, base.without_image, "an env change cannot go in place");
        assert_eq!(revision("logs", &spec("log:1", "info"), 0), base, "stable");
        assert_ne!(revision("logs", &spec("log:1", "info"), 1).revision, base.revision, "collision count");
    }
}
