//! What a [`ResizeRequest`] means for a pod: its containers' resources after
//! the request, and whether the request is acceptable for that pod (names
//! exist, limits cover requests, the QoS class stays).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Pod, PodSpec, ResourceRequirements},
    apimachinery::pkg::api::resource::Quantity,
};
use serde_json::{Value, json};

use crate::{keys, quantity, resize::ResizeRequest};

/// Who changes a pod's running resources (the node agent's `--resize-mode`,
/// which the manager is told too: it sends `pods/resize` itself when it
/// accepts a request the kubelet applies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// The kubelet's `pods/resize`, unless the pod carries
    /// `berth.dev/resize-agent-managed: "true"`.
    Auto,
    /// Always the kubelet's `pods/resize`.
    Kubelet,
    /// Always the node agent's CRI path.
    Agent,
}

impl std::str::FromStr for ResizeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "kubelet" => Ok(Self::Kubelet),
            "agent" => Ok(Self::Agent),
            other => Err(format!("unknown resize mode {other:?}; allowed: auto, kubelet, agent")),
        }
    }
}

/// Whether `pod`'s resources are changed by the node agent through CRI
/// rather than by the kubelet.
pub fn agent_managed(pod: &Pod, mode: ResizeMode) -> bool {
    match mode {
        ResizeMode::Agent => true,
        ResizeMode::Kubelet => false,
        ResizeMode::Auto => pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(keys::RESIZE_AGENT_MANAGED))
            .is_some_and(|v| v == "true"),
    }
}

/// Equal amounts for every resource either side names.
fn same(a: Option<&BTreeMap<String, Quantity>>, b: Option<&BTreeMap<String, Quantity>>) -> bool {
    let (a, b) = (a.cloned().unwrap_or_default(), b.cloned().unwrap_or_default());
    let keys: std::collections::BTreeSet<_> = a.keys().chain(b.keys()).collect();
    keys.into_iter().all(|k| {
        let amount = |m: &BTreeMap<String, Quantity>| m.get(k).and_then(|q| quantity::amount(k, q).ok());
        amount(&a) == amount(&b)
    })
}

/// The same amounts requested and limited.
pub fn same_resources(a: &ResourceRequirements, b: &ResourceRequirements) -> bool {
    same(a.requests.as_ref(), b.requests.as_ref()) && same(a.limits.as_ref(), b.limits.as_ref())
}

/// The strategic-merge patch for `pods/resize` that carries out `req` on a
/// pod with `spec` (every value of each named container, untouched ones
/// too), or `None` when the spec already holds them.
pub fn resize_patch(spec: &PodSpec, req: &ResizeRequest) -> Result<Option<Value>, String> {
    let desired = resized(spec, req)?;
    let in_spec = |name: &String| {
        let now =
            spec.containers.iter().find(|c| &c.name == name).and_then(|c| c.resources.clone()).unwrap_or_default();
        same_resources(&now, &desired[name])
    };
    if req.containers.keys().all(in_spec) {
        return Ok(None);
    }
    let containers: Vec<Value> =
        req.containers.keys().map(|n| json!({"name": n, "resources": desired[n.as_str()]})).collect();
    Ok(Some(json!({"spec": {"containers": containers}})))
}

/// A pod's quality-of-service class, as the kubelet computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// Container name → resources after `req` (its values replace the current
/// ones per resource; resources it does not name stay).
pub fn resized(spec: &PodSpec, req: &ResizeRequest) -> Result<BTreeMap<String, ResourceRequirements>, String> {
    let mut out: BTreeMap<String, ResourceRequirements> =
        spec.containers.iter().map(|c| (c.name.clone(), c.resources.clone().unwrap_or_default())).collect();
    for (name, change) in &req.containers {
        let Some(resources) = out.get_mut(name) else {
            let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
            return Err(format!("container {name:?} is not in the pod; its containers: {}", names.join(", ")));
        };
        let merge = |current: &mut Option<BTreeMap<String, Quantity>>, new: &BTreeMap<String, Quantity>| {
            if !new.is_empty() {
                current.get_or_insert_with(BTreeMap::new).extend(new.clone());
            }
        };
        merge(&mut resources.requests, &change.requests);
        merge(&mut resources.limits, &change.limits);
    }
    Ok(out)
}

/// The QoS class of containers with these resources (a request defaults to its limit).
pub fn qos_class<'a>(resources: impl IntoIterator<Item = &'a ResourceRequirements>) -> QosClass {
    let mut guaranteed = true;
    let mut any = false;
    for r in resources {
        let (requests, limits) = (r.requests.clone().unwrap_or_default(), r.limits.clone().unwrap_or_default());
        for resource in ["cpu", "memory"] {
            let (req, lim) = (requests.get(resource).or(limits.get(resource)), limits.get(resource));
            any |= req.is_some() || lim.is_some();
            let equal = match (req, lim) {
                (Some(a), Some(b)) => quantity::amount(resource, a).ok() == quantity::amount(resource, b).ok(),
                _ => false,
            };
            guaranteed &= equal;
        }
    }
    match (any, guaranteed) {
        (false, _) => QosClass::BestEffort,
        (true, true) => QosClass::Guaranteed,
        (true, false) => QosClass::Burstable,
    }
}

