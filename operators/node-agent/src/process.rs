//! The agent process's I/O around the pure [`crate::agent::next_step`]: the
//! runtime connection (CRI + CPU manager, optional: without it the CRI path
//! is unavailable and requests that need it fail saying so), the API writes
//! (`pods/resize`, Applied/Failed with `berth.dev/resize-applied`), and the
//! periodic reconcile of the CPU manager against the runtime.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use berth_api::{keys, resize::ResizeState};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::{
    agent::{ResizeMode, Step, next_step},
    cpu_manager::CpuManager,
    cpuset::CpuSet,
    cri::{CriClient, StepBudget},
    runtime_resize::{Outcome, Runtime, Scope},
};

/// The state file under `--state-dir`.
pub const STATE_FILE: &str = "cpu_manager_state";

/// Where the runtime is and which CPUs the agent may give exclusively.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub socket: PathBuf,
    pub state_file: PathBuf,
    /// CPUs the CPU manager may give exclusively.
    pub allocatable: CpuSet,
    /// The node's online CPUs.
    pub node_cpus: CpuSet,
    /// Pause before each runtime write (tests use it to kill the agent mid-way).
    pub step_delay: Duration,
}

/// The node's online CPUs (`/sys/devices/system/cpu/online`: the host's,
/// also inside the agent's own container).
pub fn online_cpus() -> Result<CpuSet, String> {
    let path = "/sys/devices/system/cpu/online";
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?.parse().map_err(|e| format!("{path}: {e}"))
}

/// The default exclusive set: every online CPU but CPU 0. CPU 0 takes most
/// interrupts and kernel housekeeping and runs the system daemons (the
/// kubelet reserves it by the same convention), and keeping it shared means
/// the shared pool can never be emptied by exclusive allocations.
pub fn default_exclusive(online: &CpuSet) -> CpuSet {
    let mut set = online.clone();
    set.remove(0);
    set
}

impl RuntimeConfig {
    /// Connects to the runtime, loads the CPU manager's state and reconciles
    /// it with the runtime's containers (owners gone while the agent was
    /// down are dropped, their CPUs return to the shared pool).
    pub async fn connect(&self) -> Result<Runtime, String> {
        let mut cri = CriClient::connect(&self.socket).await.map_err(|e| e.to_string())?;
        let version = cri.version().await.map_err(|e| e.to_string())?;
        let cpus = CpuManager::load(&self.state_file, self.allocatable.clone()).map_err(|e| e.to_string())?;
        info!(
            socket = %self.socket.display(),
            runtime = %format!("{} {}", version.runtime_name, version.runtime_version),
            cgroup = ?cri.cgroup_version(),
            state = %self.state_file.display(),
            exclusive_cpus = %self.allocatable,
            held = cpus.assignments().len(),
            "CRI runtime connected"
        );
        let mut runtime = Runtime { cri, cpus, node_cpus: self.node_cpus.clone() };
        reconcile(&mut runtime).await;
        Ok(runtime)
    }
}

/// One reconcile pass, logged; an error is logged and retried next pass.
pub async fn reconcile(runtime: &mut Runtime) {
    let start = Instant::now();
    match runtime.reconcile().await {
        Ok((freed, moved)) => {
            for (key, cpus) in &freed {
                info!(pod_uid = %key.pod_uid, container = %key.container, cpus = %cpus, "exclusive CPUs freed: container gone");
            }
            if !freed.is_empty() || !moved.is_empty() {
                info!(
                    freed = freed.len(),
                    moved = moved.len(),
                    shared = %crate::runtime_plan::shared_pool(&runtime.node_cpus, runtime.cpus.assignments()),
                    took_ms = start.elapsed().as_secs_f64() * 1e3,
                    "CPU manager reconciled with the runtime"
                );
            }
        }
        Err(e) => warn!(error = %e, "CPU manager reconcile failed (retrying next pass)"),
    }
}

/// The CRI path, or why it is unavailable.
pub enum RuntimeSlot {
    Ready(Box<Runtime>),
    Unavailable(String),
}

pub struct Agent {
    pub client: Client,
    pub mode: ResizeMode,
    pub deadline: Duration,
    pub config: RuntimeConfig,
    pub runtime: RuntimeSlot,
    recorder: Recorder,
    /// When each request was first seen Accepted (pod UID → instant): the deadline's start.
    seen: BTreeMap<String, Instant>,
}

