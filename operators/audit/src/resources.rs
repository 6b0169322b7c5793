//! Node over-commit: the requests of the live pods bound to a node, summed
//! the way the scheduler sums them, against the node's allocatable, for every
//! resource the node reports (cpu, memory, pods, ephemeral-storage, extended).

use std::collections::BTreeMap;

use berth_api::quantity;
use k8s_openapi::{
    api::core::v1::{Container, Node, Pod, ResourceRequirements},
    apimachinery::pkg::api::resource::Quantity,
};

use crate::{Finding, Kind, ObjectRef, bound_node, pod_ref};

/// Resource name → amount (millicores for cpu, base units otherwise).
pub type Amounts = BTreeMap<String, i64>;

/// Every finding about nodes whose pods request more than they have.
pub fn overcommit(nodes: &[Node], pods: &[Pod]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut per_node: BTreeMap<&str, (Amounts, usize)> = BTreeMap::new();
    for pod in pods {
        let Some(node) = bound_node(pod) else { continue };
        match pod_requests(pod) {
            Ok(requests) => {
                let (sum, count) = per_node.entry(node).or_default();
                add(sum, &requests);
                *count += 1;
            }
            Err(e) => findings.push(Finding::warning(
                Kind::Unreadable,
                pod_ref(pod),
                format!("requests not counted on node {node}: {e}"),
            )),
        }
    }
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let Some((requested, count)) = per_node.get(name) else { continue };
        let allocatable = node.status.as_ref().and_then(|s| s.allocatable.clone()).unwrap_or_default();
        let mut over = Vec::new();
        for (resource, q) in &allocatable {
            let have = match quantity::amount(resource, q) {
                Ok(v) => v,
                Err(e) => {
                    findings.push(Finding::warning(
                        Kind::Unreadable,
                        ObjectRef::node(name),
                        format!("allocatable {resource}: {e}"),
                    ));
                    continue;
                }
            };
            let want = requested.get(resource.as_str()).copied().unwrap_or(0);
            if want > have {
                over.push(format!(
                    "{resource} requested {} > allocatable {}",
                    show(resource, want),
                    show(resource, have)
                ));
            }
        }
        if !over.is_empty() {
            findings.push(Finding::violation(
                Kind::NodeOvercommit,
                ObjectRef::node(name),
                format!("{} (by {count} live pods bound to it)", over.join(", ")),
            ));
        }
    }
    findings
}

/// What the scheduler counts for a pod (`resourcehelper.PodRequests`):
/// containers summed, restartable (sidecar) init containers added, the
/// largest one-off init container (with the sidecars started before it)
/// if larger, plus the pod overhead; pod-level requests replace the
/// containers' where set. A container's resources are the larger of its spec
/// and what its status reports (a resize in flight), or the status alone when
/// the kubelet found the resize infeasible. Each pod also takes one `pods`.
pub fn pod_requests(pod: &Pod) -> Result<Amounts, String> {
    let Some(spec) = pod.spec.as_ref() else { return Ok(Amounts::from([("pods".into(), 1)])) };
    let statuses: BTreeMap<&str, &ResourceRequirements> = pod
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| Some((c.name.as_str(), c.resources.as_ref()?)))
        .collect();
    let infeasible = pod
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| c.type_ == "PodResizePending" && c.status == "True" && c.reason.as_deref() == Some("Infeasible"));
    let container = |c: &Container| -> Result<Amounts, String> {
        let declared = requests_of(c.resources.as_ref())?;
        Ok(match statuses.get(c.name.as_str()) {
            Some(reported) if infeasible => requests_of(Some(reported))?,
            Some(reported) => larger(declared, &requests_of(Some(reported))?),
            None => declared,
        })
    };
    let mut sum = Amounts::new();
    for c in &spec.containers {
        add(&mut sum, &container(c)?);
    }
    let (mut sidecars, mut init_peak) = (Amounts::new(), Amounts::new());
    for c in spec.init_containers.iter().flatten() {
        let own = container(c)?;
        let while_running = if c.restart_policy.as_deref() == Some("Always") {
            add(&mut sum, &own);
            add(&mut sidecars, &own);
            sidecars.clone()
        } else {
            let mut with_sidecars = own;
            add(&mut with_sidecars, &sidecars);
            with_sidecars
        };
        init_peak = larger(init_peak, &while_running);
    }
    let mut total = larger(sum, &init_peak);
    if let Some(pod_level) = spec.resources.as_ref().and_then(|r| r.requests.as_ref()) {
        for (resource, q) in pod_level {
            total.insert(resource.clone(), amount(resource, q)?);
        }
    }
    if let Some(overhead) = &spec.overhead {
        add(&mut total, &parse(overhead)?);
    }
    total.insert("pods".into(), 1);
    Ok(total)
}

/// A container's requests; a resource with only a limit requests its limit.
fn requests_of(r: Option<&ResourceRequirements>) -> Result<Amounts, String> {
    let Some(r) = r else { return Ok(Amounts::new()) };
    let mut out = parse(r.limits.as_ref().unwrap_or(&BTreeMap::new()))?;
    out.extend(parse(r.requests.as_ref().unwrap_or(&BTreeMap::new()))?);
    Ok(out)
}

