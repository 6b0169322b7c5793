//! Does the node still have room? The sum of requests of every pod on the
//! node, with the candidate's new values and other accepted-but-not-applied
//! resizes counted at the larger of old and new, must stay within the node's
//! allocatable; exclusive CPUs asked for must be free. Pure.

use berth_api::{
    keys, quantity,
    resize::{ResizeRequest, ResizeState},
    resize_pod,
};
use k8s_openapi::api::core::v1::{Node, Pod, ResourceRequirements};

/// CPU (millicores) and memory (bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amounts {
    pub cpu: i64,
    pub memory: i64,
}

impl Amounts {
    fn add(self, o: Amounts) -> Amounts {
        Amounts { cpu: self.cpu + o.cpu, memory: self.memory + o.memory }
    }
    fn max(self, o: Amounts) -> Amounts {
        Amounts { cpu: self.cpu.max(o.cpu), memory: self.memory.max(o.memory) }
    }
}

/// The node's allocatable CPU and memory.
pub fn allocatable(node: &Node) -> Result<Amounts, String> {
    let a = node.status.as_ref().and_then(|s| s.allocatable.clone()).unwrap_or_default();
    let get = |r: &str| a.get(r).map(|q| quantity::amount(r, q)).transpose().map(|v| v.unwrap_or(0));
    Ok(Amounts { cpu: get("cpu")?, memory: get("memory")? })
}

/// Requests of these containers summed (a missing request counts as its limit, as the scheduler does).
pub fn requests<'a>(resources: impl IntoIterator<Item = &'a ResourceRequirements>) -> Amounts {
    let mut sum = Amounts::default();
    for r in resources {
        let (req, lim) = (r.requests.clone().unwrap_or_default(), r.limits.clone().unwrap_or_default());
        let get = |res: &str| req.get(res).or(lim.get(res)).and_then(|q| quantity::amount(res, q).ok()).unwrap_or(0);
        sum = sum.add(Amounts { cpu: get("cpu"), memory: get("memory") });
    }
    sum
}

/// The pod's resize request and state, if readable.
pub fn resize_of(pod: &Pod) -> Option<(ResizeState, Result<ResizeRequest, String>)> {
    let a = pod.metadata.annotations.as_ref()?;
    let state = a.get(keys::RESIZE_STATE)?.parse().ok()?;
    let request = a
        .get(keys::RESIZE)
        .ok_or_else(|| format!("no {} annotation", keys::RESIZE))
        .and_then(|r| r.parse::<ResizeRequest>().map_err(|e| e.to_string()));
    Some((state, request))
}

/// What a pod counts for on its node: its requests, or, with a resize
/// accepted but not yet applied, the larger of before and after.
pub fn load(pod: &Pod) -> Amounts {
    let Some(spec) = pod.spec.as_ref() else { return Amounts::default() };
    let now = requests(spec.containers.iter().filter_map(|c| c.resources.as_ref()));
    match resize_of(pod) {
        Some((ResizeState::Accepted, Ok(req))) => match resize_pod::resized(spec, &req) {
            Ok(after) => now.max(requests(after.values())),
            Err(_) => now,
        },
        _ => now,
    }
}

/// Exclusive CPUs the pod holds or is about to: its last request's cpuset,
/// once accepted (and while applied).
fn exclusive(pod: &Pod) -> u32 {
    match resize_of(pod) {
        Some((ResizeState::Accepted | ResizeState::Applied, Ok(req))) => req.cpuset.map_or(0, |c| c.exclusive_cpus),
        _ => 0,
    }
}

