//! What the node agent does next for an Accepted resize on its node, judged
//! from the pod alone. Pure.
//!
//! Two paths ([`ResizeMode`]): the kubelet's (send the new resources through
//! `pods/resize` unless the manager did as it accepted the request, wait
//! until container status reports them, then apply a cpuset policy through
//! CRI, which the kubelet cannot do), or the agent's own (the whole change
//! through CRI, for agent-managed pods or every pod).

use std::collections::BTreeMap;

pub use berth_api::resize_pod::{ResizeMode, agent_managed};
use berth_api::{
    keys,
    resize::{ResizeRequest, ResizeState},
    resize_pod::{self, same_resources},
};
use k8s_openapi::{
    api::core::v1::{Pod, ResourceRequirements},
    apimachinery::pkg::api::resource::Quantity,
};
use serde_json::Value;

use crate::runtime_resize::Scope;

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Strategic-merge patch for the `pods/resize` subresource.
    Resize(Value),
    /// The kubelet is still applying it (or has deferred it).
    Wait(String),
    /// The running state equals the request.
    Applied(String),
    /// It cannot be applied here.
    Failed(String),
    /// Carry it out through CRI ([`crate::runtime_resize`]): the whole
    /// request, or only its cpuset after the kubelet applied the resources
    /// (`done` says what the kubelet did).
    Runtime { request: ResizeRequest, scope: Scope, done: Option<String> },
}

/// The next step for `pod`, or `None` when it has no Accepted request.
pub fn next_step(pod: &Pod, mode: ResizeMode) -> Option<Step> {
    let annotations = pod.metadata.annotations.as_ref()?;
    let state: ResizeState = annotations.get(keys::RESIZE_STATE)?.parse().ok()?;
    if state != ResizeState::Accepted {
        return None;
    }
    let request: ResizeRequest = match annotations.get(keys::RESIZE).map(|r| r.parse()) {
        Some(Ok(r)) => r,
        Some(Err(e)) => return Some(Step::Failed(format!("{e}"))),
        None => return Some(Step::Failed(format!("no {} annotation", keys::RESIZE))),
    };
    let spec = pod.spec.as_ref()?;
    let desired = match resize_pod::resized(spec, &request) {
        Ok(d) => d,
        Err(e) => return Some(Step::Failed(e)),
    };
    if agent_managed(pod, mode) {
        return Some(Step::Runtime { request, scope: Scope::Full, done: None });
    }
    // Sent by the manager as it accepted (or by an earlier pass): nothing to send.
    match resize_pod::resize_patch(spec, &request) {
        Ok(Some(patch)) => return Some(Step::Resize(patch)),
        Ok(None) => {}
        Err(e) => return Some(Step::Failed(e)),
    }
    let changed: Vec<&String> = request.containers.keys().collect();
    let status = pod.status.as_ref();
    let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    if let Some(pending) = conditions.iter().find(|c| c.type_ == "PodResizePending" && c.status == "True") {
        let why = pending.message.clone().unwrap_or_default();
        if pending.reason.as_deref() == Some("Infeasible") {
            return Some(Step::Failed(format!("the kubelet cannot fit it on the node: {why}")));
        }
        return Some(Step::Wait(format!("deferred by the kubelet: {why}")));
    }
    let statuses = status.and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
    let running = |name: &String| {
        statuses
            .iter()
            .find(|c| &c.name == name)
            .and_then(|c| c.resources.as_ref())
            .is_some_and(|r| same_resources(r, &desired[name]))
    };
    let waiting: Vec<&&String> = changed.iter().filter(|n| !running(n)).collect();
    if waiting.is_empty() {
        let summary: Vec<String> = changed.iter().map(|n| format!("{n}: {}", describe(&desired[n.as_str()]))).collect();
        let done = format!("applied by the kubelet and reported in container status ({})", summary.join("; "));
        if request.cpuset.is_some() {
            return Some(Step::Runtime { request, scope: Scope::CpusetOnly, done: Some(done) });
        }
        Some(Step::Applied(done))
    } else {
        Some(Step::Wait(format!("waiting for {:?} to report the new resources", waiting)))
    }
}

