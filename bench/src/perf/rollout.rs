//! Scenario 1: an in-place image rollout of N pods by an InplaceSet against
//! a RollingUpdate of a StatefulSet with the same N pods, template and
//! maxUnavailable (kube-controller-manager's StatefulSet controller, on the
//! same nodes). Measured from the template change until every pod runs the new
//! image and is Ready; and how many pods changed node.
//!
//! On hollow nodes a sandbox, a network and a volume cost nothing, so a
//! recreate costs what an in-place restart does. On the real node (the
//! upstream kubelet on containerd and runc, `cluster.sh real-node`) a recreate
//! also tears down and builds the pod's sandbox, its network namespace (CNI)
//! and its service-account volume, as on a production node.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result};
use berth_api::InplaceSet;
use berth_e2e::real_node;
use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use super::{BenchNamespace, Tracker, node_of, spec_image_is};

/// Where the pods of both rollouts run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nodes {
    /// The hollow (kubemark) nodes.
    Hollow,
    /// `real-node-0`, which runs its pods for real.
    Real,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: Nodes,
    pub pods: usize,
    /// maxUnavailable of both (count or percent).
    pub max_unavailable: String,
    pub timeout: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub kind: &'static str,
    pub nodes: Nodes,
    pub pods: usize,
    /// Seconds from creation until all pods were Ready.
    pub start_seconds: f64,
    /// Seconds from the template change until every pod ran the new image, Ready.
    pub rollout_seconds: f64,
    pub node_changes: usize,
    pub uid_changes: usize,
    /// Seconds (since the template change) at which each pod was updated, sorted.
    pub progress: Vec<f64>,
    /// What the controller was told and kept of maxUnavailable.
    pub max_unavailable: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub inplaceset: Run,
    pub statefulset: Run,
}

const APP: &str = "app";

/// The app container runs `image` (spec and reported status), and the pod is Ready.
fn updated_to(image: String) -> impl Fn(&Pod) -> bool + Send + Sync + 'static {
    move |p: &Pod| {
        spec_image_is(p, APP, &image)
            && berth_e2e::container_status(p, APP).is_some_and(|c| c.image == image && c.ready)
            && berth_e2e::pod_ready(p)
    }
}

fn template(labels: &serde_json::Value, image: &str, nodes: Nodes) -> serde_json::Value {
    let mut t = json!({
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": APP, "image": image,
                                  "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
    });
    if nodes == Nodes::Real {
        let placement = real_node::placement();
        t["spec"].as_object_mut().expect("an object").extend(placement.as_object().cloned().unwrap_or_default());
    }
    t
}

/// The name of a Ready real node, or an error saying how to add one.
pub async fn real_node(client: &Client) -> Result<String> {
    let node = real_node::ready(client).await?;
    node.with_context(|| {
        format!("{} (`make bench` does), or leave out the scenarios on the real node", real_node::missing())
    })
}

