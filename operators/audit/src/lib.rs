//! The berth auditor: constraint and state cross-checks of a live cluster.
//!
//! [`audit`] is a pure function from a [`Snapshot`] (nodes, pods, namespaces,
//! InplaceSets) to a [`Report`] of findings; [`gather`] reads the snapshot
//! with paginated list calls. Checks:
//! - constraints: node over-commit against allocatable ([`resources`]),
//!   required node affinity and pod (anti-)affinity broken, many preferred
//!   affinity terms unmet (a warning) ([`affinity`]);
//! - state cross-checks: every settled InplaceSet runs `spec.replicas` pods,
//!   one per ordinal ([`inplaceset`]); a pod whose resize is Applied carries
//!   the requested resources in its spec, its container status and the
//!   runtime values the node agent recorded ([`resize`]).
//!
//! A snapshot is read object type by object type, so a change racing the
//! reads can look like a violation for a moment: [`confirmed`] keeps only
//! the findings a second, later snapshot repeats.

pub mod affinity;
pub mod gather;
pub mod inplaceset;
pub mod report;
pub mod resize;
pub mod resources;

use std::collections::BTreeSet;

use berth_api::InplaceSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use serde::Serialize;

pub use gather::gather;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing {what}: {source}")]
    List { what: &'static str, source: kube::Error },
}

/// What the auditor reads from the cluster.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    /// For the namespaceSelector of affinity terms.
    pub namespaces: Vec<Namespace>,
    pub inplacesets: Vec<InplaceSet>,
}

/// Tunables of the checks.
#[derive(Clone, Debug)]
pub struct Options {
    /// A workload (the pods of one controller, or a lone pod) is warned about
    /// when at least this share of its preferred affinity weight is unmet.
    pub soft_affinity_threshold: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self { soft_affinity_threshold: 0.5 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A constraint or invariant is broken: `berth-manager audit` exits 1.
    Violation,
    /// Worth a look; not a failure unless asked (`--fail-on-warning`).
    Warning,
}

/// What a finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    /// Requests of the node's pods exceed its allocatable.
    NodeOvercommit,
    /// A pod's node no longer satisfies its nodeSelector or required node affinity.
    NodeAffinity,
    /// A required pod affinity term has no matching pod in the pod's topology domain.
    PodAffinity,
    /// A required pod anti-affinity term has a matching pod in the pod's topology domain.
    PodAntiAffinity,
    /// Many preferred (soft) affinity terms of a workload are unmet.
    PreferredAffinity,
    /// A settled InplaceSet does not run `spec.replicas` pods.
    InplaceSetReplicas,
    /// Two live pods of one InplaceSet carry the same ordinal.
    DuplicateOrdinal,
    /// The InplaceSet controller has not observed the set's latest spec.
    InplaceSetNotObserved,
    /// An Applied resize: the pod's spec or container status differs from the request.
    ResizeNotInApi,
    /// An Applied resize: the runtime values the node agent recorded differ from the request.
    ResizeNotInRuntime,
    /// An object the auditor cannot read (a malformed quantity or annotation).
    Unreadable,
}

/// The object a finding is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn node(name: &str) -> Self {
        Self { kind: "Node".into(), namespace: None, name: name.into() }
    }

    pub fn namespaced(kind: &str, namespace: &str, name: &str) -> Self {
        Self { kind: kind.into(), namespace: Some(namespace.into()), name: name.into() }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub kind: Kind,
    pub object: ObjectRef,
    /// What is wrong, with the numbers.
    pub message: String,
}

impl Finding {
    pub fn violation(kind: Kind, object: ObjectRef, message: impl Into<String>) -> Self {
        Self { severity: Severity::Violation, kind, object, message: message.into() }
    }

    pub fn warning(kind: Kind, object: ObjectRef, message: impl Into<String>) -> Self {
        Self { severity: Severity::Warning, kind, object, message: message.into() }
    }
}

/// How much the audit looked at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Checked {
    pub nodes: usize,
    pub pods: usize,
    pub inplacesets: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    pub checked: Checked,
    /// Violations first, then warnings; each group by kind and object.
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn violations(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.severity == Severity::Violation)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.severity == Severity::Warning)
    }
}

/// Every check over one snapshot. Pure.
pub fn audit(snapshot: &Snapshot, options: &Options) -> Report {
    let mut findings = Vec::new();
    findings.extend(resources::overcommit(&snapshot.nodes, &snapshot.pods));
    findings.extend(affinity::check(snapshot, options));
    findings.extend(inplaceset::check(&snapshot.inplacesets, &snapshot.pods));
    findings.extend(resize::check(&snapshot.pods));
    findings.sort_by(|a, b| (a.severity, a.kind, &a.object).cmp(&(b.severity, b.kind, &b.object)));
    Report {
        checked: Checked {
            nodes: snapshot.nodes.len(),
            pods: snapshot.pods.len(),
            inplacesets: snapshot.inplacesets.len(),
        },
        findings,
    }
}

/// The findings of `later` that `earlier` had too (same kind, object and
/// severity): what persisted between two snapshots, with the later numbers.
pub fn confirmed(earlier: &Report, later: Report) -> Report {
    let seen: BTreeSet<_> = earlier.findings.iter().map(|f| (f.severity, f.kind, &f.object)).collect();
    let findings = later.findings.iter().filter(|f| seen.contains(&(f.severity, f.kind, &f.object))).cloned().collect();
    Report { checked: later.checked, findings }
}

/// Whether a pod has ended (its resources are free again).
pub(crate) fn terminated(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// The node a live pod is bound to.
pub(crate) fn bound_node(pod: &Pod) -> Option<&str> {
    if terminated(pod) {
        return None;
    }
    pod.spec.as_ref()?.node_name.as_deref().filter(|n| !n.is_empty())
}

pub(crate) fn pod_ref(pod: &Pod) -> ObjectRef {
    ObjectRef::namespaced(
        "Pod",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default(),
    )
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn a_clean_snapshot_has_no_findings() {
        let snapshot = Snapshot {
            nodes: vec![node("n0", "8", "32Gi", 110, &[("zone", "a")]), node("n1", "8", "32Gi", 110, &[("zone", "b")])],
            pods: vec![
                pod("default", "a", "n0", &[("app", "a")], "2", "4Gi"),
                pod("default", "b", "n1", &[("app", "b")], "4", "8Gi"),
            ],
            namespaces: vec![namespace("default", &[])],
            inplacesets: vec![],
        };
        let report = audit(&snapshot, &Options::default());
        assert_eq!(report.findings, vec![]);
        assert_eq!(report.checked, Checked { nodes: 2, pods: 2, inplacesets: 0 });
    }

    #[test]
    fn confirmation_keeps_what_persisted_with_the_later_numbers() {
        let f = |name: &str, message: &str| Finding::violation(Kind::NodeOvercommit, ObjectRef::node(name), message);
        let earlier = Report { checked: Checked::default(), findings: vec![f("n0", "old"), f("n1", "gone later")] };
        let later = Report { checked: Checked::default(), findings: vec![f("n0", "new"), f("n2", "appeared later")] };
        assert_eq!(confirmed(&earlier, later).findings, vec![f("n0", "new")]);
    }
}
