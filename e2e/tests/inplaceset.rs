//! The InplaceSet controller on the real cluster (berth-manager running under
//! its own service account): ordered creation, an in-place image rollout that
//! keeps every pod's UID and node, and maxUnavailable honoured throughout.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use berth_api::InplaceSet;
use berth_e2e::{
    TestNamespace, client, container_status as container, images,
    inplaceset::{app_image_patch, rolled_out, set},
    install_crds, pod_ready as ready, wait_for,
};
use k8s_openapi::api::{apps::v1::ControllerRevision, core::v1::Pod, events::v1::Event};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

/// The ordered, rolled set: 10 pods, as the issue asks.
const N: i32 = 10;

/// The notes of `reason`'s Events in `ns`, and how often they occurred. The
/// recorder folds repeats of a reason into one Event's series (its note stays
/// the first pass's, as with client-go's aggregation).
async fn in_place_events(ns: &TestNamespace, reason: &str) -> Result<(Vec<String>, i32)> {
    let events: Api<Event> = ns.api();
    let of: Vec<Event> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect();
    let occurred = of.iter().map(|e| e.series.as_ref().map_or(1, |s| s.count)).sum();
    Ok((of.into_iter().filter_map(|e| e.note).collect(), occurred))
}

#[tokio::test]
async fn an_inplaceset_creates_in_order_and_rolls_an_image_in_place() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "ips-roll").await?;
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    let (image_a, image_b) = images();

    sets.create(&PostParams::default(), &set(N, &image_a, json!({}))).await?;
    rolled_out(&sets, N, Duration::from_secs(180)).await?;
    let before: BTreeMap<String, (String, String)> = pods
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|p| {
            (
                p.name_any(),
                (p.uid().unwrap_or_default(), p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default()),
            )
        })
        .collect();
    let names: Vec<String> = (0..N).map(|i| format!("web-{i}")).collect();
    assert_eq!(before.keys().cloned().collect::<std::collections::BTreeSet<_>>(), names.iter().cloned().collect());
    // OrderedReady: each pod was created after the previous one was Ready.
    let mut times = Vec::new();
    for i in 0..N {
        times.push(pods.get(&format!("web-{i}")).await?.metadata.creation_timestamp.expect("created"));
    }
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "ordinal order: {times:?}");

    // Sample unavailability while the rollout runs.
    let max_seen = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (pods, max_seen, done) = (pods.clone(), max_seen.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                if let Ok(list) = pods.list(&ListParams::default()).await {
                    let unavailable = N as usize - list.items.iter().filter(|p| ready(p)).count().min(N as usize);
                    max_seen.fetch_max(unavailable, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    sets.patch("web", &PatchParams::default(), &Patch::Merge(app_image_patch(&image_b))).await?;
    let after_set = rolled_out(&sets, N, Duration::from_secs(240)).await?;
    done.store(true, Ordering::SeqCst);
    sampler.await?;

    assert!(
        max_seen.load(Ordering::SeqCst) <= 1,
        "unavailable pods peaked at {} > maxUnavailable 1",
        max_seen.load(Ordering::SeqCst)
    );
    for p in pods.list(&ListParams::default()).await?.items {
        let (uid, node) = &before[&p.name_any()];
        assert_eq!(&p.uid().unwrap_or_default(), uid, "{}: same pod object", p.name_any());
        assert_eq!(p.spec.as_ref().and_then(|s| s.node_name.as_ref()), Some(node), "{}: same node", p.name_any());
        let app = container(&p, "app").expect("app status");
        assert_eq!(app.image_id, image_b, "{}", p.name_any());
        assert_eq!(app.restart_count, 1, "{}: app restarted once", p.name_any());
        assert_eq!(container(&p, "log").map(|c| c.restart_count), Some(0), "{}: log untouched", p.name_any());
        assert_eq!(
            p.labels().get("controller-revision-hash"),
            after_set.status.as_ref().unwrap().update_revision.as_ref()
        );
    }

    // The in-place Events: one per pass (maxUnavailable 1: at most one pod a pass).
    for reason in ["InPlaceUpdateStarted", "InPlaceUpdateDone"] {
        let (notes, occurred) = in_place_events(&ns, reason).await?;
        assert!((1..=N).contains(&occurred), "{reason}: {occurred} times for {N} pods: {notes:?}");
        assert!(notes.iter().all(|n| n.contains("in place") && n.contains("web-")), "{reason}: {notes:?}");
    }

    // Ordered scale down: the highest ordinals go, one at a time.
    sets.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 7}}))).await?;
    rolled_out(&sets, 7, Duration::from_secs(120)).await?;
    let mut left = Vec::new();
    for _ in 0..120 {
        left = pods.list(&ListParams::default()).await?.items.iter().map(|p| p.name_any()).collect::<Vec<_>>();
        if left.len() == 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    left.sort();
    assert_eq!(left, names[..7], "web-7, web-8 and web-9 removed");
    ns.delete().await
}

