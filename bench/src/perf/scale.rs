//! Scenario 2: scale 0 -> M pods. An InplaceSet (Parallel) against the
//! apiserver's raw pod-create rate (a plain client creating M pods with
//! bounded concurrency, retrying 429s) and against a StatefulSet with
//! Parallel pod management. Every pod is held by a scheduling gate, so what is
//! measured is the controller and the apiserver (creation until the pod is
//! seen in a watch), not the hollow kubelets.

use std::time::Duration;

use anyhow::Result;
use berth_api::InplaceSet;
use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use super::{BenchNamespace, HOLD_GATE, Tracker, create_all, held_pod, manager_pid, state_dir};
use crate::cpu::{Cpu, CpuUse, clock_ticks};

#[derive(Clone, Debug)]
pub struct Options {
    pub pods: usize,
    /// Requests in flight of the plain client.
    pub concurrency: usize,
    /// Rounds of all three; each kind's median round is reported. The order
    /// rotates each round so no kind always runs first (or last).
    pub rounds: usize,
    pub timeout: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub kind: &'static str,
    pub pods: usize,
    pub seconds: f64,
    pub pods_per_second: f64,
    /// Seconds (since the scale) at which each pod was first seen, sorted.
    pub progress: Vec<f64>,
    /// CPU the machine and each process used from the scale until every pod was seen.
    pub cpu: CpuUse,
}

/// Each kind's median round, and every round's rate.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub plain_client: Run,
    pub inplaceset: Run,
    pub statefulset: Run,
    /// pods/s of every round, per kind, in the order run.
    pub rounds: Vec<Round>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Round {
    pub plain_client: f64,
    pub inplaceset: f64,
    pub statefulset: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    PlainClient,
    InplaceSet,
    StatefulSet,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::PlainClient, Kind::InplaceSet, Kind::StatefulSet];

    fn name(self) -> &'static str {
        match self {
            Kind::PlainClient => "plain client",
            Kind::InplaceSet => "InplaceSet",
            Kind::StatefulSet => "StatefulSet",
        }
    }
}

fn template(labels: &serde_json::Value) -> serde_json::Value {
    json!({
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "app", "image": berth_e2e::images().0,
                                  "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
                 "schedulingGates": [{"name": HOLD_GATE}]}
    })
}

fn run_of(kind: &'static str, pods: usize, seconds: f64, progress: Vec<f64>, cpu: CpuUse) -> Run {
    eprintln!(
        "[bench] scale {kind}: {pods} pods in {seconds:.1}s ({:.0} pods/s); {}",
        pods as f64 / seconds,
        cpu.describe()
    );
    Run { kind, pods, seconds, pods_per_second: pods as f64 / seconds.max(1e-9), progress, cpu }
}

/// A CPU reading of the machine, the manager and the cluster's processes.
fn cpu_now() -> Cpu {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(clock_ticks);
    Cpu::now(manager_pid(1).ok(), Some(&state_dir().join("pids")), ticks)
}

/// The kinds in round `round`'s order: rotated by one each round.
fn order(round: usize) -> [Kind; 3] {
    let mut kinds = Kind::ALL;
    kinds.rotate_left(round % Kind::ALL.len());
    kinds
}

/// The run of median rate (the lower middle of an even count).
fn median(mut runs: Vec<Run>) -> Option<Run> {
    runs.sort_by(|a, b| a.pods_per_second.total_cmp(&b.pods_per_second));
    let middle = runs.len().saturating_sub(1) / 2;
    runs.into_iter().nth(middle)
}

pub async fn run(client: &Client, run_id: &str, opts: &Options) -> Result<Report> {
    anyhow::ensure!(opts.rounds >= 1, "--scale-rounds must be at least 1");
    let (mut plain, mut sets, mut stateful) = (Vec::new(), Vec::new(), Vec::new());
    let mut rounds = Vec::new();
    for round in 0..opts.rounds {
        eprintln!("[bench] scale round {}/{}", round + 1, opts.rounds);
        for kind in order(round) {
            let run = run_kind(client, run_id, kind, opts).await?;
            match kind {
                Kind::PlainClient => plain.push(run),
                Kind::InplaceSet => sets.push(run),
                Kind::StatefulSet => stateful.push(run),
            }
        }
        rounds.push(Round {
            plain_client: plain[round].pods_per_second,
            inplaceset: sets[round].pods_per_second,
            statefulset: stateful[round].pods_per_second,
        });
    }
    let pick = |runs: Vec<Run>| median(runs).expect("at least one round");
    Ok(Report { plain_client: pick(plain), inplaceset: pick(sets), statefulset: pick(stateful), rounds })
}

/// Busy share of the machine below which a scale-up may start.
const QUIET: f64 = 0.5;

