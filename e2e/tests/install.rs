//! The install paths of berth itself (issue 6), on the local cluster: the
//! Helm chart (charts/berth) and the Kustomize overlay config/local.
//!
//! Design. Installing berth creates cluster-wide objects (RBAC, the webhook
//! configurations) that the other suites' berth-manager (`e2e/manager.sh`,
//! with config/rbac) already has, so this suite is `#[ignore]`d and `make e2e`
//! runs it alone, last. Each test starts by taking that install apart (manager
//! stopped, config/rbac's objects deleted; the CRDs stay), and ends by
//! putting it back (`restore`), pass or fail.
//!
//! The local cluster has no image registry, so the chart and the overlay are
//! installed in their local mode: everything but the manager and node agent
//! pods; the manager then runs as a host process under the service account
//! the installer created (`BERTH_INSTALLED=1 e2e/manager.sh up`). The pods'
//! objects (Deployment, DaemonSet, Service, Secret, PodDisruptionBudget) are
//! checked by a server-side dry run of the in-cluster rendering.
//!
//! Needs E2E_STATE, BERTH_K8S and BERTH_HELM (`make e2e` exports them).

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use berth_api::InplaceSet;
use berth_e2e::{
    TestNamespace, client, identity, images,
    inplaceset::{app_image_patch, rolled_out, set},
    kubeconfig_path, repo_root,
};
use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
    authorization::v1::{SelfSubjectRulesReview, SelfSubjectRulesReviewSpec},
    coordination::v1::Lease,
    core::v1::Pod,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};

const NAMESPACE: &str = "berth-system";
const RELEASE: &str = "berth";
const ACCOUNTS: [&str; 2] = ["berth-manager", "berth-node-agent"];
/// The two tests take berth apart and put it back: never at the same time.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn tool(var: &str) -> Result<PathBuf> {
    Ok(std::env::var(var).with_context(|| format!("{var} is not set (make e2e exports it)"))?.into())
}

/// Runs a command, failing with its output if it fails; returns its stdout.
fn run(mut command: Command) -> Result<String> {
    let shown = format!("{command:?}");
    let out = command.output().with_context(|| shown.clone())?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "{shown}: {}\n{stdout}\n{stderr}", out.status);
    Ok(stdout.into_owned())
}

/// The harness's kubectl (BERTH_K8S), else the one on PATH.
fn kubectl(args: &[&str]) -> Result<String> {
    let mut c = match std::env::var_os("BERTH_K8S") {
        Some(k8s) => {
            let mut c = Command::new(k8s);
            c.arg("kubectl");
            c
        }
        None => Command::new("kubectl"),
    };
    c.arg("--kubeconfig").arg(kubeconfig_path()?).args(args).current_dir(repo_root());
    run(c)
}

fn helm(args: &[&str]) -> Result<String> {
    let mut c = Command::new(tool("BERTH_HELM")?);
    c.arg("--kubeconfig").arg(kubeconfig_path()?).args(args).current_dir(repo_root());
    run(c)
}

/// `e2e/manager.sh`; `installed`: the CRDs and RBAC are an installer's (BERTH_INSTALLED=1).
fn manager_sh(action: &str, installed: bool) -> Result<()> {
    tool("E2E_STATE")?;
    let mut c = Command::new(repo_root().join("e2e/manager.sh"));
    c.arg(action);
    if installed {
        c.env("BERTH_INSTALLED", "1");
    }
    run(c).map(drop)
}

/// "group/resource[names]: verbs" of every rule the account has in `ns`, as the
/// apiserver reports them to the account itself (rbac.rs's method).
async fn rules(client: &Client, account: &str, ns: &str) -> Result<BTreeSet<String>> {
    let token = identity::token(client, NAMESPACE, account, None).await?;
    let as_account = identity::client_with(token).await?;
    let review = SelfSubjectRulesReview {
        spec: SelfSubjectRulesReviewSpec { namespace: Some(ns.into()) },
        ..Default::default()
    };
    let status = Api::<SelfSubjectRulesReview>::all(as_account)
        .create(&PostParams::default(), &review)
        .await?
        .status
        .unwrap_or_default();
    let mut out = BTreeSet::new();
    for rule in status.resource_rules {
        let mut verbs = rule.verbs.clone();
        verbs.sort();
        let names = rule.resource_names.map(|n| format!("[{}]", n.join(","))).unwrap_or_default();
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                out.insert(format!("{group}/{resource}{names}: {}", verbs.join(",")));
            }
        }
    }
    Ok(out)
}

