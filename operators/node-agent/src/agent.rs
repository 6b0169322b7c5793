//! What the node agent does next for an Accepted resize on its node, judged
//! from the pod alone: send the new resources through `pods/resize` (the
//! kubelet actuates them), wait, or finish as Applied or Failed. Pure.

use std::collections::BTreeMap;

use berth_api::{
    keys, quantity,
    resize::{ResizeRequest, ResizeState},
    resize_pod,
};
use k8s_openapi::{
    api::core::v1::{Pod, ResourceRequirements},
    apimachinery::pkg::api::resource::Quantity,
};
use serde_json::{Value, json};

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

fn same_resources(a: &ResourceRequirements, b: &ResourceRequirements) -> bool {
    same(a.requests.as_ref(), b.requests.as_ref()) && same(a.limits.as_ref(), b.limits.as_ref())
}

/// The next step for `pod`, or `None` when it has no Accepted request.
pub fn next_step(pod: &Pod) -> Option<Step> {
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
    if request.cpuset.is_some() {
        return Some(Step::Failed(
            "exclusive CPUs (cpuset) are not applied by this agent yet; resubmit without cpuset".into(),
        ));
    }
    let spec = pod.spec.as_ref()?;
    let desired = match resize_pod::resized(spec, &request) {
        Ok(d) => d,
        Err(e) => return Some(Step::Failed(e)),
    };
    let changed: Vec<&String> = request.containers.keys().collect();
    let in_spec = |name: &String| {
        let now =
            spec.containers.iter().find(|c| &c.name == name).and_then(|c| c.resources.clone()).unwrap_or_default();
        same_resources(&now, &desired[name])
    };
    if !changed.iter().all(|n| in_spec(n)) {
        let containers: Vec<Value> =
            changed.iter().map(|n| json!({"name": n, "resources": desired[n.as_str()]})).collect();
        return Some(Step::Resize(json!({"spec": {"containers": containers}})));
    }
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
        Some(Step::Applied(format!("applied by the kubelet and reported in container status ({})", summary.join("; "))))
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
        let Some(Step::Resize(patch)) = next_step(&pod("Accepted", "500m", Some("500m"), json!([]))) else { panic!() };
        assert_eq!(patch["spec"]["containers"][0]["name"], "app");
        assert_eq!(patch["spec"]["containers"][0]["resources"]["requests"]["cpu"], "800m");
        assert_eq!(patch["spec"]["containers"][0]["resources"]["limits"]["cpu"], "2", "untouched values are sent too");
        let step = next_step(&pod("Accepted", "800m", Some("500m"), json!([])));
        assert!(matches!(step, Some(Step::Wait(w)) if w.contains("\"app\"")));
        let Some(Step::Applied(m)) = next_step(&pod("Accepted", "0.8", Some("800m"), json!([]))) else { panic!() };
        assert!(m.contains("app: requests cpu=800m, limits cpu=2"), "{m}");
    }

    #[test]
    fn infeasible_fails_deferred_waits_and_other_states_are_left_alone() {
        let pending = |reason: &str| json!([{"type": "PodResizePending", "status": "True", "reason": reason, "message": "Node didn't have enough capacity"}]);
        let step = next_step(&pod("Accepted", "800m", Some("500m"), pending("Infeasible")));
        assert!(
            matches!(step, Some(Step::Failed(m)) if m.contains("cannot fit it on the node: Node didn't have enough capacity"))
        );
        assert!(matches!(next_step(&pod("Accepted", "800m", Some("500m"), pending("Deferred"))), Some(Step::Wait(_))));
        assert_eq!(next_step(&pod("Created", "500m", None, json!([]))), None);
        assert_eq!(next_step(&pod("Applied", "800m", Some("800m"), json!([]))), None);
    }

    #[test]
    fn a_cpuset_request_is_failed_with_a_reason_for_now() {
        let mut p = pod("Accepted", "500m", None, json!([]));
        p.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys::RESIZE.into(), r#"{"cpuset":{"exclusiveCpus":2}}"#.into());
        assert!(matches!(next_step(&p), Some(Step::Failed(m)) if m.contains("cpuset")));
    }
}
