//! The Validating/MutatingWebhookConfiguration objects generated from the
//! registered rules, and their server-side apply.

use std::{collections::BTreeMap, net::Ipv6Addr, sync::Arc};

use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MutatingWebhook, MutatingWebhookConfiguration, ServiceReference, ValidatingWebhook,
        ValidatingWebhookConfiguration, WebhookClientConfig,
    },
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams},
};
use serde::Serialize;
use tracing::info;

use crate::{
    Error,
    rule::{Admission, AdmissionRule},
};

pub const VALIDATING_NAME: &str = "berth-validating";
pub const MUTATING_NAME: &str = "berth-mutating";
/// Field manager of the manager's writes to the configurations.
pub const FIELD_MANAGER: &str = "berth-manager";
/// Annotation on each configuration giving every webhook's failure policy and why.
pub const FAILURE_POLICIES: &str = "berth.dev/failure-policies";

/// How the apiserver reaches the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `https://HOST:PORT/path`: a server outside the cluster network, such
    /// as a manager running as a host process next to a local apiserver.
    Url { host: String, port: u16 },
    /// A Service in front of the manager's pods (in-cluster).
    Service { namespace: String, name: String, port: u16 },
}

impl Endpoint {
    fn client_config(&self, path: &str, ca_bundle: &[u8]) -> WebhookClientConfig {
        let ca_bundle = Some(ByteString(ca_bundle.to_vec()));
        match self {
            Self::Url { host, port } => {
                let host = if host.parse::<Ipv6Addr>().is_ok() { format!("[{host}]") } else { host.clone() };
                WebhookClientConfig { url: Some(format!("https://{host}:{port}{path}")), ca_bundle, service: None }
            }
            Self::Service { namespace, name, port } => WebhookClientConfig {
                service: Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    port: Some(i32::from(*port)),
                    path: Some(path.to_string()),
                }),
                ca_bundle,
                url: None,
            },
        }
    }

    /// The names the serving certificate must carry for the apiserver to accept it.
    pub fn certificate_names(&self) -> Vec<String> {
        match self {
            Self::Url { host, .. } => vec![host.clone()],
            Self::Service { namespace, name, .. } => {
                vec![format!("{name}.{namespace}.svc"), format!("{name}.{namespace}.svc.cluster.local")]
            }
        }
    }
}

/// Where and how long the apiserver calls.
#[derive(Clone, Debug)]
pub struct Target {
    pub endpoint: Endpoint,
    /// The CA that signed the serving certificate (PEM).
    pub ca_bundle: Vec<u8>,
    /// The apiserver's per-call timeout (1 to 30 s).
    pub timeout_seconds: i32,
}

fn metadata(name: &str, rules: &[&Arc<dyn AdmissionRule>]) -> ObjectMeta {
    let policies: Vec<String> = rules
        .iter()
        .map(|r| {
            let spec = r.webhook();
            format!("{}: {} because {}", r.name(), spec.failure_policy.as_str(), spec.failure_policy_reason)
        })
        .collect();
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into())])),
        annotations: Some(BTreeMap::from([(FAILURE_POLICIES.into(), policies.join("\n"))])),
        ..Default::default()
    }
}

fn of_kind(rules: &[Arc<dyn AdmissionRule>], kind: Admission) -> Vec<&Arc<dyn AdmissionRule>> {
    rules.iter().filter(|r| r.webhook().admission == kind).collect()
}

/// `berth-validating`: one webhook per validating rule.
pub fn validating(rules: &[Arc<dyn AdmissionRule>], target: &Target) -> ValidatingWebhookConfiguration {
    let rules = of_kind(rules, Admission::Validating);
    let webhooks = rules
        .iter()
        .map(|r| {
            let spec = r.webhook();
            ValidatingWebhook {
                name: r.name().into(),
                client_config: target.endpoint.client_config(r.path(), &target.ca_bundle),
                rules: Some(spec.rules),
                namespace_selector: spec.namespace_selector,
                object_selector: spec.object_selector,
                failure_policy: Some(spec.failure_policy.as_str().into()),
                // Also sent for the same resource under another group/version.
                match_policy: Some("Equivalent".into()),
                side_effects: "None".into(),
                admission_review_versions: vec!["v1".into()],
                timeout_seconds: Some(target.timeout_seconds),
                match_conditions: None,
            }
        })
        .collect();
    ValidatingWebhookConfiguration { metadata: metadata(VALIDATING_NAME, &rules), webhooks: Some(webhooks) }
}

