//! SidecarSet injection on the real cluster: the apiserver calls
//! berth-manager's mutating webhook over TLS on pod CREATE. Sidecars land in
//! the pods of a Deployment and of an InplaceSet, in their places, with the
//! record annotation, the managed label and the readiness gate; a clashing
//! SidecarSet is refused naming both; a deleted SidecarSet injects no more
//! (running pods keep theirs); a malformed AdmissionReview gets an error and
//! the server goes on serving.
//!
//! SidecarSets are cluster-scoped: each test names its own after its
//! namespace and selects only pods of that namespace (namespaceSelector) with
//! a label of its own, so parallel tests never inject into each other's pods.
//! Pods are not expected to become Ready: the readiness gate is opened by the
//! SidecarSet controller, and the simulated nodes never finish init containers
//! (hence the InplaceSet's Parallel pod management).

use std::{
    io::{Read, Write},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use berth_api::{InplaceSet, SidecarSet, keys, sidecarset::injected_revisions};
use berth_e2e::{
    TestNamespace, client, images, install_crds, refusal,
    sidecarset::{TEST_LABEL, containers, delete_sets, init_containers, injection_is, sidecarset},
};
use k8s_openapi::api::{admissionregistration::v1::MutatingWebhookConfiguration, apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};

fn pod(name: &str, ns: &str, app: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {TEST_LABEL: ns, "app": app}},
        "spec": {"containers": [{"name": "app", "image": images().0,
                                 "env": [{"name": "REGION", "value": "eu-1"}],
                                 "volumeMounts": [{"name": "app-logs", "mountPath": "/var/log/app"}]}],
                 "volumes": [{"name": "app-logs", "emptyDir": {}}]}
    }))?)
}

