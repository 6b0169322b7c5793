//! What an admission rule is: the review function the server calls, and what
//! its webhook configuration entry needs (which requests, which objects, and
//! what the apiserver does when the server cannot answer).

use k8s_openapi::{
    api::admissionregistration::v1::RuleWithOperations, apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse},
};

/// One admission rule, served on its own path. Add a rule by implementing
/// this and listing it in [`crate::rules::all`]; the server routes to it and
/// the webhook configurations include it.
pub trait AdmissionRule: Send + Sync {
    /// The webhook's name in its configuration: a fully qualified name such as
    /// `pod-lifecycle.berth.dev`. The apiserver quotes it in every denial.
    fn name(&self) -> &'static str;
    /// URL path the server answers on, such as `/validate/pod-lifecycle`.
    fn path(&self) -> &'static str;
    /// What the webhook configuration entry needs.
    fn webhook(&self) -> WebhookSpec;
    /// The decision. Build it with [`allow`] and [`deny`]; must not block.
    fn review(&self, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse;
}

/// Whether a rule may change objects (mutating) or only judge them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Validating,
    Mutating,
}

/// What the apiserver does when the webhook cannot be reached or times out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Refuse the request: the rule guards something that must hold.
    Fail,
    /// Admit the request unchecked: availability matters more than the rule.
    Ignore,
}

impl FailurePolicy {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "Fail",
            Self::Ignore => "Ignore",
        }
    }
}

/// The configuration entry of one rule.
#[derive(Clone, Debug)]
pub struct WebhookSpec {
    pub admission: Admission,
    /// Operations and resources sent to the rule.
    pub rules: Vec<RuleWithOperations>,
    /// Namespaces sent to the rule (None: all).
    pub namespace_selector: Option<LabelSelector>,
    /// Objects sent to the rule (None: all). Keeps an outage away from
    /// objects the rule has nothing to do with.
    pub object_selector: Option<LabelSelector>,
    pub failure_policy: FailurePolicy,
    /// Why that failure policy: written into the configuration for operators.
    pub failure_policy_reason: &'static str,
}

/// Admits the request.
pub fn allow(req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    AdmissionResponse::from(req)
}

/// Refuses the request with a policy refusal (403): without a code the
/// apiserver reports the denial as a 400 Bad Request. `message` should say
/// what is wrong and what would be allowed.
pub fn deny(req: &AdmissionRequest<DynamicObject>, message: impl ToString) -> AdmissionResponse {
    forbidden(AdmissionResponse::from(req).deny(message))
}

/// Gives a denial without a code the 403 of a policy refusal.
pub(crate) fn forbidden(mut response: AdmissionResponse) -> AdmissionResponse {
    if !response.allowed && response.result.code == 0 {
        response.result.code = 403;
        response.result.reason = "Forbidden".into();
        response.result.status = Some(kube::core::response::StatusSummary::Failure);
    }
    response
}

/// A rule entry: `operations` on `resources` of `group`/`version`.
pub fn operations(group: &str, version: &str, resources: &[&str], operations: &[&str]) -> RuleWithOperations {
    let strings = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
    RuleWithOperations {
        api_groups: strings(&[group]),
        api_versions: strings(&[version]),
        resources: strings(resources),
        operations: strings(operations),
        // Namespaced objects only; cluster-scoped ones through [`cluster_operations`].
        scope: Some("Namespaced".into()),
    }
}

/// A rule entry for cluster-scoped `resources` (such as SidecarSets).
pub fn cluster_operations(group: &str, version: &str, resources: &[&str], ops: &[&str]) -> RuleWithOperations {
    RuleWithOperations { scope: Some("Cluster".into()), ..operations(group, version, resources, ops) }
}

/// A namespaceSelector leaving out `namespaces` (by their
/// `kubernetes.io/metadata.name` label): system namespaces never wait for berth.
pub fn namespaces_except<I: IntoIterator<Item = String>>(namespaces: I) -> LabelSelector {
    LabelSelector {
        match_expressions: Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
            key: "kubernetes.io/metadata.name".into(),
            operator: "NotIn".into(),
            values: Some(namespaces.into_iter().collect()),
        }]),
        ..Default::default()
    }
}
