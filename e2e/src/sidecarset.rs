//! SidecarSet helpers shared by the SidecarSet suites.

use std::time::Duration;

use anyhow::{Result, bail};
use berth_api::SidecarSet;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::{Value, json};

/// The label each test's pods carry (value: the test's namespace).
pub const TEST_LABEL: &str = "e2e-sidecar";

pub fn sidecarset(name: &str, ns: &str, spec: Value) -> Result<SidecarSet> {
    let mut spec = spec;
    spec["selector"] = json!({"matchLabels": {TEST_LABEL: ns}});
    spec["namespaceSelector"] = json!({"matchLabels": {"kubernetes.io/metadata.name": ns}});
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps.berth.dev/v1alpha1", "kind": "SidecarSet", "metadata": {"name": name}, "spec": spec
    }))?)
}

pub fn names(containers: Option<&Vec<k8s_openapi::api::core::v1::Container>>) -> Vec<String> {
    containers.into_iter().flatten().map(|c| c.name.clone()).collect()
}

pub fn containers(p: &Pod) -> Vec<String> {
    names(p.spec.as_ref().map(|s| &s.containers))
}

pub fn init_containers(p: &Pod) -> Vec<String> {
    names(p.spec.as_ref().and_then(|s| s.init_containers.as_ref()))
}

/// Waits until a dry-run create of `probe` comes back with (or, `injected`
/// false, without) container `sidecar`: the webhook is live and its cache
/// has (or no longer has) the SidecarSet.
pub async fn injection_is(pods: &Api<Pod>, probe: &Pod, sidecar: &str, injected: bool) -> Result<()> {
    let dry_run = PostParams { dry_run: true, ..Default::default() };
    let mut last = String::new();
    for _ in 0..150 {
        match pods.create(&dry_run, probe).await {
            Ok(p) if containers(&p).iter().any(|c| c == sidecar) == injected => return Ok(()),
            Ok(p) => last = format!("containers {:?}", containers(&p)),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "a dry-run pod never came back {} sidecar {sidecar} (last: {last}): is berth-manager running (e2e/manager.sh up)?",
        if injected { "with" } else { "without" }
    )
}

/// Deletes the test's SidecarSets (cluster-scoped: the namespace's deletion does not).
pub async fn delete_sets(sets: &Api<SidecarSet>, names: &[&str]) -> Result<()> {
    for name in names {
        match sets.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The URL and caBundle (PEM) the apiserver uses for webhook `webhook` of the
/// MutatingWebhookConfiguration `config`: to call the webhook server directly,
/// trusting what the apiserver trusts. Fails when the configuration points at
/// a Service (the server is then not reachable from outside the cluster).
pub async fn mutating_webhook_endpoint(
    client: &kube::Client,
    config: &str,
    webhook: &str,
) -> Result<(String, Vec<u8>)> {
    use anyhow::Context;
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let found = configs.get(config).await.with_context(|| format!("{config} (is berth-manager running?)"))?;
    let hook = found
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .find(|w| w.name == webhook)
        .with_context(|| format!("{config} has no webhook {webhook}"))?;
    let ca = hook.client_config.ca_bundle.with_context(|| format!("{webhook}: no caBundle"))?.0;
    let url = hook.client_config.url.with_context(|| {
        format!("{webhook}: not in url mode (the manager runs in the cluster, behind a Service); run it on this host")
    })?;
    Ok((url, ca))
}
