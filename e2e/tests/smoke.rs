//! Smoke suite: the API types install and validate on a real apiserver, and
//! the cluster's nodes behave as a kubelet does for an in-place image change.

use std::time::Duration;

use anyhow::Result;
use berth_api::{InplaceSet, inplaceset::UpdateStrategyType};
use berth_e2e::{
    FIELD_MANAGER, TestNamespace, client, images, install_crds, pod_condition, pod_ready, refusal, wait_for,
};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Pod, ServiceAccount},
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    core::GroupVersionKind,
    runtime::wait::conditions,
};
use serde_json::{Value, json};

fn inplaceset_json(name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps.berth.dev/v1alpha1",
        "kind": "InplaceSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": images().0}]}
            }
        }
    })
}

fn dynamic_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(berth_api::GROUP, berth_api::VERSION, "InplaceSet");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
}

#[tokio::test]
async fn crds_install_with_scale_status_and_printer_columns() -> Result<()> {
    let client = client().await?;
    let crds = install_crds(&client).await?;
    let names: Vec<_> = crds.iter().map(|c| c.name_any()).collect();
    assert_eq!(names, ["inplacesets.apps.berth.dev", "sidecarsets.apps.berth.dev"]);

    let ips = &crds[0];
    assert_eq!(ips.spec.names.short_names.as_deref(), Some(&["ips".to_string()][..]));
    let version = &ips.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let sub = version.subresources.as_ref().expect("subresources");
    assert!(sub.status.is_some(), "status subresource");
    let scale = sub.scale.as_ref().expect("scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.label_selector_path.as_deref(), Some(".status.labelSelector"));
    let columns: Vec<_> = version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
    assert!(columns.starts_with(&["Desired", "Current", "Updated", "Ready"]), "{columns:?}");
    Ok(())
}

#[tokio::test]
async fn inplaceset_round_trips_with_defaults_and_scales() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "ips").await?;
    let api: Api<InplaceSet> = ns.api();
    let sent: InplaceSet = serde_json::from_value(inplaceset_json("web", 2))?;
    api.create(&PostParams::default(), &sent).await?;

    let got = api.get("web").await?;
    assert_eq!(got.spec.replicas, 2);
    assert_eq!(got.spec.template, sent.spec.template);
    // Server-side defaults from the schema.
    assert_eq!(got.spec.update_strategy.type_, UpdateStrategyType::InPlaceIfPossible);
    assert!(!got.spec.update_strategy.paused);

    // The scale subresource (what `kubectl scale` and an HPA use) drives spec.replicas.
    api.patch_scale("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 5}}))).await?;
    assert_eq!(api.get("web").await?.spec.replicas, 5);

    // berth-manager reports the pods through the scale subresource, selector included.
    let mut scale = api.get_scale("web").await?;
    for _ in 0..300 {
        if scale.status.as_ref().is_some_and(|s| s.replicas == 5 && s.selector.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        scale = api.get_scale("web").await?;
    }
    assert_eq!(scale.status.as_ref().map(|s| s.replicas), Some(5));
    assert_eq!(scale.status.and_then(|s| s.selector).as_deref(), Some("app=web"));
    ns.delete().await
}

#[tokio::test]
async fn invalid_inplacesets_are_refused_with_messages_naming_the_field() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "invalid").await?;
    let api = dynamic_api(&client, &ns.name);

    type Case = (&'static str, fn(&mut Value), &'static [&'static str]);
    let cases: [Case; 4] = [
        ("negative replicas", |o| o["spec"]["replicas"] = json!(-1), &["spec.replicas", "greater than or equal to 0"]),
        (
            "unknown strategy",
            |o| o["spec"]["updateStrategy"] = json!({"type": "Rolling"}),
            &["spec.updateStrategy.type", "Unsupported value: \"Rolling\"", "\"InPlaceIfPossible\""],
        ),
        (
            "partition above 100%",
            |o| o["spec"]["updateStrategy"] = json!({"partition": "150%"}),
            &["spec.updateStrategy.partition", "percentage from 0% to 100%"],
        ),
        (
            "negative maxUnavailable",
            |o| o["spec"]["updateStrategy"] = json!({"maxUnavailable": -2}),
            &["spec.updateStrategy.maxUnavailable", "non-negative integer"],
        ),
    ];
    for (what, mutate, want) in cases {
        let mut obj = inplaceset_json("bad", 1);
        mutate(&mut obj);
        let obj: DynamicObject = serde_json::from_value(obj)?;
        let (code, message) = refusal(api.create(&PostParams::default(), &obj).await)?;
        assert_eq!(code, 422, "{what}: {message}");
        for w in want {
            assert!(message.contains(w), "{what}: {message:?} lacks {w:?}");
        }
    }

    // Immutable fields: the selector cannot change after creation.
    let obj: DynamicObject = serde_json::from_value(inplaceset_json("fixed", 1))?;
    api.create(&PostParams::default(), &obj).await?;
    let change = json!({"spec": {
        "selector": {"matchLabels": {"app": "fixed", "tier": "x"}},
        "template": {"metadata": {"labels": {"app": "fixed", "tier": "x"}}}
    }});
    let (code, message) = refusal(api.patch("fixed", &PatchParams::default(), &Patch::Merge(change)).await)?;
    assert_eq!(code, 422);
    assert!(message.contains("spec.selector is immutable"), "{message}");
    // So are podManagementPolicy and volumeClaimTemplates.
    let policy = json!({"spec": {"podManagementPolicy": "Parallel"}});
    let (code, message) = refusal(api.patch("fixed", &PatchParams::default(), &Patch::Merge(policy)).await)?;
    assert_eq!(code, 422);
    assert!(message.contains("spec.podManagementPolicy is immutable"), "{message}");
    let claims = json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}});
    let (code, message) = refusal(api.patch("fixed", &PatchParams::default(), &Patch::Merge(claims)).await)?;
    assert_eq!(code, 422);
    assert!(message.contains("spec.volumeClaimTemplates is immutable"), "{message}");
    ns.delete().await
}

