//! The local cluster's real node (`e2e/cluster/cluster.sh real-node`): the
//! upstream kubelet on containerd, tainted so that only pods asking for it
//! land there. Shared by the real-node suite and the bench.

use anyhow::Result;
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client, ResourceExt, api::ListParams};
use serde_json::json;

/// The real node's label (`=true`) and the key of its NoSchedule taint.
pub const LABEL: &str = "berth.dev/real-node";

/// The images e2e/containerd/containerd.sh imports there (no registry: never
/// pulled); two distinct image IDs sharing one layer.
pub const IMAGES: (&str, &str) = ("berth.local/busybox:1", "berth.local/busybox:2");

/// The name of a Ready real node, if there is one.
pub async fn ready(client: &Client) -> Result<Option<String>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let listed = nodes.list(&ListParams::default().labels(&format!("{LABEL}=true"))).await?;
    Ok(listed.items.iter().find(|n| crate::node_ready(n)).map(ResourceExt::name_any))
}

/// What a pod spec needs to run there: the node selector and the toleration.
pub fn placement() -> serde_json::Value {
    json!({"nodeSelector": {LABEL: "true"},
           "tolerations": [{"key": LABEL, "operator": "Exists", "effect": "NoSchedule"}]})
}

/// Why [`ready`] found none, and how to add one.
pub fn missing() -> String {
    format!("no Ready node labelled {LABEL}=true: add one with `e2e/cluster/cluster.sh real-node` (as root)")
}