pub async fn run(client: &Client, run_id: &str, opts: &Options) -> Result<Report> {
    let (a, b) = match opts.nodes {
        Nodes::Hollow => berth_e2e::images(),
        Nodes::Real => {
            real_node(client).await?;
            (real_node::IMAGES.0.to_string(), real_node::IMAGES.1.to_string())
        }
    };
    let prefix = |kind: &str| match opts.nodes {
        Nodes::Hollow => format!("rollout-{kind}"),
        Nodes::Real => format!("rollout-real-{kind}"),
    };
    let inplaceset = {
        let ns = BenchNamespace::create(client, &prefix("ips"), run_id).await?;
        let labels = json!({"app": "roll-ips"});
        let set: InplaceSet = serde_json::from_value(json!({
            "apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet",
            "metadata": {"name": "roll"},
            "spec": {
                "replicas": opts.pods, "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": labels},
                "updateStrategy": {"type": "InPlaceIfPossible", "maxUnavailable": opts.max_unavailable},
                "template": template(&labels, &a, opts.nodes)
            }
        }))?;
        let sets: Api<InplaceSet> = ns.api();
        let result = measure(
            &ns,
            "app=roll-ips",
            opts,
            (&a, &b),
            "InplaceSet",
            async || {
                sets.create(&PostParams::default(), &set).await?;
                Ok(format!("{} (InPlaceIfPossible)", opts.max_unavailable))
            },
            async || {
                let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": APP, "image": b,
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}});
                sets.patch("roll", &PatchParams::default(), &Patch::Merge(patch)).await?;
                Ok(())
            },
        )
        .await;
        ns.delete(opts.timeout).await?;
        result?
    };
    let statefulset = {
        let ns = BenchNamespace::create(client, &prefix("sts"), run_id).await?;
        let labels = json!({"app": "roll-sts"});
        let sts: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "roll"},
            "spec": {
                "replicas": opts.pods, "podManagementPolicy": "Parallel", "serviceName": "roll",
                "selector": {"matchLabels": labels},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": opts.max_unavailable}},
                "template": template(&labels, &a, opts.nodes)
            }
        }))?;
        let api: Api<StatefulSet> = ns.api();
        let result = measure(
            &ns,
            "app=roll-sts",
            opts,
            (&a, &b),
            "StatefulSet",
            async || {
                let created = api.create(&PostParams::default(), &sts).await?;
                // maxUnavailable is dropped by an apiserver whose MaxUnavailableStatefulSet gate is off.
                let kept =
                    created.spec.update_strategy.and_then(|u| u.rolling_update?.max_unavailable).map(|m| match m {
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => i.to_string(),
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s,
                    });
                Ok(match kept {
                    Some(m) => format!("{m} (RollingUpdate; MaxUnavailableStatefulSet on)"),
                    None => "1 (RollingUpdate; maxUnavailable dropped: MaxUnavailableStatefulSet off)".into(),
                })
            },
            async || {
                let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": APP, "image": b}]}}}});
                api.patch("roll", &PatchParams::default(), &Patch::Strategic(patch)).await?;
                Ok(())
            },
        )
        .await;
        ns.delete(opts.timeout).await?;
        result?
    };
    Ok(Report { inplaceset, statefulset })
}

async fn measure(
    ns: &BenchNamespace,
    selector: &str,
    opts: &Options,
    (a, b): (&str, &str),
    kind: &'static str,
    create: impl AsyncFnOnce() -> Result<String>,
    change: impl AsyncFnOnce() -> Result<()>,
) -> Result<Run> {
    let pods: Api<Pod> = ns.api();
    let started = Tracker::start(pods.clone(), selector, updated_to(a.to_string())).await?;
    let t_create = Instant::now();
    let max_unavailable = create().await?;
    started.wait(opts.pods, opts.timeout, &format!("{kind}: pods Ready")).await?;
    let start_seconds = t_create.elapsed().as_secs_f64();
    drop(started);
    let before: BTreeMap<String, (Option<String>, Option<String>)> = pods
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .iter()
        .map(|p| (p.name_any(), (node_of(p), p.uid())))
        .collect();
    let updated = Tracker::start(pods.clone(), selector, updated_to(b.to_string())).await?;
    let t0 = Instant::now();
    change().await?;
    updated.wait(opts.pods, opts.timeout, &format!("{kind}: pods updated")).await.context(kind)?;
    let rollout_seconds = t0.elapsed().as_secs_f64();
    let progress = updated.seconds_since(t0);
    let after = pods.list(&ListParams::default().labels(selector)).await?.items;
    let (mut node_changes, mut uid_changes) = (0, 0);
    for p in &after {
        let Some((node, uid)) = before.get(&p.name_any()) else { continue };
        node_changes += usize::from(node_of(p) != *node);
        uid_changes += usize::from(p.uid() != *uid);
    }
    eprintln!(
        "[bench] rollout {kind} ({:?} nodes): {} pods Ready in {start_seconds:.1}s; updated in {rollout_seconds:.1}s, \
         {node_changes} changed node, {uid_changes} recreated",
        opts.nodes, opts.pods
    );
    Ok(Run {
        kind,
        nodes: opts.nodes,
        pods: opts.pods,
        start_seconds,
        rollout_seconds,
        node_changes,
        uid_changes,
        progress,
        max_unavailable,
    })
}
