//! The kubectl plugin (`kubectl-berth`, the binary `make e2e` builds) against
//! the real cluster: it drives a batched InplaceSet rollout to completion
//! (status waits at a manual batch pause, resume approves it, pods keep their
//! UID and node), pause, history and undo; its dry-run plan names the pods of
//! each batch and changes nothing; a stalled rollout exits 1; a resize is
//! followed through Created, Accepted and Applied by the real node agent, and
//! an over-committing one ends Rejected with exit 1.

use std::{collections::BTreeMap, path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use berth_api::{InplaceSet, keys};
use berth_e2e::{
    TestNamespace, client, images,
    inplaceset::{app_image_patch, set},
    install_crds, kubeconfig_path,
    node_agent::Agent,
    repo_root, wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

/// What one run of the plugin did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn plugin_path() -> PathBuf {
    std::env::var("KUBECTL_BERTH").map(PathBuf::from).unwrap_or_else(|_| repo_root().join("target/debug/kubectl-berth"))
}

/// `kubectl-berth --kubeconfig <the cluster's> -n <ns> args...`.
fn berth(ns: &str, args: &[&str]) -> Result<Run> {
    let kubeconfig = kubeconfig_path()?;
    let out = Command::new(plugin_path())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["-n", ns])
        .args(args)
        .output()
        .with_context(|| format!("running {} (cargo build -p kubectl-berth)", plugin_path().display()))?;
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    eprintln!("$ kubectl berth {}\n{}{}(exit {})", args.join(" "), run.stdout, run.stderr, run.code);
    Ok(run)
}

/// Pod name → (UID, node, app image).
async fn pods_by_name(pods: &Api<Pod>) -> Result<BTreeMap<String, (String, String, String)>> {
    Ok(pods
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let spec = p.spec.clone().unwrap_or_default();
            let image =
                spec.containers.iter().find(|c| c.name == "app").and_then(|c| c.image.clone()).unwrap_or_default();
            (p.name_any(), (p.uid().unwrap_or_default(), spec.node_name.unwrap_or_default(), image))
        })
        .collect())
}

