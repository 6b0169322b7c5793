//! `InplaceSet`: an ordered, StatefulSet-like workload whose pods are updated
//! in place (DESIGN.md §3). The controller arrives with its own issue; these
//! are the fields it reads, with the descriptions `kubectl explain` prints.

mod rollout;
mod storage;

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{PersistentVolumeClaim, PodTemplateSpec},
    apimachinery::pkg::{
        apis::meta::v1::{Condition, LabelSelector, Time},
        util::intstr::IntOrString,
    },
};
use kube::{CustomResource, KubeSchema};
pub use rollout::{Batch, BatchPause, PriorityWeight, RetryPolicy, RolloutPlan, ScaleStrategy, UpdatePriority};
use serde::{Deserialize, Serialize};
pub use storage::{ClaimRetention, ClaimRetentionPolicy, claim_name, claim_ordinal, mount_claims};

/// CEL rule for a count-or-percent field: a non-negative integer or "N%" with 0 ≤ N ≤ 100.
pub(crate) const COUNT_OR_PERCENT: &str = "type(self) == int ? self >= 0 : self.matches('^(100|[1-9]?[0-9])%$')";
pub(crate) const COUNT_OR_PERCENT_MESSAGE: &str =
    "must be a non-negative integer or a percentage from 0% to 100%, such as 3 or 25%";

/// An ordered set of pods, like a StatefulSet, whose image and metadata changes
/// are applied in place: pods keep their node, IP, volumes and UID.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "apps.berth.dev",
    version = "v1alpha1",
    kind = "InplaceSet",
    namespaced,
    shortname = "ips",
    category = "all",
    category = "berth",
    status = "InplaceSetStatus",
    doc = "InplaceSet is an ordered, StatefulSet-like workload whose pods are updated in place: an image or metadata change keeps each pod on its node with its IP, volumes and UID.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.labelSelector"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired number of pods"
    ),
    printcolumn(name = "Current", type_ = "integer", json_path = ".status.replicas", description = "Pods that exist"),
    printcolumn(
        name = "Updated",
        type_ = "integer",
        json_path = ".status.updatedReplicas",
        description = "Pods at the update revision"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Pods that are Ready"
    ),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.availableReplicas",
        description = "Pods Ready for at least minReadySeconds"
    ),
    printcolumn(
        name = "Paused",
        type_ = "boolean",
        json_path = ".spec.updateStrategy.paused",
        priority = 1,
        description = "Whether the rollout is paused"
    ),
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".status.updateRevision",
        priority = 1,
        description = "Revision the set is rolling to"
    ),
    printcolumn(
        name = "Batch",
        type_ = "integer",
        json_path = ".status.rollout.currentBatch",
        priority = 1,
        description = "Rollout plan batch in progress (0-based)"
    ),
    printcolumn(
        name = "Rollout",
        type_ = "string",
        json_path = ".status.rollout.state",
        priority = 1,
        description = "Rollout plan state"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
// A field rule on volumeClaimTemplates runs only when old and new both have it;
// this one catches adding or removing the list.
#[x_kube(validation = kube::core::Rule::new(
    "has(self.volumeClaimTemplates) == has(oldSelf.volumeClaimTemplates)"
).message("spec.volumeClaimTemplates is immutable"))]
pub struct InplaceSetSpec {
    /// Desired number of pods. Defaults to 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// Label query over the pods this set owns. Must match the template's labels (checked by
    /// the validating webhook: as a CEL rule over two label maps it exceeds the apiserver's
    /// cost budget). Immutable.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.selector is immutable"))]
    pub selector: LabelSelector,

    /// Pod template. A change to it creates a new revision, rolled out per updateStrategy.
    pub template: PodTemplateSpec,

    /// How pods are created and deleted: OrderedReady (one at a time, by ordinal, as a
    /// StatefulSet) or Parallel. Immutable.
    #[serde(default)]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.podManagementPolicy is immutable"))]
    pub pod_management_policy: PodManagementPolicy,

    /// How a new revision replaces pods.
    #[serde(default)]
    pub update_strategy: UpdateStrategy,

    /// Hooks that hold a pod at points of its life until another party releases it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,

    /// Numbering of the pods. Pods are named `<set>-<ordinal>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinals: Option<Ordinals>,

    /// Ordinals never used: the set skips them and takes the next ones, so
    /// `replicas` pods still run. Adding a running pod's ordinal here removes
    /// that pod (and starts one at the next free ordinal).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserve_ordinals: Vec<i32>,

    /// Seconds a new or updated pod must be Ready before it counts as available. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_ready_seconds: Option<i32>,

