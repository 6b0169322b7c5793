//! berth-manager's admission webhooks on the real cluster: the apiserver
//! calls the manager over TLS (a host process on the local cluster, url
//! mode), which refuses an InplaceSet whose selector misses its template and
//! any lifecycle-state change not made by the manager, and leaves other pods
//! alone.

use std::{io::Read, io::Write, sync::Arc, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use berth_api::{InplaceSet, keys};
use berth_e2e::{TestNamespace, client, images, install_crds, refusal, wait_for};
use k8s_openapi::api::{admissionregistration::v1::ValidatingWebhookConfiguration, core::v1::Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};

const MANAGER: &str = "system:serviceaccount:berth-system:berth-manager";

fn inplaceset(name: &str, selector: Value, labels: Value, image: &str) -> Result<InplaceSet> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": selector,
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app", "image": image}]}}}
    }))?)
}

/// Waits until the apiserver calls the webhooks (it loads configurations
/// through an informer): a dry-run create of a mismatched set is refused.
async fn webhooks_active(sets: &Api<InplaceSet>) -> Result<()> {
    let bad = inplaceset("probe", json!({"matchLabels": {"app": "a"}}), json!({"app": "b"}), "x")?;
    let dry_run = PostParams { dry_run: true, ..Default::default() };
    for _ in 0..100 {
        if sets.create(&dry_run, &bad).await.is_err() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the InplaceSet webhook never refused a mismatched selector: is berth-manager running (e2e/manager.sh up)?")
}

fn annotate(state: &str) -> Patch<Value> {
    Patch::Merge(json!({"metadata": {"annotations": {keys::LIFECYCLE_STATE: state}}}))
}

fn state(pod: &Pod) -> Option<&str> {
    pod.annotations().get(keys::LIFECYCLE_STATE).map(String::as_str)
}

#[tokio::test]
async fn an_inplaceset_whose_selector_misses_its_template_is_refused() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "wh-selector").await?;
    let sets: Api<InplaceSet> = ns.api();
    webhooks_active(&sets).await?;
    let image = images().0;

    let cases = [
        (json!({"matchLabels": {"app": "web"}}), json!({"app": "api"}), "matchLabels app=web"),
        (
            json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]}),
            json!({"app": "web", "tier": "back"}),
            "matchExpressions tier in (front)",
        ),
    ];
    for (selector, labels, failing) in cases {
        let set = inplaceset("mismatched", selector, labels, &image)?;
        let (code, message) = refusal(sets.create(&PostParams::default(), &set).await)?;
        assert_eq!(code, 403, "{message}");
        for want in [
            "admission webhook \"inplaceset.apps.berth.dev\" denied the request",
            "spec.selector does not match spec.template.metadata.labels",
            failing,
        ] {
            assert!(message.contains(want), "{message:?} lacks {want:?}");
        }
    }

    let set =
        inplaceset("matched", json!({"matchLabels": {"app": "web"}}), json!({"app": "web", "tier": "x"}), &image)?;
    sets.create(&PostParams::default(), &set).await?;
    // An update that breaks the match is refused as well.
    let breaking = json!({"spec": {"template": {"metadata": {"labels": {"app": "other"}}}}});
    let (code, message) = refusal(sets.patch("matched", &PatchParams::default(), &Patch::Merge(breaking)).await)?;
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("{app=other,tier=x}: matchLabels app=web"), "{message}");
    ns.delete().await
}

