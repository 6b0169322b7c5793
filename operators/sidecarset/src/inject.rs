//! Injection into a new pod (pure): which SidecarSets apply to it, and the
//! pod with their containers, init containers, volumes, shared mounts,
//! transferred env and metadata merged in, or the conflict that forbids it.
//! The mutating webhook (in `berth-webhooks`) calls [`inject`] on pod CREATE.
//!
//! Order, deterministic for a given pod and set of SidecarSets:
//! - SidecarSets are applied in name order.
//! - `containers`: those of BeforeAppContainer sets go before the pod's own
//!   containers, those of AfterAppContainer sets (the default) after them;
//!   each group in set name order, each set's containers in its own order.
//! - `initContainers`: native sidecars (`restartPolicy: Always`) go before the
//!   pod's own init containers, so they are running while those run (e.g. a
//!   proxy an init container needs); plain init containers go after the pod's
//!   own, so they run last, just before the containers start.
//! - Volumes are appended after the pod's own.
//!
//! Idempotence: a SidecarSet the pod's record ([`keys::SIDECARSET_REVISIONS`])
//! names is skipped, and so is one whose every container the pod already
//! carries (same name and image, e.g. a pod spec copied from an injected pod):
//! injecting an injected pod changes nothing.

use std::collections::BTreeMap;

use berth_api::{
    SidecarSetSpec, keys, selector,
    sidecarset::{InjectedRevision, PatchPolicy, PodInjectPolicy, ShareVolumePolicyType, injected_revisions},
};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodReadinessGate, Volume};
use serde_json::Value;

/// A SidecarSet as injection needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The SidecarSet's name.
    pub name: String,
    /// What to inject. With a pinned revision, the pinned revision's content under the
    /// current set's `selector`, `namespaceSelector` and `injectionStrategy`.
    pub spec: SidecarSetSpec,
    /// The revision recorded on the pod for this set.
    pub revision: InjectedRevision,
}

/// The injected pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Injection {
    pub pod: Pod,
    /// The SidecarSets that injected into the pod in this call, in name order;
    /// empty when the pod is unchanged.
    pub injected: Vec<String>,
}

/// Why the pod cannot be injected: every clash found, each naming both sides.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Conflict(pub Vec<String>);

/// Whether the SidecarSet applies to a pod with these labels in a namespace
/// with these labels: its selector and namespace selector (if any) match and
/// injection is not paused.
pub fn applies(
    spec: &SidecarSetSpec,
    pod_labels: &BTreeMap<String, String>,
    ns_labels: &BTreeMap<String, String>,
) -> bool {
    !spec.injection_strategy.as_ref().is_some_and(|s| s.paused)
        && selector::matches(&spec.selector, pod_labels)
        && spec.namespace_selector.as_ref().is_none_or(|s| selector::matches(s, ns_labels))
}

const INIT: &str = "init container";
const CONTAINER: &str = "container";

/// Who put a container or volume into the pod, for conflict messages.
#[derive(Clone, Debug)]
enum Origin {
    /// The pod's own (its spec as submitted).
    Pod,
    /// A SidecarSet, earlier (named in the pod's record) or in this call.
    Set(String),
}

impl Origin {
    fn describe(&self, what: &str, name: &str) -> String {
        match self {
            Self::Pod => format!("the pod's own {what} {name:?}"),
            Self::Set(set) => format!("{what} {name:?} of SidecarSet {set}"),
        }
    }
}

/// Whether every field set in `wanted` has the same value in `actual`: the
/// apiserver defaults a pod's fields before admission (a configMap volume's
/// defaultMode, say), a SidecarSet's are as written.
fn covers(actual: &Value, wanted: &Value) -> bool {
    match (actual, wanted) {
        (Value::Object(a), Value::Object(w)) => {
            w.iter().all(|(k, v)| v.is_null() || a.get(k).is_some_and(|x| covers(x, v)))
        }
        (a, w) => a == w,
    }
}

fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("Kubernetes objects serialize")
}

/// Adds the app containers' mounts to `sidecar` (shareVolumePolicy Enabled):
/// each volume at the path the first app container mounting it uses, unless
/// the sidecar already mounts that volume or uses that path.
fn share_volumes(sidecar: &mut Container, apps: &[&Container]) {
    let mounts = sidecar.volume_mounts.get_or_insert_with(Vec::new);
    for mount in apps.iter().flat_map(|c| c.volume_mounts.iter().flatten()) {
        if !mounts.iter().any(|m| m.name == mount.name || m.mount_path == mount.mount_path) {
            mounts.push(mount.clone());
        }
    }
    if mounts.is_empty() {
        sidecar.volume_mounts = None;
    }
}