/// `berth-mutating`: one webhook per mutating rule.
pub fn mutating(rules: &[Arc<dyn AdmissionRule>], target: &Target) -> MutatingWebhookConfiguration {
    let rules = of_kind(rules, Admission::Mutating);
    let webhooks = rules
        .iter()
        .map(|r| {
            let spec = r.webhook();
            MutatingWebhook {
                name: r.name().into(),
                client_config: target.endpoint.client_config(r.path(), &target.ca_bundle),
                rules: Some(spec.rules),
                namespace_selector: spec.namespace_selector,
                object_selector: spec.object_selector,
                failure_policy: Some(spec.failure_policy.as_str().into()),
                match_policy: Some("Equivalent".into()),
                side_effects: "None".into(),
                admission_review_versions: vec!["v1".into()],
                timeout_seconds: Some(target.timeout_seconds),
                reinvocation_policy: Some("Never".into()),
                match_conditions: None,
            }
        })
        .collect();
    MutatingWebhookConfiguration { metadata: metadata(MUTATING_NAME, &rules), webhooks: Some(webhooks) }
}

/// Server-side applies both configurations (a kind without rules is skipped).
pub async fn apply(client: &Client, rules: &[Arc<dyn AdmissionRule>], target: &Target) -> Result<(), Error> {
    let validating = validating(rules, target);
    if validating.webhooks.as_ref().is_some_and(|w| !w.is_empty()) {
        apply_one(Api::<ValidatingWebhookConfiguration>::all(client.clone()), VALIDATING_NAME, &validating).await?;
    }
    let mutating = mutating(rules, target);
    if mutating.webhooks.as_ref().is_some_and(|w| !w.is_empty()) {
        apply_one(Api::<MutatingWebhookConfiguration>::all(client.clone()), MUTATING_NAME, &mutating).await?;
    }
    Ok(())
}

