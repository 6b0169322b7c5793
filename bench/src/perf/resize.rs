//! Scenario 6: in-place resize, Created -> Applied, on hollow nodes with the
//! real node agent (berth-node-agent, one process per node, each with a token
//! bound to a pod on its node, as a DaemonSet pod's is; its default
//! pods/resize path). Baseline, same run, same nodes: the same change sent
//! straight to `pods/resize` by a client, timed until the container status
//! reports it (what the kubelet alone takes). Samples alternate between the
//! two, on every node at once.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use berth_api::{keys, resize::NODE_AGENT_SERVICE_ACCOUNT};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    config::{AuthInfo, Kubeconfig},
};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use super::BenchNamespace;
use crate::stats::{Summary, micros};

#[derive(Clone, Debug)]
pub struct Options {
    /// Nodes with an agent (hollow-node-0..).
    pub nodes: usize,
    /// Resizes per node (and as many baseline ones).
    pub samples: usize,
    pub agent_bin: PathBuf,
    pub work_dir: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub nodes: usize,
    /// Created -> Applied (feasibility, node agent, kubelet).
    pub berth: Summary,
    /// pods/resize -> container status reports it (kubelet alone).
    pub direct: Summary,
    /// Per node: (berth, direct) samples in microseconds, in order.
    pub samples: Vec<(Vec<u64>, Vec<u64>)>,
}

fn pod(name: &str, node: &str, managed: bool) -> Result<Pod> {
    let labels = if managed { json!({keys::MANAGED: "true", "app": "rz"}) } else { json!({"app": "rz-direct"}) };
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": berth_e2e::images().0,
            "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}, "limits": {"cpu": "2", "memory": "64Mi"}}}]}
    }))?)
}

/// The real node agent of `node`, a process on this host; killed on drop.
struct Agent(std::process::Child);

impl Agent {
    async fn start(client: &Client, node: &str, opts: &Options) -> Result<Self> {
        let agents: Api<Pod> = Api::namespaced(client.clone(), "berth-system");
        let name = format!("bench-agent-{node}");
        let placeholder = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"nodeName": node,
            "serviceAccountName": NODE_AGENT_SERVICE_ACCOUNT, "containers": [{"name": "agent", "image": berth_e2e::images().0}]}});
        let placeholder = agents.patch(&name, &PatchParams::apply("berth-bench"), &Patch::Apply(placeholder)).await?;
        let token =
            berth_e2e::identity::token(client, "berth-system", NODE_AGENT_SERVICE_ACCOUNT, Some(&placeholder)).await?;
        let mut kubeconfig = Kubeconfig::read_from(berth_e2e::kubeconfig_path()?)?;
        for named in &mut kubeconfig.auth_infos {
            named.auth_info = Some(AuthInfo { token: Some(token.clone().into()), ..Default::default() });
        }
        std::fs::create_dir_all(&opts.work_dir)?;
        let path = opts.work_dir.join(format!("node-agent-{node}.kubeconfig"));
        std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
        let log = std::fs::File::create(opts.work_dir.join(format!("node-agent-{node}.log")))?;
        let child = std::process::Command::new(&opts.agent_bin)
            .env("KUBECONFIG", &path)
            .env("NODE_NAME", node)
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
    let agents: Api<Pod> = Api::namespaced(client.clone(), "berth-system");
    for i in 0..opts.nodes {
        let _ = agents.delete(&format!("bench-agent-hollow-node-{i}"), &Default::default()).await;
    }
    ns.delete(Duration::from_secs(120)).await?;
    result
}

async fn measure(client: &Client, ns: &BenchNamespace, opts: &Options) -> Result<Report> {
    let pods: Api<Pod> = ns.api();
    let nodes: Vec<String> = (0..opts.nodes).map(|i| format!("hollow-node-{i}")).collect();
    for node in &nodes {
        pods.create(&PostParams::default(), &pod(&format!("rz-{node}"), node, true)?).await?;
        pods.create(&PostParams::default(), &pod(&format!("direct-{node}"), node, false)?).await?;
    }
    let ready = |p: Option<&Pod>| p.is_some_and(berth_e2e::pod_ready);
    for node in &nodes {
        for name in [format!("rz-{node}"), format!("direct-{node}")] {
            berth_e2e::wait_for(&pods, &name, Duration::from_secs(120), "Ready", ready).await?;
        }
    }
    let mut agents = vec![];
    for node in &nodes {
        agents.push(Agent::start(client, node, opts).await?);
    }
    // The agents list their pods before acting: one warm-up resize each, not recorded.
    let per_node = futures::future::try_join_all(nodes.iter().map(|node| {
        let pods = pods.clone();
        async move {
            let (mut berth, mut direct) = (vec![], vec![]);
            for s in 0..=opts.samples {
                let cpu = if s % 2 == 0 { "600m" } else { "500m" };
                // Which goes first alternates, so neither always meets the kubelet just after the other.
                let (b, d) = if s % 2 == 0 {
                    let b = through_berth(&pods, &format!("rz-{node}"), cpu).await?;
                    (b, direct_resize(&pods, &format!("direct-{node}"), cpu).await?)
                } else {
                    let d = direct_resize(&pods, &format!("direct-{node}"), cpu).await?;
                    (through_berth(&pods, &format!("rz-{node}"), cpu).await?, d)
                };
                if s > 0 {
                    berth.push(micros(b));
                    direct.push(micros(d));
                }
            }
            Ok::<_, anyhow::Error>((berth, direct))
        }
    }))
    .await?;
    drop(agents);
    let berth: Vec<u64> = per_node.iter().flat_map(|(b, _)| b.iter().copied()).collect();
    // (kept per node in the report)
    let direct: Vec<u64> = per_node.iter().flat_map(|(_, d)| d.iter().copied()).collect();
    let report =
        Report { nodes: opts.nodes, berth: Summary::of(&berth), direct: Summary::of(&direct), samples: per_node };
    eprintln!(
        "[bench] resize: Created->Applied p50/p99 {:.0}/{:.0} ms; pods/resize alone {:.0}/{:.0} ms",
        report.berth.p50_us as f64 / 1e3,
        report.berth.p99_us as f64 / 1e3,
        report.direct.p50_us as f64 / 1e3,
        report.direct.p99_us as f64 / 1e3
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

/// Resizes through pods/resize and times it until the container status reports it.
async fn direct_resize(pods: &Api<Pod>, name: &str, cpu: &str) -> Result<Duration> {
    let patch = json!({"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": cpu}}}]}});
    let t0 = Instant::now();
    pods.patch_resize(name, &PatchParams::default(), &Patch::Strategic(patch)).await?;
    let want = cpu.to_string();
    let done = move |p: Option<&Pod>| p.and_then(reported_cpu).as_deref() == Some(want.as_str());
    berth_e2e::wait_for(pods, name, Duration::from_secs(60), "resized by the kubelet", done).await?;
    Ok(t0.elapsed())
}
