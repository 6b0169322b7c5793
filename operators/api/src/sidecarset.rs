//! `SidecarSet`: sidecar containers injected into matching pods and upgraded
//! in place (DESIGN.md §4). Cluster-scoped, as it spans namespaces.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Container, Volume},
    apimachinery::pkg::{
        apis::meta::v1::{Condition, LabelSelector},
        util::intstr::IntOrString,
    },
};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::inplaceset::{COUNT_OR_PERCENT, COUNT_OR_PERCENT_MESSAGE};

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

    /// Volumes the sidecars need, added to the pod. A pod volume of the same name is kept
    /// when it is identical; a different one is a conflict and the pod is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,

    /// Where the sidecars go among the pod's containers: BeforeAppContainer or AfterAppContainer
    /// (the default). Native sidecars (init containers with restartPolicy Always) always go
    /// before the pod's own init containers, so they run while those do.
    #[serde(default)]
    pub pod_inject_policy: PodInjectPolicy,

    /// Whether the sidecars also mount every volume the pod's app containers mount (e.g. a log
    /// agent reading the app's log directory). Defaults to Disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_volume_policy: Option<ShareVolumePolicy>,

    /// Environment variables copied from an app container into every sidecar (e.g. the
    /// app's name or region), unless the sidecar sets the variable itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub transfer_env: Vec<TransferEnv>,

    /// Annotations (and labels) written onto injected pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patch_pod_metadata: Vec<PatchPodMetadata>,

    /// How new pods are injected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection_strategy: Option<InjectionStrategy>,

    /// How matched pods move to a changed sidecar.
    #[serde(default)]
    pub update_strategy: SidecarSetUpdateStrategy,

    /// Number of old revisions (ControllerRevisions in the manager's namespace) kept, for
    /// pinning and rollback. Defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub revision_history_limit: Option<i32>,
}

/// Where injected containers go.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodInjectPolicy {
    /// Before the pod's own containers.
    BeforeAppContainer,
    /// After the pod's own containers.
    #[default]
    AfterAppContainer,
}

/// Whether sidecars share the app containers' volume mounts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShareVolumePolicy {
    /// Enabled: each sidecar also mounts every volume mounted by an app container (at the
    /// same path, unless the sidecar already mounts that volume or uses that path).
    #[serde(rename = "type")]
    pub type_: ShareVolumePolicyType,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShareVolumePolicyType {
    Enabled,
    #[default]
    Disabled,
}

/// One environment variable copied from an app container into the sidecars.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TransferEnv {
    /// The app container to copy from. A pod without it, or without the variable, is
    /// injected without it.
    pub source_container_name: String,
    /// The variable's name.
    pub env_name: String,
}

/// Metadata written onto injected pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PatchPodMetadata {
    /// Annotations to write.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Labels to write.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Retain (the default: a value the pod already has wins) or Overwrite.
    #[serde(default)]
    pub patch_policy: PatchPolicy,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PatchPolicy {
    /// Keep a value the pod already has.
    #[default]
    Retain,
    /// Replace it.
    Overwrite,
}

/// How new pods are injected.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InjectionStrategy {
    /// Stop injecting into new pods (running pods keep their sidecars).
    #[serde(default)]
    pub paused: bool,
    /// Inject this revision (a ControllerRevision name from status history) instead of the
    /// latest, e.g. while a new sidecar is rolled out with a partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
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
    #[x_kube(validation = kube::core::Rule::new(COUNT_OR_PERCENT).message(COUNT_OR_PERCENT_MESSAGE))]
    #[schemars(extend("maxLength" = 4))]
    pub partition: Option<IntOrString>,
    /// Most matched pods that may be unavailable while sidecars upgrade (a pod upgrading counts):
    /// a count or a percent. Unavailable: not Ready, its berth.dev/InPlaceUpdateReady gate not
    /// True, terminating, or upgrading. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(COUNT_OR_PERCENT).message(COUNT_OR_PERCENT_MESSAGE))]
    #[schemars(extend("maxLength" = 4))]
    pub max_unavailable: Option<IntOrString>,
    /// Stops upgrading running pods; injection into new pods goes on.
    #[serde(default)]
    pub paused: bool,
    /// Upgrade only matched pods whose labels this also matches (e.g. a canary group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
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
    /// Bumped when a revision name collides, to keep revision names unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
    /// Matched pods whose sidecar change cannot be made in place (only an image can): they
    /// get the new sidecar when recreated. Named in the NotInPlaceUpdatable condition.
    #[serde(default)]
    pub not_updatable_pods: i32,
    /// Updated (upgrades running), Paused, NotInPlaceUpdatable, Deleting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// What a pod records, per SidecarSet, in its [`crate::keys::SIDECARSET_REVISIONS`]
/// annotation (a JSON object keyed by SidecarSet name).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InjectedRevision {
    /// The SidecarSet revision the pod's sidecars run.
    pub revision: String,
    /// Hash of that revision with container images left out: equal hashes mean the
    /// sidecars differ only in images, which can change in place.
    pub without_image: String,
    /// Names of the containers (and init containers) this SidecarSet put in the pod.
    #[serde(default)]
    pub containers: Vec<String>,
}

/// The pod's sidecar record: SidecarSet name → what it injected.
pub type InjectedRevisions = BTreeMap<String, InjectedRevision>;

/// Reads a pod's sidecar record from its annotations; absent is empty.
pub fn injected_revisions(annotations: Option<&BTreeMap<String, String>>) -> Result<InjectedRevisions, String> {
    injected_revisions_in(annotations.and_then(|a| a.get(crate::keys::SIDECARSET_REVISIONS)).map(String::as_str))
}

/// [`injected_revisions`] from the annotation's value alone.
pub fn injected_revisions_in(raw: Option<&str>) -> Result<InjectedRevisions, String> {
    match raw {
        None => Ok(InjectedRevisions::new()),
        Some(raw) => serde_json::from_str(raw)
            .map_err(|e| format!("annotation {} is not a sidecar record: {e}", crate::keys::SIDECARSET_REVISIONS)),
    }
}
