//! SidecarSet upgrades on the real cluster: a sidecar image change rolls in
//! place over the pods of a Deployment within maxUnavailable (sampled from a
//! watch), never restarting the app container or moving a pod; a paused
//! strategy holds; a change beyond images is reported, not applied; deletion
//! is reported and leaves running pods their sidecars.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use berth_api::SidecarSet;
use berth_e2e::{
    TestNamespace, client, container_status, images, install_crds, pod_ready,
    sidecarset::{TEST_LABEL, delete_sets, sidecarset},
    wait_for,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod, events::v1::Event};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

const REPLICAS: usize = 20;

fn deployment(ns: &str) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web", TEST_LABEL: ns}},
                "spec": {"containers": [{"name": "app", "image": images().0}]}}}
    }))?)
}

/// Pod name → (UID, node, app restarts, agent image ID).
async fn snapshot(pods: &Api<Pod>) -> Result<BTreeMap<String, (String, String, i32, String)>> {
    Ok(pods
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items
        .iter()
        .map(|p| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            let restarts = container_status(p, "app").map_or(-1, |c| c.restart_count);
            let agent = container_status(p, "log-agent").map(|c| c.image_id.clone()).unwrap_or_default();
            (p.name_any(), (p.uid().unwrap_or_default(), node, restarts, agent))
        })
        .collect())
}

fn upgraded(s: Option<&SidecarSet>, generation_at_least: i64) -> bool {
    s.is_some_and(|s| {
        let st = s.status.clone().unwrap_or_default();
        st.observed_generation.unwrap_or(0) >= generation_at_least
            && st.matched_pods == REPLICAS as i32
            && st.updated_pods == REPLICAS as i32
            && st.updated_ready_pods == REPLICAS as i32
    })
}

