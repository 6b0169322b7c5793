//! Shared harness of the e2e suites. Every suite talks to a real
//! kube-apiserver: the local cluster `make e2e` starts (E2E_KUBECONFIG is set
//! to its kubeconfig), or a cluster of the user's choosing.

pub mod identity;
pub mod inplaceset;
pub mod node_agent;
pub mod real_node;
pub mod sidecarset;

use std::{collections::BTreeMap, fmt::Debug, path::PathBuf, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::{
    api::core::v1::Namespace, apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, Resource, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::wait::{Condition, await_condition, conditions},
};
use serde::de::DeserializeOwned;

/// Field manager of every write the suites make.
pub const FIELD_MANAGER: &str = "berth-e2e";
/// Label on every namespace a suite creates, so leftovers can be found.
pub const E2E_LABEL: &str = "berth.dev/e2e";

/// The kubeconfig the suites use: `E2E_KUBECONFIG`, or `KUBECONFIG` when
/// `E2E_USE_KUBECONFIG=1` says the user means it (never by accident).
pub fn kubeconfig_path() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("E2E_KUBECONFIG") {
        return Ok(path.into());
    }
    if std::env::var("E2E_USE_KUBECONFIG").as_deref() == Ok("1")
        && let Ok(path) = std::env::var("KUBECONFIG")
    {
        return Ok(path.into());
    }
    bail!("no cluster: run `make e2e` (starts the local cluster), or set E2E_KUBECONFIG to a kubeconfig")
}

/// Client configuration for the cluster under test.
pub async fn config() -> Result<Config> {
    let path = kubeconfig_path()?;
    let kubeconfig = Kubeconfig::read_from(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

/// A client for the cluster under test.
pub async fn client() -> Result<Client> {
    Ok(Client::try_from(config().await?)?)
}

/// Images for pods; any name works on simulated nodes. Against a real cluster,
/// set E2E_IMAGE_A and E2E_IMAGE_B to two tags the nodes can pull.
pub fn images() -> (String, String) {
    let get = |var, default: &str| std::env::var(var).unwrap_or_else(|_| default.to_string());
    (get("E2E_IMAGE_A", "berth-e2e/app:v1"), get("E2E_IMAGE_B", "berth-e2e/app:v2"))
}

/// A namespace owned by one test. Call [`TestNamespace::delete`] at the end;
/// a failed test leaves it (labelled) for inspection.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        let api: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("e2e-{prefix}-")),
                labels: Some(BTreeMap::from([(E2E_LABEL.to_string(), "true".to_string())])),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = api.create(&PostParams::default(), &ns).await?;
        Ok(Self { name: created.name_any(), client: client.clone() })
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub async fn delete(self) -> Result<()> {
        Api::<Namespace>::all(self.client).delete(&self.name, &DeleteParams::background()).await?;
        Ok(())
    }

    /// Deletes it and waits until it is gone, its pods with it: for a suite
    /// whose pods fill a node that later suites use.
    pub async fn delete_and_wait(self, timeout: Duration) -> Result<()> {
        let (client, name) = (self.client.clone(), self.name.clone());
        self.delete().await?;
        let namespaces: Api<Namespace> = Api::all(client);
        let gone = kube::runtime::wait::await_condition(namespaces.clone(), &name, |n: Option<&Namespace>| n.is_none());
        match tokio::time::timeout(timeout, gone).await {
            Ok(result) => result.map(|_| ()).map_err(|e| anyhow!("namespace {name}: watch failed: {e}")),
            Err(_) => {
                let last = namespaces.get_opt(&name).await.ok().flatten().and_then(|n| n.status);
                bail!("namespace {name}: not gone after {timeout:?}; its status: {last:?}")
            }
        }
    }
}

/// Waits until `condition` holds for the named object, or fails after `timeout`
/// with the object's last state in the message.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    what: &str,
    condition: impl Condition<K>,
) -> Result<K>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    <K as Resource>::DynamicType: Default,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, condition)).await {
        Ok(Ok(Some(obj))) => Ok(obj),
        Ok(Ok(None)) => bail!("{name}: deleted while waiting until {what}"),
        Ok(Err(e)) => Err(anyhow!("{name}: watch failed while waiting until {what}: {e}")),
        Err(_) => {
            let last = api.get_opt(name).await.ok().flatten();
            bail!("{name}: not {what} after {timeout:?}; last seen: {last:#?}")
        }
    }
}

/// Repository root (for crds/ and examples/).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e/ has a parent").to_path_buf()
}

/// Applies the committed crds/*.yaml (what a user installs) with server-side
/// apply and waits until each is Established.
pub async fn install_crds(client: &Client) -> Result<Vec<CustomResourceDefinition>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut installed = Vec::new();
    let mut paths: Vec<_> =
        std::fs::read_dir(repo_root().join("crds"))?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    paths.sort();
    for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
        let crd: CustomResourceDefinition = serde_yaml::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("parsing {}", path.display()))?;
        let name = crd.name_any();
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying {}", path.display()))?;
        installed.push(
            wait_for(&api, &name, Duration::from_secs(30), "Established", conditions::is_crd_established()).await?,
        );
    }
    Ok(installed)
}

/// The apiserver's message for a refused request, or an error if it was accepted.
pub fn refusal<T: Debug>(result: kube::Result<T>) -> Result<(u16, String)> {
    match result {
        Err(kube::Error::Api(status)) => Ok((status.code, status.message)),
        Err(e) => Err(anyhow!("expected the apiserver to refuse, got another error: {e}")),
        Ok(obj) => Err(anyhow!("expected the apiserver to refuse, but it accepted: {obj:?}")),
    }
}

/// Whether the pod has condition `type_` with status True.
pub fn pod_condition(pod: &k8s_openapi::api::core::v1::Pod, type_: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// Whether the node is Ready.
pub fn node_ready(node: &k8s_openapi::api::core::v1::Node) -> bool {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the pod is Ready.
pub fn pod_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod_condition(pod, "Ready")
}

/// The status of the named container (regular or init), if reported.
pub fn container_status<'a>(
    pod: &'a k8s_openapi::api::core::v1::Pod,
    name: &str,
) -> Option<&'a k8s_openapi::api::core::v1::ContainerStatus> {
    let status = pod.status.as_ref()?;
    status.container_statuses.iter().chain(status.init_container_statuses.iter()).flatten().find(|c| c.name == name)
}