/// The pods with `app=<app>` in the namespace, once there are `count`.
async fn pods_of(pods: &Api<Pod>, app: &str, count: usize) -> Result<Vec<Pod>> {
    let params = ListParams::default().labels(&format!("app={app}"));
    for _ in 0..300 {
        let found = pods.list(&params).await?.items;
        if found.len() >= count {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("fewer than {count} pods with app={app} after 60s")
}

/// What every injected pod shows: the sidecars in place, the record naming
/// both sets, the managed label and one readiness gate; the app's env and
/// volume shared with the log agent.
fn assert_injected(p: &Pod, app_containers: &[&str], agent: &str, first: &str) {
    let name = p.name_any();
    let mut want: Vec<String> = vec!["first".into()];
    want.extend(app_containers.iter().map(|c| c.to_string()));
    want.push("log-agent".into());
    assert_eq!(containers(p), want, "{name}: BeforeAppContainer first, AfterAppContainer last");
    assert_eq!(init_containers(p), ["proxy", "setup"], "{name}: a native sidecar before the pod's init container");
    let record = injected_revisions(p.metadata.annotations.as_ref()).unwrap();
    let mut want_sets = vec![agent, first];
    want_sets.sort();
    assert_eq!(record.keys().map(String::as_str).collect::<Vec<_>>(), want_sets, "{name}: {record:?}");
    assert!(record[agent].revision.starts_with(&format!("{agent}-")), "{name}: {record:?}");
    assert_eq!(record[agent].containers, ["proxy", "log-agent"], "{name}");
    assert_eq!(record[first].containers, ["first"], "{name}");
    assert_eq!(p.labels().get(keys::MANAGED).map(String::as_str), Some("true"), "{name}");
    let gates: Vec<&str> = p
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .into_iter()
        .flatten()
        .map(|g| g.condition_type.as_str())
        .collect();
    assert_eq!(gates.iter().filter(|g| **g == keys::INPLACE_UPDATE_READY).count(), 1, "{name}: {gates:?}");
    let spec = p.spec.as_ref().unwrap();
    let log_agent = spec.containers.iter().find(|c| c.name == "log-agent").unwrap();
    let env: Vec<(&str, Option<&str>)> =
        log_agent.env.iter().flatten().map(|e| (e.name.as_str(), e.value.as_deref())).collect();
    assert_eq!(env, [("REGION", Some("eu-1"))], "{name}: env transferred from app");
    let mounts: Vec<(&str, &str)> =
        log_agent.volume_mounts.iter().flatten().map(|m| (m.name.as_str(), m.mount_path.as_str())).collect();
    assert!(mounts.contains(&("app-logs", "/var/log/app")), "{name}: app volume shared: {mounts:?}");
    assert!(spec.volumes.iter().flatten().any(|v| v.name == "agent-scratch"), "{name}: the set's volume");
}

/// The two SidecarSets of the injection test: `agent` (a native sidecar
/// proxy, a log agent after the app with shared volumes and env) and `first`
/// (one container before the app).
async fn create_injecting_sets(sets: &Api<SidecarSet>, ns: &str, agent: &str, first: &str) -> Result<()> {
    let image = images().0;
    let agent_set = sidecarset(
        agent,
        ns,
        json!({
            "initContainers": [{"name": "proxy", "image": image, "restartPolicy": "Always"}],
            "containers": [{"name": "log-agent", "image": image,
                            "volumeMounts": [{"name": "agent-scratch", "mountPath": "/scratch"}]}],
            "volumes": [{"name": "agent-scratch", "emptyDir": {}}],
            "shareVolumePolicy": {"type": "Enabled"},
            "transferEnv": [{"sourceContainerName": "app", "envName": "REGION"}],
            "patchPodMetadata": [{"annotations": {"e2e.berth.dev/agent": "on"}}]
        }),
    )?;
    let first_set = sidecarset(
        first,
        ns,
        json!({"podInjectPolicy": "BeforeAppContainer", "containers": [{"name": "first", "image": image}]}),
    )?;
    sets.create(&PostParams::default(), &agent_set).await?;
    sets.create(&PostParams::default(), &first_set).await?;
    Ok(())
}

fn with_init(mut p: Pod) -> Pod {
    p.spec.as_mut().unwrap().init_containers =
        Some(vec![serde_json::from_value(json!({"name": "setup", "image": images().0})).unwrap()]);
    p
}

#[tokio::test]
async fn sidecars_are_injected_into_the_pods_of_a_deployment_and_of_an_inplaceset() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "scs-inject").await?;
    let sets: Api<SidecarSet> = Api::all(client.clone());
    let pods: Api<Pod> = ns.api();
    let (agent, first) = (format!("{}-agent", ns.name), format!("{}-first", ns.name));
    create_injecting_sets(&sets, &ns.name, &agent, &first).await?;
    let probe = with_init(pod("probe", &ns.name, "probe")?);
    injection_is(&pods, &probe, "first", true).await?;
    injection_is(&pods, &probe, "log-agent", true).await?;

    let template = |app: &str| -> Result<Value> {
        let p = with_init(pod("x", &ns.name, app)?);
        Ok(json!({"metadata": {"labels": p.labels()}, "spec": p.spec}))
    };
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": template("web")?}
    }))?;
    ns.api::<Deployment>().create(&PostParams::default(), &deployment).await?;
    let ips: InplaceSet = serde_json::from_value(json!({
        "apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet", "metadata": {"name": "ips"},
        "spec": {"replicas": 2, "podManagementPolicy": "Parallel", "selector": {"matchLabels": {"app": "ips"}},
                 "template": template("ips")?}
    }))?;
    ns.api::<InplaceSet>().create(&PostParams::default(), &ips).await?;

    for app in ["web", "ips"] {
        let found = pods_of(&pods, app, 2).await?;
        for p in &found {
            assert_injected(p, &["app"], &agent, &first);
            assert_eq!(p.annotations().get("e2e.berth.dev/agent").map(String::as_str), Some("on"));
        }
    }
    // The InplaceSet's own pods keep their identity with the sidecars in (no recreate loop).
    let before: Vec<_> = pods_of(&pods, "ips", 2).await?.iter().map(|p| p.uid()).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: Vec<_> = pods_of(&pods, "ips", 2).await?.iter().map(|p| p.uid()).collect();
    assert_eq!(before, after, "InplaceSet pods were recreated");

    delete_sets(&sets, &[&agent, &first]).await?;
    ns.delete().await
}

