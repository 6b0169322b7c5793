//! CRI RuntimeService client over the runtime's unix socket (k8s-cri, CRI
//! v1), and the agent's update path: refuse a memory limit below usage,
//! `UpdateContainerResources`, read the cgroup files back and verify.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{self as cri, runtime_service_client::RuntimeServiceClient};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{
    cgroup::{self, CgroupVersion, CriResources, Resources},
    cgroupfs::{CgroupFs, Mismatch, ProcCgroup},
    cpu_manager::ContainerKey,
    order::{Resource, Step},
};

/// The labels the kubelet puts on every container it creates.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("connect to the CRI socket {path}: {}", chain(.source))]
    Connect { path: PathBuf, source: tonic::transport::Error },
    #[error("CRI {call} {target}: {status}")]
    Call { call: &'static str, target: String, status: Box<tonic::Status> },
    #[error("container {container}: {reason}")]
    NoCgroup { container: String, reason: String },
    #[error(
        "container {container}: refusing memory limit {limit} bytes ({limit_mib} MiB), below its current usage of {usage} bytes ({usage_mib} MiB)"
    )]
    MemoryBelowUsage { container: String, limit: i64, limit_mib: i64, usage: i64, usage_mib: i64 },
    #[error("container {container}: cgroup does not hold the values just set: {}", join(.mismatches))]
    Mismatch { container: String, mismatches: Vec<Mismatch> },
    #[error("pod cgroup of container {container}: {reason}")]
    PodCgroup { container: String, reason: String },
}

/// An error and its causes ("transport error: No such file or directory").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let (mut last, mut cause) = (out.clone(), e.source());
    while let Some(c) = cause {
        let text = c.to_string();
        if text != last {
            out.push_str(&format!(": {text}"));
        }
        (last, cause) = (text, c.source());
    }
    out
}

