//! Mutating rule on pod CREATE: injects the sidecars of every SidecarSet that
//! selects the pod ([`berth_sidecarset::inject`]), as a JSON patch; a conflict
//! between SidecarSets, or with the pod's own containers or volumes, refuses
//! the pod with a message naming both sides.
//!
//! What is injected: the SidecarSet's current spec, recorded under the
//! revision [`revision`] names; or, when `spec.injectionStrategy.revision`
//! pins another revision, the content stored in that ControllerRevision (in
//! the manager's namespace, labelled [`keys::SIDECARSET_NAME`]=<set>, `data`
//! = `{"spec": <SidecarSetSpec>, "injected": <InjectedRevision>}`), still
//! under the current set's selectors and pause.

use std::collections::BTreeMap;

use berth_api::{SidecarSet, SidecarSetSpec, keys, sidecarset::InjectedRevision};
use berth_sidecarset::{
    inject::{Candidate, applies, inject},
    revision::revision,
};
use json_patch::{AddOperation, Patch, PatchOperation, jsonptr::PointerBuf};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    ResourceExt,
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, Operation},
    },
};
use serde::Deserialize;
use tracing::debug;

use crate::{
    caches::Caches,
    rule::{Admission, AdmissionRule, FailurePolicy, WebhookSpec, allow, deny, namespaces_except, operations},
};

/// Namespaces never sent to the webhook: the control plane's own, whatever
/// labels they carry (the manager's namespace is added to these).
pub const EXCLUDED_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// What the SidecarSet controller stores in a ControllerRevision's `data`.
#[derive(Deserialize, Debug)]
pub struct StoredRevision {
    pub spec: SidecarSetSpec,
    pub injected: InjectedRevision,
}

/// Injects sidecars into new pods.
pub struct SidecarInjectionRule {
    pub caches: Caches,
    /// Where the SidecarSets' ControllerRevisions live; never injected into.
    pub manager_namespace: String,
}

/// The pod fields injection may change; each changed one is written whole.
const PATCHED: &[&str] = &[
    "/metadata/labels",
    "/metadata/annotations",
    "/spec/initContainers",
    "/spec/containers",
    "/spec/volumes",
    "/spec/readinessGates",
];

/// The JSON patch turning `before` into `after` over the [`PATCHED`] fields
/// (an `add` replaces a member that exists).
pub fn patch(before: &Pod, after: &Pod) -> Patch {
    let (old, new) =
        (serde_json::to_value(before).unwrap_or_default(), serde_json::to_value(after).unwrap_or_default());
    let ops = PATCHED
        .iter()
        .filter_map(|path| {
            let value = new.pointer(path).filter(|v| old.pointer(path) != Some(*v))?;
            let path = PointerBuf::parse(*path).expect("constant JSON pointers parse");
            Some(PatchOperation::Add(AddOperation { path, value: value.clone() }))
        })
        .collect();
    Patch(ops)
}