#[tokio::test]
async fn a_pod_runs_on_a_simulated_node_and_its_image_updates_in_place() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "pod").await?;
    let pods: Api<Pod> = ns.api();
    let (image_a, image_b) = images();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"containers": [
            {"name": "app", "image": image_a},
            {"name": "side", "image": image_a}
        ]}
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let running =
        wait_for(&pods, "web", Duration::from_secs(60), "Running and Ready", conditions::is_pod_running()).await?;
    let running = wait_for(&pods, "web", Duration::from_secs(60), "Ready", is_ready).await.unwrap_or(running);
    assert!(pod_ready(&running), "pod not Ready: {:?}", running.status);
    let uid = running.uid();
    let node = running.spec.as_ref().and_then(|s| s.node_name.clone()).expect("scheduled");
    assert_eq!(container_status(&running, "app").image_id, image_a);

    // Change one container's image through a plain pod update.
    let patch = json!({"spec": {"containers": [{"name": "app", "image": image_b}]}});
    pods.patch("web", &PatchParams::default(), &Patch::Strategic(patch)).await?;
    let updated = wait_for(&pods, "web", Duration::from_secs(90), "running the new image", |p: Option<&Pod>| {
        p.is_some_and(|p| {
            let s = container_status(p, "app");
            s.image_id == images().1 && s.ready && pod_ready(p)
        })
    })
    .await?;
    assert_eq!(updated.uid(), uid, "same pod object");
    assert_eq!(updated.spec.as_ref().and_then(|s| s.node_name.clone()), Some(node), "same node");
    assert_eq!(container_status(&updated, "app").restart_count, 1, "changed container restarted once");
    assert_eq!(container_status(&updated, "side").restart_count, 0, "unchanged container untouched");
    assert_eq!(container_status(&updated, "side").image_id, image_a);
    ns.delete().await
}

