//! Builders for the unit tests' snapshots.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use serde_json::{Value, json};

fn labels(pairs: &[(&str, &str)]) -> Value {
    Value::Object(pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect())
}

pub fn node(name: &str, cpu: &str, memory: &str, pods: u32, node_labels: &[(&str, &str)]) -> Node {
    let mut l = labels(node_labels);
    l["kubernetes.io/hostname"] = json!(name);
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": l},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": pods.to_string()}}
    }))
    .unwrap()
}

pub fn namespace(name: &str, ns_labels: &[(&str, &str)]) -> Namespace {
    let mut l = labels(ns_labels);
    l["kubernetes.io/metadata.name"] = json!(name);
    serde_json::from_value(json!({"metadata": {"name": name, "labels": l}})).unwrap()
}

/// A Running pod on `node` with one container `app` requesting `cpu` and `memory`.
pub fn pod(ns: &str, name: &str, node: &str, pod_labels: &[(&str, &str)], cpu: &str, memory: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{ns}-{name}"), "labels": labels(pod_labels)},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "a",
            "resources": {"requests": {"cpu": cpu, "memory": memory}}}]},
        "status": {"phase": "Running"}
    }))
    .unwrap()
}

/// `pod` with `patch` merged into its JSON (objects merge, anything else replaces).
pub fn with(pod: Pod, patch: Value) -> Pod {
    let mut v = serde_json::to_value(pod).unwrap();
    merge(&mut v, patch);
    serde_json::from_value(v).unwrap()
}

fn merge(into: &mut Value, patch: Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}
