//! Scenario 6: in-place resize, Created -> Applied, on hollow nodes with the
//! real node agent (berth-node-agent, one process per node, each with a token
//! bound to a pod on its node, as a DaemonSet pod's is; its default
//! pods/resize path). Baselines, same run, same nodes, each on a pod of its
//! own: the same change sent straight to `pods/resize` by a client, timed
//! until the container status reports it (what the kubelet alone takes); and
//! the same after a write to the pod's annotations, sent once a watch shows
//! the write, timed from it. berth's request is such a write, and the kubelet
//! syncs a pod at once on a change after a quiet spell, but each further sync
//! waits for a PLEG relist (every 1 s) newer than the last one. Samples rotate
//! between the three, on every node at once, each on a pod left alone for
//! [`QUIET`] and after a pause spread over one relist period so they do not
//! all meet the relist at the same phase.
//!
//! On the real node (`cluster.sh real-node`: the kubelet on containerd) the
//! agent is given that containerd's socket, and a fourth kind of sample goes
//! through the agent's own CRI path (a pod annotated
//! `berth.dev/resize-agent-managed`): UpdateContainerResources, the cgroup
//! files read back, no kubelet sync to wait for.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use berth_api::keys;
use berth_e2e::node_agent;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use super::BenchNamespace;
use crate::stats::{Summary, micros};

#[derive(Clone, Debug)]
pub struct Options {
    /// Nodes with an agent.
    pub nodes: Vec<String>,
    /// The nodes are real ones and this is their containerd's CRI socket.
    pub cri_socket: Option<PathBuf>,
    /// Resizes per node (and as many baseline ones).
    pub samples: usize,
    pub agent_bin: PathBuf,
    pub work_dir: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub nodes: usize,
    /// The nodes ran their pods for real (kubelet on containerd).
    pub real_nodes: bool,
    /// Created -> Applied (feasibility, node agent, kubelet).
    pub berth: Summary,
    /// Created -> Applied through the agent's CRI path (real nodes only).
    pub berth_cri: Option<Summary>,
    /// pods/resize -> container status reports it (kubelet alone).
    pub direct: Summary,
    /// Annotation write, then pods/resize -> container status reports it.
    pub after_write: Summary,
    /// Per node, per kind of sample (berth, direct, after-write, then berth through CRI on real
    /// nodes): microseconds, in order.
    pub samples: Vec<Vec<Vec<u64>>>,
}

/// The ways a sample is taken, in the order of [`Report::samples`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Berth,
    Direct,
    AfterWrite,
    /// berth, on an agent-managed pod: the agent's CRI path.
    BerthCri,
}

impl Path {
    fn all(real: bool) -> &'static [Path] {
        if real {
            &[Path::Berth, Path::Direct, Path::AfterWrite, Path::BerthCri]
        } else {
            &[Path::Berth, Path::Direct, Path::AfterWrite]
        }
    }

    fn pod(self, node: &str) -> String {
        match self {
            Path::Berth => format!("rz-{node}"),
            Path::Direct => format!("direct-{node}"),
            Path::AfterWrite => format!("touched-{node}"),
            Path::BerthCri => format!("rz-cri-{node}"),
        }
    }
}

/// The kubelet's PLEG relist period, over which sample start times are spread.
const RELIST: Duration = Duration::from_secs(1);

/// How long a pod is left alone after a sample before its next one: the
/// kubelet queues a sync for each write an operation made (berth's last one,
/// Applied, comes after the resize), and each waits for a relist newer than
/// the sync before it, so a pod's worker is idle two relists after its last
/// write. A request on a pod still draining such a queue waits for it.
const QUIET: Duration = Duration::from_millis(2500);

/// The pause before sample `s`: multiples of the golden ratio modulo the
/// relist period cover it evenly, the same in every run.
fn phase(s: usize) -> Duration {
    RELIST.mul_f64((s as f64 * 0.618_034).fract())
}

/// The cpu request a pod starts with and the one every other sample sets:
/// the real node has only this machine's CPUs, shared by its four pods.
fn cpus(real: bool) -> (&'static str, &'static str) {
    if real { ("100m", "150m") } else { ("500m", "600m") }
}

