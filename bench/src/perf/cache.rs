//! Scenarios 4 and 7: the manager's memory per cached pod, and the largest
//! pod (and node) counts at which it still reacts within a second.
//!
//! Steps of `[NODES:]PODS`: before a step, nodes are added up to NODES
//! (kwok nodes by default, `cluster.sh kwok-nodes`; or hollow kubelets,
//! `cluster.sh nodes`) and berth-managed pods (label `berth.dev/managed`,
//! held by a scheduling gate: they exist in etcd and in every pod cache,
//! never run) up to PODS. At each step:
//! - memory: the manager's VmRSS; per cached pod = (RSS now - RSS with none) / pods;
//! - reaction lag: a probe InplaceSet scaled 0 -> 1 (through /scale), timed until
//!   its pod is seen, repeated; the same with a probe StatefulSet
//!   (kube-controller-manager) as the baseline. The manager's reaction bounds
//!   its watch lag from above: the event has to arrive before it can act.
//!
//! The search stops at the first step whose p99 lag is 1 s or more, or
//! that fails (e.g. the apiserver refusing more pods).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use berth_api::{InplaceSet, keys};
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{Node, Pod},
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use super::{BenchNamespace, Tracker, create_all, held_pod, manager_pid, rss_bytes};
use crate::stats::{Summary, micros};

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Step {
    /// Hollow nodes wanted (None: as many as the cluster has).
    pub nodes: Option<usize>,
    pub pods: usize,
}

impl std::str::FromStr for Step {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let num = |x: &str| x.trim().parse::<usize>().map_err(|_| format!("{s:?}: want PODS or NODES:PODS, numbers"));
        match s.split_once(':') {
            Some((n, p)) => Ok(Self { nodes: Some(num(n)?), pods: num(p)? }),
            None => Ok(Self { nodes: None, pods: num(s)? }),
        }
    }
}

/// What simulates the nodes a step adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NodeSimulator {
    /// kwok: one light process for all nodes (leases, status, pods of its stock stages).
    Kwok,
    /// kubemark hollow kubelets: kubelet code, about a core per 1,000 nodes here.
    Hollow,
}

impl NodeSimulator {
    pub fn name(self) -> &'static str {
        match self {
            Self::Kwok => "kwok",
            Self::Hollow => "hollow kubelets",
        }
    }

    fn cluster_command(self) -> &'static str {
        match self {
            Self::Kwok => "kwok-nodes",
            Self::Hollow => "nodes",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub steps: Vec<Step>,
    pub node_simulator: NodeSimulator,
    pub concurrency: usize,
    /// Probes (each kind) per step.
    pub probes: usize,
    /// Seconds to let the manager settle before reading its memory.
    pub settle: Duration,
    pub timeout: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub nodes: usize,
    pub pods: usize,
    pub manager_rss_bytes: u64,
    /// (RSS - RSS with no managed pod) / pods.
    pub bytes_per_pod: f64,
    pub inplaceset_lag: Summary,
    pub statefulset_lag: Summary,
    pub sustained: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// What simulated the nodes the steps added.
    pub node_simulator: NodeSimulator,
    pub rss_without_pods: u64,
    /// Size of one such pod as the apiserver serves it (JSON), for scale.
    pub pod_json_bytes: usize,
    pub steps: Vec<StepReport>,
    /// Why the search stopped early, if it did.
    pub stopped: Option<String>,
}

impl Report {
    /// The largest step sustained (lag p99 under 1 s).
    pub fn reached(&self) -> Option<&StepReport> {
        self.steps.iter().filter(|s| s.sustained).max_by_key(|s| (s.pods, s.nodes))
    }
}

const LAG_LIMIT: Duration = Duration::from_secs(1);

async fn node_count(client: &Client) -> Result<usize> {
    Ok(Api::<Node>::all(client.clone()).list_metadata(&ListParams::default()).await?.items.len())
}

