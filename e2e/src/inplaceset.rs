//! InplaceSet helpers shared by the InplaceSet suites.

use std::time::Duration;

use anyhow::Result;
use berth_api::InplaceSet;
use kube::Api;
use serde_json::json;

use crate::{images, wait_for};

/// Set `web` (label app=web) running containers `app` (`image`) and `log`;
/// `extra` is merged into its spec.
pub fn set(replicas: i32, image: &str, extra: serde_json::Value) -> InplaceSet {
    let mut v = json!({
        "apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": image}, {"name": "log", "image": images().0}]}
            }
        }
    });
    v["spec"].as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    serde_json::from_value(v).unwrap()
}

/// Merge patch setting the app container's image (a merge patch replaces
/// the containers list, so both containers are sent).
pub fn app_image_patch(app: &str) -> serde_json::Value {
    json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": app}, {"name": "log", "image": images().0}
    ]}}}})
}

/// Waits until set `web` has `replicas` pods, all updated and Ready, and its
/// update revision is current.
pub async fn rolled_out(sets: &Api<InplaceSet>, replicas: i32, timeout: Duration) -> Result<InplaceSet> {
    wait_for(sets, "web", timeout, "rolled out", move |s: Option<&InplaceSet>| {
        s.and_then(|s| Some((s.metadata.generation, s.status.as_ref()?))).is_some_and(|(generation, st)| {
            st.observed_generation == generation
                && st.replicas == replicas
                && st.updated_ready_replicas == replicas
                && st.current_revision.is_some()
                && st.current_revision == st.update_revision
        })
    })
    .await
}
