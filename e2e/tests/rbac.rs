//! Least privilege, proven on the real cluster: what each berth service
//! account may do (the apiserver's own SelfSubjectRulesReview, as `kubectl
//! auth can-i --list` shows it, asked with the account's token) equals the
//! list below — no wildcard, no Secret, nothing more. A change to
//! config/rbac must change this list too.

use std::collections::BTreeSet;

use anyhow::Result;
use berth_e2e::{client, identity};
use k8s_openapi::api::authorization::v1::{SelfSubjectRulesReview, SelfSubjectRulesReviewSpec};
use kube::{Api, Client, api::PostParams};

const MANAGER_NAMESPACE: &str = "berth-system";

/// "group/resource[names]: verbs" for every resource rule the account has in `ns`.
async fn rules(as_account: &Client, ns: &str) -> Result<BTreeSet<String>> {
    let review = SelfSubjectRulesReview {
        spec: SelfSubjectRulesReviewSpec { namespace: Some(ns.into()) },
        ..Default::default()
    };
    let api: Api<SelfSubjectRulesReview> = Api::all(as_account.clone());
    let status = api.create(&PostParams::default(), &review).await?.status.unwrap_or_default();
    let mut out = BTreeSet::new();
    for rule in status.resource_rules {
        let groups = rule.api_groups.unwrap_or_default();
        let mut verbs = rule.verbs.clone();
        verbs.sort();
        let names = rule.resource_names.map(|n| format!("[{}]", n.join(","))).unwrap_or_default();
        for group in &groups {
            for resource in rule.resources.iter().flatten() {
                out.insert(format!("{group}/{resource}{names}: {}", verbs.join(",")));
            }
        }
    }
    Ok(out)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Cluster-wide rules of the manager (what it has in any namespace).
const MANAGER: &[&str] = &[
    "/namespaces: list,watch",
    "/nodes: get",
    "/persistentvolumeclaims: create,delete,get,list,patch,watch",
    "/pods/resize: patch",
    "/pods/status: patch",
    "/pods: create,delete,get,list,patch,watch",
    "admissionregistration.k8s.io/mutatingwebhookconfigurations[berth-validating,berth-mutating]: create,get,patch",
    "admissionregistration.k8s.io/validatingwebhookconfigurations[berth-validating,berth-mutating]: create,get,patch",
    "apps.berth.dev/inplacesets/finalizers: update",
    "apps.berth.dev/inplacesets/status: patch",
    "apps.berth.dev/inplacesets: get,list,patch,watch",
    "apps.berth.dev/sidecarsets/finalizers: update",
    "apps.berth.dev/sidecarsets/status: patch",
    "apps.berth.dev/sidecarsets: get,list,watch",
    "apps.berth.dev/sidecarsets: patch",
    "apps/controllerrevisions: create,delete,get,list,watch",
    "events.k8s.io/events: create,patch",
];

/// The manager's extra rules in its own namespace.
const MANAGER_OWN_NAMESPACE: &[&str] = &[
    "apps/controllerrevisions: create,delete,get,list,watch",
    "coordination.k8s.io/leases: create",
    "coordination.k8s.io/leases[berth-manager]: get,list,patch,watch",
];

const NODE_AGENT: &[&str] =
    &["/pods/resize: patch", "/pods: get,list,patch,watch", "events.k8s.io/events: create,patch"];

#[tokio::test]
async fn each_service_account_has_exactly_its_listed_permissions() -> Result<()> {
    let admin = client().await?;
    let manager =
        identity::client_with(identity::token(&admin, MANAGER_NAMESPACE, "berth-manager", None).await?).await?;
    let agent =
        identity::client_with(identity::token(&admin, MANAGER_NAMESPACE, "berth-node-agent", None).await?).await?;
    // What every authenticated account has (self reviews, public trust bundles): an account bound to nothing.
    let nobody = identity::client_with(identity::token(&admin, "default", "e2e-rbac-nobody", None).await?).await?;
    let everyone = rules(&nobody, MANAGER_NAMESPACE).await?;
    let rules = |client: Client, ns: &'static str| {
        let everyone = everyone.clone();
        async move {
            Ok::<_, anyhow::Error>(rules(&client, ns).await?.difference(&everyone).cloned().collect::<BTreeSet<_>>())
        }
    };

    let anywhere = rules(manager.clone(), "default").await?;
    assert_eq!(anywhere, set(MANAGER), "berth-manager, cluster-wide");
    let own = rules(manager, MANAGER_NAMESPACE).await?;
    let mut want = set(MANAGER);
    want.extend(set(MANAGER_OWN_NAMESPACE));
    assert_eq!(own, want, "berth-manager in {MANAGER_NAMESPACE}");
    assert_eq!(rules(agent, "default").await?, set(NODE_AGENT), "berth-node-agent");

    for (who, granted) in [("berth-manager", &own), ("berth-node-agent", &set(NODE_AGENT))] {
        for rule in granted.iter() {
            assert!(!rule.contains('*'), "{who}: a wildcard in {rule}");
            assert!(!rule.contains("/secrets"), "{who}: may touch Secrets: {rule}");
        }
    }
    Ok(())
}