fn join(m: &[Mismatch]) -> String {
    m.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

fn call(call: &'static str, target: impl Into<String>) -> impl FnOnce(tonic::Status) -> CriError {
    let target = target.into();
    move |status| CriError::Call { call, target, status: Box::new(status) }
}

/// Status of a container plus what only the verbose status says.
#[derive(Clone, Debug)]
pub struct ContainerInfo {
    pub status: cri::ContainerStatus,
    /// The container's init process on the host, when it runs.
    pub pid: Option<u32>,
    /// The OCI spec's `linux.cgroupsPath` (containerd's verbose info).
    pub cgroups_path: Option<String>,
}

/// Time spent on one update.
#[derive(Clone, Copy, Debug, Default)]
pub struct UpdateTiming {
    /// `UpdateContainerResources` round trip.
    pub update: Duration,
    /// Status lookup, usage check, cgroup read-back.
    pub check: Duration,
}

impl UpdateTiming {
    pub fn total(&self) -> Duration {
        self.update + self.check
    }
}

pub struct CriClient {
    runtime: RuntimeServiceClient<Channel>,
    cgroups: CgroupFs,
    page_size: i64,
}

impl CriClient {
    /// Connects to the runtime at `socket` (e.g. `/run/containerd/containerd.sock`).
    pub async fn connect(socket: &Path) -> Result<Self, CriError> {
        let path = socket.to_path_buf();
        let connector_path = path.clone();
        // The URI is unused: every connection goes to the socket.
        let channel = Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = connector_path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
            }))
            .await
            .map_err(|source| CriError::Connect { path: path.clone(), source })?;
        let cgroups =
            CgroupFs::detect().map_err(|e| CriError::NoCgroup { container: "-".into(), reason: e.to_string() })?;
        Ok(Self { runtime: RuntimeServiceClient::new(channel), cgroups, page_size: page_size() })
    }

    /// The raw RuntimeService, for calls this type does not wrap.
    pub fn runtime(&mut self) -> &mut RuntimeServiceClient<Channel> {
        &mut self.runtime
    }

    pub fn cgroup_version(&self) -> CgroupVersion {
        self.cgroups.version()
    }

    pub fn cgroups(&self) -> &CgroupFs {
        &self.cgroups
    }

    pub async fn version(&mut self) -> Result<cri::VersionResponse, CriError> {
        Ok(self
            .runtime
            .version(cri::VersionRequest { version: "v1".into() })
            .await
            .map_err(call("Version", "-"))?
            .into_inner())
    }

    pub async fn list_containers(&mut self) -> Result<Vec<cri::Container>, CriError> {
        let req = cri::ListContainersRequest { filter: None };
        Ok(self.runtime.list_containers(req).await.map_err(call("ListContainers", "-"))?.into_inner().containers)
    }

    /// The containers that exist (running or not), keyed as the CPU
    /// manager keys them: by the kubelet's labels, else by the sandbox's
    /// pod UID and the container's metadata name.
    pub async fn live_keys(&mut self) -> Result<BTreeMap<ContainerKey, String>, CriError> {
        self.keys(None).await
    }

    /// The running containers, keyed as [`Self::live_keys`] keys them
    /// (one per key: a restarted container's exited attempts are skipped).
    pub async fn running_keys(&mut self) -> Result<BTreeMap<ContainerKey, String>, CriError> {
        let running = cri::ContainerFilter {
            state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning as i32 }),
            ..Default::default()
        };
        self.keys(Some(running)).await
    }

    /// The containers `filter` selects, by [`ContainerKey`].
    async fn keys(&mut self, filter: Option<cri::ContainerFilter>) -> Result<BTreeMap<ContainerKey, String>, CriError> {
        let sandboxes = self
            .runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .map_err(call("ListPodSandbox", "-"))?
            .into_inner()
            .items;
        let uid_of: BTreeMap<String, String> =
            sandboxes.into_iter().filter_map(|s| Some((s.id, s.metadata?.uid))).collect();
        let containers = self
            .runtime
            .list_containers(cri::ListContainersRequest { filter })
            .await
            .map_err(call("ListContainers", "-"))?
            .into_inner()
            .containers;
        let mut out = BTreeMap::new();
        for c in containers {
            let uid = c.labels.get(LABEL_POD_UID).cloned().or_else(|| uid_of.get(&c.pod_sandbox_id).cloned());
            let name =
                c.labels.get(LABEL_CONTAINER_NAME).cloned().or_else(|| c.metadata.as_ref().map(|m| m.name.clone()));
            if let (Some(uid), Some(name)) = (uid, name) {
                out.insert(ContainerKey::new(uid, name), c.id);
            }
        }
        Ok(out)
    }

    pub async fn live_key_set(&mut self) -> Result<BTreeSet<ContainerKey>, CriError> {
        Ok(self.live_keys().await?.into_keys().collect())
    }

    pub async fn container_status(&mut self, id: &str) -> Result<ContainerInfo, CriError> {
        let resp = self
            .runtime
            .container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: true })
            .await
            .map_err(call("ContainerStatus", id))?
            .into_inner();
        // containerd: info["info"] is JSON with the task's "pid" and the OCI "runtimeSpec".
        let info = resp.info.get("info").and_then(|raw| serde_json::from_str::<serde_json::Value>(raw).ok());
        let pid =
            info.as_ref().and_then(|v| v.get("pid")?.as_u64()).and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0);
        let cgroups_path = info
            .as_ref()
            .and_then(|v| v.pointer("/runtimeSpec/linux/cgroupsPath")?.as_str().map(str::to_string))
            .filter(|p| !p.is_empty());
        let status =
            resp.status.ok_or_else(|| CriError::NoCgroup { container: id.into(), reason: "no status".into() })?;
        Ok(ContainerInfo { status, pid, cgroups_path })
    }

    /// A running container's cgroup: from its OCI spec's cgroupsPath (no
    /// host PID or cgroup namespace needed), else from its init process.
    pub async fn container_cgroup(&mut self, id: &str) -> Result<ProcCgroup, CriError> {
        let info = self.container_status(id).await?;
        let running = info.status.state == cri::ContainerState::ContainerRunning as i32;
        if let (true, Some(path)) = (running, &info.cgroups_path) {
            return ProcCgroup::from_cgroups_path(path)
                .map_err(|reason| CriError::NoCgroup { container: id.into(), reason });
        }
        let pid = info.pid.ok_or_else(|| CriError::NoCgroup {
            container: id.into(),
            reason: format!(
                "no process (state {:?}): only a running container's cgroup can be checked",
                info.status.state
            ),
        })?;
        ProcCgroup::of_pid(pid).map_err(|e| CriError::NoCgroup { container: id.into(), reason: e.to_string() })
    }

    /// Current memory usage of a cgroup, bytes.
    pub fn memory_usage(&self, id: &str, cg: &ProcCgroup) -> Result<i64, CriError> {
        let f = cgroup::memory_usage_file(self.cgroups.version());
        self.cgroups
            .read(cg, &f)
            .map_err(|e| e.to_string())
            .and_then(|s| s.parse::<i64>().map_err(|e| format!("{}: {s:?}: {e}", f.file)))
            .map_err(|reason| CriError::NoCgroup { container: id.into(), reason })
    }

    /// The agent's update of one running container: refuses a memory limit
    /// below current usage, sends `UpdateContainerResources`, then reads the
    /// cgroup files back and fails on any difference.
    pub async fn update_container(&mut self, id: &str, want: &CriResources) -> Result<UpdateTiming, CriError> {
        let start = Instant::now();
        let cg = self.container_cgroup(id).await?;
        if want.memory_limit_in_bytes > 0 {
            let usage = self.memory_usage(id, &cg)?;
            if want.memory_limit_in_bytes < usage {
                return Err(CriError::MemoryBelowUsage {
                    container: id.into(),
                    limit: want.memory_limit_in_bytes,
                    limit_mib: want.memory_limit_in_bytes >> 20,
                    usage,
                    usage_mib: usage >> 20,
                });
            }
        }
        let before = start.elapsed();
        let t = Instant::now();
        let req = cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(cri::LinuxContainerResources {
                cpu_period: want.cpu_period,
                cpu_quota: want.cpu_quota,
                cpu_shares: want.cpu_shares,
                memory_limit_in_bytes: want.memory_limit_in_bytes,
                cpuset_cpus: want.cpuset_cpus.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.runtime.update_container_resources(req).await.map_err(call("UpdateContainerResources", id))?;
        let update = t.elapsed();
        let t = Instant::now();
        let expected = cgroup::expected_files(want, self.cgroups.version(), self.page_size);
        let mismatches = self.cgroups.verify(&cg, &expected);
        if !mismatches.is_empty() {
            return Err(CriError::Mismatch { container: id.into(), mismatches });
        }
        Ok(UpdateTiming { update, check: before + t.elapsed() })
    }

    /// Moves a running container to `cpus`, changing nothing else: the CRI
    /// runtime leaves the fields an update sends as zero alone (containerd
    /// merges only the non-zero ones into the container's resources).
    /// Verifies `cpuset.cpus` afterwards.
    pub async fn update_cpuset(&mut self, id: &str, cpus: &crate::cpuset::CpuSet) -> Result<Duration, CriError> {
        let cg = self.container_cgroup(id).await?;
        let t = Instant::now();
        let req = cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(cri::LinuxContainerResources { cpuset_cpus: cpus.to_string(), ..Default::default() }),
            ..Default::default()
        };
        self.runtime.update_container_resources(req).await.map_err(call("UpdateContainerResources", id))?;
        let took = t.elapsed();
        let want = cgroup::CgroupFile { controller: "cpuset", file: "cpuset.cpus", value: cpus.to_string() };
        let mismatches = self.cgroups.verify(&cg, std::slice::from_ref(&want));
        if !mismatches.is_empty() {
            return Err(CriError::Mismatch { container: id.into(), mismatches });
        }
        Ok(took)
    }

    /// The raw values of `files` in the cgroup `cg` (file name → content);
    /// files that cannot be read are left out.
    pub fn read_files(&self, cg: &ProcCgroup, files: &[cgroup::CgroupFile]) -> BTreeMap<&'static str, String> {
        files.iter().filter_map(|f| Some((f.file, self.cgroups.read(cg, f).ok()?))).collect()
    }

    pub fn page_size(&self) -> i64 {
        self.page_size
    }

    /// Writes the pod-level cgroup (the parent of `container_id`'s cgroup)
    /// for one resource, and verifies it. CRI has no call for the pod
    /// cgroup: the kubelet writes it itself, and so does the agent.
    pub async fn write_pod_cgroup(
        &mut self,
        container_id: &str,
        pod: &cgroup::PodCgroup,
        resource: Resource,
    ) -> Result<(), CriError> {
        let cg = self.container_cgroup(container_id).await?.parent();
        let err = |reason: String| CriError::PodCgroup { container: container_id.into(), reason };
        let files = cgroup::pod_files(pod, self.cgroups.version(), self.page_size);
        let files: Vec<_> = files
            .into_iter()
            .filter(|f| match resource {
                Resource::Memory => f.file.starts_with("memory."),
                Resource::Cpu => f.file.starts_with("cpu."),
            })
            .collect();
        if resource == Resource::Memory && pod.memory_limit_in_bytes > 0 {
            let usage = self.memory_usage(container_id, &cg)?;
            if pod.memory_limit_in_bytes < usage {
                return Err(err(format!(
                    "refusing pod memory limit {} bytes, below the pod's usage of {usage} bytes",
                    pod.memory_limit_in_bytes
                )));
            }
        }
        for f in &files {
            self.cgroups.write(&cg, f).map_err(|e| err(e.to_string()))?;
        }
        let mismatches = self.cgroups.verify(&cg, &files);
        if !mismatches.is_empty() {
            return Err(err(join(&mismatches)));
        }
        Ok(())
    }

    /// Takes a pod's running containers (name → (container id, current
    /// resources)) to `desired`, in the kubelet's order (see
    /// [`crate::order`]); returns the steps done. Stops at the first error:
    /// the steps before it stay applied, and a retry continues from there.
    pub async fn resize_pod(
        &mut self,
        current: &BTreeMap<String, (String, Resources)>,
        desired: &BTreeMap<String, Resources>,
    ) -> Result<Vec<Step>, CriError> {
        let mut budget = StepBudget::default();
        self.resize_pod_within(current, desired, &mut budget).await.map_err(|e| match e {
            StepError::Cri(e) => e,
            StepError::Stopped { .. } => unreachable_stop(),
        })
    }

    /// [`Self::resize_pod`] that spends one unit of `budget` per write and
    /// stops (an interruption, as if the agent died) when it runs out.
    pub async fn resize_pod_within(
        &mut self,
        current: &BTreeMap<String, (String, Resources)>,
        desired: &BTreeMap<String, Resources>,
        budget: &mut StepBudget,
    ) -> Result<Vec<Step>, StepError> {
        let now: BTreeMap<String, Resources> = current.iter().map(|(n, (_, r))| (n.clone(), r.clone())).collect();
        let target: BTreeMap<String, Resources> =
            now.iter().map(|(n, r)| (n.clone(), desired.get(n).unwrap_or(r).clone())).collect();
        let steps = crate::order::resize_steps(&now, &target);
        // What each container holds as the steps go: a step for one resource
        // sends the other resource's values as they are at that point.
        let mut state = now.clone();
        let any_id = current.values().next().map(|(id, _)| id.clone()).unwrap_or_default();
        let pod_target = cgroup::pod_cgroup(target.values());
        let mut done = Vec::with_capacity(steps.len());
        for step in steps {
            match &step {
                Step::Pod(resource) => {
                    // Already there (a re-run after an interruption): no write.
                    if self.pod_cgroup_holds(&any_id, &pod_target, *resource).await? {
                        continue;
                    }
                    budget.spend(&step).await?;
                    self.write_pod_cgroup(&any_id, &pod_target, *resource).await?;
                }
                Step::Container(name, resource) => {
                    let (Some(have), Some(want), Some((id, _))) =
                        (state.get_mut(name), target.get(name), current.get(name))
                    else {
                        continue;
                    };
                    match resource {
                        Resource::Memory => have.memory_limit_bytes = want.memory_limit_bytes,
                        Resource::Cpu => {
                            have.cpu_request_milli = want.cpu_request_milli;
                            have.cpu_limit_milli = want.cpu_limit_milli;
                            have.cpuset = want.cpuset.clone();
                        }
                    }
                    let send = have.to_cri();
                    budget.spend(&step).await?;
                    self.update_container(id, &send).await?;
                }
            }
            done.push(step);
        }
        Ok(done)
    }

    /// Whether the pod cgroup (parent of `container_id`'s) already holds
    /// `pod`'s values for `resource`.
    async fn pod_cgroup_holds(
        &mut self,
        container_id: &str,
        pod: &cgroup::PodCgroup,
        resource: Resource,
    ) -> Result<bool, CriError> {
        let cg = self.container_cgroup(container_id).await?.parent();
        let files: Vec<_> = cgroup::pod_files(pod, self.cgroups.version(), self.page_size)
            .into_iter()
            .filter(|f| match resource {
                Resource::Memory => f.file.starts_with("memory."),
                Resource::Cpu => f.file.starts_with("cpu."),
            })
            .collect();
        Ok(self.cgroups.verify(&cg, &files).is_empty())
    }
}