    /// Number of old revisions (ControllerRevisions) kept for rollback. Defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub revision_history_limit: Option<i32>,

    /// Claims each pod gets, named `<claim>-<set>-<ordinal>` and mounted as the volume of the
    /// claim's name; a pod recreated at its ordinal gets the same claims back. Immutable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("spec.volumeClaimTemplates is immutable"))]
    pub volume_claim_templates: Vec<PersistentVolumeClaim>,

    /// Whether claims from volumeClaimTemplates are kept when the set is deleted or scaled down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_retention_policy: Option<ClaimRetentionPolicy>,

    /// Seconds a rollout may go without progress (a pod updated or becoming available) before
    /// the Progressing condition turns False with reason ProgressDeadlineExceeded. Defaults to 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: Option<i32>,

    /// Requests to delete particular pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_strategy: Option<ScaleStrategy>,

    /// Roll out in batches with pauses, and roll back if a batch fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_plan: Option<RolloutPlan>,

    /// Recreate a pod that stays unschedulable or Failed, avoiding the nodes it failed on.
    /// Off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on_other_nodes: Option<RetryPolicy>,
}

fn default_replicas() -> i32 {
    1
}

/// Lifecycle hooks, one per held state of the `berth.dev/lifecycle-state` machine.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    /// Holds a new pod in PreparingNormal (not Ready) until released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_normal: Option<LifecycleHook>,
    /// Holds a pod chosen for an in-place update in PreparingUpdate, still serving, until released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_update: Option<LifecycleHook>,
    /// Holds an updated pod in Updated until released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_update: Option<LifecycleHook>,
    /// Holds a pod chosen for scale-down in PreparingDelete until released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_delete: Option<LifecycleHook>,
}

/// When a pod enters the hook's state the manager adds these labels and
/// finalizers to it; the pod stays in that state until all of them are removed
/// (by the user's own controller, or by hand).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleHook {
    /// Labels added to the pod; removing (or changing) each releases it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Finalizers added to the pod; removing each releases it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}

impl LifecycleHook {
    /// Whether a pod with these labels and finalizers has been released.
    pub fn released(&self, labels: &BTreeMap<String, String>, finalizers: &[String]) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) != Some(v))
            && !self.finalizers.iter().any(|f| finalizers.contains(f))
    }
}

/// Numbering of the pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Ordinals {
    /// The first ordinal. Defaults to 0.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub start: i32,
}

impl InplaceSetSpec {
    /// The ordinals `replicas` pods run at: from `ordinals.start` up,
    /// skipping `reserveOrdinals`. The partition counts positions in this list.
    pub fn ordinals(&self) -> Vec<i32> {
        let start = self.ordinals.as_ref().map_or(0, |o| o.start.max(0));
        (start..).filter(|o| !self.reserve_ordinals.contains(o)).take(self.replicas.max(0) as usize).collect()
    }
}

/// Order in which pods are created and deleted.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodManagementPolicy {
    /// One pod at a time, in ordinal order, each Ready before the next.
    #[default]
    OrderedReady,
    /// All at once, without waiting for readiness.
    Parallel,
}

/// How a new revision replaces pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// Recreate (delete and create each pod), InPlaceIfPossible (in place when the change
    /// allows it, else recreate), InPlaceOnly (in place, or refuse the change with a
    /// condition), or OnDelete (update only pods the user deletes). Defaults to InPlaceIfPossible.
    #[serde(default, rename = "type")]
    pub type_: UpdateStrategyType,

    /// The first `partition` pods in ordinal order keep the old revision: a count, or a percent
    /// of replicas (a percent below 100% never rounds down to zero updated pods). Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(COUNT_OR_PERCENT).message(COUNT_OR_PERCENT_MESSAGE))]
    #[schemars(extend("maxLength" = 4))]
    pub partition: Option<IntOrString>,

    /// Most pods that may be unavailable during an update: a count or a percent of replicas.
    /// Unavailable: not Ready (or Ready for less than minReadySeconds), its
    /// berth.dev/InPlaceUpdateReady gate not True, terminating, or mid-update. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(COUNT_OR_PERCENT).message(COUNT_OR_PERCENT_MESSAGE))]
    #[schemars(extend("maxLength" = 4))]
    pub max_unavailable: Option<IntOrString>,

    /// Extra pods allowed above replicas while pods are recreated for an update (not for
    /// in-place updates, which need none): a count or percent of replicas, rounded up. Surge pods
    /// run at the update revision at the ordinals after the last one, and are removed once the
    /// recreated pods are available. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(COUNT_OR_PERCENT).message(COUNT_OR_PERCENT_MESSAGE))]
    #[schemars(extend("maxLength" = 4))]
    pub max_surge: Option<IntOrString>,

    /// Stops the rollout where it is; pods already updated stay updated.
    #[serde(default)]
    pub paused: bool,

    /// Which pods update first; by default the highest ordinal first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<UpdatePriority>,

    /// How in-place updates are carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_place_update_strategy: Option<InPlaceUpdateStrategy>,
}