fn add_nodes(simulator: NodeSimulator, n: usize) -> Result<()> {
    let command = simulator.cluster_command();
    let status = std::process::Command::new(berth_e2e::repo_root().join("e2e/cluster/cluster.sh"))
        .args([command, &n.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "cluster.sh {command} {n}: {status}");
    Ok(())
}

pub async fn run(client: &Client, run_id: &str, opts: &Options) -> Result<Report> {
    let ns = BenchNamespace::create(client, "cache", run_id).await?;
    let result = search(client, &ns, opts).await;
    // Tens of thousands of pods on a loaded cluster can take many minutes to
    // go; the scenario runs last and the cluster is torn down after it.
    if let Err(e) = ns.delete(Duration::from_secs(120)).await {
        eprintln!("[bench] cache: {e:#}; left to the cluster teardown");
    }
    result
}

async fn search(client: &Client, ns: &BenchNamespace, opts: &Options) -> Result<Report> {
    let pods: Api<Pod> = ns.api();
    let pid = manager_pid(1)?;
    tokio::time::sleep(opts.settle).await;
    let rss_without_pods = rss_bytes(pid)?;
    let labels = json!({keys::MANAGED: "true", "app": "cache-filler"});
    let sample = held_pod("sizer", labels.clone())?;
    let served = pods.create(&PostParams::default(), &sample).await?;
    let pod_json_bytes = serde_json::to_vec(&served)?.len();
    let mut report =
        Report { node_simulator: opts.node_simulator, rss_without_pods, pod_json_bytes, steps: vec![], stopped: None };
    let mut have = 1usize;
    let probes = Probes::create(ns).await?;
    for step in &opts.steps {
        let outcome = async {
            if let Some(want) = step.nodes {
                let now = node_count(client).await?;
                if want > now {
                    eprintln!("[bench] scale: adding {} nodes ({})", want - now, opts.node_simulator.name());
                    add_nodes(opts.node_simulator, want - now)?;
                }
            }
            if step.pods > have {
                let batch: Vec<Pod> = (have..step.pods)
                    .map(|i| held_pod(&format!("filler-{i}"), labels.clone()))
                    .collect::<Result<_>>()?;
                let took = create_all(&pods, batch, opts.concurrency).await?;
                eprintln!(
                    "[bench] scale: {} managed pods ({:.0} created/s)",
                    step.pods,
                    (step.pods - have) as f64 / took.as_secs_f64()
                );
                have = step.pods;
            }
            tokio::time::sleep(opts.settle).await;
            let rss = rss_bytes(manager_pid(1)?).context("the manager is gone")?;
            let (ips, sts) = probes.measure(opts.probes).await?;
            let nodes = node_count(client).await?;
            let sustained = ips.p99_us < micros(LAG_LIMIT);
            let s = StepReport {
                nodes,
                pods: have,
                manager_rss_bytes: rss,
                bytes_per_pod: (rss as f64 - rss_without_pods as f64) / have as f64,
                inplaceset_lag: ips,
                statefulset_lag: sts,
                sustained,
            };
            eprintln!(
                "[bench] scale step {nodes} nodes / {have} pods: manager RSS {:.1} MiB ({:.0} B/pod), reaction p50/p99 \
                 {:.0}/{:.0} ms (StatefulSet {:.0}/{:.0} ms)",
                rss as f64 / 1048576.0,
                s.bytes_per_pod,
                ips.p50_us as f64 / 1e3,
                ips.p99_us as f64 / 1e3,
                sts.p50_us as f64 / 1e3,
                sts.p99_us as f64 / 1e3
            );
            Ok::<_, anyhow::Error>(s)
        }
        .await;
        match outcome {
            Ok(s) => {
                let sustained = s.sustained;
                report.steps.push(s);
                if !sustained {
                    report.stopped = Some(format!("reaction p99 of 1 s or more at {} pods", have));
                    break;
                }
            }
            Err(e) => {
                report.stopped = Some(format!("step {step:?} failed: {e:#}"));
                break;
            }
        }
    }
    Ok(report)
}

/// A probe InplaceSet and a probe StatefulSet, scaled 0 <-> 1 in turn.
struct Probes {
    sets: Api<InplaceSet>,
    statefulsets: Api<StatefulSet>,
    pods: Api<Pod>,
}

impl Probes {
    async fn create(ns: &BenchNamespace) -> Result<Self> {
        let template = |app: &str| {
            json!({"metadata": {"labels": {"app": app}},
                   "spec": {"containers": [{"name": "app", "image": berth_e2e::images().0}],
                            "schedulingGates": [{"name": super::HOLD_GATE}]}})
        };
        let sets: Api<InplaceSet> = ns.api();
        let set: InplaceSet = serde_json::from_value(json!({
            "apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet", "metadata": {"name": "probe"},
            "spec": {"replicas": 0, "podManagementPolicy": "Parallel",
                     "selector": {"matchLabels": {"app": "probe-ips"}}, "template": template("probe-ips")}
        }))?;
        sets.create(&PostParams::default(), &set).await?;
        let statefulsets: Api<StatefulSet> = ns.api();
        let sts: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "probe"},
            "spec": {"replicas": 0, "podManagementPolicy": "Parallel", "serviceName": "probe",
                     "selector": {"matchLabels": {"app": "probe-sts"}}, "template": template("probe-sts")}
        }))?;
        statefulsets.create(&PostParams::default(), &sts).await?;
        Ok(Self { sets, statefulsets, pods: ns.api() })
    }

    async fn measure(&self, n: usize) -> Result<(Summary, Summary)> {
        let (mut ips, mut sts) = (vec![], vec![]);
        for _ in 0..n {
            ips.push(
                self.once("app=probe-ips", async |r| {
                    self.sets.patch_scale("probe", &PatchParams::default(), &scale(r)).await.map(|_| ())
                })
                .await?,
            );
            sts.push(
                self.once("app=probe-sts", async |r| {
                    self.statefulsets.patch_scale("probe", &PatchParams::default(), &scale(r)).await.map(|_| ())
                })
                .await?,
            );
        }
        Ok((Summary::of(&ips), Summary::of(&sts)))
    }

    /// Scale to 1, time until the pod is seen; scale to 0, wait until it is gone.
    async fn once(&self, selector: &str, mut set_replicas: impl AsyncFnMut(i32) -> kube::Result<()>) -> Result<u64> {
        let seen = Tracker::start(self.pods.clone(), selector, |p| p.metadata.deletion_timestamp.is_none()).await?;
        if seen.count() > 0 {
            bail!("{selector}: a probe pod is left from the last round");
        }
        let t0 = Instant::now();
        set_replicas(1).await?;
        seen.wait(1, Duration::from_secs(60), selector).await?;
        let lag = micros(seen.seconds_since(t0).first().map_or(Duration::ZERO, |s| Duration::from_secs_f64(*s)));
        set_replicas(0).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.pods.list_metadata(&ListParams::default().labels(selector)).await?.items.is_empty() {
            if Instant::now() > deadline {
                bail!("{selector}: probe pod not deleted after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(lag)
    }
}

fn scale(replicas: i32) -> Patch<serde_json::Value> {
    Patch::Merge(json!({"spec": {"replicas": replicas}}))
}