#[tokio::test]
async fn a_clashing_sidecarset_is_refused_naming_both() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "scs-clash").await?;
    let sets: Api<SidecarSet> = Api::all(client.clone());
    let pods: Api<Pod> = ns.api();
    let (mesh, rival, elsewhere) =
        (format!("{}-mesh", ns.name), format!("{}-rival", ns.name), format!("{}-db", ns.name));
    let proxy = |image: &str| json!({"containers": [{"name": "proxy", "image": image}]});
    sets.create(&PostParams::default(), &sidecarset(&mesh, &ns.name, proxy("proxy:1"))?).await?;
    injection_is(&pods, &pod("probe", &ns.name, "probe")?, "proxy", true).await?;

    let (code, message) =
        refusal(sets.create(&PostParams::default(), &sidecarset(&rival, &ns.name, proxy("proxy:2"))?).await)?;
    assert_eq!(code, 403, "{message}");
    for want in [
        "admission webhook \"sidecarset.apps.berth.dev\" denied the request".to_string(),
        format!("SidecarSet {rival}: container \"proxy\" is also injected by SidecarSet {mesh}"),
        "can select the same pods".to_string(),
    ] {
        assert!(message.contains(&want), "{message:?} lacks {want:?}");
    }
    // The same container under a disjoint selector is fine.
    let mut disjoint = sidecarset(&elsewhere, &ns.name, proxy("proxy:2"))?;
    disjoint.spec.selector = serde_json::from_value(json!({"matchLabels": {TEST_LABEL: format!("{}-db", ns.name)}}))?;
    sets.create(&PostParams::default(), &disjoint).await?;
    // Malformed or empty sets are refused with what is wrong.
    let mut malformed = sidecarset(&rival, &ns.name, json!({}))?;
    malformed.spec.selector =
        serde_json::from_value(json!({"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}))?;
    let (code, message) = refusal(sets.create(&PostParams::default(), &malformed).await)?;
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("spec.selector.matchExpressions[0]: operator In needs at least one value"), "{message}");
    assert!(message.contains("spec.containers and spec.initContainers are both empty"), "{message}");

    // A pod whose own container clashes with the sidecar is refused, naming both.
    let mut own = pod("own-proxy", &ns.name, "own")?;
    own.spec.as_mut().unwrap().containers[0].name = "proxy".into();
    let (code, message) = refusal(pods.create(&PostParams::default(), &own).await)?;
    assert_eq!(code, 403, "{message}");
    let want = format!(
        "admission webhook \"sidecar-injection.berth.dev\" denied the request: sidecar injection conflict: \
         container \"proxy\" of SidecarSet {mesh} clashes with the pod's own container \"proxy\""
    );
    assert!(message.contains(&want), "{message:?} lacks {want:?}");

    delete_sets(&sets, &[&mesh, &rival, &elsewhere]).await?;
    ns.delete().await
}

#[tokio::test]
async fn after_its_sidecarset_is_deleted_new_pods_are_not_injected() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "scs-delete").await?;
    let sets: Api<SidecarSet> = Api::all(client.clone());
    let pods: Api<Pod> = ns.api();
    let name = format!("{}-logs", ns.name);
    let set = sidecarset(&name, &ns.name, json!({"containers": [{"name": "log-agent", "image": images().0}]}))?;
    sets.create(&PostParams::default(), &set).await?;
    let probe = pod("probe", &ns.name, "probe")?;
    injection_is(&pods, &probe, "log-agent", true).await?;
    let before = pods.create(&PostParams::default(), &pod("before", &ns.name, "web")?).await?;
    assert_eq!(containers(&before), ["app", "log-agent"]);

    delete_sets(&sets, &[&name]).await?;
    // Deleted once the controller (if any) lets it go; the webhook's cache then drops it.
    injection_is(&pods, &probe, "log-agent", false).await?;
    let after = pods.create(&PostParams::default(), &pod("after", &ns.name, "web")?).await?;
    assert_eq!(containers(&after), ["app"]);
    assert_eq!(after.labels().get(keys::MANAGED), None);
    assert_eq!(after.annotations().get(keys::SIDECARSET_REVISIONS), None);
    assert!(after.spec.as_ref().unwrap().readiness_gates.is_none());
    // The running pod keeps its sidecar.
    let kept = pods.get("before").await?;
    assert_eq!((kept.uid(), containers(&kept)), (before.uid(), vec!["app".to_string(), "log-agent".to_string()]));
    ns.delete().await
}

