//! How a rollout proceeds: update priority, batches, retries elsewhere, pods to delete.

use k8s_openapi::apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::{COUNT_OR_PERCENT, COUNT_OR_PERCENT_MESSAGE};

/// Which pods update first. Without it, pods update from the highest ordinal down.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpdatePriority {
    /// Each pod's priority is the sum of the weights of the terms whose selector matches its
    /// labels; higher priorities update first, ties from the highest ordinal down.
    #[serde(default)]
    pub weights: Vec<PriorityWeight>,
}

/// One weighted term of an update priority.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PriorityWeight {
    /// Added to the priority of every pod the selector matches; from -100 to 100.
    #[schemars(range(min = -100, max = 100))]
    pub weight: i32,
    /// Pods this term applies to.
    pub match_selector: LabelSelector,
}

/// A rollout in batches: each batch raises the number of updated pods, then waits for them to
/// be available and, if asked, pauses. The plan drives the partition: while it runs,
/// `updateStrategy.partition` is ignored.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPlan {
    /// The batches, in order. Each names the total number of pods at the new revision once it
    /// is done (a count or percent of replicas), so the list rises, e.g. 2, 5, 10, 20%, 50%, 100%.
    /// A last batch below 100% leaves the rest on the old revision.
    #[schemars(length(min = 1, max = 64))]
    pub batches: Vec<Batch>,
    /// Seconds a batch may take to have all its pods updated and available. If it is exceeded the
    /// rollout stops (condition Progressing=False, reason BatchDeadlineExceeded). Defaults to 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub batch_deadline_seconds: Option<i32>,
    /// When a batch misses its deadline, move every updated pod back to the previous revision,
    /// in place where possible. The spec keeps the new template; status says RolledBack until the
    /// template changes again.
    #[serde(default)]
    pub rollback_on_failure: bool,
    /// Manual approval: the number of batches allowed to start. A batch whose pause is `manual`
    /// waits until this is raised above its index (0-based), e.g. with `kubectl berth rollout
    /// resume` or a merge patch.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub approved_batches: i32,
}

/// One step of a rollout plan.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Batch {
    /// Pods at the new revision once this batch is done: a count or a percent of replicas
    /// (rounded up, so a percent above 0% updates at least one pod).
    #[x_kube(validation = kube::core::Rule::new(COUNT_OR_PERCENT).message(COUNT_OR_PERCENT_MESSAGE))]
    #[schemars(extend("maxLength" = 4))]
    pub replicas: IntOrString,
    /// Wait after this batch is available, before the next one starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<BatchPause>,
}

/// A pause after a batch: timed, or until approved.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BatchPause {
    /// Seconds to wait. Ignored when `manual` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub seconds: Option<i32>,
    /// Wait until `rolloutPlan.approvedBatches` lets the next batch start.
    #[serde(default)]
    pub manual: bool,
}

/// Recreating pods that cannot run where they are.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Seconds a pod may stay unschedulable, or Failed, before it is recreated away from the
    /// nodes it failed on. Defaults to 300.
    #[serde(default = "default_retry_after")]
    #[schemars(range(min = 1))]
    pub after_seconds: i32,
    /// Most times one ordinal is recreated this way; after that it stays as it is, reported in
    /// status. Defaults to 3.
    #[serde(default = "default_retry_attempts")]
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: i32,
}

fn default_retry_after() -> i32 {
    300
}

fn default_retry_attempts() -> i32 {
    3
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { after_seconds: default_retry_after(), max_attempts: default_retry_attempts() }
    }
}

/// Scale-related requests.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleStrategy {
    /// Names of pods to delete and create again fresh at the same ordinal (within maxUnavailable).
    /// The manager removes each name from this list once its pod is deleted. To remove a pod for
    /// good, add its ordinal to `reserveOrdinals` instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub pods_to_delete: Vec<String>,
}
