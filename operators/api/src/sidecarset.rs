//! `SidecarSet`: sidecar containers injected into matching pods and upgraded
//! in place (DESIGN.md §4). Cluster-scoped, as it spans namespaces.

use k8s_openapi::{
    api::core::v1::{Container, Volume},
    apimachinery::pkg::{
        apis::meta::v1::{Condition, LabelSelector},
        util::intstr::IntOrString,
    },
};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Sidecar containers injected into every pod the selectors match, and
/// upgraded in place without restarting the application containers.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "apps.berth.dev",
    version = "v1alpha1",
    kind = "SidecarSet",
    shortname = "scs",
    category = "berth",
    status = "SidecarSetStatus",
    doc = "SidecarSet injects sidecar containers into the pods its selectors match, at pod creation, and upgrades them in place when they change. Deleting it stops injection; running pods keep their sidecars until recreated.",
    printcolumn(
        name = "Matched",
        type_ = "integer",
        json_path = ".status.matchedPods",
        description = "Pods the selectors match"
    ),
    printcolumn(
        name = "Updated",
        type_ = "integer",
        json_path = ".status.updatedPods",
        description = "Matched pods running the latest sidecars"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyPods",
        description = "Matched pods that are Ready"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSetSpec {
    /// Pods whose labels match get the sidecars.
    pub selector: LabelSelector,

    /// Limits injection to namespaces whose labels match. Empty means every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Sidecar containers to inject. Names must not clash with the pod's own containers.
    #[serde(default)]
    pub containers: Vec<Container>,

    /// Init containers to inject; one with restartPolicy Always is a native sidecar.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,

    /// Volumes the sidecars need, added to the pod unless it has one of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,

    /// How matched pods move to a changed sidecar.
    #[serde(default)]
    pub update_strategy: SidecarSetUpdateStrategy,
}

/// How matched pods move to a changed sidecar.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSetUpdateStrategy {
    /// RollingUpdate (upgrade running pods in place) or NotUpdate (only new pods get the
    /// change). Defaults to RollingUpdate.
    #[serde(default, rename = "type")]
    pub type_: SidecarSetUpdateStrategyType,
    /// Number or percent of matched pods kept at the old sidecar revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<IntOrString>,
    /// Most matched pods whose sidecar may be upgrading at once: a count or a percent. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// Stops upgrading running pods; injection into new pods goes on.
    #[serde(default)]
    pub paused: bool,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SidecarSetUpdateStrategyType {
    /// Only newly created pods get a changed sidecar.
    NotUpdate,
    /// Running pods are upgraded in place, honouring partition and maxUnavailable.
    #[default]
    RollingUpdate,
}

/// Observed state of a SidecarSet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSetStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods the selectors match.
    #[serde(default)]
    pub matched_pods: i32,
    /// Matched pods running the latest sidecars.
    #[serde(default)]
    pub updated_pods: i32,
    /// Matched pods that are Ready.
    #[serde(default)]
    pub ready_pods: i32,
    /// Matched pods running the latest sidecars and Ready.
    #[serde(default)]
    pub updated_ready_pods: i32,
    /// Revision hash of the current sidecar spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