impl Agent {
    pub async fn new(client: Client, node: &str, mode: ResizeMode, deadline: Duration, config: RuntimeConfig) -> Self {
        let reporter = Reporter { controller: "berth-node-agent".into(), instance: Some(node.to_string()) };
        let recorder = Recorder::new(client.clone(), reporter);
        let mut agent = Self {
            client,
            mode,
            deadline,
            config,
            runtime: RuntimeSlot::Unavailable(String::new()),
            recorder,
            seen: BTreeMap::new(),
        };
        agent.connect().await;
        agent
    }

    async fn connect(&mut self) {
        self.runtime = match self.config.connect().await {
            Ok(rt) => RuntimeSlot::Ready(Box::new(rt)),
            Err(reason) => {
                // Said once per reason; the retries every tick stay quiet.
                let known = matches!(&self.runtime, RuntimeSlot::Unavailable(r) if *r == reason);
                if known {
                    debug!(socket = %self.config.socket.display(), %reason, "CRI path still unavailable");
                } else {
                    warn!(socket = %self.config.socket.display(), %reason, "CRI path unavailable: requests that need it will fail");
                }
                RuntimeSlot::Unavailable(reason)
            }
        };
    }

    /// Periodic: reconnect if needed, then reconcile the CPU manager.
    pub async fn tick(&mut self) {
        match &mut self.runtime {
            RuntimeSlot::Ready(rt) => reconcile(rt).await,
            RuntimeSlot::Unavailable(_) => self.connect().await,
        }
    }

    /// Takes `pod`'s Accepted request one step further.
    pub async fn handle(&mut self, pod: &Pod) {
        let uid = pod.uid().unwrap_or_default();
        let Some(step) = next_step(pod, self.mode) else {
            self.seen.remove(&uid);
            return;
        };
        let since = *self.seen.entry(uid).or_insert_with(Instant::now);
        if let Err(e) = self.act(pod, step, since.elapsed() > self.deadline).await {
            warn!(pod = %pod.name_any(), namespace = pod.namespace().unwrap_or_default(), error = %e, "resize step failed; retrying");
        }
    }

    async fn act(&mut self, pod: &Pod, step: Step, overdue: bool) -> kube::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let name = pod.name_any();
        let (state, message, applied) = match step {
            Step::Resize(patch) => {
                info!(pod = %name, namespace = pod.namespace().unwrap_or_default(), "sending the new resources through pods/resize");
                return pods.patch_resize(&name, &PatchParams::default(), &Patch::Strategic(patch)).await.map(|_| ());
            }
            Step::Wait(why) if overdue => {
                (ResizeState::Failed, format!("not applied within {}s: {why}", self.deadline.as_secs()), None)
            }
            Step::Wait(_) => return Ok(()),
            Step::Applied(m) => (ResizeState::Applied, m, None),
            Step::Failed(m) => (ResizeState::Failed, m, None),
            Step::Runtime { request, scope, done } => {
                let uid = pod.uid().unwrap_or_default();
                let spec = pod.spec.clone().unwrap_or_default();
                match self.run(&uid, &spec, &request, scope).await {
                    Ok(out) => {
                        info!(
                            pod = %name,
                            namespace = pod.namespace().unwrap_or_default(),
                            pod_uid = %uid,
                            scope = ?scope,
                            writes = out.steps.len(),
                            moved = out.moved.len(),
                            exclusive = out.exclusive.as_ref().map(CpuSet::to_string).unwrap_or_default(),
                            cri_ms = out.took.as_secs_f64() * 1e3,
                            "resize carried out through CRI"
                        );
                        let message = match done {
                            Some(kubelet) => format!("{kubelet}; cpuset {}", out.summary()),
                            None => out.summary(),
                        };
                        (ResizeState::Applied, message, serde_json::to_string(&out.applied).ok())
                    }
                    Err(why) => {
                        let message = match done {
                            Some(kubelet) => format!("{kubelet}, but the cpuset could not be applied: {why}"),
                            None => format!("not applied through CRI: {why}"),
                        };
                        (ResizeState::Failed, message, None)
                    }
                }
            }
        };
        info!(pod = %name, namespace = pod.namespace().unwrap_or_default(), %state, %message, "resize finished");
        let patch = finish(pod, state, &message, applied.as_deref());
        match pods.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
            // Changed since read: the next pass looks again (a re-run through
            // CRI changes nothing).
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()),
            result => result.map(|_| ())?,
        }
        let (type_, reason) = match state {
            ResizeState::Applied => (EventType::Normal, "ResizeApplied"),
            _ => (EventType::Warning, "ResizeFailed"),
        };
        let note: String = message.chars().take(1000).collect();
        let event = Event { type_, reason: reason.into(), note: Some(note), action: "Resize".into(), secondary: None };
        if let Err(e) = self.recorder.publish(&event, &pod.object_ref(&())).await {
            warn!(pod = %name, error = %e, "could not record Event");
        }
        Ok(())
    }

    async fn run(
        &mut self,
        uid: &str,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        request: &berth_api::resize::ResizeRequest,
        scope: Scope,
    ) -> Result<Outcome, String> {
        if let RuntimeSlot::Unavailable(_) = self.runtime {
            // Maybe it came up since the last tick.
            self.connect().await;
        }
        match &mut self.runtime {
            RuntimeSlot::Ready(rt) => {
                let mut budget = StepBudget { pause: self.config.step_delay, ..Default::default() };
                rt.apply(uid, spec, request, scope, &mut budget).await.map_err(|e| e.to_string())
            }
            RuntimeSlot::Unavailable(reason) => Err(format!(
                "the CRI path is unavailable on this node ({reason}); the node agent needs the container runtime's \
                 socket (--cri-socket, BERTH_CRI_SOCKET) for agent-managed pods and cpuset policies"
            )),
        }
    }
}