/// Copies the transferEnv variables from the app containers into `sidecar`,
/// unless it sets them itself. A missing source container or variable is skipped.
fn transfer_env(sidecar: &mut Container, apps: &[&Container], spec: &SidecarSetSpec) {
    for transfer in &spec.transfer_env {
        let source = apps.iter().find(|c| c.name == transfer.source_container_name);
        let Some(var) = source.and_then(|c| c.env.iter().flatten().find(|e| e.name == transfer.env_name)) else {
            continue;
        };
        let env = sidecar.env.get_or_insert_with(Vec::<EnvVar>::new);
        if !env.iter().any(|e| e.name == var.name) {
            env.push(var.clone());
        }
    }
}

fn patch_map(target: &mut Option<BTreeMap<String, String>>, with: &BTreeMap<String, String>, policy: PatchPolicy) {
    if with.is_empty() {
        return;
    }
    let map = target.get_or_insert_with(BTreeMap::new);
    for (k, v) in with {
        if policy == PatchPolicy::Overwrite || !map.contains_key(k) {
            map.insert(k.clone(), v.clone());
        }
    }
}

/// Injects every SidecarSet of `sets` that applies to `pod` (in a namespace
/// labelled `ns_labels`) and has not injected it yet. The pod comes back
/// unchanged when none does; otherwise it also gets the [`keys::MANAGED`]
/// label, the [`keys::INPLACE_UPDATE_READY`] readiness gate and each set's
/// revision in its [`keys::SIDECARSET_REVISIONS`] record.
///
/// Conflicts: two SidecarSets injecting the same container or volume name
/// with different content, or a sidecar or volume name the pod already uses
/// for something else (init and regular containers share one name space).
pub fn inject(pod: &Pod, ns_labels: &BTreeMap<String, String>, sets: &[Candidate]) -> Result<Injection, Conflict> {
    let unchanged = || Ok(Injection { pod: pod.clone(), injected: vec![] });
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let mut applying: Vec<&Candidate> = sets.iter().filter(|c| applies(&c.spec, labels, ns_labels)).collect();
    if applying.is_empty() {
        return unchanged();
    }
    let mut record = injected_revisions(pod.metadata.annotations.as_ref()).map_err(|e| Conflict(vec![e]))?;
    applying.retain(|c| !record.contains_key(&c.name));
    applying.sort_by(|a, b| a.name.cmp(&b.name));
    applying.dedup_by(|a, b| a.name == b.name);

    let spec = pod.spec.clone().unwrap_or_default();
    // Containers already in the pod, and who put them there.
    let mut sidecar_of: BTreeMap<&str, &str> = BTreeMap::new();
    for (set, injected) in &record {
        for name in &injected.containers {
            sidecar_of.insert(name, set);
        }
    }
    let own_init = spec.init_containers.as_deref().unwrap_or_default();
    let mut containers: BTreeMap<String, (Origin, Value, &str)> = BTreeMap::new();
    for (c, kind) in own_init.iter().map(|c| (c, INIT)).chain(spec.containers.iter().map(|c| (c, CONTAINER))) {
        let origin = sidecar_of.get(c.name.as_str()).map_or(Origin::Pod, |s| Origin::Set(s.to_string()));
        containers.insert(c.name.clone(), (origin, json(c), kind));
    }
    let mut volumes: BTreeMap<String, (Origin, Value)> =
        spec.volumes.iter().flatten().map(|v| (v.name.clone(), (Origin::Pod, json(v)))).collect();
    // The application's containers: the pod's own regular containers.
    let apps: Vec<&Container> = spec.containers.iter().filter(|c| !sidecar_of.contains_key(c.name.as_str())).collect();

    let (mut before, mut after, mut native, mut plain_init) = (vec![], vec![], vec![], vec![]);
    let mut added_volumes: Vec<Volume> = vec![];
    let mut metadata = pod.metadata.clone();
    let mut injected = vec![];
    let mut conflicts = vec![];
    for set in applying {
        let carried = !(set.spec.init_containers.is_empty() && set.spec.containers.is_empty())
            && set.spec.init_containers.iter().chain(&set.spec.containers).all(|c| {
                let present = own_init.iter().chain(&spec.containers).find(|p| p.name == c.name);
                present.is_some_and(|p| p.image == c.image)
            });
        if carried {
            continue;
        }
        let shared = set.spec.share_volume_policy.as_ref().is_some_and(|p| p.type_ == ShareVolumePolicyType::Enabled);
        let mut found = vec![];
        let mut adding: Vec<(Container, bool)> = vec![];
        for (c, init) in
            set.spec.init_containers.iter().map(|c| (c, true)).chain(set.spec.containers.iter().map(|c| (c, false)))
        {
            let mut sidecar = c.clone();
            if shared {
                share_volumes(&mut sidecar, &apps);
            }
            transfer_env(&mut sidecar, &apps, &set.spec);
            let kind = if init { INIT } else { CONTAINER };
            match containers.get(&sidecar.name) {
                // Another SidecarSet put the very same container in.
                Some((Origin::Set(other), existing, k))
                    if other != &set.name && *k == kind && existing == &json(&sidecar) => {}
                Some((origin, _, k)) => found.push(format!(
                    "{kind} {:?} of SidecarSet {} clashes with {}",
                    sidecar.name,
                    set.name,
                    origin.describe(k, &sidecar.name),
                )),
                None if adding.iter().any(|(a, _)| a.name == sidecar.name) => {
                    found.push(format!("SidecarSet {} injects two containers named {:?}", set.name, sidecar.name))
                }
                None => adding.push((sidecar, init)),
            }
        }
        for v in &set.spec.volumes {
            match volumes.get(&v.name) {
                Some((Origin::Pod, existing)) if covers(existing, &json(v)) => {}
                Some((Origin::Set(_), existing)) if existing == &json(v) => {}
                Some((origin, _)) => found.push(format!(
                    "volume {:?} of SidecarSet {} differs from {}",
                    v.name,
                    set.name,
                    origin.describe("volume", &v.name)
                )),
                None => {
                    volumes.insert(v.name.clone(), (Origin::Set(set.name.clone()), json(v)));
                    added_volumes.push(v.clone());
                }
            }
        }
        if !found.is_empty() {
            conflicts.extend(found);
            continue;
        }
        for (sidecar, init) in adding {
            let kind = if init { INIT } else { CONTAINER };
            containers.insert(sidecar.name.clone(), (Origin::Set(set.name.clone()), json(&sidecar), kind));
            match (init, sidecar.restart_policy.as_deref() == Some("Always"), set.spec.pod_inject_policy) {
                (true, true, _) => native.push(sidecar),
                (true, false, _) => plain_init.push(sidecar),
                (false, _, PodInjectPolicy::BeforeAppContainer) => before.push(sidecar),
                (false, _, PodInjectPolicy::AfterAppContainer) => after.push(sidecar),
            }
        }
        for patch in &set.spec.patch_pod_metadata {
            patch_map(&mut metadata.annotations, &patch.annotations, patch.patch_policy);
            patch_map(&mut metadata.labels, &patch.labels, patch.patch_policy);
        }
        record.insert(set.name.clone(), set.revision.clone());
        injected.push(set.name.clone());
    }
    if !conflicts.is_empty() {
        return Err(Conflict(conflicts));
    }
    if injected.is_empty() {
        return unchanged();
    }

    let mut spec = spec;
    spec.containers = before.into_iter().chain(spec.containers).chain(after).collect();
    if !native.is_empty() || !plain_init.is_empty() {
        let own = spec.init_containers.take().unwrap_or_default();
        spec.init_containers = Some(native.into_iter().chain(own).chain(plain_init).collect());
    }
    if !added_volumes.is_empty() {
        spec.volumes.get_or_insert_with(Vec::new).extend(added_volumes);
    }
    let gates = spec.readiness_gates.get_or_insert_with(Vec::new);
    if !gates.iter().any(|g| g.condition_type == keys::INPLACE_UPDATE_READY) {
        gates.push(PodReadinessGate { condition_type: keys::INPLACE_UPDATE_READY.into() });
    }
    metadata.labels.get_or_insert_with(BTreeMap::new).insert(keys::MANAGED.into(), "true".into());
    metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(keys::SIDECARSET_REVISIONS.into(), serde_json::to_string(&record).expect("a record serializes"));
    Ok(Injection { pod: Pod { metadata, spec: Some(spec), status: pod.status.clone() }, injected })
}

#[cfg(test)]
#[path = "inject_tests.rs"]
mod tests;
