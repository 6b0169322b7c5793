//! Validating rule on SidecarSet CREATE/UPDATE: what would otherwise only
//! show when pods are refused at injection. A set must inject something,
//! name its containers and volumes once, have well-formed non-empty
//! selectors, and not inject a container or volume name that another
//! SidecarSet injects with different content into pods both could select.
//!
//! "Could select the same pods" is decided conservatively: two selectors are
//! disjoint only when some label key has requirements in the two that no
//! label value satisfies together (`app=a` and `app=b`; `app in (a,b)` and
//! `app notin (a,b)`; `app` and `!app`); anything else counts as
//! overlapping. Namespace selectors likewise (absent: every namespace). Two
//! sets are in conflict only if both their pod and namespace selectors
//! overlap. A clash this misses (sets created at the same moment, or
//! selectors disjoint only in combination) is still caught at injection,
//! where the pod is refused with both names.

use std::collections::BTreeMap;

use berth_api::{
    SidecarSet, SidecarSetSpec,
    selector::{Requirement, requirements},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{
    ResourceExt,
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, Operation},
    },
};
use serde_json::Value;

use crate::{
    caches::Caches,
    rule::{Admission, AdmissionRule, FailurePolicy, WebhookSpec, allow, cluster_operations, deny},
};

/// Problems of the spec on its own.
pub fn own_problems(spec: &SidecarSetSpec) -> Vec<String> {
    let mut found = vec![];
    if spec.containers.is_empty() && spec.init_containers.is_empty() {
        found
            .push("spec.containers and spec.initContainers are both empty: the SidecarSet would inject nothing".into());
    }
    let mut seen = BTreeMap::new();
    let named = spec
        .init_containers
        .iter()
        .map(|c| ("initContainers", c))
        .chain(spec.containers.iter().map(|c| ("containers", c)));
    for (list, c) in named {
        if let Some(first) = seen.insert(c.name.as_str(), list) {
            found.push(format!(
                "container name {:?} appears twice (spec.{first} and spec.{list}); a pod's containers and init \
                 containers need distinct names",
                c.name
            ));
        }
    }
    let mut volumes = BTreeMap::new();
    for v in &spec.volumes {
        if volumes.insert(v.name.as_str(), ()).is_some() {
            found.push(format!("volume name {:?} appears twice in spec.volumes", v.name));
        }
    }
    match requirements(&spec.selector, "spec.selector") {
        Err(malformed) => found.push(malformed),
        Ok(r) if r.is_empty() => found.push(
            "spec.selector is empty, which would inject into every pod of the cluster; name the pods' labels in \
             spec.selector.matchLabels or matchExpressions (use spec.namespaceSelector to limit the namespaces)"
                .into(),
        ),
        Ok(_) => {}
    }
    for (selector, field) in [
        (spec.namespace_selector.as_ref(), "spec.namespaceSelector"),
        (spec.update_strategy.selector.as_ref(), "spec.updateStrategy.selector"),
    ] {
        if let Some(Err(malformed)) = selector.map(|s| requirements(s, field)) {
            found.push(malformed);
        }
    }
    found
}

/// Whether no label value can satisfy both requirements (on the same key).
fn contradict(a: &Requirement, b: &Requirement) -> bool {
    use Requirement::*;
    // The values a requirement allows, if it pins the key to some.
    fn allowed(r: &Requirement) -> Option<Vec<&String>> {
        match r {
            Equals(_, v) => Some(vec![v]),
            In(_, vs) => Some(vs.iter().collect()),
            _ => None,
        }
    }
    let key = |r: &Requirement| -> String {
        match r {
            Equals(k, _) | In(k, _) | NotIn(k, _) | Exists(k) | DoesNotExist(k) => k.clone(),
        }
    };
    if key(a) != key(b) {
        return false;
    }
    let one_way = |a: &Requirement, b: &Requirement| match (allowed(a), allowed(b), b) {
        (Some(va), Some(vb), _) => !va.iter().any(|v| vb.contains(v)),
        (Some(va), None, NotIn(_, excluded)) => va.iter().all(|v| excluded.contains(v)),
        (Some(_), None, DoesNotExist(_)) => true,
        (None, None, DoesNotExist(_)) => matches!(a, Exists(_)),
        _ => false,
    };
    one_way(a, b) || one_way(b, a)
}

/// Whether some labels could satisfy both selectors (absent: everything).
/// Conservative: true unless a pair of requirements on one key contradict.
/// A malformed selector is treated as overlapping (it is refused on its own).
pub fn may_overlap(a: Option<&LabelSelector>, b: Option<&LabelSelector>) -> bool {
    let (Some(a), Some(b)) = (a, b) else { return true };
    let (Ok(ra), Ok(rb)) = (requirements(a, "a"), requirements(b, "b")) else { return true };
    !ra.iter().any(|x| rb.iter().any(|y| contradict(x, y)))
}

