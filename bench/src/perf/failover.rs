//! Scenario 5: failover. Two manager replicas (e2e/manager.sh) with the
//! Lease timings given here; the leader is SIGKILLed (it cannot release the
//! Lease) and an InplaceSet is scaled up at once through /scale; measured until
//! the new pod exists, i.e. the standby took the Lease and reconciled.
//! Repeated; the killed replica comes back as the standby each time. The
//! baseline is the Lease duration: a standby can only take a lease a dead
//! leader never released once it expires. The e2e failover suite's approach
//! (e2e/tests/failover.rs), repeated.
//!
//! It ends as it found things: replica 1 alone, leading (with these timings).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use berth_api::InplaceSet;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use super::{BenchNamespace, HOLD_GATE, manager_pid, manager_sh};
use crate::stats::{Summary, micros};

#[derive(Clone, Debug)]
pub struct Options {
    pub kills: usize,
    pub lease_duration: u64,
    pub lease_grace: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub lease_duration_seconds: u64,
    pub lease_grace_seconds: f64,
    /// SIGKILL of the leader -> the standby holds the Lease.
    pub lease_taken: Summary,
    /// SIGKILL of the leader -> the pod of a scale made at once exists.
    pub reconciling: Summary,
}

fn identity(pid: u32) -> Result<String> {
    Ok(format!("{}_{pid}", std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim()))
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases.get_opt("berth-manager").await.ok().flatten().and_then(|l| l.spec?.holder_identity)
}

async fn until(what: &str, bound: Duration, mut check: impl AsyncFnMut() -> bool) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        if check().await {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > bound {
            bail!("{what}: not after {bound:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run(client: &Client, run_id: &str, opts: &Options) -> Result<Report> {
    let env = [
        ("BERTH_LEASE_DURATION", opts.lease_duration.to_string()),
        ("BERTH_LEASE_GRACE", opts.lease_grace.to_string()),
    ];
    // Replica 1 again with these timings (a SIGTERM hands over at once).
    manager_sh(&["down"], &env)?;
    manager_sh(&["up"], &env)?;
    let ns = BenchNamespace::create(client, "failover", run_id).await?;
    let result = kills(client, &ns, opts, &env).await;
    // Back to replica 1 alone, leading, with the lease timings it started
    // with: a 1 s lease on the loaded apiserver of the scenarios after this
    // one would fence it whenever a renewal took over a quarter second.
    let restore = (|| {
        manager_sh(&["down", "2"], &[])?;
        manager_sh(&["down"], &[])?;
        manager_sh(&["up"], &[])
    })();
    ns.delete(Duration::from_secs(120)).await?;
    let report = result?;
    restore?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "berth-system");
    let first = identity(manager_pid(1)?)?;
    until("replica 1 leads again", Duration::from_secs(60), async || {
        holder(&leases).await.as_deref() == Some(first.as_str())
    })
    .await?;
    Ok(report)
}

async fn kills(client: &Client, ns: &BenchNamespace, opts: &Options, env: &[(&str, String)]) -> Result<Report> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "berth-system");
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    let set: InplaceSet = serde_json::from_value(json!({
        "apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet", "metadata": {"name": "failover"},
        "spec": {"replicas": 0, "podManagementPolicy": "Parallel", "selector": {"matchLabels": {"app": "failover"}},
                 "template": {"metadata": {"labels": {"app": "failover"}},
                              "spec": {"containers": [{"name": "app", "image": berth_e2e::images().0}],
                                       "schedulingGates": [{"name": HOLD_GATE}]}}}
    }))?;
    sets.create(&PostParams::default(), &set).await?;
    manager_sh(&["up", "2"], env)?;
    let bound = Duration::from_secs(opts.lease_duration * 3 + 15);
    let (mut taken, mut reconciled) = (vec![], vec![]);
    for kill in 1..=opts.kills {
        // Whoever leads now is killed; the other replica is the standby.
        let (p1, p2) = (manager_pid(1)?, manager_pid(2)?);
        let (id1, id2) = (identity(p1)?, identity(p2)?);
        until("a replica leads", bound, async || matches!(holder(&leases).await, Some(h) if h == id1 || h == id2))
            .await?;
        let now = holder(&leases).await.context("no holder")?;
        let (victim, victim_pid, standby_id) = if now == id1 { (1, p1, id2) } else { (2, p2, id1) };
        // Let the standby settle (watching the Lease) as it would in production.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let status = std::process::Command::new("kill").args(["-KILL", &victim_pid.to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -KILL {victim_pid}");
        let t0 = Instant::now();
        let replicas = kill as i32;
        sets.patch_scale("failover", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": replicas}})))
            .await?;
        let pod = format!("failover-{}", replicas - 1);
        let (mut lease_at, mut pod_at) = (None, None);
        while lease_at.is_none() || pod_at.is_none() {
            if lease_at.is_none() && holder(&leases).await.as_deref() == Some(standby_id.as_str()) {
                lease_at = Some(t0.elapsed());
            }
            if pod_at.is_none() && pods.get_opt(&pod).await?.is_some() {
                pod_at = Some(t0.elapsed());
            }
            if t0.elapsed() > bound {
                bail!("kill {kill}: lease taken {lease_at:?}, pod {pod} created {pod_at:?} after {bound:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (lease_at, pod_at) = (lease_at.unwrap_or_default(), pod_at.unwrap_or_default());
        eprintln!(
            "[bench] failover {kill}/{}: lease taken after {lease_at:.2?}, reconciled after {pod_at:.2?}",
            opts.kills
        );
        taken.push(micros(lease_at));
        reconciled.push(micros(pod_at));
        // The killed replica comes back as the standby.
        let replica = victim.to_string();
        if victim == 1 {
            manager_sh(&["up"], env)?;
        } else {
            manager_sh(&["up", &replica], env)?;
        }
    }
    Ok(Report {
        lease_duration_seconds: opts.lease_duration,
        lease_grace_seconds: opts.lease_grace,
        lease_taken: Summary::of(&taken),
        reconciling: Summary::of(&reconciled),
    })
}