fn parse(list: &BTreeMap<String, Quantity>) -> Result<Amounts, String> {
    list.iter().map(|(r, q)| Ok((r.clone(), amount(r, q)?))).collect()
}

fn amount(resource: &str, q: &Quantity) -> Result<i64, String> {
    quantity::amount(resource, q).map_err(|e| format!("{resource}: {e}"))
}

fn add(into: &mut Amounts, other: &Amounts) {
    for (r, v) in other {
        *into.entry(r.clone()).or_default() += v;
    }
}

fn larger(mut a: Amounts, b: &Amounts) -> Amounts {
    for (r, v) in b {
        let slot = a.entry(r.clone()).or_default();
        *slot = (*slot).max(*v);
    }
    a
}

/// An amount as a person reads it: millicores, bytes with their binary size.
pub fn show(resource: &str, v: i64) -> String {
    match resource {
        "cpu" => format!("{v}m"),
        "memory" | "ephemeral-storage" if v >= 1 << 20 => format!("{v} bytes ({:.1}Mi)", v as f64 / f64::from(1 << 20)),
        "memory" | "ephemeral-storage" => format!("{v} bytes"),
        _ => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{Severity, testing::*};

    #[test]
    fn an_overcommitted_node_is_named_with_its_numbers() {
        let nodes = [node("n0", "4", "8Gi", 110, &[]), node("n1", "4", "8Gi", 2, &[])];
        let pods = [
            pod("a", "p1", "n0", &[], "3", "1Gi"),
            pod("a", "p2", "n0", &[], "1500m", "1Gi"),
            pod("a", "p3", "n1", &[], "1", "1Gi"),
            pod("a", "p4", "n1", &[], "1", "1Gi"),
            pod("a", "p5", "n1", &[], "1", "1Gi"),
        ];
        let findings = overcommit(&nodes, &pods);
        assert_eq!(findings.len(), 2, "{findings:#?}");
        assert_eq!((findings[0].severity, findings[0].kind), (Severity::Violation, Kind::NodeOvercommit));
        assert_eq!(findings[0].object, ObjectRef::node("n0"));
        assert_eq!(findings[0].message, "cpu requested 4500m > allocatable 4000m (by 2 live pods bound to it)");
        assert_eq!(findings[1].message, "pods requested 3 > allocatable 2 (by 3 live pods bound to it)");
    }

    #[test]
    fn ended_and_unbound_pods_take_nothing_and_a_full_node_is_fine() {
        let nodes = [node("n0", "4", "8Gi", 110, &[])];
        let pods = [
            pod("a", "full", "n0", &[], "4", "8Gi"),
            with(pod("a", "done", "n0", &[], "4", "8Gi"), json!({"status": {"phase": "Succeeded"}})),
            with(pod("a", "failed", "n0", &[], "4", "8Gi"), json!({"status": {"phase": "Failed"}})),
            with(pod("a", "pending", "", &[], "4", "8Gi"), json!({"spec": {"nodeName": null}})),
        ];
        assert_eq!(overcommit(&nodes, &pods), vec![]);
        let over = [pod("a", "full", "n0", &[], "4", "8Gi"), pod("a", "more", "n0", &[], "0", "1")];
        let f = overcommit(&nodes, &over);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].message.starts_with("memory requested 8589934593 bytes (8192.0Mi) > allocatable 8589934592"),
            "{f:?}"
        );
    }

    #[test]
    fn requests_are_summed_as_the_scheduler_does() {
        let p = with(
            pod("a", "p", "n0", &[], "1", "1Gi"),
            json!({"spec": {
                "containers": [{"name": "app", "image": "a", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
                               {"name": "lim", "image": "a", "resources": {"limits": {"cpu": "500m"}}}],
                "initContainers": [
                    {"name": "side", "image": "a", "restartPolicy": "Always", "resources": {"requests": {"cpu": "250m"}}},
                    {"name": "setup", "image": "a", "resources": {"requests": {"cpu": "3", "memory": "100Mi"}}}],
                "overhead": {"cpu": "100m"}
            }}),
        );
        let r = pod_requests(&p).unwrap();
        // containers 1 + 0.5 (limit) + sidecar 0.25 = 1.75; setup with the sidecar 3.25 is larger; + overhead.
        assert_eq!(r["cpu"], 3350);
        assert_eq!(r["memory"], 1 << 30);
        assert_eq!(r["pods"], 1);
    }

    #[test]
    fn a_resize_in_flight_counts_at_its_larger_value_unless_infeasible() {
        let resizing = with(
            pod("a", "p", "n0", &[], "1", "1Gi"),
            json!({"status": {"containerStatuses": [{"name": "app", "image": "a", "imageID": "", "ready": true,
                "restartCount": 0, "resources": {"requests": {"cpu": "2", "memory": "512Mi"}}}]}}),
        );
        let r = pod_requests(&resizing).unwrap();
        assert_eq!((r["cpu"], r["memory"]), (2000, 1 << 30));
        let infeasible = with(
            resizing,
            json!({"status": {"conditions": [{"type": "PodResizePending", "status": "True", "reason": "Infeasible"}]}}),
        );
        let r = pod_requests(&infeasible).unwrap();
        assert_eq!((r["cpu"], r["memory"]), (2000, 512 << 20), "the status alone: what runs");
    }
}