/// A limit on the writes an apply may make, and a pause before each: how
/// tests (and `--step-delay-ms`) interrupt an apply mid-way, as a crash would.
#[derive(Clone, Debug, Default)]
pub struct StepBudget {
    /// Writes allowed; `None`: unlimited.
    pub remaining: Option<usize>,
    /// Sleep before each write.
    pub pause: Duration,
    /// Writes made so far.
    pub spent: usize,
}

impl StepBudget {
    pub fn stop_after(writes: usize) -> Self {
        Self { remaining: Some(writes), ..Default::default() }
    }

    /// Takes one write, or says the budget is spent.
    pub async fn spend(&mut self, what: &impl std::fmt::Debug) -> Result<(), StepError> {
        if let Some(left) = self.remaining.as_mut() {
            if *left == 0 {
                return Err(StepError::Stopped { before: format!("{what:?}"), done: self.spent });
            }
            *left -= 1;
        }
        if !self.pause.is_zero() {
            tokio::time::sleep(self.pause).await;
        }
        self.spent += 1;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Cri(#[from] CriError),
    #[error("stopped before {before} after {done} writes (step budget spent)")]
    Stopped { before: String, done: usize },
}

/// An unlimited budget never stops.
fn unreachable_stop() -> CriError {
    CriError::NoCgroup { container: "-".into(), reason: "an unlimited step budget stopped".into() }
}

/// The kernel's page size (memory limits are stored in whole pages).
fn page_size() -> i64 {
    // No libc dependency for one number: every Linux target this runs on
    // (x86_64, aarch64 with 4K pages) uses 4 KiB; AT_PAGESZ could tell otherwise.
    std::fs::read("/proc/self/auxv")
        .ok()
        .and_then(|auxv| {
            auxv.chunks_exact(16).find_map(|kv| {
                let k = u64::from_ne_bytes(kv[..8].try_into().ok()?);
                let v = u64::from_ne_bytes(kv[8..].try_into().ok()?);
                (k == 6).then_some(v as i64) // AT_PAGESZ
            })
        })
        .unwrap_or(4096)
}