/// Whether `req` may be submitted for a pod with `spec`: every container
/// exists, every quantity parses, limits are at least requests, and the QoS
/// class does not change (the kubelet cannot move a pod between QoS cgroups).
pub fn check(spec: &PodSpec, req: &ResizeRequest) -> Result<(), String> {
    let after = resized(spec, req)?;
    for (name, r) in &after {
        let (requests, limits) = (r.requests.clone().unwrap_or_default(), r.limits.clone().unwrap_or_default());
        for (resource, q) in requests.iter().chain(&limits) {
            quantity::amount(resource, q).map_err(|e| format!("container {name:?} {resource}: {e}"))?;
        }
        for (resource, limit) in &limits {
            let Some(request) = requests.get(resource) else { continue };
            let (request_n, limit_n) = (quantity::amount(resource, request)?, quantity::amount(resource, limit)?);
            if request_n > limit_n {
                return Err(format!(
                    "container {name:?}: {resource} request {} exceeds its limit {}; a limit must be at least the request",
                    request.0, limit.0
                ));
            }
        }
    }
    let current: Vec<ResourceRequirements> =
        spec.containers.iter().map(|c| c.resources.clone().unwrap_or_default()).collect();
    let before = qos_class(&current);
    let now = qos_class(after.values());
    if before != now {
        return Err(format!(
            "the pod's QoS class would change from {before:?} to {now:?}; a resize must keep it (Guaranteed: requests equal \
             limits for cpu and memory in every container)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(resources: serde_json::Value) -> PodSpec {
        serde_json::from_value(json!({"containers": [{"name": "app", "image": "a", "resources": resources},
            {"name": "log", "image": "l"}]}))
        .unwrap()
    }

    fn req(v: serde_json::Value) -> ResizeRequest {
        v.to_string().parse().unwrap()
    }

    #[test]
    fn the_resize_patch_names_every_value_of_the_changed_containers_and_is_none_once_in_the_spec() {
        let before = spec(json!({"requests": {"cpu": "500m"}, "limits": {"cpu": "2"}}));
        let request = req(json!({"containers": {"app": {"requests": {"cpu": "800m"}}}}));
        let patch = resize_patch(&before, &request).unwrap().unwrap();
        assert_eq!(
            patch,
            json!({"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "800m"}, "limits": {"cpu": "2"}}}]}})
        );
        // Written the other way ("0.8" for 800m): already in the spec, nothing to send.
        let after = spec(json!({"requests": {"cpu": "0.8"}, "limits": {"cpu": "2000m"}}));
        assert_eq!(resize_patch(&after, &request), Ok(None));
        let missing = req(json!({"containers": {"db": {"requests": {"cpu": "1"}}}}));
        assert!(resize_patch(&before, &missing).unwrap_err().contains("\"db\" is not in the pod"));
    }

    #[test]
    fn the_mode_and_the_pod_mark_choose_the_path() {
        let mut pod = Pod::default();
        assert!(!agent_managed(&pod, ResizeMode::Auto));
        assert!(agent_managed(&pod, ResizeMode::Agent));
        pod.metadata.annotations = Some([(keys::RESIZE_AGENT_MANAGED.to_string(), "true".to_string())].into());
        assert!(agent_managed(&pod, ResizeMode::Auto));
        assert!(!agent_managed(&pod, ResizeMode::Kubelet), "kubelet mode ignores the mark");
        assert_eq!("agent".parse::<ResizeMode>(), Ok(ResizeMode::Agent));
        assert!("both".parse::<ResizeMode>().unwrap_err().contains("allowed: auto, kubelet, agent"));
    }

    #[test]
    fn qos_classes_follow_the_kubelet() {
        let r = |v: serde_json::Value| serde_json::from_value::<ResourceRequirements>(v).unwrap();
        let g = r(json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1000m", "memory": "1Gi"}}));
        assert_eq!(qos_class([&g]), QosClass::Guaranteed);
        assert_eq!(qos_class([&r(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))]), QosClass::Guaranteed);
        assert_eq!(qos_class([&r(json!({"requests": {"cpu": "1"}}))]), QosClass::Burstable);
        assert_eq!(qos_class([&g, &ResourceRequirements::default()]), QosClass::Burstable);
        assert_eq!(qos_class([&ResourceRequirements::default()]), QosClass::BestEffort);
    }

    #[test]
    fn a_request_keeps_names_limits_and_qos_right() {
        let burstable = spec(json!({"requests": {"cpu": "500m"}, "limits": {"cpu": "1"}}));
        assert_eq!(check(&burstable, &req(json!({"containers": {"app": {"requests": {"cpu": "800m"}}}}))), Ok(()));
        let after = resized(&burstable, &req(json!({"containers": {"app": {"requests": {"cpu": "800m"}}}}))).unwrap();
        assert_eq!(after["app"].requests.as_ref().unwrap()["cpu"].0, "800m");
        assert_eq!(after["app"].limits.as_ref().unwrap()["cpu"].0, "1", "untouched values stay");
        assert!(
            check(&burstable, &req(json!({"containers": {"db": {"requests": {"cpu": "1"}}}})))
                .unwrap_err()
                .contains("container \"db\" is not in the pod; its containers: app, log")
        );
        assert!(
            check(&burstable, &req(json!({"containers": {"app": {"requests": {"cpu": "2"}}}})))
                .unwrap_err()
                .contains("cpu request 2 exceeds its limit 1")
        );
        let guaranteed = serde_json::from_value::<PodSpec>(json!({"containers": [{"name": "app", "image": "a",
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}}]}))
        .unwrap();
        let both = req(json!({"containers": {"app": {"requests": {"cpu": "2"}, "limits": {"cpu": "2"}}}}));
        assert_eq!(check(&guaranteed, &both), Ok(()));
        let err = check(&guaranteed, &req(json!({"containers": {"app": {"limits": {"cpu": "2"}}}}))).unwrap_err();
        assert!(err.contains("QoS class would change from Guaranteed to Burstable"), "{err}");
        let bad = req(json!({"containers": {"app": {"requests": {"cpu": "lots"}}}}));
        assert!(check(&burstable, &bad).unwrap_err().contains("not a quantity"));
    }
}
