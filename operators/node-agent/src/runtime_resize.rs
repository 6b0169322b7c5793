//! Carries one Accepted resize out on the runtime through CRI, idempotently:
//!
//! 1. observe: the pod's running containers (by pod UID, from the CRI
//!    labels) and their cgroup files (the truth, also after a crash mid-way);
//! 2. plan ([`crate::runtime_plan`]): desired values from the pod spec and
//!    the request; for a cpuset policy, the pod's exclusive CPUs from the CPU
//!    manager (recorded under the pod's first container, persisted before
//!    any runtime change), every container of the pod pinned to them;
//! 3. execute: the kubelet's order ([`CriClient::resize_pod_within`]), each
//!    write verified in the cgroup files; then every other running container
//!    whose CPUs changed is moved to the shared pool with an update carrying
//!    only `cpuset_cpus` (the runtime leaves zero fields alone);
//! 4. read back what the cgroups hold: `berth.dev/resize-applied`.
//!
//! A container that already holds its desired values is not written, so a
//! re-run of a finished request changes nothing, and a re-run after an
//! interruption finishes the rest.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use berth_api::resize::{AppliedResources, ResizeRequest};
use k8s_openapi::api::core::v1::PodSpec;
use tracing::{debug, info, warn};

use crate::{
    cgroup::Resources,
    cpu_manager::{ContainerKey, CpuManager, CpuManagerError},
    cpuset::CpuSet,
    cri::{CriClient, CriError, StepBudget, StepError},
    order::Step,
    readback::{self, CgroupValues},
    runtime_plan,
};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeResizeError {
    #[error("pod {uid}: no running container in the runtime (CRI label io.kubernetes.pod.uid)")]
    NoContainers { uid: String },
    #[error("pod {uid}: container {name:?} is not running, so its resources cannot be changed; running: {running}")]
    NotRunning { uid: String, name: String, running: String },
    #[error("{0}")]
    Invalid(String),
    #[error("container {container}: reading its cgroup: {reason}")]
    ReadBack { container: String, reason: String },
    #[error("{0}")]
    MemoryBelowUsage(String),
    #[error(transparent)]
    Cri(#[from] CriError),
    #[error(transparent)]
    Cpus(#[from] CpuManagerError),
    #[error("interrupted: {0}")]
    Interrupted(String),
}

impl From<StepError> for RuntimeResizeError {
    fn from(e: StepError) -> Self {
        match e {
            StepError::Cri(e) => Self::Cri(e),
            stopped @ StepError::Stopped { .. } => Self::Interrupted(stopped.to_string()),
        }
    }
}

/// What the agent changes: everything the request says, or (after the
/// kubelet applied the resources through `pods/resize`) only the cpuset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Full,
    CpusetOnly,
}

/// The runtime side of the agent: CRI, the CPU manager, the node's CPUs.
pub struct Runtime {
    pub cri: CriClient,
    pub cpus: CpuManager,
    /// Every online CPU: the shared pool is these minus the exclusive ones.
    pub node_cpus: CpuSet,
}

/// What one apply did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// What the cgroups hold afterwards, per container.
    pub applied: AppliedResources,
    /// Writes to the pod's own containers and pod cgroup, in order.
    pub steps: Vec<Step>,
    /// Other containers moved to a new shared pool.
    pub moved: Vec<ContainerKey>,
    /// The pod's exclusive CPUs, when it holds any.
    pub exclusive: Option<CpuSet>,
    /// Time spent in CRI calls and cgroup reads/writes.
    pub took: Duration,
}

impl Outcome {
    /// Nothing was written: the runtime already held the request.
    pub fn unchanged(&self) -> bool {
        self.steps.is_empty() && self.moved.is_empty()
    }

    /// One line for the pod's `berth.dev/resize-message`.
    pub fn summary(&self) -> String {
        let list: Vec<String> = self
            .applied
            .iter()
            .map(|(name, a)| {
                let num = |v: Option<i64>| v.map_or("?".to_string(), |v| v.to_string());
                let mut s = format!(
                    "{name}: cpu quota {}/{} shares {}, memory limit {}",
                    num(a.cpu_quota),
                    num(a.cpu_period),
                    num(a.cpu_shares),
                    num(a.memory_limit_bytes)
                );
                if let Some(cpus) = &a.cpuset_cpus {
                    s.push_str(&format!(", exclusive cpus {cpus}"));
                }
                s
            })
            .collect();
        // The same whether this pass wrote or found it done (a re-run after a
        // lost status write): the logs tell the writes apart.
        format!("applied through CRI and verified in the cgroup files ({})", list.join("; "))
    }
}

impl Runtime {
    /// Reads a running container's cgroup values.
    async fn read(&mut self, id: &str) -> Result<(CgroupValues, i64), RuntimeResizeError> {
        let cg = self.cri.container_cgroup(id).await?;
        let version = self.cri.cgroup_version();
        let raw = self.cri.read_files(&cg, &readback::files(version));
        let values = readback::parse(version, &raw)
            .map_err(|reason| RuntimeResizeError::ReadBack { container: id.into(), reason })?;
        let usage = self.cri.memory_usage(id, &cg)?;
        Ok((values, usage))
    }