fn running(pod: &Pod) -> bool {
    !matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// Accept (`Ok` with a message for the Event) or reject (`Err` with the
/// numbers) `request` for `candidate` on `node`, given `pods` on that node
/// (the candidate among them or not).
pub fn decide(node: &Node, pods: &[Pod], candidate: &Pod, request: &ResizeRequest) -> Result<String, String> {
    let node_name = node.metadata.name.clone().unwrap_or_default();
    let total = allocatable(node)?;
    let spec = candidate.spec.as_ref().ok_or("the pod has no spec")?;
    let after = requests(resize_pod::resized(spec, request)?.values());
    let same = |p: &Pod| p.metadata.uid == candidate.metadata.uid && p.metadata.name == candidate.metadata.name;
    let others = pods.iter().filter(|p| !same(p) && running(p));
    let mut used = Amounts::default();
    let mut held = 0;
    for p in others {
        used = used.add(load(p));
        held += exclusive(p);
    }
    let want = used.add(after);
    let mut short = Vec::new();
    if want.cpu > total.cpu {
        short.push(format!("cpu requests would be {}m of {}m allocatable", want.cpu, total.cpu));
    }
    if want.memory > total.memory {
        short.push(format!("memory requests would be {} of {} bytes allocatable", want.memory, total.memory));
    }
    if let Some(cpuset) = &request.cpuset {
        // One CPU stays shared, as the node agent keeps it (its default
        // --exclusive-cpus is every CPU but CPU 0): the shared pool is never empty.
        let cores = (total.cpu / 1000) as u32;
        let exclusive = cores.saturating_sub(1);
        let free = exclusive.saturating_sub(held);
        if cpuset.exclusive_cpus > free {
            short.push(format!(
                "{} exclusive CPUs asked, {free} of {exclusive} free (one of the node's {cores} CPUs stays shared)",
                cpuset.exclusive_cpus
            ));
        }
    }
    if short.is_empty() {
        Ok(format!(
            "fits node {node_name}: cpu {}m of {}m, memory {} of {} bytes requested",
            want.cpu, total.cpu, want.memory, total.memory
        ))
    } else {
        Err(format!("does not fit node {node_name}: {}", short.join("; ")))
    }
}

/// A decision on one pod's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub namespace: String,
    pub name: String,
    /// Accepted with a message, or rejected with the numbers.
    pub outcome: Result<String, String>,
}

/// Decides every Created request on `node`, one after the other (by
/// namespace/name): each acceptance counts against the next, so two requests
/// can never both take the last CPU.
pub fn decide_node(node: &Node, pods: &[Pod]) -> Vec<Decision> {
    let mut pods = pods.to_vec();
    let mut order: Vec<usize> =
        (0..pods.len()).filter(|i| matches!(resize_of(&pods[*i]), Some((ResizeState::Created, _)))).collect();
    let key = |p: &Pod| (p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default());
    order.sort_by_key(|i| key(&pods[*i]));
    let mut out = Vec::new();
    for i in order {
        let (namespace, name) = key(&pods[i]);
        let outcome = match resize_of(&pods[i]) {
            Some((_, Ok(request))) => decide(node, &pods, &pods[i], &request),
            Some((_, Err(e))) => Err(e),
            None => continue,
        };
        if outcome.is_ok() {
            // Later decisions see it accepted.
            pods[i]
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(keys::RESIZE_STATE.into(), ResizeState::Accepted.as_str().into());
        }
        out.push(Decision { namespace, name, outcome });
    }
    out
}

/// Why an Accepted request is overdue (accepted longer than `deadline` ago,
/// and the node agent never finished it), if it is.
pub fn overdue(
    pod: &Pod,
    now: k8s_openapi::jiff::Timestamp,
    deadline: k8s_openapi::jiff::SignedDuration,
) -> Option<String> {
    if !matches!(resize_of(pod), Some((ResizeState::Accepted, _))) {
        return None;
    }
    let at = pod.metadata.annotations.as_ref()?.get(keys::RESIZE_ACCEPTED_AT)?;
    let at: k8s_openapi::jiff::Timestamp = at.parse().ok()?;
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("(none)");
    (now.duration_since(at) > deadline).then(|| {
        format!("accepted at {at} but not applied within {}s: is the node agent of {node} running?", deadline.as_secs())
    })
}

#[cfg(test)]
#[path = "feasibility_tests.rs"]
mod tests;