async fn apply_one<K>(api: Api<K>, name: &str, object: &K) -> Result<(), Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + Serialize + serde::de::DeserializeOwned,
{
    // force: the manager owns these objects; a stale caBundle from an earlier run must go.
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
        .await
        .map_err(|source| Error::Apply { name: name.to_string(), source })?;
    info!(configuration = name, "webhook configuration applied");
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::rules;

    fn target(endpoint: Endpoint) -> Target {
        Target { endpoint, ca_bundle: b"CA PEM".to_vec(), timeout_seconds: 5 }
    }

    #[test]
    fn url_mode_points_each_webhook_at_its_path() {
        let rules = rules::all(&rules::Context::empty("system:serviceaccount:berth-system:berth-manager"));
        let config = validating(&rules, &target(Endpoint::Url { host: "127.0.0.1".into(), port: 9443 }));
        let value = serde_json::to_value(&config).unwrap();
        assert_eq!(value["apiVersion"], "admissionregistration.k8s.io/v1");
        assert_eq!(value["kind"], "ValidatingWebhookConfiguration");
        assert_eq!(value["metadata"]["name"], VALIDATING_NAME);
        let lifecycle = &value["webhooks"][0];
        assert_eq!(lifecycle["name"], "pod-lifecycle.berth.dev");
        assert_eq!(lifecycle["clientConfig"]["url"], "https://127.0.0.1:9443/validate/pod-lifecycle");
        assert_eq!(lifecycle["clientConfig"]["caBundle"], json!("Q0EgUEVN"), "base64 of the CA");
        assert_eq!(lifecycle["sideEffects"], "None");
        assert_eq!(lifecycle["admissionReviewVersions"], json!(["v1"]));
        assert_eq!(lifecycle["matchPolicy"], "Equivalent");
        assert_eq!(lifecycle["timeoutSeconds"], 5);
        assert_eq!(lifecycle["failurePolicy"], "Fail");
        assert_eq!(
            lifecycle["rules"],
            json!([{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": ["UPDATE"], "scope": "Namespaced"}])
        );
        assert_eq!(
            lifecycle["objectSelector"],
            json!({"matchExpressions": [{"key": "berth.dev/inplaceset", "operator": "Exists"}]})
        );
        assert_eq!(
            lifecycle["namespaceSelector"]["matchExpressions"][0],
            json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]})
        );
        let sets = &value["webhooks"][1];
        assert_eq!(sets["name"], "inplaceset.apps.berth.dev");
        assert_eq!(sets["rules"][0]["apiGroups"], json!(["apps.berth.dev"]));
        assert_eq!(sets["rules"][0]["resources"], json!(["inplacesets"]));
        assert_eq!(sets["rules"][0]["operations"], json!(["CREATE", "UPDATE"]));
        let reasons = value["metadata"]["annotations"][FAILURE_POLICIES].as_str().unwrap();
        assert!(reasons.contains("pod-lifecycle.berth.dev: Fail because "), "{reasons}");
        assert!(reasons.contains("inplaceset.apps.berth.dev: Fail because "), "{reasons}");
    }

    #[test]
    fn service_mode_names_the_service_and_its_certificate_names() {
        let endpoint = Endpoint::Service { namespace: "berth-system".into(), name: "berth-webhooks".into(), port: 443 };
        let config = validating(&rules::all(&rules::Context::empty("m")), &target(endpoint.clone()));
        let client = &config.webhooks.unwrap()[1].client_config;
        assert_eq!(client.url, None);
        let service = client.service.as_ref().unwrap();
        assert_eq!(
            (service.namespace.as_str(), service.name.as_str(), service.port, service.path.as_deref()),
            ("berth-system", "berth-webhooks", Some(443), Some("/validate/inplaceset"))
        );
        assert_eq!(
            endpoint.certificate_names(),
            ["berth-webhooks.berth-system.svc", "berth-webhooks.berth-system.svc.cluster.local"]
        );
    }

    #[test]
    fn an_ipv6_host_is_bracketed() {
        let t = target(Endpoint::Url { host: "::1".into(), port: 8443 });
        let config = validating(&rules::all(&rules::Context::empty("m")), &t);
        assert_eq!(
            config.webhooks.unwrap()[0].client_config.url.as_deref(),
            Some("https://[::1]:8443/validate/pod-lifecycle")
        );
    }

    #[test]
    fn sidecarsets_are_validated_cluster_scoped_and_pods_injected_outside_system_namespaces() {
        let t = target(Endpoint::Url { host: "127.0.0.1".into(), port: 9443 });
        let rules = rules::all(&rules::Context::empty("m"));
        let validating = serde_json::to_value(validating(&rules, &t)).unwrap();
        let sets = validating["webhooks"].as_array().unwrap().iter().find(|w| w["name"] == "sidecarset.apps.berth.dev");
        let sets = sets.expect("the SidecarSet webhook is configured");
        assert_eq!(
            sets["rules"],
            json!([{"apiGroups": ["apps.berth.dev"], "apiVersions": ["v1alpha1"], "resources": ["sidecarsets"],
                    "operations": ["CREATE", "UPDATE"], "scope": "Cluster"}])
        );
        let value = serde_json::to_value(mutating(&rules, &t)).unwrap();
        assert_eq!(value["kind"], "MutatingWebhookConfiguration");
        assert_eq!(value["metadata"]["name"], MUTATING_NAME);
        let inject = &value["webhooks"][0];
        assert_eq!(value["webhooks"].as_array().unwrap().len(), 1);
        assert_eq!(inject["name"], "sidecar-injection.berth.dev");
        assert_eq!(inject["clientConfig"]["url"], "https://127.0.0.1:9443/mutate/sidecar-injection");
        assert_eq!(inject["reinvocationPolicy"], "Never");
        assert_eq!(inject["failurePolicy"], "Fail");
        assert_eq!(
            inject["rules"],
            json!([{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": ["CREATE"], "scope": "Namespaced"}])
        );
        assert_eq!(
            inject["namespaceSelector"],
            json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                   "values": ["kube-system", "kube-public", "kube-node-lease", "berth-system"]}]})
        );
        let reasons = value["metadata"]["annotations"][FAILURE_POLICIES].as_str().unwrap();
        assert!(reasons.starts_with("sidecar-injection.berth.dev: Fail because a pod admitted without"), "{reasons}");
    }
}