    /// Carries out `request` for the pod `uid` with `spec` (see the module
    /// doc). `budget` limits the writes (tests interrupt an apply with it).
    /// A request that fails gives back the exclusive CPUs it took (the pod's
    /// containers return to the recorded set at the next reconcile).
    pub async fn apply(
        &mut self,
        uid: &str,
        spec: &PodSpec,
        request: &ResizeRequest,
        scope: Scope,
        budget: &mut StepBudget,
    ) -> Result<Outcome, RuntimeResizeError> {
        let owner = request.cpuset.as_ref().and_then(|_| runtime_plan::owner_key(uid, spec));
        let held = owner.as_ref().map(|o| self.cpus.get(o).map_or(0, CpuSet::len));
        let result = self.apply_once(uid, spec, request, scope, budget).await;
        if let (Err(e), Some(owner), Some(held)) = (&result, owner, held) {
            // An interruption stands for a crash: nothing runs after it.
            let now = self.cpus.get(&owner).map_or(0, CpuSet::len);
            if !matches!(e, RuntimeResizeError::Interrupted(_)) && now != held {
                match self.cpus.allocate(&owner, held) {
                    Ok(cpus) => info!(pod_uid = uid, cpus = %cpus, "exclusive CPUs of the failed request given back"),
                    Err(undo) => warn!(pod_uid = uid, error = %undo, "could not give back the failed request's CPUs"),
                }
            }
        }
        result
    }

    async fn apply_once(
        &mut self,
        uid: &str,
        spec: &PodSpec,
        request: &ResizeRequest,
        scope: Scope,
        budget: &mut StepBudget,
    ) -> Result<Outcome, RuntimeResizeError> {
        let start = Instant::now();
        let running = self.cri.running_keys().await?;
        let ids: BTreeMap<String, String> =
            running.iter().filter(|(k, _)| k.pod_uid == uid).map(|(k, id)| (k.container.clone(), id.clone())).collect();
        if ids.is_empty() {
            return Err(RuntimeResizeError::NoContainers { uid: uid.into() });
        }
        let mut current = BTreeMap::new();
        let mut usage = BTreeMap::new();
        for (name, id) in &ids {
            let (values, used) = self.read(id).await?;
            current.insert(name.clone(), values);
            usage.insert(name.clone(), used);
        }

        // Desired values, only for what runs (the kubelet resizes running containers).
        let mut desired: BTreeMap<String, Resources> = match scope {
            Scope::Full => {
                let all = runtime_plan::desired_resources(spec, request).map_err(RuntimeResizeError::Invalid)?;
                for name in request.containers.keys() {
                    if !ids.contains_key(name) {
                        return Err(RuntimeResizeError::NotRunning {
                            uid: uid.into(),
                            name: name.clone(),
                            running: ids.keys().cloned().collect::<Vec<_>>().join(", "),
                        });
                    }
                }
                let mut desired: BTreeMap<String, Resources> =
                    all.into_iter().filter(|(name, _)| ids.contains_key(name)).collect();
                // Running containers outside spec.containers (native sidecars
                // among the init containers) keep what they have.
                for (name, values) in &current {
                    desired.entry(name.clone()).or_insert_with(|| values.to_resources());
                }
                desired
            }
            Scope::CpusetOnly => current.iter().map(|(n, v)| (n.clone(), v.to_resources())).collect(),
        };

        if scope == Scope::Full
            && let Some(refused) = runtime_plan::memory_below_usage(&desired, &usage)
        {
            return Err(RuntimeResizeError::MemoryBelowUsage(refused));
        }

        // Exclusive CPUs: persisted in the CPU manager before any runtime change.
        if let Some(policy) = &request.cpuset {
            let owner = runtime_plan::owner_key(uid, spec)
                .ok_or_else(|| RuntimeResizeError::Invalid("the pod spec has no container".into()))?;
            let n = policy.exclusive_cpus as usize;
            runtime_plan::check_leaves_shared(&self.node_cpus, self.cpus.assignments(), &owner, n)
                .map_err(RuntimeResizeError::Invalid)?;
            let cpus = self.cpus.allocate(&owner, n)?;
            info!(pod_uid = uid, container = %owner.container, cpus = %cpus, "exclusive CPUs recorded");
        }
        let live: BTreeSet<ContainerKey> = running.keys().cloned().collect();
        let plan = runtime_plan::cpuset_plan(&live, self.cpus.assignments(), &self.node_cpus)
            .map_err(RuntimeResizeError::Invalid)?;
        let exclusive = self.cpus.assignments().iter().find(|(k, _)| k.pod_uid == uid).map(|(_, c)| c.clone());
        for (name, r) in desired.iter_mut() {
            // The pod's containers follow the plan when the pod holds
            // exclusive CPUs or this request decides them; otherwise their
            // cpuset is left as it is.
            r.cpuset = if exclusive.is_some() || request.cpuset.is_some() {
                plan.get(&ContainerKey::new(uid, name)).cloned()
            } else {
                current[name].cpuset.clone()
            };
        }

        // A container that holds its desired values is its own current state:
        // no write for it (idempotence, and resumption after a crash).
        let version = self.cri.cgroup_version();
        let page = self.cri.page_size();
        let mut now: BTreeMap<String, (String, Resources)> = BTreeMap::new();
        for (name, values) in &current {
            let want = &desired[name];
            let have = if values.holds(&want.to_cri(), version, page) { want.clone() } else { values.to_resources() };
            now.insert(name.clone(), (ids[name].clone(), have));
        }
        let steps = match scope {
            Scope::Full => self.cri.resize_pod_within(&now, &desired, budget).await?,
            Scope::CpusetOnly => {
                let mut steps = Vec::new();
                for (name, (id, have)) in &now {
                    let Some(cpus) = desired[name].cpuset.as_ref().filter(|c| have.cpuset.as_ref() != Some(*c)) else {
                        continue;
                    };
                    let step = Step::Container(name.clone(), crate::order::Resource::Cpu);
                    budget.spend(&step).await?;
                    self.cri.update_cpuset(id, cpus).await?;
                    steps.push(step);
                }
                steps
            }
        };

        // Other containers: on the shared pool the decision left (also
        // when a re-run finishes an interrupted apply; no write where they
        // are already there).
        let mut moved = Vec::new();
        if request.cpuset.is_some() {
            moved = self.enforce(&running, &plan, Some(uid), budget).await?;
        }

        let mut applied = AppliedResources::new();
        for (name, id) in &ids {
            let (values, _) = self.read(id).await?;
            let want = &desired[name];
            let holds = match scope {
                Scope::Full => values.holds(&want.to_cri(), version, page),
                // The kubelet owns the other values: only the cpuset is ours.
                Scope::CpusetOnly => want.cpuset.is_none() || values.cpuset == want.cpuset,
            };
            if !holds {
                return Err(RuntimeResizeError::ReadBack {
                    container: id.clone(),
                    reason: format!("after the resize it holds {values:?}, not {:?}", want.to_cri()),
                });
            }
            applied.insert(name.clone(), values.to_applied(exclusive.is_some()));
        }
        let outcome = Outcome { applied, steps, moved, exclusive, took: start.elapsed() };
        info!(
            pod_uid = uid,
            containers = ids.len(),
            writes = outcome.steps.len(),
            moved = outcome.moved.len(),
            exclusive = outcome.exclusive.as_ref().map(CpuSet::to_string).unwrap_or_default(),
            took_ms = outcome.took.as_secs_f64() * 1e3,
            "runtime resize done"
        );
        Ok(outcome)
    }