/// The mutating webhook's URL and caBundle, as the apiserver has them.
async fn injection_endpoint(client: &Client) -> Result<(String, Vec<u8>)> {
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = configs.get("berth-mutating").await.context("berth-mutating (is berth-manager running?)")?;
    let webhook = config
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .find(|w| w.name == "sidecar-injection.berth.dev")
        .context("no sidecar-injection.berth.dev webhook")?;
    let ca = webhook.client_config.ca_bundle.context("no caBundle")?.0;
    Ok((webhook.client_config.url.context("not in url mode (a manager outside the cluster)")?, ca))
}

/// POSTs `body` to `url` over TLS verified against `ca` (blocking); the raw reply.
fn post_over_tls(url: &str, ca: &[u8], body: &[u8]) -> Result<String> {
    let rest = url.strip_prefix("https://").context("not an https URL")?;
    let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).context("URL without a path")?;
    let (host, port) = authority.rsplit_once(':').context("URL without a port")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut tls = rustls::StreamOwned::new(conn, std::net::TcpStream::connect((host, port.parse::<u16>()?))?);
    write!(
        tls,
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )?;
    tls.write_all(body)?;
    let mut reply = Vec::new();
    if let Err(e) = tls.read_to_end(&mut reply)
        && reply.is_empty()
    {
        return Err(anyhow!("reading the reply: {e}"));
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

#[tokio::test]
async fn a_malformed_admission_review_gets_an_error_and_the_server_keeps_serving() -> Result<()> {
    let client = client().await?;
    let (url, ca) = match injection_endpoint(&client).await {
        Ok(endpoint) => endpoint,
        // In-cluster (service mode) the server is not reachable from here.
        Err(e) if e.to_string().contains("not in url mode") => return Ok(()),
        Err(e) => return Err(e),
    };
    let post = |body: Vec<u8>| {
        let (url, ca) = (url.clone(), ca.clone());
        tokio::task::spawn_blocking(move || post_over_tls(&url, &ca, &body))
    };
    for (body, want) in [
        (b"{not json".to_vec(), "malformed AdmissionReview"),
        (br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#.to_vec(), "has no request"),
        (
            br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}}"#.to_vec(),
            "malformed AdmissionReview",
        ),
    ] {
        let reply = post(body).await??;
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
        assert!(reply.contains(want), "{reply:?} lacks {want:?}");
    }
    // Still serving: a well-formed review of a pod no SidecarSet selects is allowed, unpatched.
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "e2e-uid", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "name": "plain", "namespace": "e2e-nowhere", "operation": "CREATE", "userInfo": {"username": "e2e"},
        "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain", "labels": {TEST_LABEL: "none"}},
                   "spec": {"containers": [{"name": "app", "image": "x"}]}},
        "dryRun": false}});
    let reply = post(serde_json::to_vec(&review)?).await??;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let body: Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).context("no body")?)?;
    assert_eq!(body["response"]["uid"], "e2e-uid");
    assert_eq!(body["response"]["allowed"], true);
    assert!(body["response"].get("patch").is_none(), "{body}");
    // And the apiserver still gets answers for real pod creates.
    let ns = TestNamespace::create(&client, "scs-malformed").await?;
    let created = ns.api::<Pod>().create(&PostParams::default(), &pod("plain", &ns.name, "plain")?).await?;
    assert_eq!(containers(&created), ["app"]);
    ns.delete().await
}