impl SidecarInjectionRule {
    /// The candidate for one SidecarSet: its current content, or the pinned revision's.
    fn candidate(&self, set: &SidecarSet) -> Result<Candidate, String> {
        let name = set.name_any();
        let latest = revision(&name, &set.spec, set.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0));
        let pinned = set.spec.injection_strategy.as_ref().and_then(|s| s.revision.as_deref());
        let Some(pinned) = pinned.filter(|p| *p != latest.revision) else {
            return Ok(Candidate { name, spec: set.spec.clone(), revision: latest });
        };
        let stored = self.caches.revisions.state().into_iter().find(|r| {
            r.metadata.name.as_deref() == Some(pinned)
                && r.labels().get(keys::SIDECARSET_NAME).map(String::as_str) == Some(name.as_str())
        });
        let Some(stored) = stored else {
            let mut known: Vec<String> = self
                .caches
                .revisions
                .state()
                .iter()
                .filter(|r| r.labels().get(keys::SIDECARSET_NAME) == Some(&name))
                .map(|r| r.name_any())
                .collect();
            known.sort();
            known.push(format!("{} (the current spec)", latest.revision));
            return Err(format!(
                "SidecarSet {name} pins spec.injectionStrategy.revision {pinned}, but no ControllerRevision {pinned} \
                 labelled {}={name} exists in namespace {}; known revisions: {}. Pin one of those or remove the pin",
                keys::SIDECARSET_NAME,
                self.manager_namespace,
                known.join(", "),
            ));
        };
        let stored: StoredRevision = serde_json::from_value(stored.data.0.clone())
            .map_err(|e| format!("SidecarSet {name}: ControllerRevision {pinned} holds no readable revision: {e}"))?;
        // What to inject from the revision; which pods, and whether at all, from the set as it is now.
        let spec = SidecarSetSpec {
            selector: set.spec.selector.clone(),
            namespace_selector: set.spec.namespace_selector.clone(),
            injection_strategy: set.spec.injection_strategy.clone(),
            ..stored.spec
        };
        Ok(Candidate { name, spec, revision: stored.injected })
    }

    /// The patch for a pod created in `namespace` (None: nothing to inject),
    /// or why it is refused.
    pub fn decide(&self, pod: &Pod, namespace: &str) -> Result<Option<(Patch, Vec<String>)>, String> {
        if !self.caches.synced() {
            return Err("berth-manager has not loaded the SidecarSets yet, so it cannot tell which sidecars this \
                pod needs; retry in a moment"
                .into());
        }
        let ns_labels = self.caches.namespace_labels(namespace);
        let empty = BTreeMap::new();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        let mut candidates = vec![];
        let mut problems = vec![];
        for set in self.caches.sidecarsets.state() {
            // A SidecarSet being deleted injects no more.
            if set.metadata.deletion_timestamp.is_some() || !applies(&set.spec, labels, &ns_labels) {
                continue;
            }
            match self.candidate(&set) {
                Ok(c) => candidates.push(c),
                Err(problem) => problems.push(problem),
            }
        }
        if !problems.is_empty() {
            problems.sort();
            return Err(problems.join("; "));
        }
        if candidates.is_empty() {
            return Ok(None);
        }
        let injection = inject(pod, &ns_labels, &candidates).map_err(|c| format!("sidecar injection conflict: {c}"))?;
        if injection.injected.is_empty() {
            return Ok(None);
        }
        Ok(Some((patch(pod, &injection.pod), injection.injected)))
    }
}

impl AdmissionRule for SidecarInjectionRule {
    fn name(&self) -> &'static str {
        "sidecar-injection.berth.dev"
    }

    fn path(&self) -> &'static str {
        "/mutate/sidecar-injection"
    }

    fn webhook(&self) -> WebhookSpec {
        let excluded = EXCLUDED_NAMESPACES.iter().map(|s| s.to_string()).chain([self.manager_namespace.clone()]);
        WebhookSpec {
            admission: Admission::Mutating,
            rules: vec![operations("", "v1", &["pods"], &["CREATE"])],
            namespace_selector: Some(namespaces_except(excluded)),
            object_selector: None,
            failure_policy: FailurePolicy::Fail,
            failure_policy_reason: "a pod admitted without its sidecar runs without it (a proxy, a log or security \
                agent) until it is recreated, as a container cannot be added to a running pod, and nothing reports \
                it; a refused pod is retried by its workload controller and created once the manager answers again. \
                The control plane's namespaces and the manager's own are never sent, so the manager can always be \
                restarted to end an outage",
        }
    }

    fn review(&self, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        if req.operation != Operation::Create {
            return allow(req);
        }
        let Some(object) = req.object.clone() else {
            return allow(req);
        };
        let pod: Pod = match object.try_parse() {
            Ok(pod) => pod,
            Err(e) => return deny(req, format!("not a valid Pod: {e}")),
        };
        let namespace = req.namespace.clone().or_else(|| pod.metadata.namespace.clone()).unwrap_or_default();
        match self.decide(&pod, &namespace) {
            Ok(None) => allow(req),
            Ok(Some((patch, sets))) => {
                debug!(uid = %req.uid, namespace, sidecarsets = ?sets, "sidecars injected");
                allow(req).with_patch(patch).unwrap_or_else(|e| deny(req, format!("encoding the sidecar patch: {e}")))
            }
            Err(message) => deny(req, message),
        }
    }
}

#[cfg(test)]
#[path = "sidecar_injection_tests.rs"]
mod tests;
