//! The local apiserver calls an admission webhook served by a process on this
//! host (`clientConfig.url: https://127.0.0.1:PORT/...` with a `caBundle`), over
//! TLS it verifies: the path every berth webhook takes in e2e.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use berth_e2e::{E2E_LABEL, TestNamespace, client, refusal};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use k8s_openapi::{
    ByteString,
    api::{admissionregistration::v1::ValidatingWebhookConfiguration, core::v1::ConfigMap},
};
use kube::{
    Api,
    api::{DeleteParams, DynamicObject, PostParams},
    core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const DENY_LABEL: &str = "berth.dev/e2e-deny";

/// A CA and a serving certificate for 127.0.0.1 signed by it.
fn certificates() -> Result<(String, CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &issuer)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((ca_cert.pem(), cert.der().clone(), key))
}

async fn review(body: Bytes) -> Result<serde_json::Value> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(&body)?;
    let request: AdmissionRequest<DynamicObject> = review.try_into()?;
    let denied =
        request.object.as_ref().and_then(|o| o.metadata.labels.as_ref()).is_some_and(|l| l.contains_key(DENY_LABEL));
    let mut response = AdmissionResponse::from(&request);
    if denied {
        response = response.deny(format!("denied by the e2e webhook (request {})", request.uid));
        // Without a code the apiserver answers 400; a policy refusal is 403.
        response.result.code = 403;
    }
    Ok(serde_json::to_value(response.into_review())?)
}

/// Serves `/validate` on 127.0.0.1 over TLS; returns the port and a request counter.
async fn serve(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Result<(u16, Arc<AtomicUsize>)> {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let counter = counter.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let reply = match review(body).await {
                            Ok(v) => {
                                counter.fetch_add(1, Ordering::SeqCst);
                                Response::new(Full::new(Bytes::from(v.to_string())))
                            }
                            Err(e) => {
                                Response::builder().status(400).body(Full::new(Bytes::from(e.to_string()))).unwrap()
                            }
                        };
                        Ok::<_, Infallible>(reply)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    Ok((port, served))
}

#[tokio::test]
async fn the_apiserver_calls_a_webhook_on_this_host_over_tls() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "webhook").await?;
    let (ca_pem, cert, key) = certificates()?;
    let (port, served) = serve(cert, key).await?;

    let name = format!("berth-e2e-{}", ns.name);
    let config: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "deny.e2e.berth.dev",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/validate"), "caBundle": ByteString(ca_pem.into_bytes())},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}],
            // Only this test's namespace: the webhook cannot disturb anything else.
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}},
            "objectSelector": {"matchLabels": {E2E_LABEL: "true"}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5
        }]
    }))?;
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    webhooks.create(&PostParams::default(), &config).await?;

    let configmaps: Api<ConfigMap> = ns.api();
    let configmap = |name: &str, deny: bool| -> ConfigMap {
        let mut labels = json!({E2E_LABEL: "true"});
        if deny {
            labels[DENY_LABEL] = json!("yes");
        }
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    };
    // The apiserver picks the configuration up through an informer: retry briefly.
    let mut outcome = None;
    for attempt in 0..50 {
        match configmaps.create(&PostParams::default(), &configmap(&format!("denied-{attempt}"), true)).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => {
                outcome = Some(refusal::<()>(Err(e))?);
                break;
            }
        }
    }
    let (code, message) = outcome.expect("the webhook never denied a labelled ConfigMap");
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("admission webhook \"deny.e2e.berth.dev\" denied the request"), "{message}");
    assert!(message.contains("denied by the e2e webhook (request "), "{message}");

    configmaps.create(&PostParams::default(), &configmap("allowed", false)).await?;
    assert!(served.load(Ordering::SeqCst) >= 2, "webhook served {} reviews", served.load(Ordering::SeqCst));

    webhooks.delete(&name, &DeleteParams::default()).await?;
    ns.delete().await
}
