//! Payload of the [`crate::keys::INPLACE_UPDATE_STATE`] annotation: what an
//! in-place update in flight changed and what the containers ran before, so
//! completion can be judged from the pod alone (and survives a manager restart).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InPlaceUpdateState {
    /// Revision (controller-revision-hash) the pod is being updated to.
    pub revision: String,
    /// When the update was written to the pod (RFC 3339).
    pub update_timestamp: String,
    /// Changed containers → what each ran before the update. A container is
    /// updated once it runs as a new container (or reports a new image ID) and is ready.
    pub containers: BTreeMap<String, ContainerBefore>,
    /// This update's first phase is a resize request (berth.dev/resize) for a
    /// cpu/memory change: the images and labels follow once it is Applied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resize: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerBefore {
    #[serde(default)]
    pub image_id: String,
    #[serde(default)]
    pub container_id: String,
}

impl InPlaceUpdateState {
    pub fn parse(value: &str) -> Result<Self, String> {
        serde_json::from_str(value)
            .map_err(|e| format!("invalid {} annotation: {e}", crate::keys::INPLACE_UPDATE_STATE))
    }

    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("plain struct serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_the_annotation_on_error() {
        let state = InPlaceUpdateState {
            revision: "web-7c9f".into(),
            update_timestamp: "2026-11-22T10:00:00Z".into(),
            containers: BTreeMap::from([(
                "app".into(),
                ContainerBefore { image_id: "sha256:aa".into(), container_id: "containerd://1".into() },
            )]),
            resize: false,
        };
        assert!(!state.to_annotation().contains("resize"), "absent unless set: older pods parse unchanged");
        assert_eq!(InPlaceUpdateState::parse(&state.to_annotation()), Ok(state));
        let err = InPlaceUpdateState::parse("{").unwrap_err();
        assert!(err.starts_with("invalid berth.dev/inplace-update-state annotation:"), "{err}");
    }
}