fn describe(r: &ResourceRequirements) -> String {
    let list = |m: &Option<BTreeMap<String, Quantity>>| {
        m.iter().flatten().map(|(k, v)| format!("{k}={}", v.0)).collect::<Vec<_>>().join(",")
    };
    format!("requests {}, limits {}", list(&r.requests), list(&r.limits))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const REQ: &str = r#"{"containers":{"app":{"requests":{"cpu":"800m"}}}}"#;

    fn pod(state: &str, spec_cpu: &str, status_cpu: Option<&str>, conditions: Value) -> Pod {
        let status_resources = status_cpu.map(|c| json!({"requests": {"cpu": c}, "limits": {"cpu": "2"}}));
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "annotations": {keys::RESIZE_STATE: state, keys::RESIZE: REQ}},
            "spec": {"containers": [{"name": "app", "image": "a",
                "resources": {"requests": {"cpu": spec_cpu}, "limits": {"cpu": "2"}}}]},
            "status": {"conditions": conditions, "containerStatuses": [{"name": "app", "image": "a", "imageID": "",
                "ready": true, "restartCount": 0, "resources": status_resources}]}
        }))
        .unwrap()
    }

    #[test]
    fn an_accepted_request_goes_through_pods_resize_then_waits_then_is_applied() {
        let Some(Step::Resize(patch)) = next_step(&pod("Accepted", "500m", Some("500m"), json!([])), ResizeMode::Auto)
        else {
            panic!()
        };
        assert_eq!(patch["spec"]["containers"][0]["name"], "app");
        assert_eq!(patch["spec"]["containers"][0]["resources"]["requests"]["cpu"], "800m");
        assert_eq!(patch["spec"]["containers"][0]["resources"]["limits"]["cpu"], "2", "untouched values are sent too");
        let step = next_step(&pod("Accepted", "800m", Some("500m"), json!([])), ResizeMode::Auto);
        assert!(matches!(step, Some(Step::Wait(w)) if w.contains("\"app\"")));
        let Some(Step::Applied(m)) = next_step(&pod("Accepted", "0.8", Some("800m"), json!([])), ResizeMode::Auto)
        else {
            panic!()
        };
        assert!(m.contains("app: requests cpu=800m, limits cpu=2"), "{m}");
    }

    #[test]
    fn infeasible_fails_deferred_waits_and_other_states_are_left_alone() {
        let pending = |reason: &str| json!([{"type": "PodResizePending", "status": "True", "reason": reason, "message": "Node didn't have enough capacity"}]);
        let step = next_step(&pod("Accepted", "800m", Some("500m"), pending("Infeasible")), ResizeMode::Auto);
        assert!(
            matches!(step, Some(Step::Failed(m)) if m.contains("cannot fit it on the node: Node didn't have enough capacity"))
        );
        assert!(matches!(
            next_step(&pod("Accepted", "800m", Some("500m"), pending("Deferred")), ResizeMode::Auto),
            Some(Step::Wait(_))
        ));
        assert_eq!(next_step(&pod("Created", "500m", None, json!([])), ResizeMode::Auto), None);
        assert_eq!(next_step(&pod("Applied", "800m", Some("800m"), json!([])), ResizeMode::Auto), None);
    }

    #[test]
    fn a_cpuset_goes_through_cri_after_the_kubelet_reported_the_resources() {
        let cpuset = r#"{"containers":{"app":{"requests":{"cpu":"800m"}}},"cpuset":{"exclusiveCpus":2}}"#;
        let with = |mut p: Pod| {
            p.metadata.annotations.as_mut().unwrap().insert(keys::RESIZE.into(), cpuset.into());
            p
        };
        let first = next_step(&with(pod("Accepted", "500m", Some("500m"), json!([]))), ResizeMode::Auto);
        assert!(matches!(first, Some(Step::Resize(_))), "resources first, through the kubelet: {first:?}");
        let Some(Step::Runtime { request, scope, done }) =
            next_step(&with(pod("Accepted", "800m", Some("800m"), json!([]))), ResizeMode::Auto)
        else {
            panic!()
        };
        assert_eq!(scope, Scope::CpusetOnly);
        assert_eq!(request.cpuset.unwrap().exclusive_cpus, 2);
        assert!(done.unwrap().starts_with("applied by the kubelet"));
    }

    #[test]
    fn agent_managed_pods_and_agent_mode_go_through_cri() {
        let mut p = pod("Accepted", "500m", Some("500m"), json!([]));
        assert!(matches!(next_step(&p, ResizeMode::Agent), Some(Step::Runtime { scope: Scope::Full, done: None, .. })));
        assert!(matches!(next_step(&p, ResizeMode::Auto), Some(Step::Resize(_))));
        p.metadata.annotations.as_mut().unwrap().insert(keys::RESIZE_AGENT_MANAGED.into(), "true".into());
        let Some(Step::Runtime { request, scope: Scope::Full, .. }) = next_step(&p, ResizeMode::Auto) else { panic!() };
        assert_eq!(request.containers["app"].requests["cpu"].0, "800m");
        assert!(matches!(next_step(&p, ResizeMode::Kubelet), Some(Step::Resize(_))), "kubelet mode ignores the mark");
        // A request naming a container the pod lacks fails on either path.
        p.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys::RESIZE.into(), r#"{"containers":{"db":{"requests":{"cpu":"1"}}}}"#.into());
        assert!(
            matches!(next_step(&p, ResizeMode::Auto), Some(Step::Failed(m)) if m.contains("\"db\" is not in the pod"))
        );
    }
}
