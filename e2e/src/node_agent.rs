//! The node agent in e2e: a token of its service account bound to a pod on
//! a node (as a DaemonSet pod's token is: the resize webhook reads the node
//! from it), and the real `berth-node-agent` run as a process on this host.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use berth_api::resize::NODE_AGENT_SERVICE_ACCOUNT;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    config::{AuthInfo, Kubeconfig},
};
use serde_json::json;

use crate::{FIELD_MANAGER, identity, images, kubeconfig_path, real_node, repo_root};

/// Where berth's own service accounts live on the local cluster (e2e/manager.sh).
pub const MANAGER_NAMESPACE: &str = "berth-system";

/// The placeholder pod on `node` the agent's tokens are bound to.
pub fn placeholder_name(node: &str) -> String {
    format!("e2e-agent-{node}")
}

/// A token of the node agent's service account bound to a pod on `node`.
pub async fn token(client: &Client, node: &str) -> Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), MANAGER_NAMESPACE);
    let name = placeholder_name(node);
    // An image the node can run: the real node pulls nothing, it has only what containerd.sh imported.
    let labels = Api::<Node>::all(client.clone()).get(node).await?.metadata.labels.unwrap_or_default();
    let image = if labels.get(real_node::LABEL).is_some_and(|v| v == "true") {
        real_node::IMAGES.0.to_string()
    } else {
        images().0
    };
    let placeholder = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"nodeName": node,
        "serviceAccountName": NODE_AGENT_SERVICE_ACCOUNT, "containers": [{"name": "agent", "image": image}]}});
    // One left terminating by an earlier suite's cleanup would take the token's validity with it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let applied = pods.patch(&name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&placeholder)).await?;
        if applied.metadata.deletion_timestamp.is_none() {
            return identity::token(client, MANAGER_NAMESPACE, NODE_AGENT_SERVICE_ACCOUNT, Some(&applied)).await;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "placeholder pod {name} still terminating after 60 s");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The local cluster's kubeconfig, authenticated as the node agent of `node`.
pub async fn kubeconfig(client: &Client, node: &str) -> Result<Kubeconfig> {
    let mut kubeconfig = Kubeconfig::read_from(kubeconfig_path()?)?;
    let token = token(client, node).await?;
    for named in &mut kubeconfig.auth_infos {
        named.auth_info = Some(AuthInfo { token: Some(token.clone().into()), ..Default::default() });
    }
    Ok(kubeconfig)
}

/// A client acting as the node agent of `node`.
pub async fn client_of(client: &Client, node: &str) -> Result<Client> {
    identity::client_with(token(client, node).await?).await
}

/// The real node agent for `node`, as a process on this host with its
/// node-bound token; killed on drop. Several may run for one node (suites in
/// parallel): each acts on a request once, guarded by resourceVersion.
pub struct Agent(std::process::Child);

impl Agent {
    pub async fn start(client: &Client, node: &str) -> Result<Self> {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let kubeconfig = kubeconfig(client, node).await?;
        let dir = std::env::var_os("E2E_STATE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/e2e"));
        let dir = dir.join("logs");
        std::fs::create_dir_all(&dir)?;
        let stem = format!("node-agent-{node}-{}-{n}", std::process::id());
        let path = dir.join(format!("{stem}.kubeconfig"));
        std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
        let bin = std::env::var("BERTH_NODE_AGENT")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| repo_root().join("target/debug/berth-node-agent"));
        let log = std::fs::File::create(dir.join(format!("{stem}.log")))?;
        let child = std::process::Command::new(&bin)
            .env("KUBECONFIG", &path)
            .env("NODE_NAME", node)
            // Its CPU manager state stays inside the e2e state dir.
            .env("BERTH_STATE_DIR", dir.join(format!("{stem}.state")))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} (cargo build -p berth-node-agent)", bin.display()))?;
        Ok(Self(child))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
