//! The order of cgroup writes when several containers of a pod change, as
//! the kubelet orders a resize (`doPodResizeAction`/`resizeContainers`):
//! memory first, then CPU; per resource, the pod-level cgroup first when
//! its value grows, then the containers (those that shrink before those
//! that grow, so their sum stays inside the pod's bound), then the pod-level
//! cgroup last when its value shrinks. cgroup v1 enforces this for CPU: a
//! child's `cpu.cfs_quota_us` above its parent's is refused (EINVAL).

use std::collections::BTreeMap;

use crate::cgroup::{PodCgroup, Resources, UNLIMITED, pod_cgroup};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    Memory,
    Cpu,
}

/// One write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Set the pod cgroup's value of `resource` (memory: the limit; CPU:
    /// shares, period and quota) to the desired one.
    Pod(Resource),
    /// Set the container's `resource` fields to the desired ones through
    /// CRI `UpdateContainerResources` (the cpuset goes with CPU).
    Container(String, Resource),
}

/// A limit as an ordered value: unlimited is the largest.
fn bound(v: i64) -> i128 {
    if v == UNLIMITED || v <= 0 { i128::MAX } else { i128::from(v) }
}

fn pod_value(p: &PodCgroup, r: Resource) -> (i128, i128) {
    match r {
        Resource::Memory => (bound(p.memory_limit_in_bytes), 0),
        // The quota bounds the children; shares do not, but follow the same rule.
        Resource::Cpu => (bound(p.cpu_quota), i128::from(p.cpu_shares)),
    }
}

fn container_value(c: Option<&Resources>, r: Resource) -> (i128, i128) {
    let c = c.cloned().unwrap_or_default().to_cri();
    match r {
        Resource::Memory => (bound(c.memory_limit_in_bytes), 0),
        Resource::Cpu => (bound(c.cpu_quota), i128::from(c.cpu_shares)),
    }
}

/// The writes that take a pod from `current` to `desired` (container name →
/// resources; a container missing from `desired` keeps its current values).
/// Nothing changes: no steps.
pub fn resize_steps(current: &BTreeMap<String, Resources>, desired: &BTreeMap<String, Resources>) -> Vec<Step> {
    let target: BTreeMap<&String, &Resources> = current.iter().map(|(n, r)| (n, desired.get(n).unwrap_or(r))).collect();
    let pod_now = pod_cgroup(current.values());
    let pod_next = pod_cgroup(target.values().copied());
    let mut steps = Vec::new();
    for resource in [Resource::Memory, Resource::Cpu] {
        // Ordered by the bound first (quota, memory limit), then shares: a
        // quota that shrinks while shares grow is a shrink, so the children
        // are lowered before the parent.
        let (now, next) = (pod_value(&pod_now, resource), pod_value(&pod_next, resource));
        if next > now {
            steps.push(Step::Pod(resource));
        }
        let mut shrinking = Vec::new();
        let mut growing = Vec::new();
        for (name, want) in &target {
            let have = current.get(*name);
            let (a, b) = (container_value(have, resource), container_value(Some(want), resource));
            let cpuset_changes = resource == Resource::Cpu && have.map(|h| &h.cpuset) != Some(&want.cpuset);
            if a == b && !cpuset_changes {
                continue;
            }
            if b < a { &mut shrinking } else { &mut growing }.push(Step::Container((*name).clone(), resource));
        }
        steps.extend(shrinking);
        steps.extend(growing);
        if next < now {
            steps.push(Step::Pod(resource));
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::{Resource::*, Step::*, *};

    fn res(req: i64, limit: Option<i64>, mem: Option<i64>) -> Resources {
        Resources { cpu_request_milli: req, cpu_limit_milli: limit, memory_limit_bytes: mem, cpuset: None }
    }

    fn pod(items: &[(&str, Resources)]) -> BTreeMap<String, Resources> {
        items.iter().map(|(n, r)| ((*n).to_string(), r.clone())).collect()
    }

    fn c(name: &str, r: super::Resource) -> Step {
        Container(name.into(), r)
    }

    #[test]
    fn increase_writes_the_pod_first_decrease_last() {
        let now = pod(&[("app", res(500, Some(1000), Some(1 << 30))), ("side", res(100, Some(200), Some(1 << 27)))]);
        let up = pod(&[("app", res(1000, Some(2000), Some(2 << 30)))]);
        assert_eq!(resize_steps(&now, &up), vec![Pod(Memory), c("app", Memory), Pod(Cpu), c("app", Cpu)]);
        let down = pod(&[("app", res(250, Some(500), Some(1 << 29)))]);
        assert_eq!(resize_steps(&now, &down), vec![c("app", Memory), Pod(Memory), c("app", Cpu), Pod(Cpu)]);
        assert_eq!(resize_steps(&now, &now), vec![], "nothing changes: nothing written");
    }

    #[test]
    fn shrinking_containers_go_before_growing_ones() {
        let now = pod(&[("a", res(1000, Some(1000), Some(1 << 30))), ("b", res(1000, Some(1000), Some(1 << 30)))]);
        // a gives to b: the pod total is unchanged, so no pod write; a first.
        let swap = pod(&[("a", res(500, Some(500), Some(1 << 29))), ("b", res(1500, Some(1500), Some(3 << 29)))]);
        assert_eq!(resize_steps(&now, &swap), vec![c("a", Memory), c("b", Memory), c("a", Cpu), c("b", Cpu)]);
        // Memory grows while CPU shrinks: each resource on its own rule.
        let mixed = pod(&[("b", res(500, Some(500), Some(2 << 30)))]);
        assert_eq!(resize_steps(&now, &mixed), vec![Pod(Memory), c("b", Memory), c("b", Cpu), Pod(Cpu)]);
    }

    #[test]
    fn lifting_a_limit_is_an_increase_and_a_cpuset_change_is_a_cpu_step() {
        let now = pod(&[("app", res(500, Some(1000), Some(1 << 30)))]);
        let unlimited = pod(&[("app", res(500, None, Some(1 << 30)))]);
        assert_eq!(resize_steps(&now, &unlimited), vec![Pod(Cpu), c("app", Cpu)]);
        assert_eq!(resize_steps(&unlimited, &now), vec![c("app", Cpu), Pod(Cpu)]);
        let mut pinned = now.clone();
        pinned.get_mut("app").unwrap().cpuset = Some("1".parse().unwrap());
        assert_eq!(resize_steps(&now, &pinned), vec![c("app", Cpu)]);
    }
}
