//! The pure half of a resize the agent makes itself through CRI: desired
//! cgroup values from the pod and its request, which container runs on which
//! CPUs, and the memory check. [`crate::runtime_resize`] carries it out.

use std::collections::{BTreeMap, BTreeSet};

use berth_api::{quantity, resize::ResizeRequest, resize_pod};
use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

use crate::{cgroup::Resources, cpu_manager::ContainerKey, cpuset::CpuSet};

const MIB: i64 = 1 << 20;

/// A container's requests and limits in the kubelet's units. A CPU request
/// defaults to the CPU limit, as the API server defaults it.
pub fn to_resources(name: &str, r: &ResourceRequirements) -> Result<Resources, String> {
    let get = |map: &Option<BTreeMap<String, _>>, resource: &str| map.as_ref().and_then(|m| m.get(resource)).cloned();
    let bad = |what: &str, e: String| format!("container {name:?}: {what}: {e}");
    let cpu_limit =
        get(&r.limits, "cpu").map(|q| quantity::millicores(&q).map_err(|e| bad("cpu limit", e))).transpose()?;
    let cpu_request =
        get(&r.requests, "cpu").map(|q| quantity::millicores(&q).map_err(|e| bad("cpu request", e))).transpose()?;
    let memory_limit =
        get(&r.limits, "memory").map(|q| quantity::bytes(&q).map_err(|e| bad("memory limit", e))).transpose()?;
    Ok(Resources {
        cpu_request_milli: cpu_request.or(cpu_limit).unwrap_or(0),
        cpu_limit_milli: cpu_limit,
        memory_limit_bytes: memory_limit,
        cpuset: None,
    })
}

/// Container name → resources once `request` is applied to the pod (the
/// cpuset is decided by [`cpuset_plan`]).
pub fn desired_resources(spec: &PodSpec, request: &ResizeRequest) -> Result<BTreeMap<String, Resources>, String> {
    resize_pod::resized(spec, request)?.iter().map(|(name, r)| Ok((name.clone(), to_resources(name, r)?))).collect()
}

/// The key the CPU manager records a pod's exclusive CPUs under: its first
/// container (the pod's containers share the set).
pub fn owner_key(pod_uid: &str, spec: &PodSpec) -> Option<ContainerKey> {
    spec.containers.first().map(|c| ContainerKey::new(pod_uid, &c.name))
}

/// CPUs no container holds exclusively: the shared pool, where every
/// container without exclusive CPUs runs (the node's reserved CPUs included).
pub fn shared_pool(node_cpus: &CpuSet, assignments: &BTreeMap<ContainerKey, CpuSet>) -> CpuSet {
    assignments.values().fold(node_cpus.clone(), |free, held| free.difference(held))
}

/// Whether giving `owner` `n` exclusive CPUs still leaves the shared pool a CPU.
pub fn check_leaves_shared(
    node_cpus: &CpuSet,
    assignments: &BTreeMap<ContainerKey, CpuSet>,
    owner: &ContainerKey,
    n: usize,
) -> Result<(), String> {
    let others: BTreeMap<ContainerKey, CpuSet> =
        assignments.iter().filter(|(k, _)| *k != owner).map(|(k, v)| (k.clone(), v.clone())).collect();
    let shared = shared_pool(node_cpus, &others);
    if n >= shared.len() {
        return Err(format!(
            "{n} exclusive CPUs would leave no CPU for the shared pool: {} of the node's CPUs {node_cpus} are not \
             held exclusively ({shared})",
            shared.len()
        ));
    }
    Ok(())
}