    /// Moves every running container (but `skip_pod`'s) whose `cpuset.cpus`
    /// differs from `plan` to its planned CPUs; returns those moved.
    async fn enforce(
        &mut self,
        running: &BTreeMap<ContainerKey, String>,
        plan: &BTreeMap<ContainerKey, CpuSet>,
        skip_pod: Option<&str>,
        budget: &mut StepBudget,
    ) -> Result<Vec<ContainerKey>, RuntimeResizeError> {
        let mut moved = Vec::new();
        for (key, id) in running {
            let Some(want) = plan.get(key) else { continue };
            if Some(key.pod_uid.as_str()) == skip_pod {
                continue;
            }
            let have = match self.read(id).await {
                Ok((values, _)) => values.cpuset,
                // It stopped since the listing: nothing to move.
                Err(RuntimeResizeError::Cri(CriError::NoCgroup { .. })) => continue,
                Err(e) => return Err(e),
            };
            if have.as_ref() == Some(want) {
                continue;
            }
            budget.spend(key).await?;
            self.cri.update_cpuset(id, want).await?;
            debug!(container = %key, from = ?have.map(|c| c.to_string()), to = %want, "moved");
            moved.push(key.clone());
        }
        Ok(moved)
    }

    /// After a restart and periodically: drops the CPU manager's owners the
    /// runtime no longer has (their CPUs return to the shared pool), then
    /// puts every running container on its planned CPUs. Returns what was
    /// freed and the containers moved.
    pub async fn reconcile(&mut self) -> Result<(Vec<(ContainerKey, CpuSet)>, Vec<ContainerKey>), RuntimeResizeError> {
        let live = self.cri.live_key_set().await?;
        // A pod's CPUs are recorded under its first container, which may be
        // between two attempts (removed, not yet created again): the pod
        // keeps them while any of its containers exists.
        let live_pods: BTreeSet<&str> = live.iter().map(|k| k.pod_uid.as_str()).collect();
        let mut keep = live.clone();
        keep.extend(self.cpus.assignments().keys().filter(|k| live_pods.contains(k.pod_uid.as_str())).cloned());
        let freed = self.cpus.reconcile(&keep)?;
        let running = self.cri.running_keys().await?;
        let plan =
            runtime_plan::cpuset_plan(&running.keys().cloned().collect(), self.cpus.assignments(), &self.node_cpus)
                .map_err(RuntimeResizeError::Invalid)?;
        let moved = self.enforce(&running, &plan, None, &mut StepBudget::default()).await?;
        Ok((freed, moved))
    }
}
