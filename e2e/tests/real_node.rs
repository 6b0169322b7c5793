//! An in-place image update on a node that runs its pods for real: the
//! upstream kubelet on containerd and runc with a CNI network
//! (`e2e/cluster/cluster.sh real-node`, which `make e2e` adds). What the
//! hollow nodes cannot show: the pod keeps its sandbox (same UID, same IP
//! from the CNI, same node), only the changed container is restarted, and the
//! new container runs the new image's own ID.
//!
//! Needs a Ready node labelled `berth.dev/real-node=true`. Without one the
//! test says so and passes, unless `E2E_REQUIRE_REAL_NODE` is set (as `make
//! e2e` sets it), when it fails.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Result, bail, ensure};
use berth_api::InplaceSet;
use berth_e2e::{
    TestNamespace, client, container_status,
    inplaceset::rolled_out,
    install_crds, pod_ready,
    real_node::{self, IMAGES},
};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

/// A Ready real node, or None (after saying why) when the test may skip.
async fn real_node(client: &kube::Client) -> Result<Option<String>> {
    if let Some(node) = real_node::ready(client).await? {
        return Ok(Some(node));
    }
    if std::env::var_os("E2E_REQUIRE_REAL_NODE").is_some() {
        bail!("{}", real_node::missing());
    }
    eprintln!("skipped: {}", real_node::missing());
    Ok(None)
}

/// What an in-place update must keep or change, per pod.
#[derive(Debug, Clone)]
struct Seen {
    uid: String,
    node: Option<String>,
    ip: Option<String>,
    app: (String, String, i32),
    log: (String, String, i32),
}

fn seen(p: &Pod) -> Result<Seen> {
    let of = |name: &str| -> Result<(String, String, i32)> {
        let c = container_status(p, name).ok_or_else(|| anyhow::anyhow!("{}: no status of {name}", p.name_any()))?;
        Ok((c.container_id.clone().unwrap_or_default(), c.image_id.clone(), c.restart_count))
    };
    Ok(Seen {
        uid: p.uid().unwrap_or_default(),
        node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
        ip: p.status.as_ref().and_then(|s| s.pod_ip.clone()),
        app: of("app")?,
        log: of("log")?,
    })
}

async fn pods_of(pods: &Api<Pod>) -> Result<BTreeMap<String, Seen>> {
    let mut out = BTreeMap::new();
    for p in pods.list(&ListParams::default().labels("app=web")).await?.items {
        ensure!(pod_ready(&p), "{} is not Ready", p.name_any());
        out.insert(p.name_any(), seen(&p)?);
    }
    Ok(out)
}

#[tokio::test]
async fn an_image_update_on_a_real_node_keeps_the_sandbox_and_restarts_only_that_container() -> Result<()> {
    let client = client().await?;
    let Some(node) = real_node(&client).await? else { return Ok(()) };
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "real-node").await?;
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    let template = |app: &str| {
        let mut spec = real_node::placement();
        spec["containers"] = json!([{"name": "app", "image": app}, {"name": "log", "image": IMAGES.0}]);
        json!({"metadata": {"labels": {"app": "web"}}, "spec": spec})
    };
    let web: InplaceSet = serde_json::from_value(json!({
        "apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet",
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "podManagementPolicy": "Parallel",
                 "selector": {"matchLabels": {"app": "web"}}, "template": template(IMAGES.0)}
    }))?;
    sets.create(&PostParams::default(), &web).await?;
    rolled_out(&sets, 2, Duration::from_secs(120)).await?;
    let before = pods_of(&pods).await?;
    ensure!(before.len() == 2, "two pods, found {:?}", before.keys());
    for (name, s) in &before {
        ensure!(s.node.as_deref() == Some(node.as_str()), "{name} runs on {:?}, not {node}", s.node);
        ensure!(s.ip.is_some(), "{name}: the CNI gave no IP");
    }

    let patch = json!({"spec": {"template": template(IMAGES.1)}});
    sets.patch("web", &PatchParams::default(), &Patch::Merge(patch)).await?;
    rolled_out(&sets, 2, Duration::from_secs(120)).await?;
    let after = pods_of(&pods).await?;

    for (name, b) in &before {
        let a = after.get(name).ok_or_else(|| anyhow::anyhow!("{name} is gone after the update"))?;
        assert_eq!(a.uid, b.uid, "{name}: recreated, not updated in place");
        assert_eq!(a.node, b.node, "{name}: moved node");
        assert_eq!(a.ip, b.ip, "{name}: a new IP means a new sandbox");
        assert_ne!(a.app.0, b.app.0, "{name}: the app container was not replaced");
        assert_ne!(a.app.1, b.app.1, "{name}: the app container still runs the old image ID");
        assert_eq!(a.app.2, b.app.2 + 1, "{name}: the app container restarted once");
        assert_eq!(a.log, b.log, "{name}: the unchanged log container was touched");
    }
    let p = pods.get("web-0").await?;
    let app = container_status(&p, "app").expect("status of app");
    assert_eq!(app.image, IMAGES.1, "the kubelet reports the new image");
    ns.delete().await?;
    Ok(())
}