/// The CPUs each running container must run on: a container of a pod that
/// holds exclusive CPUs (under any of its keys) on that pod's set, every other
/// on the shared pool. This is the kubelet static CPU manager's rule, which
/// the agent's CPU manager takes over (the kubelet runs the `none` policy).
pub fn cpuset_plan(
    running: &BTreeSet<ContainerKey>,
    assignments: &BTreeMap<ContainerKey, CpuSet>,
    node_cpus: &CpuSet,
) -> Result<BTreeMap<ContainerKey, CpuSet>, String> {
    let mut by_pod: BTreeMap<&str, CpuSet> = BTreeMap::new();
    for (key, cpus) in assignments {
        let set = by_pod.entry(key.pod_uid.as_str()).or_default();
        *set = set.union(cpus);
    }
    let shared = shared_pool(node_cpus, assignments);
    running
        .iter()
        .map(|key| match by_pod.get(key.pod_uid.as_str()) {
            Some(cpus) => Ok((key.clone(), cpus.clone())),
            None if shared.is_empty() => {
                Err(format!("no CPU left in the shared pool for {key}: every CPU of {node_cpus} is held exclusively"))
            }
            None => Ok((key.clone(), shared.clone())),
        })
        .collect()
}

/// The containers whose new memory limit is below what they use now (bytes
/// by container name), with the numbers; `None` when every limit fits.
pub fn memory_below_usage(desired: &BTreeMap<String, Resources>, usage: &BTreeMap<String, i64>) -> Option<String> {
    let refused: Vec<String> = desired
        .iter()
        .filter_map(|(name, r)| {
            let (limit, used) = (r.memory_limit_bytes?, *usage.get(name)?);
            (limit < used).then(|| {
                format!(
                    "container {name:?}: memory limit {limit} bytes ({} MiB) is below its current usage of {used} \
                     bytes ({} MiB)",
                    limit / MIB,
                    used / MIB
                )
            })
        })
        .collect();
    (!refused.is_empty()).then(|| format!("refusing a memory decrease below usage: {}", refused.join("; ")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec() -> PodSpec {
        serde_json::from_value(json!({"containers": [
            {"name": "app", "image": "a", "resources": {"requests": {"cpu": "500m", "memory": "64Mi"},
                "limits": {"cpu": "1", "memory": "128Mi"}}},
            {"name": "side", "image": "b", "resources": {"limits": {"cpu": "200m", "memory": "32Mi"}}},
            {"name": "best", "image": "c"}
        ]}))
        .unwrap()
    }

    fn key(pod: &str, c: &str) -> ContainerKey {
        ContainerKey::new(pod, c)
    }

    #[test]
    fn desired_values_follow_the_request_and_the_api_defaults() {
        let req: ResizeRequest =
            r#"{"containers":{"app":{"requests":{"cpu":"750m"},"limits":{"cpu":"1500m","memory":"256Mi"}}}}"#
                .parse()
                .unwrap();
        let d = desired_resources(&spec(), &req).unwrap();
        assert_eq!(
            d["app"],
            Resources {
                cpu_request_milli: 750,
                cpu_limit_milli: Some(1500),
                memory_limit_bytes: Some(256 * MIB),
                cpuset: None
            }
        );
        assert_eq!(
            d["side"],
            Resources {
                cpu_request_milli: 200,
                cpu_limit_milli: Some(200),
                memory_limit_bytes: Some(32 * MIB),
                cpuset: None
            },
            "untouched; a request defaults to the limit"
        );
        assert_eq!(d["best"], Resources::default());
        assert_eq!(d["app"].to_cri().cpu_shares, 768);
        assert_eq!(d["app"].to_cri().cpu_quota, 150_000);

        let unknown: ResizeRequest = r#"{"containers":{"nope":{"requests":{"cpu":"1"}}}}"#.parse().unwrap();
        let err = desired_resources(&spec(), &unknown).unwrap_err();
        assert!(err.contains("\"nope\" is not in the pod; its containers: app, side, best"), "{err}");
        let bad: ResizeRequest = r#"{"containers":{"app":{"limits":{"memory":"lots"}}}}"#.parse().unwrap();
        let err = desired_resources(&spec(), &bad).unwrap_err();
        assert!(err.starts_with("container \"app\": memory limit: "), "{err}");
    }

    #[test]
    fn an_exclusive_pod_gets_its_set_and_everyone_else_the_shared_pool() {
        let node: CpuSet = "0-7".parse().unwrap();
        let assignments = BTreeMap::from([(key("p1", "app"), "1-2".parse().unwrap())]);
        let running: BTreeSet<_> = [key("p1", "app"), key("p1", "side"), key("p2", "web"), key("p3", "db")].into();
        let plan = cpuset_plan(&running, &assignments, &node).unwrap();
        assert_eq!(plan[&key("p1", "app")].to_string(), "1-2");
        assert_eq!(plan[&key("p1", "side")].to_string(), "1-2", "every container of the pod on the pod's set");
        assert_eq!(plan[&key("p2", "web")].to_string(), "0,3-7");
        assert_eq!(plan[&key("p3", "db")].to_string(), "0,3-7");
        // No assignments: everyone on every CPU.
        assert!(cpuset_plan(&running, &BTreeMap::new(), &node).unwrap().values().all(|c| *c == node));
        // Two exclusive pods: disjoint sets, the rest shares what is left.
        let two =
            BTreeMap::from([(key("p1", "app"), "1".parse().unwrap()), (key("p2", "web"), "2-3".parse().unwrap())]);
        let plan = cpuset_plan(&running, &two, &node).unwrap();
        assert_eq!(plan[&key("p2", "web")].to_string(), "2-3");
        assert_eq!(plan[&key("p3", "db")].to_string(), "0,4-7");
    }

    #[test]
    fn the_shared_pool_never_empties() {
        let node: CpuSet = "0-1".parse().unwrap();
        let all = BTreeMap::from([(key("p1", "app"), "0-1".parse().unwrap())]);
        let running: BTreeSet<_> = [key("p1", "app"), key("p2", "web")].into();
        let err = cpuset_plan(&running, &all, &node).unwrap_err();
        assert!(err.contains("no CPU left in the shared pool for p2/web"), "{err}");
        let none = BTreeMap::new();
        assert_eq!(check_leaves_shared(&node, &none, &key("p1", "app"), 1), Ok(()));
        let err = check_leaves_shared(&node, &none, &key("p1", "app"), 2).unwrap_err();
        assert!(err.starts_with("2 exclusive CPUs would leave no CPU for the shared pool"), "{err}");
        // The owner's own CPUs count as available to it (a regrow).
        let held = BTreeMap::from([(key("p1", "app"), "1".parse().unwrap())]);
        assert_eq!(check_leaves_shared(&node, &held, &key("p1", "app"), 1), Ok(()));
        assert!(check_leaves_shared(&node, &held, &key("p2", "web"), 1).is_err());
        assert_eq!(owner_key("uid", &spec()), Some(key("uid", "app")));
    }

    #[test]
    fn a_memory_limit_below_usage_is_refused_with_the_numbers() {
        let desired = BTreeMap::from([
            ("app".to_string(), Resources { memory_limit_bytes: Some(16 * MIB), ..Default::default() }),
            ("side".to_string(), Resources { memory_limit_bytes: Some(64 * MIB), ..Default::default() }),
            ("best".to_string(), Resources::default()),
        ]);
        let usage =
            BTreeMap::from([("app".to_string(), 48 * MIB), ("side".to_string(), 10 * MIB), ("best".into(), 1 << 40)]);
        assert_eq!(
            memory_below_usage(&desired, &usage).unwrap(),
            "refusing a memory decrease below usage: container \"app\": memory limit 16777216 bytes (16 MiB) is below \
             its current usage of 50331648 bytes (48 MiB)"
        );
        let fits = BTreeMap::from([("app".to_string(), 8 * MIB)]);
        assert_eq!(memory_below_usage(&desired, &fits), None);
    }
}