#[tokio::test]
async fn partition_and_pause_hold_pods_at_the_old_revision() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "ips-part").await?;
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    let (image_a, image_b) = images();
    let strategy = json!({
        "podManagementPolicy": "Parallel",
        "revisionHistoryLimit": 0,
        "updateStrategy": {"partition": 2, "maxUnavailable": 4}
    });
    sets.create(&PostParams::default(), &set(4, &image_a, strategy)).await?;
    rolled_out(&sets, 4, Duration::from_secs(120)).await?;

    sets.patch("web", &PatchParams::default(), &Patch::Merge(app_image_patch(&image_b))).await?;
    wait_for(&sets, "web", Duration::from_secs(120), "2 pods updated", |s: Option<&InplaceSet>| {
        s.and_then(|s| Some((s.metadata.generation, s.status.as_ref()?)))
            .is_some_and(|(generation, st)| st.observed_generation == generation && st.updated_ready_replicas == 2)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let image_of = |p: &Pod| {
        p.spec.as_ref().and_then(|s| s.containers.iter().find(|c| c.name == "app")).and_then(|c| c.image.clone())
    };
    for i in 0..4 {
        let p = pods.get(&format!("web-{i}")).await?;
        let want = if i < 2 { &image_a } else { &image_b };
        assert_eq!(image_of(&p).as_ref(), Some(want), "web-{i} under partition 2");
    }

    // Pause, lower the partition: nothing moves until resumed.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"paused": true, "partition": 0}}})),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(image_of(&pods.get("web-0").await?).as_ref(), Some(&image_a), "paused");
    let paused = sets.get("web").await?;
    let condition = paused.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Paused").unwrap();
    assert_eq!(condition.status, "True");

    sets.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"updateStrategy": {"paused": false}}})))
        .await?;
    let done = rolled_out(&sets, 4, Duration::from_secs(120)).await?;
    assert_eq!(image_of(&pods.get("web-0").await?).as_ref(), Some(&image_b));
    // One InPlaceUpdateStarted Event per pass, not per pod: web-2 and web-3
    // started together, then web-0 and web-1.
    let (notes, occurred) = in_place_events(&ns, "InPlaceUpdateStarted").await?;
    assert!((1..4).contains(&occurred), "InPlaceUpdateStarted {occurred} times for 4 pods: {notes:?}");
    assert!(notes.iter().any(|n| n.starts_with("updating in place 2 pods: web-")), "{notes:?}");
    let (notes, occurred) = in_place_events(&ns, "InPlaceUpdateDone").await?;
    assert!((1..=4).contains(&occurred), "InPlaceUpdateDone {occurred} times for 4 pods: {notes:?}");

    // revisionHistoryLimit 0: once no pod runs the old revision, only the current one is kept.
    let revisions: Api<ControllerRevision> = ns.api();
    let mut names = Vec::new();
    for _ in 0..50 {
        names = revisions.list(&ListParams::default()).await?.items.iter().map(|r| r.name_any()).collect();
        if names.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(names, [done.status.unwrap().update_revision.unwrap()]);
    ns.delete().await
}

#[tokio::test]
async fn a_change_that_cannot_go_in_place_recreates_or_is_refused_per_strategy() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "ips-recreate").await?;
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    let (image_a, _) = images();
    let strategy =
        json!({"podManagementPolicy": "Parallel", "updateStrategy": {"type": "InPlaceOnly", "maxUnavailable": 2}});
    sets.create(&PostParams::default(), &set(2, &image_a, strategy)).await?;
    rolled_out(&sets, 2, Duration::from_secs(120)).await?;
    let uid_before = pods.get("web-0").await?.uid();

    // An env change cannot be applied to a running container.
    let with_env = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": image_a, "env": [{"name": "MODE", "value": "fast"}]},
        {"name": "log", "image": image_a}
    ]}}}});
    sets.patch("web", &PatchParams::default(), &Patch::Merge(&with_env)).await?;
    let refused = wait_for(&sets, "web", Duration::from_secs(60), "FailedUpdate", |s: Option<&InplaceSet>| {
        s.and_then(|s| s.status.as_ref())
            .is_some_and(|st| st.conditions.iter().any(|c| c.type_ == "FailedUpdate" && c.status == "True"))
    })
    .await?;
    let condition = refused.status.unwrap().conditions.into_iter().find(|c| c.type_ == "FailedUpdate").unwrap();
    assert!(
        condition.message.contains("cannot be updated in place under InPlaceOnly: spec.containers[app].env changed"),
        "{}",
        condition.message
    );
    assert_eq!(pods.get("web-0").await?.uid(), uid_before, "InPlaceOnly leaves the pod alone");

    // InPlaceIfPossible recreates those pods at the new revision.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"type": "InPlaceIfPossible"}}})),
    )
    .await?;
    rolled_out(&sets, 2, Duration::from_secs(120)).await?;
    let recreated = pods.get("web-0").await?;
    assert_ne!(recreated.uid(), uid_before, "recreated as a new pod");
    let env = recreated.spec.unwrap().containers[0].env.clone().unwrap_or_default();
    assert_eq!(env.first().map(|e| e.name.as_str()), Some("MODE"));
    let done = sets.get("web").await?.status.unwrap();
    let failed = done.conditions.iter().find(|c| c.type_ == "FailedUpdate").unwrap();
    assert_eq!(failed.status, "False", "the condition clears once nothing is blocked");
    ns.delete().await
}

