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

use super::{BenchNamespace, HOLD_GATE, Tracker, create_all, held_pod};

#[derive(Clone, Debug)]
pub struct Options {
    pub pods: usize,
    /// Requests in flight of the plain client.
    pub concurrency: usize,
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
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub plain_client: Run,
    pub inplaceset: Run,
    pub statefulset: Run,
}

fn template(labels: &serde_json::Value) -> serde_json::Value {
    json!({
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "app", "image": berth_e2e::images().0,
                                  "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
                 "schedulingGates": [{"name": HOLD_GATE}]}
    })
}

fn run_of(kind: &'static str, pods: usize, seconds: f64, progress: Vec<f64>) -> Run {
    eprintln!("[bench] scale {kind}: {pods} pods in {seconds:.1}s ({:.0} pods/s)", pods as f64 / seconds);
    Run { kind, pods, seconds, pods_per_second: pods as f64 / seconds.max(1e-9), progress }
}

pub async fn run(client: &Client, run_id: &str, opts: &Options) -> Result<Report> {
    let m = opts.pods;
    let plain_client = {
        let ns = BenchNamespace::create(client, "scale-raw", run_id).await?;
        let pods: Api<Pod> = ns.api();
        let seen = Tracker::start(pods.clone(), "app=scale-raw", |_| true).await?;
        let batch: Vec<Pod> =
            (0..m).map(|i| held_pod(&format!("raw-{i}"), json!({"app": "scale-raw"}))).collect::<Result<_>>()?;
        let t0 = Instant::now();
        let result = async {
            create_all(&pods, batch, opts.concurrency).await?;
            seen.wait(m, opts.timeout, "plain client: pods seen").await?;
            Ok::<_, anyhow::Error>(t0.elapsed().as_secs_f64())
        }
        .await;
        let progress = seen.seconds_since(t0);
        drop(seen);
        ns.delete(opts.timeout).await?;
        run_of("plain client", m, result?, progress)
    };
    let inplaceset = {
        let ns = BenchNamespace::create(client, "scale-ips", run_id).await?;
        let labels = json!({"app": "scale-ips"});
        let set: InplaceSet = serde_json::from_value(json!({
            "apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet",
            "metadata": {"name": "scale"},
            "spec": {"replicas": 0, "podManagementPolicy": "Parallel", "selector": {"matchLabels": labels},
                     "template": template(&labels)}
        }))?;
        let sets: Api<InplaceSet> = ns.api();
        let result = scale_up(
            &ns,
            "app=scale-ips",
            m,
            opts.timeout,
            async || {
                sets.create(&PostParams::default(), &set).await?;
                wait_observed(async || {
                    Ok(sets.get("scale").await?.status.and_then(|s| s.observed_generation).is_some())
                })
                .await?;
                Ok(())
            },
            async || {
                sets.patch_scale("scale", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": m}})))
                    .await?;
                Ok(())
            },
        )
        .await;
        ns.delete(opts.timeout).await?;
        let (seconds, progress) = result?;
        run_of("InplaceSet", m, seconds, progress)
    };
    let statefulset = {
        let ns = BenchNamespace::create(client, "scale-sts", run_id).await?;
        let labels = json!({"app": "scale-sts"});
        let sts: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "scale"},
            "spec": {"replicas": 0, "podManagementPolicy": "Parallel", "serviceName": "scale",
                     "selector": {"matchLabels": labels}, "template": template(&labels)}
        }))?;
        let api: Api<StatefulSet> = ns.api();
        let result = scale_up(
            &ns,
            "app=scale-sts",
            m,
            opts.timeout,
            async || {
                api.create(&PostParams::default(), &sts).await?;
                wait_observed(async || {
                    Ok(api.get("scale").await?.status.and_then(|s| s.observed_generation).is_some())
                })
                .await?;
                Ok(())
            },
            async || {
                api.patch_scale("scale", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": m}})))
                    .await?;
                Ok(())
            },
        )
        .await;
        ns.delete(opts.timeout).await?;
        let (seconds, progress) = result?;
        run_of("StatefulSet", m, seconds, progress)
    };
    Ok(Report { plain_client, inplaceset, statefulset })
}

async fn wait_observed(mut check: impl AsyncFnMut() -> Result<bool>) -> Result<()> {
    for _ in 0..300 {
        if check().await.unwrap_or(false) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the controller never observed the set (30 s)")
}

async fn scale_up(
    ns: &BenchNamespace,
    selector: &str,
    m: usize,
    timeout: Duration,
    create: impl AsyncFnOnce() -> Result<()>,
    scale: impl AsyncFnOnce() -> Result<()>,
) -> Result<(f64, Vec<f64>)> {
    let pods: Api<Pod> = ns.api();
    create().await?;
    let seen = Tracker::start(pods, selector, |_| true).await?;
    let t0 = Instant::now();
    scale().await?;
    seen.wait(m, timeout, selector).await?;
    Ok((t0.elapsed().as_secs_f64(), seen.seconds_since(t0)))
}
