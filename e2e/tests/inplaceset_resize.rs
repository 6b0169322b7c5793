//! An InplaceSet template change touching only cpu/memory rolls as in-place
//! resizes through the resize state machine (feasibility in the manager, the
//! real node agent, the kubelet's `pods/resize`): same pods, same nodes, no
//! restart. A resize the node cannot take is Rejected: under InPlaceOnly the
//! rollout stops with FailedUpdate and the pod is left alone; under
//! InPlaceIfPossible the pod is recreated, and lands where it fits.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use berth_api::{InplaceSet, keys};
use berth_e2e::{
    TestNamespace, client, container_status, images,
    inplaceset::{rolled_out, set},
    install_crds,
    node_agent::Agent,
    wait_for,
};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

/// The only node with a node agent in this suite.
const NODE: &str = "hollow-node-2";

/// The set's template with the app asking for `cpu_request` up to `cpu_limit`
/// (memory fixed: Burstable throughout), preferring [`NODE`].
fn template(cpu_request: &str, cpu_limit: &str) -> Value {
    let (image, _) = images();
    let resources =
        json!({"requests": {"cpu": cpu_request, "memory": "64Mi"}, "limits": {"cpu": cpu_limit, "memory": "64Mi"}});
    json!({
        "metadata": {"labels": {"app": "web"}},
        "spec": {
            "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100,
                "preference": {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}]}}]}},
            "containers": [{"name": "app", "image": image, "resources": resources}, {"name": "log", "image": image}]
        }
    })
}

fn pods_by_name(list: Vec<Pod>) -> BTreeMap<String, Pod> {
    list.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).map(|p| (p.name_any(), p)).collect()
}

fn app_cpu(p: &Pod) -> (String, String) {
    let r = p.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.resources.clone()).unwrap_or_default();
    (r.requests.unwrap_or_default()["cpu"].0.clone(), r.limits.unwrap_or_default()["cpu"].0.clone())
}

#[tokio::test]
async fn a_cpu_change_rolls_as_in_place_resizes_and_a_rejected_one_stops_or_recreates_per_strategy() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "ips-resize").await?;
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    let _agent = Agent::start(&client, NODE).await?;

    let mut web =
        set(3, &images().0, json!({"podManagementPolicy": "Parallel", "updateStrategy": {"maxUnavailable": 1}}));
    web.spec.template = serde_json::from_value(template("100m", "500m"))?;
    sets.create(&PostParams::default(), &web).await?;
    rolled_out(&sets, 3, Duration::from_secs(120)).await?;
    let before = pods_by_name(pods.list(&ListParams::default()).await?.items);
    assert!(
        before.values().all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(NODE)),
        "all on {NODE}"
    );

    // Resources only: each pod is resized where it runs, one at a time.
    let patch = |t: Value, strategy: &str| json!({"spec": {"template": t, "updateStrategy": {"type": strategy}}});
    sets.patch("web", &PatchParams::default(), &Patch::Merge(patch(template("200m", "1"), "InPlaceIfPossible")))
        .await?;
    rolled_out(&sets, 3, Duration::from_secs(180)).await?;
    let after = pods_by_name(pods.list(&ListParams::default()).await?.items);
    for (name, p) in &after {
        let old = &before[name];
        assert_eq!(p.uid(), old.uid(), "{name}: the same pod");
        assert_eq!(p.spec.as_ref().unwrap().node_name, old.spec.as_ref().unwrap().node_name, "{name}: the same node");
        assert_eq!(app_cpu(p), ("200m".into(), "1".into()), "{name}: the API resources are the template's");
        let app = container_status(p, "app").expect("app status");
        let running = app.resources.clone().unwrap_or_default();
        assert_eq!(running.requests.unwrap_or_default()["cpu"].0, "200m", "{name}: the kubelet runs the new values");
        assert_eq!(app.restart_count, 0, "{name}: no restart");
        assert_eq!(p.annotations().get(keys::RESIZE_STATE).map(String::as_str), Some("Applied"), "{name}");
        assert!(!p.annotations().contains_key(keys::INPLACE_UPDATE_STATE), "{name}: the update is finished");
    }

    // 64 CPUs fit no node. InPlaceOnly: Rejected, the rollout stops with a condition, the pod is untouched.
    sets.patch("web", &PatchParams::default(), &Patch::Merge(patch(template("64", "128"), "InPlaceOnly"))).await?;
    let blocked = wait_for(&sets, "web", Duration::from_secs(90), "FailedUpdate", |s: Option<&InplaceSet>| {
        s.and_then(|s| s.status.as_ref())
            .is_some_and(|st| st.conditions.iter().any(|c| c.type_ == "FailedUpdate" && c.status == "True"))
    })
    .await?;
    let condition = blocked.status.unwrap().conditions.into_iter().find(|c| c.type_ == "FailedUpdate").unwrap();
    assert!(
        condition.message.contains("cannot be updated in place under InPlaceOnly: resize Rejected: does not fit node"),
        "{}",
        condition.message
    );
    let now = pods_by_name(pods.list(&ListParams::default()).await?.items);
    for (name, p) in &now {
        assert_eq!(p.uid(), before[name].uid(), "{name}: InPlaceOnly leaves the pod in place");
        assert_eq!(app_cpu(p), ("200m".into(), "1".into()), "{name}: and at its resources");
    }

    // 4 CPUs each: the first resize fits the 8-CPU node (4.4 of 8 with the other two pods), the next cannot (8.2); under
    // InPlaceIfPossible those pods are recreated and scheduled where they fit.
    sets.patch("web", &PatchParams::default(), &Patch::Merge(patch(template("4", "8"), "InPlaceIfPossible"))).await?;
    rolled_out(&sets, 3, Duration::from_secs(240)).await?;
    let last = pods_by_name(pods.list(&ListParams::default()).await?.items);
    let kept: Vec<&String> = last.keys().filter(|n| last[*n].uid() == before[*n].uid()).collect();
    let recreated: Vec<&String> = last.keys().filter(|n| last[*n].uid() != before[*n].uid()).collect();
    assert!(!kept.is_empty(), "at least the first pod resized in place: {kept:?} kept, {recreated:?} recreated");
    assert!(!recreated.is_empty(), "the node cannot hold three: {kept:?} kept, {recreated:?} recreated");
    for name in &kept {
        assert_eq!(app_cpu(&last[*name]), ("4".into(), "8".into()), "{name}");
        assert_eq!(last[*name].spec.as_ref().unwrap().node_name.as_deref(), Some(NODE));
    }
    for name in &recreated {
        assert_eq!(app_cpu(&last[*name]), ("4".into(), "8".into()), "{name}: created at the new revision");
    }
    let events: Api<Event> = ns.api();
    let messages: Vec<String> =
        events.list(&ListParams::default()).await?.items.into_iter().filter_map(|e| e.message).collect();
    assert!(
        messages.iter().any(|m| m.contains("recreate for the update revision: resize Rejected: does not fit node")),
        "{messages:#?}"
    );
    assert!(messages.iter().any(|m| m.contains("resizing in place for")), "{messages:#?}");
    // Its pods hold 8 CPUs of NODE, where other suites create pods.
    ns.delete_and_wait(Duration::from_secs(120)).await
}