#[tokio::test]
async fn service_account_tokens_act_under_rbac() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "rbac").await?;
    let sas: Api<ServiceAccount> = ns.api();
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "reader"}}))?;
    sas.create(&PostParams::default(), &sa).await?;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(600), ..Default::default() }),
        ..Default::default()
    };
    let token = sas.create_token_request("reader", &PostParams::default(), &request).await?;
    let token = token.status.and_then(|s| s.token).expect("a token in the TokenRequest status");

    let mut config = berth_e2e::config().await?;
    config.auth_info = kube::config::AuthInfo { token: Some(token.into()), ..Default::default() };
    let as_sa = Client::try_from(config)?;
    let sa_pods: Api<Pod> = Api::namespaced(as_sa.clone(), &ns.name);

    let (code, message) = refusal(sa_pods.list(&ListParams::default()).await)?;
    assert_eq!(code, 403, "{message}");
    assert!(message.contains(&format!("system:serviceaccount:{}:reader", ns.name)), "{message}");

    let roles: Api<Role> = ns.api();
    roles
        .create(
            &PostParams::default(),
            &Role {
                metadata: ObjectMeta { name: Some("pod-reader".into()), ..Default::default() },
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["pods".into()]),
                    verbs: vec!["list".into()],
                    ..Default::default()
                }]),
            },
        )
        .await?;
    let bindings: Api<RoleBinding> = ns.api();
    bindings
        .patch(
            "pod-reader",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(RoleBinding {
                metadata: ObjectMeta { name: Some("pod-reader".into()), ..Default::default() },
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Role".into(),
                    name: "pod-reader".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: "reader".into(),
                    namespace: Some(ns.name.clone()),
                    ..Default::default()
                }]),
            }),
        )
        .await?;
    // RBAC changes reach the authorizer through its informer: allow a moment.
    let mut allowed = false;
    for _ in 0..50 {
        if sa_pods.list(&ListParams::default()).await.is_ok() {
            allowed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(allowed, "list still refused after the RoleBinding");
    // Still nothing beyond what was granted.
    let (code, _) = refusal(sa_pods.delete("nothing", &Default::default()).await)?;
    assert_eq!(code, 403);
    ns.delete().await
}

#[tokio::test]
async fn a_pod_resize_reaches_container_status_without_a_restart() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "resize").await?;
    let pods: Api<Pod> = ns.api();
    let resources = |cpu_req: &str, cpu_lim: &str, mem_lim: &str| json!({"requests": {"cpu": cpu_req, "memory": "64Mi"}, "limits": {"cpu": cpu_lim, "memory": mem_lim}});
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "sized"},
        "spec": {"containers": [{"name": "app", "image": images().0, "resources": resources("100m", "200m", "128Mi")}]}
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let before = wait_for(&pods, "sized", Duration::from_secs(60), "Ready", is_ready).await?;

    let resize = |r: Value| json!({"spec": {"containers": [{"name": "app", "resources": r}]}});
    pods.patch_resize("sized", &PatchParams::default(), &Patch::Strategic(resize(resources("300m", "400m", "256Mi"))))
        .await?;
    let want = resources("300m", "400m", "256Mi");
    let after = wait_for(&pods, "sized", Duration::from_secs(60), "reporting the new resources", |p: Option<&Pod>| {
        p.is_some_and(|p| {
            let reported = serde_json::to_value(&container_status(p, "app").resources).unwrap_or_default();
            reported == want && !pod_condition(p, "PodResizeInProgress") && !pod_condition(p, "PodResizePending")
        })
    })
    .await?;
    assert_eq!(after.uid(), before.uid());
    assert_eq!(container_status(&after, "app").restart_count, 0, "a resize does not restart the container");

    // More CPU than the node has: the apiserver refuses the resize (1.37 checks
    // node allocatable at admission), and the pod keeps running as it was.
    let (code, message) = refusal(
        pods.patch_resize(
            "sized",
            &PatchParams::default(),
            &Patch::Strategic(resize(resources("500", "500", "256Mi"))),
        )
        .await,
    )?;
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("node didn't have enough allocatable resources: cpu"), "{message}");
    let still = pods.get("sized").await?;
    assert_eq!(serde_json::to_value(&container_status(&still, "app").resources)?, want);
    ns.delete().await
}

fn container_status(pod: &Pod, name: &str) -> k8s_openapi::api::core::v1::ContainerStatus {
    berth_e2e::container_status(pod, name)
        .cloned()
        .unwrap_or_else(|| panic!("no status for container {name}: {:?}", pod.status))
}

fn is_ready(pod: Option<&Pod>) -> bool {
    pod.is_some_and(pod_ready)
}