/// The image pods run: any name on hollow nodes; one containerd.sh imported on real ones.
fn image(real: bool) -> String {
    if real { berth_e2e::real_node::IMAGES.0.into() } else { berth_e2e::images().0 }
}

fn pod(name: &str, node: &str, path: Path, real: bool) -> Result<Pod> {
    let managed = matches!(path, Path::Berth | Path::BerthCri);
    let labels = if managed { json!({keys::MANAGED: "true", "app": "rz"}) } else { json!({"app": "rz-direct"}) };
    let annotations = if path == Path::BerthCri { json!({keys::RESIZE_AGENT_MANAGED: "true"}) } else { json!({}) };
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": image(real),
            "resources": {"requests": {"cpu": cpus(real).0, "memory": "64Mi"}, "limits": {"cpu": "2", "memory": "64Mi"}}}]}
    }))?)
}

/// The real node agent of `node`, a process on this host; killed on drop.
struct Agent(std::process::Child);

impl Agent {
    async fn start(client: &Client, node: &str, opts: &Options) -> Result<Self> {
        let kubeconfig = node_agent::kubeconfig(client, node).await?;
        std::fs::create_dir_all(&opts.work_dir)?;
        let path = opts.work_dir.join(format!("node-agent-{node}.kubeconfig"));
        std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
        let log = std::fs::File::create(opts.work_dir.join(format!("node-agent-{node}.log")))?;
        let mut command = std::process::Command::new(&opts.agent_bin);
        if let Some(socket) = &opts.cri_socket {
            command.env("BERTH_CRI_SOCKET", socket);
        }
        let child = command
            .env("KUBECONFIG", &path)
            .env("NODE_NAME", node)
            .env("BERTH_STATE_DIR", opts.work_dir.join(format!("node-agent-{node}.state")))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} (cargo build -p berth-node-agent)", opts.agent_bin.display()))?;
        Ok(Self(child))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn run(client: &Client, run_id: &str, opts: &Options) -> Result<Report> {
    let ns = BenchNamespace::create(client, "resize", run_id).await?;
    let result = measure(client, &ns, opts).await;
    let agents: Api<Pod> = Api::namespaced(client.clone(), node_agent::MANAGER_NAMESPACE);
    for node in &opts.nodes {
        let _ = agents.delete(&node_agent::placeholder_name(node), &Default::default()).await;
    }
    ns.delete(Duration::from_secs(120)).await?;
    result
}

async fn measure(client: &Client, ns: &BenchNamespace, opts: &Options) -> Result<Report> {
    let pods: Api<Pod> = ns.api();
    let (nodes, real) = (&opts.nodes, opts.cri_socket.is_some());
    let paths = Path::all(real);
    for node in nodes {
        for &path in paths {
            pods.create(&PostParams::default(), &pod(&path.pod(node), node, path, real)?).await?;
        }
    }
    let ready = |p: Option<&Pod>| p.is_some_and(berth_e2e::pod_ready);
    for node in nodes {
        for path in paths {
            berth_e2e::wait_for(&pods, &path.pod(node), Duration::from_secs(120), "Ready", ready).await?;
        }
    }
    let mut agents = vec![];
    for node in nodes {
        agents.push(Agent::start(client, node, opts).await?);
    }
    // The agents list their pods before acting: one warm-up resize each, not recorded.
    let per_node = futures::future::try_join_all(nodes.iter().map(|node| {
        let pods = pods.clone();
        async move {
            let mut taken: Vec<Vec<u64>> = vec![vec![]; paths.len()];
            let mut quiet_from = vec![Instant::now(); paths.len()];
            let mut turn = 0;
            for s in 0..=opts.samples {
                let (base, raised) = cpus(real);
                let cpu = if s % 2 == 0 { raised } else { base };
                // Which goes first rotates, so none always meets the kubelet just after another.
                for k in 0..paths.len() {
                    let i = (s + k) % paths.len();
                    tokio::time::sleep_until(quiet_from[i] + QUIET).await;
                    tokio::time::sleep(phase(turn)).await;
                    turn += 1;
                    let name = paths[i].pod(node);
                    let took = match paths[i] {
                        Path::Berth | Path::BerthCri => through_berth(&pods, &name, cpu).await?,
                        Path::Direct => direct_resize(&pods, &name, cpu, false).await?,
                        Path::AfterWrite => direct_resize(&pods, &name, cpu, true).await?,
                    };
                    quiet_from[i] = Instant::now();
                    if s > 0 {
                        taken[i].push(micros(took));
                    }
                }
            }
            Ok::<_, anyhow::Error>(taken)
        }
    }))
    .await?;
    drop(agents);
    let all = |i: usize| -> Vec<u64> { per_node.iter().flat_map(|t| t[i].iter().copied()).collect() };
    let report = Report {
        nodes: nodes.len(),
        real_nodes: real,
        berth: Summary::of(&all(0)),
        berth_cri: real.then(|| Summary::of(&all(3))),
        direct: Summary::of(&all(1)),
        after_write: Summary::of(&all(2)),
        samples: per_node,
    };
    let ms = |s: &Summary| format!("{:.0}/{:.0} ms", s.p50_us as f64 / 1e3, s.p99_us as f64 / 1e3);
    eprintln!(
        "[bench] resize p50/p99 on {}: Created->Applied {}{}; pods/resize alone {}; pods/resize after a pod write {}",
        nodes.join(", "),
        ms(&report.berth),
        report.berth_cri.as_ref().map(|s| format!(" (through CRI: {})", ms(s))).unwrap_or_default(),
        ms(&report.direct),
        ms(&report.after_write)
    );
    Ok(report)
}

/// Submits a resize request (state Created) and times it until Applied.
async fn through_berth(pods: &Api<Pod>, name: &str, cpu: &str) -> Result<Duration> {
    let request = json!({"containers": {"app": {"requests": {"cpu": cpu}}}});
    let submit =
        json!({"metadata": {"annotations": {keys::RESIZE: request.to_string(), keys::RESIZE_STATE: "Created"}}});
    let t0 = Instant::now();
    pods.patch(name, &PatchParams::default(), &Patch::Merge(submit)).await?;
    let done = |p: Option<&Pod>| {
        p.and_then(|p| p.annotations().get(keys::RESIZE_STATE).cloned())
            .is_some_and(|s| s != "Created" && s != "Accepted")
    };
    let p = berth_e2e::wait_for(pods, name, Duration::from_secs(60), "resized", done).await?;
    let took = t0.elapsed();
    let state = p.annotations().get(keys::RESIZE_STATE).cloned().unwrap_or_default();
    if state != "Applied" {
        bail!(
            "{name}: resize ended {state}: {}",
            p.annotations().get(keys::RESIZE_MESSAGE).cloned().unwrap_or_default()
        );
    }
    Ok(took)
}

fn reported_cpu(p: &Pod) -> Option<String> {
    let status = berth_e2e::container_status(p, "app")?;
    Some(status.resources.as_ref()?.requests.as_ref()?.get("cpu")?.0.clone())
}

/// The annotation a pod write before a baseline resize sets.
const TOUCH: &str = "bench.berth.dev/resize-to";

/// Resizes through pods/resize and times it until the container status
/// reports it; with `after_write`, after an annotation write, once a watch
/// shows it (as berth's request is written, then seen), timed from that write.
async fn direct_resize(pods: &Api<Pod>, name: &str, cpu: &str, after_write: bool) -> Result<Duration> {
    let patch = json!({"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": cpu}}}]}});
    let t0 = Instant::now();
    if after_write {
        // As berth's request: the write, then pods/resize once a watch shows it.
        let touch = json!({"metadata": {"annotations": {TOUCH: cpu}}});
        pods.patch(name, &PatchParams::default(), &Patch::Merge(touch)).await?;
        let seen = |p: Option<&Pod>| p.is_some_and(|p| p.annotations().get(TOUCH).map(String::as_str) == Some(cpu));
        berth_e2e::wait_for(pods, name, Duration::from_secs(60), "its write seen", seen).await?;
    }
    pods.patch_resize(name, &PatchParams::default(), &Patch::Strategic(patch)).await?;
    let want = cpu.to_string();
    let done = move |p: Option<&Pod>| p.and_then(reported_cpu).as_deref() == Some(want.as_str());
    berth_e2e::wait_for(pods, name, Duration::from_secs(60), "resized by the kubelet", done).await?;
    Ok(t0.elapsed())
}