#[tokio::test]
async fn only_the_manager_moves_an_inplaceset_pods_lifecycle_state() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "wh-lifecycle").await?;
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    webhooks_active(&sets).await?;
    let (image_a, image_b) = images();

    let set = inplaceset("web", json!({"matchLabels": {"app": "web"}}), json!({"app": "web"}), &image_a)?;
    sets.create(&PostParams::default(), &set).await?;
    let has_state = |p: Option<&Pod>| p.is_some_and(|p| state(p) == Some("Normal"));
    wait_for(&pods, "web-0", Duration::from_secs(60), "created in state Normal", has_state).await?;

    // The test's admin user, even for a legal transition.
    let (code, message) = refusal(pods.patch("web-0", &PatchParams::default(), &annotate("PreparingDelete")).await)?;
    assert_eq!(code, 403, "{message}");
    for want in [
        "admission webhook \"pod-lifecycle.berth.dev\" denied the request",
        "the berth.dev/lifecycle-state annotation is written only by the berth manager",
        MANAGER,
        "may not change it from Normal to PreparingDelete",
        "remove the hook's label or finalizer instead",
    ] {
        assert!(message.contains(want), "{message:?} lacks {want:?}");
    }
    // An illegal one is named as such, with what is allowed.
    let (code, message) = refusal(pods.patch("web-0", &PatchParams::default(), &annotate("Updated")).await)?;
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("from Normal it may become: PreparingUpdate, Updating, PreparingDelete"), "{message}");
    // Other changes to the pod pass.
    pods.patch("web-0", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"e2e": "touched"}}})))
        .await?;
    assert_eq!(state(&pods.get("web-0").await?), Some("Normal"));

    // The manager's own transitions pass: an in-place rollout goes through
    // Updating and back to Normal (no hooks: the holding states are skipped).
    let image = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image_b}]}}}});
    sets.patch("web", &PatchParams::default(), &Patch::Merge(image)).await?;
    let updated = |p: Option<&Pod>| {
        p.is_some_and(|p| {
            state(p) == Some("Normal")
                && p.spec.as_ref().is_some_and(|s| s.containers[0].image.as_ref() == Some(&image_b))
        })
    };
    wait_for(&pods, "web-0", Duration::from_secs(120), "updated in place and Normal again", updated).await?;

    // A pod no InplaceSet owns is not sent to the webhook at all.
    let plain: Pod = serde_json::from_value(json!({
        "metadata": {"name": "plain", "annotations": {keys::LIFECYCLE_STATE: "Normal"}},
        "spec": {"containers": [{"name": "app", "image": image_a}]}
    }))?;
    pods.create(&PostParams::default(), &plain).await?;
    pods.patch("plain", &PatchParams::default(), &annotate("Updated")).await?;
    assert_eq!(state(&pods.get("plain").await?), Some("Updated"));
    ns.delete().await
}

/// The manager's webhook endpoint as the apiserver sees it, with its caBundle.
async fn endpoint(client: &Client) -> Result<(String, Vec<u8>)> {
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let config = configs.get("berth-validating").await.context("berth-validating (is berth-manager running?)")?;
    let webhook = config.webhooks.unwrap_or_default().into_iter().next().context("berth-validating has no webhook")?;
    let ca = webhook.client_config.ca_bundle.context("no caBundle")?.0;
    match (webhook.client_config.url, webhook.client_config.service) {
        (Some(url), _) => Ok((url, ca)),
        (None, Some(s)) => Ok((format!("service:{}:{}:{}", s.namespace, s.name, s.port.unwrap_or(443)), ca)),
        (None, None) => bail!("berth-validating has neither url nor service"),
    }
}

/// GET https://HOST:PORT/healthz verifying the server against `ca` (blocking).
fn healthz_over_tls(url: &str, ca: &[u8]) -> Result<String> {
    let authority = url.strip_prefix("https://").and_then(|r| r.split('/').next()).context("not an https URL")?;
    let (host, port) = authority.rsplit_once(':').context("URL without a port")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut tls = rustls::StreamOwned::new(conn, std::net::TcpStream::connect((host, port.parse::<u16>()?))?);
    write!(tls, "GET /healthz HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")?;
    let mut reply = Vec::new();
    // The server may close without a TLS close_notify; what was read counts.
    if let Err(e) = tls.read_to_end(&mut reply)
        && reply.is_empty()
    {
        return Err(anyhow!("reading /healthz: {e}"));
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

#[tokio::test]
async fn the_webhook_server_answers_healthz_over_tls_with_the_configured_ca() -> Result<()> {
    let client = client().await?;
    let (url, ca) = endpoint(&client).await?;
    let reply = if let Some(service) = url.strip_prefix("service:") {
        // In-cluster (service mode): through the apiserver's service proxy.
        let [ns, name, port]: [&str; 3] = service.splitn(3, ':').collect::<Vec<_>>().try_into().unwrap();
        let path = format!("/api/v1/namespaces/{ns}/services/https:{name}:{port}/proxy/healthz");
        client.request_text(hyper::Request::get(path).body(vec![])?).await?
    } else {
        // TLS 1.2, the oldest the server must accept, verified against the caBundle.
        let reply = tokio::task::spawn_blocking(move || healthz_over_tls(&url, &ca)).await??;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        reply
    };
    assert!(reply.trim_end().ends_with("ok"), "{reply}");
    Ok(())
}