#[tokio::test]
async fn a_sidecar_image_upgrade_rolls_in_place_within_max_unavailable() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "scs-upgrade").await?;
    let sets: Api<SidecarSet> = Api::all(client.clone());
    let pods: Api<Pod> = ns.api();
    let (image_a, image_b) = images();
    let name = format!("{}-logs", ns.name);
    let spec = json!({"containers": [{"name": "log-agent", "image": image_a}],
        "updateStrategy": {"maxUnavailable": 2}});
    sets.create(&PostParams::default(), &sidecarset(&name, &ns.name, spec)?).await?;
    // The webhook's cache must hold the set before the Deployment's pods are created.
    let probe: Pod = serde_json::from_value(json!({"metadata": {"name": "probe", "labels": {TEST_LABEL: ns.name}},
        "spec": {"containers": [{"name": "app", "image": image_a}]}}))?;
    berth_e2e::sidecarset::injection_is(&pods, &probe, "log-agent", true).await?;
    Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &deployment(&ns.name)?)
        .await?;

    // The controller opens the injected readiness gate: every pod becomes Ready.
    let generation = sets.get(&name).await?.metadata.generation.unwrap_or(1);
    wait_for(&sets, &name, Duration::from_secs(180), "all pods ready", move |s: Option<&SidecarSet>| {
        upgraded(s, generation)
    })
    .await?;
    let before = snapshot(&pods).await?;
    assert_eq!(before.len(), REPLICAS);

    // Sample unavailability from a watch while the upgrade runs.
    let max_seen = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (pods, max_seen, done) = (pods.clone(), max_seen.clone(), done.clone());
        tokio::spawn(async move {
            let mut ready: BTreeMap<String, bool> = BTreeMap::new();
            let events = watcher(pods, watcher::Config::default().labels("app=web")).applied_objects();
            let mut events = events.boxed();
            while !done.load(Ordering::SeqCst) {
                let next = tokio::time::timeout(Duration::from_millis(200), events.try_next()).await;
                if let Ok(Ok(Some(p))) = next {
                    ready.insert(p.name_any(), pod_ready(&p));
                    let unavailable = REPLICAS - ready.values().filter(|r| **r).count().min(REPLICAS);
                    if ready.len() == REPLICAS {
                        max_seen.fetch_max(unavailable, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    let upgrade = json!({"spec": {"containers": [{"name": "log-agent", "image": image_b}]}});
    let s = sets.patch(&name, &PatchParams::default(), &Patch::Merge(upgrade)).await?;
    let generation = s.metadata.generation.unwrap_or(0);
    wait_for(&sets, &name, Duration::from_secs(300), "upgraded", move |s: Option<&SidecarSet>| upgraded(s, generation))
        .await?;
    done.store(true, Ordering::SeqCst);
    sampler.await?;
    let seen = max_seen.load(Ordering::SeqCst);
    assert!(seen <= 2, "unavailable pods peaked at {seen} > maxUnavailable 2");
    assert!(seen >= 1, "the sampler saw no pod leave service: did the upgrade close the gates?");

    let after = snapshot(&pods).await?;
    for (pod, (uid, node, restarts, agent)) in &after {
        let (uid0, node0, restarts0, agent0) = &before[pod];
        assert_eq!((uid, node), (uid0, node0), "{pod} kept its UID and node");
        assert_eq!(restarts, restarts0, "{pod}: the app container did not restart");
        assert_ne!(agent, agent0, "{pod}: the log agent runs the new image");
    }
    for p in pods.list(&ListParams::default().labels("app=web")).await?.items {
        let agent = p.spec.as_ref().and_then(|s| s.containers.iter().find(|c| c.name == "log-agent").cloned());
        assert_eq!(agent.and_then(|c| c.image), Some(image_b.clone()));
    }

    // Paused: a new image goes nowhere.
    let paused =
        json!({"spec": {"updateStrategy": {"paused": true}, "containers": [{"name": "log-agent", "image": image_a}]}});
    let generation = sets.patch(&name, &PatchParams::default(), &Patch::Merge(paused)).await?.metadata.generation;
    let s = wait_for(&sets, &name, Duration::from_secs(60), "paused observed", move |s: Option<&SidecarSet>| {
        s.and_then(|s| s.status.as_ref()).is_some_and(|st| st.observed_generation == generation)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s2 = sets.get(&name).await?;
    let st = s2.status.clone().unwrap_or_default();
    assert_eq!(st.updated_pods, 0, "paused: no pod upgraded ({:?})", s.status);
    assert!(st.conditions.iter().any(|c| c.type_ == "Paused" && c.status == "True"));

    // A change beyond images (env) cannot go in place: reported, nothing restarts.
    let env = json!({"spec": {"updateStrategy": {"paused": false},
        "containers": [{"name": "log-agent", "image": image_b, "env": [{"name": "LEVEL", "value": "debug"}]}]}});
    sets.patch(&name, &PatchParams::default(), &Patch::Merge(env)).await?;
    let s = wait_for(&sets, &name, Duration::from_secs(60), "not in-place updatable", |s: Option<&SidecarSet>| {
        s.and_then(|s| s.status.as_ref()).is_some_and(|st| st.not_updatable_pods == REPLICAS as i32)
    })
    .await?;
    let c = s.status.unwrap_or_default().conditions.into_iter().find(|c| c.type_ == "NotInPlaceUpdatable");
    assert!(c.is_some_and(|c| c.status == "True" && c.message.contains("only when recreated")));
    assert_eq!(snapshot(&pods).await?, after, "no pod changed");

    // Deletion is reported; running pods keep their sidecar.
    delete_sets(&sets, &[&name]).await?;
    wait_for(&sets, &name, Duration::from_secs(60), "gone", |s: Option<&SidecarSet>| s.is_none()).await.ok();
    let all = Api::<Event>::all(client.clone()).list(&ListParams::default()).await?.items;
    let deleted = all.iter().find(|e| {
        e.reason.as_deref() == Some("SidecarSetDeleted")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
    });
    let note = deleted.and_then(|e| e.note.clone()).unwrap_or_default();
    assert!(note.contains(&format!("{REPLICAS} running pods keep its sidecars")), "deletion Event: {note:?}");
    assert_eq!(snapshot(&pods).await?.len(), REPLICAS);
    ns.delete().await
}