/// What a set injects under each name: (kind, content).
fn injected_names(spec: &SidecarSetSpec) -> BTreeMap<String, (&'static str, Value)> {
    let json = |v| serde_json::to_value(v).unwrap_or_default();
    let mut out = BTreeMap::new();
    for c in &spec.init_containers {
        out.entry(c.name.clone()).or_insert(("init container", json(c)));
    }
    for c in &spec.containers {
        out.entry(c.name.clone()).or_insert(("container", json(c)));
    }
    out
}

/// Clashes of the set `name` with the other SidecarSets: a container (or init
/// container) or volume name both inject with different content, where both
/// could select the same pods.
pub fn clashes(name: &str, spec: &SidecarSetSpec, others: &[SidecarSet]) -> Vec<String> {
    let mine = injected_names(spec);
    let mut found = vec![];
    let mut others: Vec<&SidecarSet> = others
        .iter()
        .filter(|o| o.name_any() != name && o.metadata.deletion_timestamp.is_none())
        .filter(|o| may_overlap(Some(&spec.selector), Some(&o.spec.selector)))
        .filter(|o| may_overlap(spec.namespace_selector.as_ref(), o.spec.namespace_selector.as_ref()))
        .collect();
    others.sort_by_key(|o| o.name_any());
    for other in others {
        let theirs = injected_names(&other.spec);
        for (c, (kind, content)) in &mine {
            match theirs.get(c) {
                Some((their_kind, their_content)) if their_kind != kind || their_content != content => {
                    let as_what = match *their_kind {
                        k if k == *kind => "",
                        "container" => " as a container",
                        _ => " as an init container",
                    };
                    found.push(format!(
                        "{kind} {c:?} is also injected by SidecarSet {}{as_what}, with different content, and the \
                         two SidecarSets can select the same pods: rename it, make both identical, or make the \
                         selectors disjoint (e.g. different values of one matchLabels key)",
                        other.name_any(),
                    ));
                }
                _ => {}
            }
        }
        for v in &spec.volumes {
            if let Some(theirs) = other.spec.volumes.iter().find(|o| o.name == v.name)
                && theirs != v
            {
                found.push(format!(
                    "volume {:?} is also injected by SidecarSet {} with different content, and the two SidecarSets \
                     can select the same pods: rename it, make both identical, or make the selectors disjoint",
                    v.name,
                    other.name_any()
                ));
            }
        }
    }
    found
}

/// Serves [`own_problems`] and [`clashes`] for SidecarSet writes.
pub struct SidecarSetRule {
    pub caches: Caches,
}

impl AdmissionRule for SidecarSetRule {
    fn name(&self) -> &'static str {
        "sidecarset.apps.berth.dev"
    }

    fn path(&self) -> &'static str {
        "/validate/sidecarset"
    }

    fn webhook(&self) -> WebhookSpec {
        WebhookSpec {
            admission: Admission::Validating,
            // Not sidecarsets/status: the controller keeps writing status during an outage.
            rules: vec![cluster_operations(
                berth_api::GROUP,
                berth_api::VERSION,
                &["sidecarsets"],
                &["CREATE", "UPDATE"],
            )],
            namespace_selector: None,
            object_selector: None,
            failure_policy: FailurePolicy::Fail,
            failure_policy_reason: "a SidecarSet clashing with another would get every pod both select refused at \
                injection; only SidecarSet spec writes (rare, made by operators) wait for the server, never pods",
        }
    }

    fn review(&self, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let Some(object) = req.object.clone() else {
            return allow(req);
        };
        let set: SidecarSet = match object.try_parse() {
            Ok(set) => set,
            Err(e) => return deny(req, format!("not a valid SidecarSet: {e}")),
        };
        // An unchanged spec is not re-judged: metadata and finalizer writes stay possible.
        if req.operation == Operation::Update {
            let old = req.old_object.clone().and_then(|o| o.try_parse::<SidecarSet>().ok());
            if old.is_some_and(|old| old.spec == set.spec) {
                return allow(req);
            }
        }
        let name = if req.name.is_empty() { set.name_any() } else { req.name.clone() };
        let mut found = own_problems(&set.spec);
        if !self.caches.synced() {
            found.push(
                "berth-manager has not loaded the other SidecarSets yet, so it cannot check for clashes; \
                retry in a moment"
                    .into(),
            );
        } else {
            let others: Vec<SidecarSet> = self.caches.sidecarsets.state().iter().map(|s| (**s).clone()).collect();
            found.extend(clashes(&name, &set.spec, &others));
        }
        match found.as_slice() {
            [] => allow(req),
            found => deny(req, format!("SidecarSet {name}: {}", found.join("; "))),
        }
    }
}

#[cfg(test)]
#[path = "sidecarset_tests.rs"]
mod tests;