/// Both accounts' rules in their own namespace and in another one.
async fn all_rules(client: &Client) -> Result<Vec<(String, BTreeSet<String>)>> {
    let mut out = Vec::new();
    for account in ACCOUNTS {
        for ns in [NAMESPACE, "default"] {
            out.push((format!("{account} in {ns}"), rules(client, account, ns).await?));
        }
    }
    Ok(out)
}

/// The installer's rules equal config/rbac's, or the differences.
fn same_rules(installer: &str, got: &[(String, BTreeSet<String>)], want: &[(String, BTreeSet<String>)]) -> Result<()> {
    for ((who, got), (_, want)) in got.iter().zip(want) {
        let extra: Vec<_> = got.difference(want).collect();
        let missing: Vec<_> = want.difference(got).collect();
        ensure!(
            extra.is_empty() && missing.is_empty(),
            "{installer}'s RBAC differs from config/rbac's for {who}: extra {extra:?}, missing {missing:?}"
        );
    }
    Ok(())
}

/// Stops the suites' manager and deletes what config/rbac installed (not the
/// namespace, not the CRDs), so that an installer can own them.
fn take_apart() -> Result<()> {
    manager_sh("down", false)?;
    kubectl(&[
        "delete",
        "--ignore-not-found",
        "clusterrole/berth-manager",
        "clusterrole/berth-node-agent",
        "clusterrolebinding/berth-manager",
        "clusterrolebinding/berth-node-agent",
    ])?;
    kubectl(&[
        "-n",
        NAMESPACE,
        "delete",
        "--ignore-not-found",
        "serviceaccount/berth-manager",
        "serviceaccount/berth-node-agent",
        "role/berth-manager",
        "rolebinding/berth-manager",
        "lease/berth-manager",
    ])?;
    Ok(())
}

/// Puts the suites' install back, whatever state a test left: its manager
/// stopped, either installation removed (the namespace too, waited for), then
/// `manager.sh up` (CRDs, config/rbac, the manager).
fn restore() -> Result<()> {
    let _ = manager_sh("down", true);
    let _ = helm(&["uninstall", RELEASE, "-n", NAMESPACE, "--ignore-not-found", "--wait"]);
    let _ = kubectl(&[
        "delete",
        "-k",
        "config/local",
        "-l",
        "app.kubernetes.io/component!=crd",
        "--ignore-not-found",
        "--wait",
        "--timeout=120s",
    ]);
    manager_sh("up", false)
}

/// `restore()` after `test`, pass or fail; the test's error comes first.
async fn alone<F: Future<Output = Result<()>>>(test: F) -> Result<()> {
    let _alone = ALONE.lock().await;
    let result = test.await;
    let restored = restore();
    result?;
    restored.context("restoring the suites' berth-manager")
}