async fn run_kind(client: &Client, run_id: &str, kind: Kind, opts: &Options) -> Result<Run> {
    let m = opts.pods;
    let (busy, settled) = crate::cpu::settle(QUIET, Duration::from_secs(30)).await;
    if !settled {
        eprintln!(
            "[bench] scale {}: the machine is still {:.0}% busy after 30 s; measuring anyway",
            kind.name(),
            busy * 100.0
        );
    }
    let (prefix, app) = match kind {
        Kind::PlainClient => ("scale-raw", "scale-raw"),
        Kind::InplaceSet => ("scale-ips", "scale-ips"),
        Kind::StatefulSet => ("scale-sts", "scale-sts"),
    };
    let ns = BenchNamespace::create(client, prefix, run_id).await?;
    let selector = format!("app={app}");
    let labels = json!({"app": app});
    let result = match kind {
        Kind::PlainClient => {
            let pods: Api<Pod> = Api::namespaced(plain_client(client, &ns.name).await?, &ns.name);
            let seen = Tracker::start(pods.clone(), &selector, |_| true).await?;
            let batch: Vec<Pod> =
                (0..m).map(|i| held_pod(&format!("raw-{i}"), labels.clone())).collect::<Result<_>>()?;
            let (t0, cpu0) = (Instant::now(), cpu_now());
            let done = async {
                create_all(&pods, batch, opts.concurrency).await?;
                seen.wait(m, opts.timeout, "plain client: pods seen").await?;
                Ok::<_, anyhow::Error>((t0.elapsed().as_secs_f64(), CpuUse::between(&cpu0, &cpu_now())))
            }
            .await;
            done.map(|(seconds, cpu)| (seconds, seen.seconds_since(t0), cpu))
        }
        Kind::InplaceSet => {
            let set: InplaceSet = serde_json::from_value(json!({
                "apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet",
                "metadata": {"name": "scale"},
                "spec": {"replicas": 0, "podManagementPolicy": "Parallel", "selector": {"matchLabels": labels},
                         "template": template(&labels)}
            }))?;
            let observed = |s: &InplaceSet| s.status.as_ref().and_then(|s| s.observed_generation).is_some();
            scale_workload(&ns, &selector, m, opts.timeout, &set, observed).await
        }
        Kind::StatefulSet => {
            let sts: StatefulSet = serde_json::from_value(json!({
                "metadata": {"name": "scale"},
                "spec": {"replicas": 0, "podManagementPolicy": "Parallel", "serviceName": "scale",
                         "selector": {"matchLabels": labels}, "template": template(&labels)}
            }))?;
            let observed = |s: &StatefulSet| s.status.as_ref().and_then(|s| s.observed_generation).is_some();
            scale_workload(&ns, &selector, m, opts.timeout, &sts, observed).await
        }
    };
    ns.delete(opts.timeout).await?;
    let (seconds, progress, cpu) = result?;
    Ok(run_of(kind.name(), m, seconds, progress, cpu))
}

/// The plain client: a service account allowed to edit its namespace, as a
/// controller is. Not the bench's admin credentials: system:masters skips
/// authorization and API Priority and Fairness, which no controller does.
async fn plain_client(admin: &Client, ns: &str) -> Result<Client> {
    const ACCOUNT: &str = "bench-plain-client";
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": ns}]
    }))?;
    Api::namespaced(admin.clone(), ns).create(&PostParams::default(), &binding).await?;
    let token = berth_e2e::identity::token(admin, ns, ACCOUNT, None).await?;
    berth_e2e::identity::client_with(token).await
}

/// Creates `workload` (0 replicas), waits until its controller observed it,
/// then scales it to `m` through /scale: seconds until every pod was seen,
/// and when each was.
async fn scale_workload<K>(
    ns: &BenchNamespace,
    selector: &str,
    m: usize,
    timeout: Duration,
    workload: &K,
    observed: impl Fn(&K) -> bool,
) -> Result<(f64, Vec<f64>, CpuUse)>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    <K as kube::Resource>::DynamicType: Default,
{
    let api: Api<K> = ns.api();
    let name = workload.meta().name.clone().unwrap_or_default();
    api.create(&PostParams::default(), workload).await?;
    let mut seen_by_controller = false;
    for _ in 0..300 {
        if api.get(&name).await.is_ok_and(|w| observed(&w)) {
            seen_by_controller = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(seen_by_controller, "the controller never observed {name} (30 s)");
    let pods: Api<Pod> = ns.api();
    let seen = Tracker::start(pods, selector, |_| true).await?;
    let (t0, cpu0) = (Instant::now(), cpu_now());
    api.patch_scale(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": m}}))).await?;
    seen.wait(m, timeout, selector).await?;
    let cpu = CpuUse::between(&cpu0, &cpu_now());
    Ok((t0.elapsed().as_secs_f64(), seen.seconds_since(t0), cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rate: f64) -> Run {
        Run { kind: "x", pods: 1, seconds: 1.0 / rate, pods_per_second: rate, progress: vec![], cpu: CpuUse::default() }
    }

    #[test]
    fn each_kind_takes_each_place_in_turn() {
        let firsts: Vec<Kind> = (0..3).map(|r| order(r)[0]).collect();
        assert_eq!(firsts, Kind::ALL);
        assert_eq!(order(3), order(0));
        for r in 0..3 {
            let mut o = order(r).to_vec();
            o.dedup();
            assert_eq!(o.len(), 3, "round {r} runs every kind once");
        }
    }

    #[test]
    fn the_median_round_is_reported() {
        let rates = |runs: Option<Run>| runs.map(|r| r.pods_per_second);
        assert_eq!(rates(median(vec![run(500.0), run(300.0), run(700.0)])), Some(500.0));
        assert_eq!(rates(median(vec![run(500.0), run(300.0)])), Some(300.0));
        assert_eq!(rates(median(vec![run(9.0)])), Some(9.0));
        assert_eq!(rates(median(vec![])), None);
    }
}