#[tokio::test]
async fn the_plugin_drives_a_batched_rollout_in_place_with_pause_resume_history_and_undo() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "plugin-rollout").await?;
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    let (image_a, image_b) = images();
    let plan = json!({"batches": [{"replicas": 1, "pause": {"manual": true}}, {"replicas": "100%"}]});
    let extra =
        json!({"podManagementPolicy": "Parallel", "updateStrategy": {"maxUnavailable": 2}, "rolloutPlan": plan});
    sets.create(&PostParams::default(), &set(4, &image_a, extra)).await?;
    let first = berth(&ns.name, &["rollout", "status", "web", "--timeout", "120s"])?;
    assert_eq!(first.code, 0, "the first rollout completes");
    assert!(first.stdout.contains("InplaceSet \"web\" successfully rolled out"), "{}", first.stdout);
    let before = pods_by_name(&pods).await?;
    assert_eq!(before.len(), 4);

    // The plan: the highest ordinal alone in batch 0, the rest in batch 1, all in place; nothing changes.
    let planned = berth(&ns.name, &["plan", "inplaceset", "web", "--image", &format!("app={image_b}"), "-o", "json"])?;
    assert_eq!(planned.code, 0, "the change fits");
    let report: Value = serde_json::from_str(&planned.stdout)?;
    let batches: Vec<(String, Value, String)> = report["pods"]
        .as_array()
        .context("pods")?
        .iter()
        .map(|p| {
            (
                p["pod"].as_str().unwrap_or_default().to_string(),
                p["batch"].clone(),
                p["update"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, Value, String)> = [("web-3", 0), ("web-2", 1), ("web-1", 1), ("web-0", 1)]
        .iter()
        .map(|(p, b)| (p.to_string(), json!(b), "InPlace".to_string()))
        .collect();
    assert_eq!(batches, want);
    assert_eq!(report["batchTargets"], json!([1, 4]));
    let nodes: Vec<&str> =
        report["nodes"].as_array().context("nodes")?.iter().filter_map(|n| n["node"].as_str()).collect();
    for (pod, (_, node, _)) in &before {
        assert!(nodes.contains(&node.as_str()), "the headroom of {pod}'s node {node} is shown: {nodes:?}");
    }
    let table = berth(&ns.name, &["plan", "inplaceset", "web", "--image", &format!("app={image_b}")])?;
    assert!(table.stdout.contains(&format!("in place   app={image_b}")), "{}", table.stdout);
    assert_eq!(pods_by_name(&pods).await?, before, "a plan changes nothing");
    assert_eq!(
        sets.get("web").await?.spec.template.spec.unwrap().containers[0].image.as_deref(),
        Some(image_a.as_str())
    );

    // The change: batch 0, then the manual pause holds; status says so and times out (exit 2).
    sets.patch("web", &PatchParams::default(), &Patch::Merge(app_image_patch(&image_b))).await?;
    let at_pause = |s: Option<&InplaceSet>| {
        s.and_then(|s| s.status.as_ref()?.rollout.as_ref()).is_some_and(|r| r.current_batch == 0 && r.state == "Paused")
    };
    wait_for(&sets, "web", Duration::from_secs(90), "paused after batch 0", at_pause).await?;
    let held = berth(&ns.name, &["rollout", "status", "web", "--timeout", "3s"])?;
    assert_eq!(held.code, 2, "a timeout");
    assert!(held.stdout.contains("batch 0 done, waiting for approval"), "{}", held.stdout);

    // Pause, then resume: unpaused and batch 1 approved in one write.
    let paused = berth(&ns.name, &["rollout", "pause", "web"])?;
    assert_eq!(paused.code, 0);
    assert!(sets.get("web").await?.spec.update_strategy.paused);
    let resumed = berth(&ns.name, &["rollout", "resume", "web"])?;
    assert_eq!(resumed.code, 0);
    assert!(resumed.stdout.contains("resumed and approved the batch after batch 0"), "{}", resumed.stdout);
    let s = sets.get("web").await?;
    assert!(!s.spec.update_strategy.paused);
    assert_eq!(s.spec.rollout_plan.map(|p| p.approved_batches), Some(1));

    let done = berth(&ns.name, &["rollout", "status", "web", "--timeout", "180s"])?;
    assert_eq!(done.code, 0, "the plugin drives the rollout to completion");
    assert!(done.stdout.contains("batch 1 of 0..1"), "{}", done.stdout);
    let after = pods_by_name(&pods).await?;
    for (name, (uid, node, _)) in &before {
        let (uid2, node2, image) = after.get(name).with_context(|| format!("{name} gone"))?;
        assert_eq!((uid2, node2), (uid, node), "{name} kept its UID and node");
        assert_eq!(image, &image_b);
    }

    // History: two revisions, the new one the update revision; --revision shows a template.
    let history = berth(&ns.name, &["rollout", "history", "web", "-o", "json"])?;
    assert_eq!(history.code, 0);
    let rows: Value = serde_json::from_str(&history.stdout)?;
    let rows = rows.as_array().context("rows")?;
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0]["revision"].as_i64(), rows[0]["update"].as_bool()), (Some(1), Some(false)));
    assert_eq!((rows[1]["revision"].as_i64(), rows[1]["update"].as_bool()), (Some(2), Some(true)));
    assert_eq!(rows[1]["images"][0], format!("app={image_b}"));
    let template = berth(&ns.name, &["rollout", "history", "web", "--revision", "1"])?;
    assert!(template.stdout.contains(&format!("image: {image_a}")), "{}", template.stdout);

    // Undo: back to revision 1, in place, same pods.
    let undo = berth(&ns.name, &["rollout", "undo", "web"])?;
    assert_eq!(undo.code, 0);
    assert!(undo.stdout.contains("rolled back to revision 1"), "{}", undo.stdout);
    let back = berth(&ns.name, &["rollout", "status", "web", "--timeout", "180s"])?;
    assert_eq!(back.code, 0);
    let undone = pods_by_name(&pods).await?;
    for (name, (uid, node, _)) in &before {
        let (uid2, node2, image) = undone.get(name).with_context(|| format!("{name} gone"))?;
        ensure!((uid2, node2, image) == (uid, node, &image_a), "{name}: {undone:?}");
    }
    let s = sets.get("web").await?;
    let update = s.status.and_then(|s| s.update_revision).unwrap_or_default();
    assert_eq!(update, rows[0]["name"].as_str().unwrap_or_default(), "the first revision is the update revision again");
    ns.delete().await
}