/// The merge patch that ends a request: state, message, and what the
/// cgroups hold (CRI path only; otherwise the key is removed); guarded by the pod's resourceVersion.
pub fn finish(pod: &Pod, state: ResizeState, message: &str, applied: Option<&str>) -> Value {
    // Without a read-back (kubelet path, failure) an older request's record is removed.
    let annotations =
        json!({keys::RESIZE_STATE: state.as_str(), keys::RESIZE_MESSAGE: message, keys::RESIZE_APPLIED: applied});
    json!({"metadata": {"resourceVersion": pod.resource_version(), "annotations": annotations}})
}

/// `--once-pod-file`: carries out the Accepted request of the pod in `file`
/// (the JSON of `kubectl get pod -o json`) through CRI, as a restarted agent
/// would (state from disk, reconcile first), and prints one JSON line:
/// `{"writes": N, "moved": M, "applied": {...}}`. No API server is involved.
pub async fn once(config: &RuntimeConfig, file: &std::path::Path) -> Result<Value, String> {
    let raw = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let pod: Pod = serde_json::from_slice(&raw).map_err(|e| format!("{}: not a pod: {e}", file.display()))?;
    let uid = pod.uid().ok_or_else(|| format!("{}: the pod has no metadata.uid", file.display()))?;
    let request: berth_api::resize::ResizeRequest = pod
        .annotations()
        .get(keys::RESIZE)
        .ok_or_else(|| format!("{}: no {} annotation", file.display(), keys::RESIZE))?
        .parse()
        .map_err(|e: berth_api::resize::ResizeError| e.to_string())?;
    let mut runtime = config.connect().await?;
    let mut budget = StepBudget { pause: config.step_delay, ..Default::default() };
    let spec = pod.spec.unwrap_or_default();
    let out = runtime.apply(&uid, &spec, &request, Scope::Full, &mut budget).await.map_err(|e| e.to_string())?;
    Ok(json!({"writes": out.steps.len(), "moved": out.moved.len(), "applied": out.applied,
        "exclusive": out.exclusive.map(|c| c.to_string()), "tookMs": out.took.as_secs_f64() * 1e3}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_0_stays_shared_by_default() {
        assert_eq!(default_exclusive(&"0-7".parse().unwrap()).to_string(), "1-7");
        assert_eq!(default_exclusive(&"0".parse().unwrap()).to_string(), "");
        assert_eq!(default_exclusive(&"2-3".parse().unwrap()).to_string(), "2-3");
    }

    #[test]
    fn the_finish_patch_carries_state_message_and_what_was_read_back() {
        let mut pod = Pod::default();
        pod.metadata.resource_version = Some("42".into());
        let p = finish(&pod, ResizeState::Applied, "done", Some(r#"{"app":{"cpuQuota":100000}}"#));
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(p["metadata"]["annotations"][keys::RESIZE_STATE], "Applied");
        assert_eq!(p["metadata"]["annotations"][keys::RESIZE_MESSAGE], "done");
        assert_eq!(p["metadata"]["annotations"][keys::RESIZE_APPLIED], r#"{"app":{"cpuQuota":100000}}"#);
        let p = finish(&pod, ResizeState::Failed, "no", None);
        assert_eq!(p["metadata"]["annotations"][keys::RESIZE_APPLIED], Value::Null, "a stale record is removed");
    }
}
