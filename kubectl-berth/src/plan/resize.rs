//! `plan resize`: would the feasibility controller accept this request now?
//! The decision is the controller's own function ([`feasibility::decide`])
//! over the node and its pods, shown with the numbers. Pure.

use berth_api::{
    resize::{ResizeEvent, ResizeRequest, transition},
    resize_pod,
};
use berth_resize::feasibility;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use serde::Serialize;

use crate::{resize::state_of, table};

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResizePlan {
    pub pod: String,
    pub node: String,
    pub request: serde_json::Value,
    /// container → (requests and limits before, after).
    pub containers: Vec<ContainerChange>,
    pub cpu_allocatable: i64,
    pub memory_allocatable: i64,
    /// Every running pod's requests on the node now.
    pub cpu_requested_now: i64,
    pub memory_requested_now: i64,
    pub fits: bool,
    /// The feasibility controller's message: Accepted or Rejected with the numbers.
    pub decision: String,
    /// Why a submission would be refused now (a request in flight).
    pub refused: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerChange {
    pub name: String,
    pub before: String,
    pub after: String,
}

fn show(r: &k8s_openapi::api::core::v1::ResourceRequirements) -> String {
    let part = |m: &Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| { m.iter().flatten().map(|(k, v)| format!("{k}={}", v.0)).collect::<Vec<_>>().join(",") };
    format!("requests {} limits {}", part(&r.requests), part(&r.limits))
}

pub fn plan(node: &Node, node_pods: &[Pod], pod: &Pod, request: &ResizeRequest) -> Result<ResizePlan, String> {
    let spec = pod.spec.clone().ok_or("the pod has no spec")?;
    resize_pod::check(&spec, request)?;
    let after = resize_pod::resized(&spec, request)?;
    let containers = spec
        .containers
        .iter()
        .filter(|c| request.containers.contains_key(&c.name))
        .map(|c| ContainerChange {
            name: c.name.clone(),
            before: show(&c.resources.clone().unwrap_or_default()),
            after: after.get(&c.name).map(show).unwrap_or_default(),
        })
        .collect();
    let allocatable = feasibility::allocatable(node)?;
    let running =
        |p: &&Pod| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    let (cpu_now, memory_now) =
        node_pods.iter().filter(running).map(feasibility::load).fold((0, 0), |(c, m), a| (c + a.cpu, m + a.memory));
    let decision = feasibility::decide(node, node_pods, pod, request);
    let refused = state_of(pod)
        .and_then(|from| transition(from, ResizeEvent::Submit).map(|_| ()).map_err(|e| e.to_string()))
        .err();
    Ok(ResizePlan {
        pod: pod.name_any(),
        node: node.name_any(),
        request: serde_json::to_value(request).map_err(|e| e.to_string())?,
        containers,
        cpu_allocatable: allocatable.cpu,
        memory_allocatable: allocatable.memory,
        cpu_requested_now: cpu_now,
        memory_requested_now: memory_now,
        fits: decision.is_ok(),
        decision: decision.unwrap_or_else(|e| e),
        refused,
    })
}

pub fn render(p: &ResizePlan) -> String {
    let mut out = format!("pod/{} on node {}: resize {}\n", p.pod, p.node, p.request);
    let rows: Vec<Vec<String>> =
        p.containers.iter().map(|c| vec![c.name.clone(), c.before.clone(), c.after.clone()]).collect();
    out.push_str(&table::table(&["CONTAINER", "NOW", "AFTER"], &rows));
    out.push_str(&format!(
        "node {}: allocatable cpu {} memory {}; requested now cpu {} memory {}\n",
        p.node,
        table::cpu(p.cpu_allocatable),
        table::memory(p.memory_allocatable),
        table::cpu(p.cpu_requested_now),
        table::memory(p.memory_requested_now)
    ));
    let verdict = if p.fits { "would be Accepted" } else { "would be Rejected" };
    out.push_str(&format!("{verdict}: {}\n", p.decision));
    if let Some(why) = &p.refused {
        out.push_str(&format!("but it cannot be submitted now: {why}\n"));
    }
    out.push_str("Nothing was changed (dry run).\n");
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, cpu: &str, state: Option<&str>) -> Pod {
        let annotations = state.map_or(json!({}), |s| {
            json!({"berth.dev/resize-state": s,
            "berth.dev/resize": r#"{"containers":{"app":{"requests":{"cpu":"1"}}}}"#})
        });
        serde_json::from_value(json!({"metadata": {"name": name, "uid": name, "annotations": annotations},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "a",
                "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}, "limits": {"cpu": "4", "memory": "64Mi"}}}]}}))
        .unwrap()
    }

    fn node() -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": "n1"}, "status": {"allocatable": {"cpu": "2", "memory": "1Gi"}}}),
        )
        .unwrap()
    }

    fn req(cpu: &str) -> ResizeRequest {
        format!(r#"{{"containers":{{"app":{{"requests":{{"cpu":"{cpu}"}}}}}}}}"#).parse().unwrap()
    }

    #[test]
    fn a_resize_that_fits_shows_the_numbers_and_would_be_accepted() {
        let pods = [pod("a", "500m", None), pod("b", "500m", None)];
        let p = plan(&node(), &pods, &pods[0], &req("1")).unwrap();
        assert!(p.fits);
        assert_eq!((p.cpu_allocatable, p.cpu_requested_now), (2000, 1000));
        assert_eq!(
            p.decision,
            format!("fits node n1: cpu 1500m of 2000m, memory {} of {} bytes requested", 128 << 20, 1 << 30)
        );
        let text = render(&p);
        assert!(
            text.contains(
                "app         requests cpu=500m,memory=64Mi limits cpu=4,memory=64Mi   requests cpu=1,memory=64Mi"
            ),
            "{text}"
        );
        assert!(text.contains("node n1: allocatable cpu 2 memory 1Gi; requested now cpu 1 memory 128Mi\n"), "{text}");
        assert!(text.contains("would be Accepted: fits node n1"), "{text}");
    }

    #[test]
    fn a_resize_that_overcommits_would_be_rejected_and_one_in_flight_is_refused() {
        // b holds an accepted resize to 1 CPU: counted at its larger value.
        let pods = [pod("a", "500m", None), pod("b", "500m", Some("Accepted"))];
        let p = plan(&node(), &pods, &pods[0], &req("1500m")).unwrap();
        assert!(!p.fits);
        assert_eq!(p.decision, "does not fit node n1: cpu requests would be 2500m of 2000m allocatable");
        assert!(render(&p).contains("would be Rejected: does not fit node n1"));
        let q = plan(&node(), &pods, &pods[1], &req("600m")).unwrap();
        assert!(q.refused.unwrap().contains("a request is in flight"));
        assert!(plan(&node(), &pods, &pods[0], &req("5")).unwrap_err().contains("exceeds its limit"));
    }
}