#[tokio::test]
async fn a_rollout_that_cannot_proceed_exits_1_and_bad_input_exits_3() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "plugin-fail").await?;
    let sets: Api<InplaceSet> = ns.api();
    sets.create(&PostParams::default(), &set(2, &images().0, json!({"updateStrategy": {"type": "InPlaceOnly"}})))
        .await?;
    assert_eq!(berth(&ns.name, &["rollout", "status", "web", "--timeout", "120s"])?.code, 0);
    // A command change cannot go in place: InPlaceOnly blocks it; the plan says so first.
    let change = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": images().0, "command": ["serve"]}, {"name": "log", "image": images().0}]}}}});
    let mut new = sets.get("web").await?;
    new.spec.template.spec.as_mut().unwrap().containers[0].command = Some(vec!["serve".into()]);
    let file = std::env::temp_dir().join(format!("{}-web.yaml", ns.name));
    std::fs::write(&file, serde_yaml::to_string(&new)?)?;
    let planned = berth(&ns.name, &["plan", "inplaceset", "web", "-f", file.to_str().unwrap()])?;
    assert_eq!(planned.code, 1, "the plan says the change would not go through");
    assert!(planned.stdout.contains("InPlaceOnly refuses: spec.containers[app].command changed"), "{}", planned.stdout);
    std::fs::remove_file(&file)?;

    sets.patch("web", &PatchParams::default(), &Patch::Merge(change)).await?;
    let failed = berth(&ns.name, &["rollout", "status", "web", "--timeout", "120s"])?;
    assert_eq!(failed.code, 1, "a blocked update fails the rollout");
    assert!(failed.stderr.contains("rollout failed: UpdateBlocked"), "{}", failed.stderr);
    assert!(failed.stderr.contains("cannot be updated in place under InPlaceOnly"), "{}", failed.stderr);

    let missing = berth(&ns.name, &["rollout", "status", "nope"])?;
    assert_eq!(missing.code, 3);
    assert!(
        missing.stderr.contains(&format!("InplaceSet \"nope\" not found in namespace \"{}\"", ns.name)),
        "{}",
        missing.stderr
    );
    let bad = berth(&ns.name, &["rollout", "status", "web", "--timeout", "soon"])?;
    assert_eq!(bad.code, 3);
    assert!(bad.stderr.contains("\"soon\" is not a duration"), "{}", bad.stderr);
    ns.delete().await
}

#[tokio::test]
async fn resize_follows_a_request_to_applied_through_the_node_agent_and_a_rejected_one_exits_1() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "plugin-resize").await?;
    let pods: Api<Pod> = ns.api();
    let node = "hollow-node-2";
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "grow", "labels": {keys::MANAGED: "true"}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": images().0,
            "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}, "limits": {"cpu": "2", "memory": "64Mi"}}}]}
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let before = wait_for(&pods, "grow", Duration::from_secs(60), "Ready", |p: Option<&Pod>| {
        p.is_some_and(berth_e2e::pod_ready)
    })
    .await?;

    // The dry run: accepted at 800m, rejected at 64 CPUs on an 8-CPU node; nothing written.
    let fits = berth(&ns.name, &["plan", "resize", "grow", "--cpu", "800m", "--limits-cpu", "1500m"])?;
    assert_eq!(fits.code, 0);
    assert!(fits.stdout.contains(&format!("would be Accepted: fits node {node}: cpu ")), "{}", fits.stdout);
    let huge = berth(&ns.name, &["plan", "resize", "grow", "--cpu", "64", "--limits-cpu", "128"])?;
    assert_eq!(huge.code, 1);
    assert!(
        huge.stdout.contains(&format!("would be Rejected: does not fit node {node}: cpu requests would be")),
        "{}",
        huge.stdout
    );
    assert!(!pods.get("grow").await?.annotations().contains_key(keys::RESIZE_STATE), "a plan writes nothing");

    // Submitted and followed: Created, Accepted by the manager, Applied by the node agent.
    let _agent = Agent::start(&client, node).await?;
    let applied = berth(
        &ns.name,
        &["resize", "grow", "--container", "app", "--cpu", "800m", "--limits-cpu", "1500m", "--timeout", "90s"],
    )?;
    assert_eq!(applied.code, 0, "Applied");
    let states: Vec<&str> = applied
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("pod/grow resize "))
        .filter_map(|l| l.split([':', ' ']).next())
        .filter(|s| *s != "submitted")
        .collect();
    assert_eq!(states, ["Created", "Accepted", "Applied"], "{}", applied.stdout);
    assert!(applied.stdout.contains(&format!("resize Accepted: fits node {node}")), "{}", applied.stdout);
    let after = pods.get("grow").await?;
    let app = after
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.resources.clone())
        .context("resources")?;
    assert_eq!(app.requests.context("requests")?["cpu"].0, "800m");
    assert_eq!(app.limits.context("limits")?["cpu"].0, "1500m");
    assert_eq!(after.uid(), before.uid(), "the same pod");

    // Over-committing: Rejected with the numbers, exit 1; describe shows the machine's state.
    let rejected = berth(&ns.name, &["resize", "grow", "--cpu", "64", "--limits-cpu", "128", "--timeout", "90s"])?;
    assert_eq!(rejected.code, 1);
    assert!(
        rejected.stdout.contains(&format!("resize Rejected: does not fit node {node}: cpu requests would be")),
        "{}",
        rejected.stdout
    );
    let described = berth(&ns.name, &["describe", "pod", "grow"])?;
    assert_eq!(described.code, 0);
    for want in [
        "Resize:               Rejected\n",
        "  message:            does not fit node",
        "Lifecycle state:      <none>\n",
    ] {
        assert!(described.stdout.contains(want), "missing {want:?}:\n{}", described.stdout);
    }
    let wrong = berth(&ns.name, &["resize", "grow", "--container", "db", "--cpu", "1"])?;
    assert_eq!(wrong.code, 3);
    assert!(wrong.stderr.contains("container \"db\" is not in the pod; its containers: app"), "{}", wrong.stderr);
    ns.delete().await
}