/// How in-place updates are carried out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InPlaceUpdateStrategy {
    /// Seconds between taking a pod out of Service endpoints (its readiness gate goes False)
    /// and changing its containers, so that connections drain. Defaults to 0.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub grace_period_seconds: i32,
}

/// How a pod moves to a new revision.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpdateStrategyType {
    /// Delete the pod and create it again from the new revision.
    Recreate,
    /// Update in place when only images, labels or annotations changed; otherwise recreate.
    #[default]
    InPlaceIfPossible,
    /// Update in place only; a change that cannot be made in place is refused with a condition.
    InPlaceOnly,
    /// Update a pod only when the user deletes it.
    OnDelete,
}

/// Observed state of an InplaceSet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InplaceSetStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Pods that are Ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods Ready for at least minReadySeconds.
    #[serde(default)]
    pub available_replicas: i32,
    /// Pods at the update revision.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Pods at the update revision that are Ready.
    #[serde(default)]
    pub updated_ready_replicas: i32,
    /// Pods that will run the update revision when the rollout completes: replicas minus the partition.
    #[serde(default)]
    pub expected_updated_replicas: i32,
    /// Revision of the pods not yet updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// Revision the set is rolling to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// Bumped when a revision name collides, to keep revision names unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
    /// Serialized label selector, for the scale subresource (HPA, kubectl scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// When the rollout last made progress: a pod updated, or one becoming available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<Time>,
    /// Where a rollout plan stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Pods recreated on other nodes by retryOnOtherNodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<RetryRecord>,
    /// Progressing, Available, Paused, FailedCreate, FailedUpdate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Where a rollout plan stands.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The revision this rollout moves to; a new revision starts the plan again.
    pub revision: String,
    /// Index (0-based) of the batch in progress or paused after.
    pub current_batch: i32,
    /// Progressing, Paused (after a batch), Succeeded, Failed or RolledBack.
    pub state: String,
    /// When the current batch started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_started_at: Option<Time>,
    /// When every pod of the current batch became available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_ready_at: Option<Time>,
    /// Revision the pods were rolled back to after a failed batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_to: Option<String>,
    /// Why the rollout stopped, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One ordinal recreated away from nodes it could not run on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetryRecord {
    /// The pod.
    pub pod: String,
    /// Times it was recreated.
    pub attempts: i32,
    /// Nodes it is kept off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoided_nodes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(replicas: i32, start: Option<i32>, reserved: Vec<i32>) -> InplaceSetSpec {
        let mut s: InplaceSetSpec = serde_json::from_value(serde_json::json!({
            "replicas": replicas, "selector": {}, "template": {}
        }))
        .unwrap();
        s.ordinals = start.map(|start| Ordinals { start });
        s.reserve_ordinals = reserved;
        s
    }

    #[test]
    fn a_hook_is_released_once_its_labels_and_finalizers_are_gone() {
        let hook = LifecycleHook {
            labels: BTreeMap::from([("hold".into(), "yes".into())]),
            finalizers: vec!["ex.com/drain".into()],
        };
        let labels = BTreeMap::from([("hold".to_string(), "yes".to_string())]);
        let fin = vec!["ex.com/drain".to_string()];
        assert!(!hook.released(&labels, &fin));
        assert!(!hook.released(&BTreeMap::new(), &fin));
        assert!(!hook.released(&labels, &[]));
        assert!(hook.released(&BTreeMap::from([("hold".into(), "no".into())]), &[]));
        assert!(LifecycleHook::default().released(&labels, &fin));
    }

    #[test]
    fn ordinals_start_at_start_and_skip_reserved_ones() {
        assert_eq!(spec(3, None, vec![]).ordinals(), [0, 1, 2]);
        assert_eq!(spec(3, Some(5), vec![]).ordinals(), [5, 6, 7]);
        assert_eq!(spec(3, None, vec![1, 3]).ordinals(), [0, 2, 4]);
        assert_eq!(spec(2, Some(10), vec![10]).ordinals(), [11, 12]);
        assert!(spec(0, None, vec![0]).ordinals().is_empty());
    }
}