#[tokio::test]
async fn kubectl_scale_through_the_scale_subresource_removes_the_highest_ordinals() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "ips-scale").await?;
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    sets.create(&PostParams::default(), &set(4, &images().0, json!({}))).await?;
    rolled_out(&sets, 4, Duration::from_secs(120)).await?;
    let scale = sets.get_scale("web").await?;
    assert_eq!(scale.status.and_then(|s| s.selector).as_deref(), Some("app=web"), "HPA-readable selector");

    sets.patch_scale("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}}))).await?;
    rolled_out(&sets, 2, Duration::from_secs(120)).await?;
    let mut names = Vec::new();
    for _ in 0..100 {
        names = pods
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.name_any())
            .collect::<Vec<_>>();
        if names.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    names.sort();
    assert_eq!(names, ["web-0", "web-1"]);
    ns.delete().await
}

#[tokio::test]
async fn a_pre_update_hook_holds_each_pod_until_released() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "ips-hook").await?;
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    let (image_a, image_b) = images();
    let hook = json!({"podManagementPolicy": "Parallel", "lifecycle": {"preUpdate": {"labels": {"example.com/drain": "pending"}}}});
    sets.create(&PostParams::default(), &set(2, &image_a, hook)).await?;
    rolled_out(&sets, 2, Duration::from_secs(120)).await?;
    let state = |p: &Pod| p.annotations().get(berth_api::keys::LIFECYCLE_STATE).cloned().unwrap_or_default();
    assert_eq!(state(&pods.get("web-0").await?), "Normal");

    sets.patch("web", &PatchParams::default(), &Patch::Merge(app_image_patch(&image_b))).await?;
    for name in ["web-1", "web-0"] {
        let held = wait_for(&pods, name, Duration::from_secs(60), "held in PreparingUpdate", |p: Option<&Pod>| {
            p.is_some_and(|p| p.labels().get("example.com/drain").map(String::as_str) == Some("pending"))
        })
        .await?;
        assert_eq!(state(&held), "PreparingUpdate");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let still = pods.get(name).await?;
        assert_eq!(state(&still), "PreparingUpdate", "{name} waits for the hook");
        assert_eq!(
            container(&still, "app").map(|c| c.image_id.clone()),
            Some(image_a.clone()),
            "{name} not updated yet"
        );
        // Release: what the user's drain controller would do.
        pods.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"example.com/drain": null}}})),
        )
        .await?;
        wait_for(&pods, name, Duration::from_secs(60), "updated and Normal", |p: Option<&Pod>| {
            p.is_some_and(|p| {
                container(p, "app").is_some_and(|c| c.image_id == images().1)
                    && p.annotations().get(berth_api::keys::LIFECYCLE_STATE).map(String::as_str) == Some("Normal")
            })
        })
        .await?;
    }
    rolled_out(&sets, 2, Duration::from_secs(60)).await?;
    ns.delete().await
}

#[tokio::test]
async fn a_grace_period_drains_the_pod_before_its_containers_change() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "ips-grace").await?;
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    let (image_a, image_b) = images();
    let graced = json!({"updateStrategy": {"inPlaceUpdateStrategy": {"gracePeriodSeconds": 4}}});
    sets.create(&PostParams::default(), &set(1, &image_a, graced)).await?;
    rolled_out(&sets, 1, Duration::from_secs(120)).await?;

    sets.patch("web", &PatchParams::default(), &Patch::Merge(app_image_patch(&image_b))).await?;
    wait_for(&pods, "web-0", Duration::from_secs(60), "out of endpoints", |p: Option<&Pod>| {
        p.is_some_and(|p| !ready(p))
    })
    .await?;
    let closed_at = std::time::Instant::now();
    let spec_image = |p: &Pod| p.spec.as_ref().and_then(|s| s.containers[0].image.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(spec_image(&pods.get("web-0").await?), Some(image_a.clone()), "containers unchanged while draining");
    wait_for(&pods, "web-0", Duration::from_secs(60), "image changed", |p: Option<&Pod>| {
        p.is_some_and(|p| spec_image(p).as_deref() == Some(images().1.as_str()))
    })
    .await?;
    assert!(
        closed_at.elapsed() >= Duration::from_secs(3),
        "changed after {:?}, before the grace period",
        closed_at.elapsed()
    );
    rolled_out(&sets, 1, Duration::from_secs(60)).await?;
    ns.delete().await
}