/// The webhook configurations hold the manager's webhooks, pointed at the
/// host process, and are still the installer's objects.
async fn configurations_filled(
    client: &Client,
    owner: impl Fn(&std::collections::BTreeMap<String, String>) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone()).get("berth-validating").await?;
        let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone()).get("berth-mutating").await?;
        let urls: Vec<String> = validating
            .webhooks
            .iter()
            .flatten()
            .map(|w| w.client_config.url.clone().unwrap_or_default())
            .chain(mutating.webhooks.iter().flatten().map(|w| w.client_config.url.clone().unwrap_or_default()))
            .collect();
        let filled = validating.webhooks.as_ref().is_some_and(|w| w.len() >= 4)
            && mutating.webhooks.as_ref().is_some_and(|w| !w.is_empty())
            && urls.iter().all(|u| u.starts_with("https://127.0.0.1:"));
        if filled {
            ensure!(
                owner(validating.annotations()) && owner(mutating.annotations()),
                "the configurations are no \
                longer the installer's: {:?} {:?}",
                validating.annotations(),
                mutating.annotations()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("webhook configurations not filled by the manager within 30s: {urls:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// An InplaceSet of 3 rolls a new image in place: same pods (UIDs), same
/// nodes. The proof the manager works under the installer's RBAC.
async fn rolls_in_place(client: &Client, prefix: &str, from: &str, to: &str) -> Result<TestNamespace> {
    let ns = TestNamespace::create(client, prefix).await?;
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    sets.create(&PostParams::default(), &set(3, from, serde_json::json!({}))).await?;
    rolled_out(&sets, 3, Duration::from_secs(90)).await?;
    let placed = |list: Vec<Pod>| -> BTreeSet<(String, String, String)> {
        list.iter()
            .map(|p| {
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
                (p.name_any(), p.uid().unwrap_or_default(), node)
            })
            .collect()
    };
    let before = placed(pods.list(&ListParams::default().labels("app=web")).await?.items);
    ensure!(before.len() == 3, "{before:?}");
    sets.patch("web", &PatchParams::default(), &Patch::Merge(app_image_patch(to))).await?;
    rolled_out(&sets, 3, Duration::from_secs(120)).await?;
    let after = pods.list(&ListParams::default().labels("app=web")).await?.items;
    for pod in &after {
        let image =
            pod.spec.as_ref().and_then(|s| s.containers.iter().find(|c| c.name == "app")).and_then(|c| c.image.clone());
        ensure!(image.as_deref() == Some(to), "{}: app image {image:?}, expected {to}", pod.name_any());
    }
    ensure!(placed(after) == before, "pods were replaced or moved: before {before:?}");
    Ok(ns)
}

/// Names of berth's objects still in the cluster, the CRDs aside.
fn leftovers() -> Result<Vec<String>> {
    let mut found = Vec::new();
    let cluster = kubectl(&[
        "get",
        "clusterroles,clusterrolebindings,validatingwebhookconfigurations,mutatingwebhookconfigurations",
        "-o",
        "name",
    ])?;
    found.extend(cluster.lines().filter(|l| l.contains("/berth-")).map(String::from));
    let namespaced = kubectl(&[
        "-n",
        NAMESPACE,
        "get",
        "serviceaccounts,roles,rolebindings,leases,secrets,services,deployments,daemonsets,poddisruptionbudgets",
        "-o",
        "name",
        "--ignore-not-found",
    ])?;
    found.extend(namespaced.lines().filter(|l| l.contains("/berth-")).map(String::from));
    Ok(found)
}

fn crds_present() -> Result<()> {
    let crds = kubectl(&["get", "crd", "-o", "name"])?;
    for crd in ["inplacesets.apps.berth.dev", "sidecarsets.apps.berth.dev"] {
        ensure!(crds.contains(crd), "CRD {crd} gone after uninstall:\n{crds}");
    }
    Ok(())
}

#[tokio::test]
#[ignore = "uninstalls the suites' berth-manager: make e2e runs it alone, last"]
async fn helm_install_upgrade_uninstall() -> Result<()> {
    alone(async {
        let client = client().await?;
        let (image_a, image_b) = images();
        // config/rbac's rules, as installed for the other suites: the chart's must equal them.
        let config_rbac = all_rules(&client).await?;
        take_apart()?;

        kubectl(&["apply", "-f", "crds/"])?;
        // The in-cluster rendering (manager Deployment with its Helm-generated
        // certificate, node agent DaemonSet, Service, PodDisruptionBudget) is
        // accepted by the apiserver as it is.
        let rendered = helm(&["template", RELEASE, "charts/berth", "-n", NAMESPACE])?;
        let file = std::env::temp_dir().join(format!("berth-chart-{}.yaml", std::process::id()));
        std::fs::write(&file, &rendered)?;
        let dry_run = kubectl(&["create", "--dry-run=server", "-f", &file.display().to_string()]);
        let _ = std::fs::remove_file(&file);
        let dry_run = dry_run?;
        for object in [
            "deployment.apps/berth-manager",
            "daemonset.apps/berth-node-agent",
            "service/berth-webhooks",
            "secret/berth-webhook-cert",
            "poddisruptionbudget.policy/berth-manager",
        ] {
            ensure!(dry_run.contains(&format!("{object} created (server dry run)")), "{object}:\n{dry_run}");
        }

        helm(&[
            "install",
            RELEASE,
            "charts/berth",
            "-n",
            NAMESPACE,
            "--create-namespace",
            "--set",
            "local=true",
            "--wait",
            "--timeout",
            "2m",
        ])?;
        same_rules("the chart", &all_rules(&client).await?, &config_rbac)?;
        manager_sh("up", true)?;
        let helms = |a: &std::collections::BTreeMap<String, String>| {
            a.get("meta.helm.sh/release-name").map(String::as_str) == Some(RELEASE)
        };
        configurations_filled(&client, helms).await?;
        let ns = rolls_in_place(&client, "helm", &image_a, &image_b).await?;

        // The documented CRD upgrade step (Helm never upgrades crds/): an
        // older CRD, here one whose printer column another manager changed,
        // is brought to the chart's version despite the conflict.
        let column = "{.spec.versions[0].additionalPrinterColumns[0].description}";
        let current = kubectl(&["get", "crd", "inplacesets.apps.berth.dev", "-o", &format!("jsonpath={column}")])?;
        kubectl(&[
            "patch",
            "crd",
            "inplacesets.apps.berth.dev",
            "--type=json",
            "-p",
            r#"[{"op": "replace", "path": "/spec/versions/0/additionalPrinterColumns/0/description", "value": "old"}]"#,
        ])?;
        kubectl(&["apply", "--server-side", "--force-conflicts", "-f", "charts/berth/crds/"])?;
        let upgraded = kubectl(&["get", "crd", "inplacesets.apps.berth.dev", "-o", &format!("jsonpath={column}")])?;
        ensure!(upgraded == current && current != "old", "CRD not upgraded: {upgraded:?}, expected {current:?}");

        // Upgrade with a changed value: it takes effect, and leaves the
        // manager's webhooks and its Lease alone.
        let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
        let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity);
        let leader = holder(leases.get("berth-manager").await?);
        ensure!(leader.is_some(), "the manager holds no Lease");
        helm(&[
            "upgrade",
            RELEASE,
            "charts/berth",
            "-n",
            NAMESPACE,
            "--reuse-values",
            "--set",
            "labels.berth-e2e=upgraded",
            "--wait",
            "--timeout",
            "2m",
        ])?;
        let history = helm(&["history", RELEASE, "-n", NAMESPACE, "--max", "1"])?;
        ensure!(history.lines().any(|l| l.trim_start().starts_with('2') && l.contains("deployed")), "{history}");
        for object in [
            "clusterrole/berth-manager",
            "clusterrole/berth-node-agent",
            "validatingwebhookconfiguration/berth-validating",
        ] {
            let label = kubectl(&["get", object, "-o", "jsonpath={.metadata.labels.berth-e2e}"])?;
            ensure!(label == "upgraded", "{object}: label berth-e2e={label:?} after helm upgrade");
        }
        let lease = leases.get("berth-manager").await?;
        ensure!(lease.labels().get("berth-e2e").map(String::as_str) == Some("upgraded"), "Lease not upgraded");
        ensure!(holder(lease) == leader, "helm upgrade disturbed the Lease");
        configurations_filled(&client, helms).await?;
        // Still working after the upgrade: the next rollout, back in place.
        let sets: Api<InplaceSet> = ns.api();
        sets.patch("web", &PatchParams::default(), &Patch::Merge(app_image_patch(&image_a))).await?;
        rolled_out(&sets, 3, Duration::from_secs(120)).await?;

        // Uninstall: nothing of berth's is left but the CRDs (and so the InplaceSet).
        manager_sh("down", true)?;
        helm(&["uninstall", RELEASE, "-n", NAMESPACE, "--wait"])?;
        let left = leftovers()?;
        ensure!(left.is_empty(), "helm uninstall left {left:?}");
        crds_present()?;
        ensure!(sets.get_opt("web").await?.is_some(), "the InplaceSet went with the chart");
        ns.delete().await?;
        in_cluster_mode(&client).await
    })
    .await
}

/// The in-cluster mode for real, with no pods (the hollow nodes run no
/// image): its Helm-generated certificate survives an upgrade (lookup), so
/// running replicas never see their CA change, while a changed value reaches
/// the Deployment. Then the apiserver calls the webhooks through the chart's
/// Service with that certificate: a manager started as the Deployment would
/// start it (--webhook-cert-dir holding the Secret's files, no URL host), on
/// this host, the Service turned into an ExternalName for localhost (the
/// local cluster has no pod network; the apiserver resolves an ExternalName
/// webhook Service to that host and still verifies the certificate for
/// berth-webhooks.berth-system.svc). Uninstall leaves nothing.
async fn in_cluster_mode(client: &Client) -> Result<()> {
    helm(&[
        "install",
        RELEASE,
        "charts/berth",
        "-n",
        NAMESPACE,
        "--set",
        "manager.replicas=0",
        "--set",
        "nodeAgent.enabled=false",
        "--wait",
        "--timeout",
        "2m",
    ])?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let cert = secrets.get("berth-webhook-cert").await?.data.unwrap_or_default();
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        ensure!(cert.get(key).is_some_and(|v| !v.0.is_empty()), "berth-webhook-cert has no {key}");
    }
    let log_level = |d: k8s_openapi::api::apps::v1::Deployment| {
        d.spec.template.spec.and_then(|s| {
            s.containers[0].env.iter().flatten().find(|e| e.name == "BERTH_LOG").and_then(|e| e.value.clone())
        })
    };
    let log = log_level(deployments.get("berth-manager").await?);
    ensure!(log.as_deref() == Some("info,kube=warn"), "{log:?}");
    helm(&[
        "upgrade",
        RELEASE,
        "charts/berth",
        "-n",
        NAMESPACE,
        "--reuse-values",
        "--set",
        "manager.logLevel=debug",
        "--wait",
        "--timeout",
        "2m",
    ])?;
    let kept = secrets.get("berth-webhook-cert").await?.data.unwrap_or_default();
    ensure!(kept == cert, "helm upgrade changed the webhook certificate under the running replicas");
    let log = log_level(deployments.get("berth-manager").await?);
    ensure!(log.as_deref() == Some("debug"), "manager.logLevel did not reach the Deployment: {log:?}");

    let served = {
        let manager = ServiceModeManager::start(&cert)?;
        served_through_the_service(client, manager.port, &cert).await
    };
    helm(&["uninstall", RELEASE, "-n", NAMESPACE, "--wait"])?;
    served?;
    let left = leftovers()?;
    ensure!(left.is_empty(), "helm uninstall (in-cluster mode) left {left:?}");
    Ok(())
}

/// berth-manager on this host with the chart's certificate files and the
/// Service endpoint, as the manager's own service account; stopped on drop.
struct ServiceModeManager {
    child: std::process::Child,
    port: u16,
    dir: PathBuf,
}

impl ServiceModeManager {
    fn start(cert: &std::collections::BTreeMap<String, k8s_openapi::ByteString>) -> Result<Self> {
        let state = tool("E2E_STATE")?;
        let dir = state.join("install-cert");
        std::fs::create_dir_all(&dir)?;
        for (key, value) in cert {
            std::fs::write(dir.join(key), &value.0)?;
        }
        let kubeconfig = state.join("install-manager.kubeconfig");
        let mut c = Command::new(repo_root().join("e2e/cluster/cluster.sh"));
        c.args(["kubeconfig", NAMESPACE, "berth-manager"]).arg(&kubeconfig);
        run(c)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let bin = std::env::var_os("BERTH_MANAGER")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/debug/berth-manager"));
        let log = std::fs::File::create(state.join("logs/berth-manager-install.log"))?;
        let child = Command::new(&bin)
            .env("KUBECONFIG", &kubeconfig)
            .args(["--webhook-bind", "127.0.0.1", "--webhook-port", &port.to_string()])
            .args(["--webhook-service-port", &port.to_string(), "--webhook-cert-dir"])
            .arg(&dir)
            .args(["--lease-duration", "6", "--lease-grace", "2"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("{}", bin.display()))?;
        Ok(Self { child, port, dir })
    }
}

impl Drop for ServiceModeManager {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn served_through_the_service(
    client: &Client,
    port: u16,
    cert: &std::collections::BTreeMap<String, k8s_openapi::ByteString>,
) -> Result<()> {
    kubectl(&[
        "-n",
        NAMESPACE,
        "patch",
        "service",
        "berth-webhooks",
        "--type=merge",
        "-p",
        r#"{"spec": {"type": "ExternalName", "externalName": "localhost", "clusterIP": null, "clusterIPs": null,
            "selector": null, "ipFamilies": null, "ipFamilyPolicy": null, "internalTrafficPolicy": null}}"#,
    ])?;
    // The manager points the configurations at the Service, with the Secret's ca.crt.
    let ca = &cert.get("ca.crt").context("no ca.crt")?.0;
    let configurations = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let webhooks = configurations.get("berth-validating").await?.webhooks.unwrap_or_default();
        let pointed = !webhooks.is_empty()
            && webhooks.iter().all(|w| {
                let c = &w.client_config;
                c.ca_bundle.as_ref().is_some_and(|b| &b.0 == ca)
                    && c.service.as_ref().is_some_and(|s| {
                        s.name == "berth-webhooks" && s.namespace == NAMESPACE && s.port == Some(i32::from(port))
                    })
            });
        if pointed {
            break;
        }
        ensure!(Instant::now() < deadline, "the configurations never named the Service and the chart's CA");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A refusal can only come from berth's webhook, reached over TLS.
    let ns = TestNamespace::create(client, "service").await?;
    let mut bad = set(1, &images().0, serde_json::json!({}));
    bad.spec.selector.match_labels = Some([("app".to_string(), "other".to_string())].into());
    let refused = ns.api::<InplaceSet>().create(&PostParams::default(), &bad).await;
    let (code, message) = berth_e2e::refusal(refused)?;
    ensure!(
        code == 403 && message.contains("inplaceset.apps.berth.dev") && message.contains("spec.selector"),
        "not refused by berth's webhook: {code} {message}"
    );
    ns.delete().await?;
    let ns = rolls_in_place(client, "service", &images().0, &images().1).await?;
    ns.delete().await
}

#[tokio::test]
#[ignore = "uninstalls the suites' berth-manager: make e2e runs it alone, last"]
async fn kustomize_local_install_and_delete() -> Result<()> {
    alone(async {
        let client = client().await?;
        let (image_a, image_b) = images();
        let config_rbac = all_rules(&client).await?;
        take_apart()?;

        // The in-cluster overlay, as `kubectl apply -k config/default` sends it, is accepted.
        let dry_run = kubectl(&["apply", "--dry-run=server", "-k", "config/default"])?;
        for object in ["deployment.apps/berth-manager", "daemonset.apps/berth-node-agent", "service/berth-webhooks"] {
            ensure!(dry_run.contains(&format!("{object} created (server dry run)")), "{object}:\n{dry_run}");
        }

        let applied = kubectl(&["apply", "--server-side", "-k", "config/local"])?;
        for object in [
            "namespace/berth-system",
            "lease.coordination.k8s.io/berth-manager",
            "validatingwebhookconfiguration.admissionregistration.k8s.io/berth-validating",
            "customresourcedefinition.apiextensions.k8s.io/inplacesets.apps.berth.dev",
        ] {
            ensure!(applied.contains(object), "{object} not applied:\n{applied}");
        }
        same_rules("config/local", &all_rules(&client).await?, &config_rbac)?;
        manager_sh("up", true)?;
        let kustomized = |a: &std::collections::BTreeMap<String, String>| !a.contains_key("meta.helm.sh/release-name");
        configurations_filled(&client, kustomized).await?;
        let part_of = kubectl(&[
            "get",
            "validatingwebhookconfiguration/berth-validating",
            "-o",
            "jsonpath={.metadata.labels.app\\.kubernetes\\.io/part-of}",
        ])?;
        ensure!(part_of == "berth", "kustomize label missing: {part_of:?}");
        let ns = rolls_in_place(&client, "kustomize", &image_a, &image_b).await?;

        // Delete all but the CRDs (labelled component=crd): nothing else of berth's is left.
        manager_sh("down", true)?;
        kubectl(&[
            "delete",
            "-k",
            "config/local",
            "-l",
            "app.kubernetes.io/component!=crd",
            "--wait",
            "--timeout=120s",
        ])?;
        let left = leftovers()?;
        ensure!(left.is_empty(), "kubectl delete -k left {left:?}");
        crds_present()?;
        ensure!(ns.api::<InplaceSet>().get_opt("web").await?.is_some(), "the InplaceSet went with the install");
        ns.delete().await
    })
    .await
}

/// Not alone: it only reads the CRDs every suite has.
#[tokio::test]
async fn kubectl_explain_describes_the_update_strategy() -> Result<()> {
    let explained = kubectl(&["explain", "inplaceset.spec.updateStrategy"])?;
    let description = explained
        .split("DESCRIPTION:")
        .nth(1)
        .and_then(|rest| rest.split("FIELDS:").next())
        .map(str::trim)
        .unwrap_or_default();
    ensure!(description.len() > 10, "no description of updateStrategy:\n{explained}");
    // Every field is listed with a description of its own (a line of text under it).
    let fields = explained.split("FIELDS:").nth(1).context("no FIELDS")?;
    let mut names = Vec::new();
    let lines: Vec<&str> = fields.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("  ") && !line.starts_with("    ") && line.contains('<') {
            let name = line.split_whitespace().next().unwrap_or_default();
            let described = lines[i + 1..]
                .iter()
                .take_while(|l| !(l.starts_with("  ") && !l.starts_with("    ") && l.contains('<')))
                .any(|l| l.starts_with("    ") && !l.trim_start().starts_with("enum:") && l.trim().len() > 10);
            ensure!(described, "field {name} has no description:\n{explained}");
            names.push(name.to_string());
        }
    }
    for field in ["type", "partition", "maxUnavailable", "paused"] {
        ensure!(names.iter().any(|n| n == field), "no field {field} in {names:?}");
    }
    Ok(())
}
