//! The auditor on the real cluster (issue 8): clean workloads pass; planted
//! violations are found, through the library and through `berth-manager
//! audit` (exit code 1, JSON naming them).
//!
//! Planting an over-committed node for real: the scheduler never over-commits
//! and a kubelet refuses (OutOfcpu) a pod bound past the scheduler that does
//! not fit. So the node is one without a kubelet: a Node object this test
//! creates with 1 CPU allocatable (unschedulable and tainted, so no other
//! suite's pod lands there), and two pods bound to it by `spec.nodeName`
//! requesting 800m each: what an apiserver holds when something binds past
//! the scheduler. Broken anti-affinity is planted on a hollow node, whose
//! kubelet (like any kubelet) does not check inter-pod affinity on admission:
//! two pods excluding each other per hostname, both bound to it, both Running.
//!
//! Other suites run beside this one, so the library's findings are filtered to
//! this test's namespace and node; the whole cluster is audited by `make e2e`
//! after every suite.

use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use berth_api::InplaceSet;
use berth_audit::{Finding, Kind, Options, Report, Severity};
use berth_e2e::{
    TestNamespace, client, images,
    inplaceset::{rolled_out, set},
    install_crds, pod_ready, wait_for,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

fn about<'a>(report: &'a Report, ns: &str, node: &str) -> Vec<&'a Finding> {
    report
        .findings
        .iter()
        .filter(|f| f.object.namespace.as_deref() == Some(ns) || (f.object.kind == "Node" && f.object.name == node))
        .collect()
}

async fn audit(client: &Client) -> Result<Report> {
    Ok(berth_audit::audit(&berth_audit::gather(client).await?, &Options::default()))
}

fn bound_pod(name: &str, node: &str, labels: serde_json::Value, cpu: &str, affinity: serde_json::Value) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0, "affinity": affinity,
            "containers": [{"name": "app", "image": images().0, "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]}
    }))?)
}

/// `berth-manager audit -o json` against the cluster under test: its exit code and report.
fn cli() -> Result<(i32, serde_json::Value)> {
    let bin = std::env::var("BERTH_MANAGER")
        .map(Into::into)
        .unwrap_or_else(|_| berth_e2e::repo_root().join("target/debug/berth-manager"));
    let out = Command::new(&bin)
        .args(["audit", "-o", "json", "--settle-seconds", "1"])
        .env("KUBECONFIG", berth_e2e::kubeconfig_path()?)
        .output()
        .with_context(|| format!("running {} (cargo build -p berth-manager)", bin.display()))?;
    let report = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("audit output: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok((out.status.code().unwrap_or(-1), report))
}

#[tokio::test]
async fn the_auditor_passes_clean_workloads_and_finds_planted_violations() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "audit").await?;
    let pods: Api<Pod> = ns.api();
    let nodes: Api<Node> = Api::all(client.clone());
    let small = format!("audit-{}", ns.name);

    // Clean: an InplaceSet, and pods the scheduler spread by required anti-affinity.
    let sets: Api<InplaceSet> = ns.api();
    sets.create(&PostParams::default(), &set(2, &images().0, json!({}))).await?;
    rolled_out(&sets, 2, Duration::from_secs(90)).await?;
    let spread = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"spread": "yes"}}, "topologyKey": "kubernetes.io/hostname"}]}});
    for i in 0..2 {
        let mut p = bound_pod(&format!("spread-{i}"), "", json!({"spread": "yes"}), "10m", spread.clone())?;
        p.spec.as_mut().unwrap().node_name = None;
        pods.create(&PostParams::default(), &p).await?;
    }
    for i in 0..2 {
        wait_for(&pods, &format!("spread-{i}"), Duration::from_secs(60), "Ready", |p: Option<&Pod>| {
            p.is_some_and(pod_ready)
        })
        .await?;
    }
    let report = audit(&client).await?;
    let clean = about(&report, &ns.name, &small);
    ensure!(clean.is_empty(), "clean workloads, yet: {clean:#?}");

    // Planted: a node with 1 CPU and two pods of 800m bound to it.
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": small, "labels": {"kubernetes.io/hostname": small, "berth.dev/e2e": "true"}},
        "spec": {"unschedulable": true, "taints": [{"key": "berth.dev/audit-e2e", "effect": "NoSchedule"}]},
        "status": {"capacity": {"cpu": "1", "memory": "1Gi", "pods": "10"},
                   "allocatable": {"cpu": "1", "memory": "1Gi", "pods": "10"}}
    }))?;
    nodes.create(&PostParams::default(), &node).await?;
    let cleanup = |client: Client, small: String| async move {
        let _ = Api::<Node>::all(client).delete(&small, &DeleteParams::default()).await;
    };
    let planted = async {
        for i in 0..2 {
            pods.create(&PostParams::default(), &bound_pod(&format!("big-{i}"), &small, json!({}), "800m", json!({}))?)
                .await?;
        }
        // Planted: two pods excluding each other, both on one hollow node.
        let hollow = "hollow-node-0";
        let exclusive = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"solo": "yes"}}, "topologyKey": "kubernetes.io/hostname"}]}});
        for i in 0..2 {
            let p = bound_pod(&format!("solo-{i}"), hollow, json!({"solo": "yes"}), "10m", exclusive.clone())?;
            pods.create(&PostParams::default(), &p).await?;
        }
        for i in 0..2 {
            wait_for(&pods, &format!("solo-{i}"), Duration::from_secs(60), "Ready", |p: Option<&Pod>| {
                p.is_some_and(pod_ready)
            })
            .await?;
        }

        let report = audit(&client).await?;
        let found = about(&report, &ns.name, &small);
        let kinds: BTreeMap<(Kind, String), &Finding> =
            found.iter().map(|f| ((f.kind, f.object.name.clone()), *f)).collect();
        ensure!(found.len() == 3, "want the over-committed node and the two solo pods, got: {found:#?}");
        let over = kinds.get(&(Kind::NodeOvercommit, small.clone())).context("no NodeOvercommit finding")?;
        ensure!(over.severity == Severity::Violation);
        ensure!(
            over.message == "cpu requested 1600m > allocatable 1000m (by 2 live pods bound to it)",
            "{}",
            over.message
        );
        for i in 0..2 {
            let anti = kinds.get(&(Kind::PodAntiAffinity, format!("solo-{i}"))).context("no PodAntiAffinity")?;
            ensure!(anti.message.contains("1 matching pod(s) in its domain kubernetes.io/hostname=hollow-node-0"));
        }

        // The command: exit code 1, the same findings in its JSON.
        let (code, json) = cli()?;
        ensure!(code == 1, "berth-manager audit exited {code} with a violation planted");
        let findings = json["findings"].as_array().context("findings")?;
        ensure!(
            findings.iter().any(|f| f["kind"] == "NodeOvercommit"
                && f["object"]["name"] == small.as_str()
                && f["severity"] == "violation"),
            "the over-committed node is not in the command's report: {json:#}"
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    cleanup(client.clone(), small.clone()).await;
    planted?;

    // Removed again: the node and namespace have nothing to report.
    for name in ["big-0", "big-1", "solo-1"] {
        pods.delete(name, &DeleteParams::default().grace_period(0)).await?;
    }
    for name in ["big-0", "big-1", "solo-1"] {
        let start = std::time::Instant::now();
        while pods.get_opt(name).await?.is_some() {
            ensure!(start.elapsed() < Duration::from_secs(60), "{name} not gone after 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let report = audit(&client).await?;
    let left = about(&report, &ns.name, &small);
    ensure!(left.is_empty(), "after removing the planted pods and node: {left:#?}");
    ns.delete().await
}
