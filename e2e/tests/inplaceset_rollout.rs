//! InplaceSet rollouts on the real cluster: a batch plan that stops at each
//! pause and rolls back in place when a batch misses its deadline; surge pods
//! during recreate updates; update priority.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Result, ensure};
use berth_api::InplaceSet;
use berth_e2e::{
    TestNamespace, client, images,
    inplaceset::{app_image_patch, rolled_out, set},
    install_crds, wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

/// Pod name → (UID, node, revision label).
async fn pods_by_name(pods: &Api<Pod>) -> Result<BTreeMap<String, (String, String, String)>> {
    Ok(pods
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            let revision = p.labels().get("controller-revision-hash").cloned().unwrap_or_default();
            (p.name_any(), (p.uid().unwrap_or_default(), node, revision))
        })
        .collect())
}

fn rollout_at(s: Option<&InplaceSet>, batch: i32, state: &str) -> bool {
    s.and_then(|s| s.status.as_ref()?.rollout.as_ref()).is_some_and(|r| r.current_batch == batch && r.state == state)
}

fn updated(s: &InplaceSet) -> i32 {
    s.status.as_ref().map_or(0, |s| s.updated_replicas)
}

#[tokio::test]
async fn a_batch_plan_stops_at_each_pause_and_a_failed_batch_rolls_back_in_place() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "ips-batch").await?;
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    let (image_a, image_b) = images();
    let plan = json!({
        "batches": [
            {"replicas": 1, "pause": {"manual": true}},
            {"replicas": "50%", "pause": {"seconds": 5}},
            {"replicas": "100%"}
        ],
        "batchDeadlineSeconds": 120,
        "rollbackOnFailure": true
    });
    let extra =
        json!({"podManagementPolicy": "Parallel", "updateStrategy": {"maxUnavailable": 2}, "rolloutPlan": plan});
    sets.create(&PostParams::default(), &set(6, &image_a, extra)).await?;
    rolled_out(&sets, 6, Duration::from_secs(120)).await?;
    let original = pods_by_name(&pods).await?;

    // Batch 0 (one pod), then a manual pause that holds.
    sets.patch("web", &PatchParams::default(), &Patch::Merge(app_image_patch(&image_b))).await?;
    let s = wait_for(&sets, "web", Duration::from_secs(90), "paused after batch 0", |s: Option<&InplaceSet>| {
        rollout_at(s, 0, "Paused")
    })
    .await?;
    assert_eq!(updated(&s), 1);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = sets.get("web").await?;
    assert!(rollout_at(Some(&s), 0, "Paused"), "a manual pause holds: {:?}", s.status);
    assert_eq!(updated(&s), 1, "nothing moves while paused");

    // Approved: batch 1 (50% = 3 pods), then a timed pause, then the rest.
    sets.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"rolloutPlan": {"approvedBatches": 1}}})))
        .await?;
    let s = wait_for(&sets, "web", Duration::from_secs(90), "paused after batch 1", |s: Option<&InplaceSet>| {
        rollout_at(s, 1, "Paused")
    })
    .await?;
    assert_eq!(updated(&s), 3);
    rolled_out(&sets, 6, Duration::from_secs(120)).await?;
    // The last batch is done once its pods are available too (lifecycle back to Normal).
    let done = wait_for(&sets, "web", Duration::from_secs(60), "rollout succeeded", |s: Option<&InplaceSet>| {
        rollout_at(s, 2, "Succeeded")
    })
    .await?;
    let revision_b = done.status.as_ref().and_then(|s| s.update_revision.clone()).unwrap_or_default();
    let rolled = pods_by_name(&pods).await?;
    for (name, (uid, node, revision)) in &rolled {
        assert_eq!((uid, node), (&original[name].0, &original[name].1), "{name} kept its UID and node");
        assert_eq!(revision, &revision_b);
    }

    // A batch that never becomes available (minReadySeconds far away) misses its
    // deadline: the updated pod goes back to revision B, in place.
    // A short deadline for this rollout only.
    let broken = json!({"spec": {"minReadySeconds": 3600, "rolloutPlan": {"batchDeadlineSeconds": 10},
        "template": {"spec": {"containers": [
        {"name": "app", "image": image_a}, {"name": "log", "image": images().0}
    ]}}}});
    sets.patch("web", &PatchParams::default(), &Patch::Merge(broken)).await?;
    let s = wait_for(&sets, "web", Duration::from_secs(120), "rolled back", |s: Option<&InplaceSet>| {
        rollout_at(s, 0, "RolledBack")
    })
    .await?;
    let rollout = s.status.as_ref().and_then(|s| s.rollout.clone()).expect("rollout status");
    assert_eq!(rollout.rolled_back_to.as_deref(), Some(revision_b.as_str()));
    assert!(rollout.message.as_deref().unwrap_or_default().contains("rolled back to"), "{rollout:?}");
    let back = wait_for(&pods, "web-5", Duration::from_secs(90), "back at revision B", |p: Option<&Pod>| {
        p.is_some_and(|p| p.labels().get("controller-revision-hash") == Some(&revision_b))
    })
    .await?;
    let app = back.spec.as_ref().and_then(|s| s.containers.iter().find(|c| c.name == "app")).expect("app");
    assert_eq!(app.image.as_deref(), Some(image_b.as_str()), "the image went back in place");
    let after = pods_by_name(&pods).await?;
    for (name, (uid, node, revision)) in &after {
        assert_eq!((uid, node), (&original[name].0, &original[name].1), "{name} kept its UID and node");
        assert_eq!(revision, &revision_b, "{name} is at revision B");
    }
    let progressing = s.status.as_ref().and_then(|st| st.conditions.iter().find(|c| c.type_ == "Progressing")).cloned();
    assert_eq!(progressing.map(|c| (c.status, c.reason)), Some(("False".into(), "RolledBack".into())));
    ns.delete().await
}

#[tokio::test]
async fn recreate_updates_run_surge_pods_that_go_when_done() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "ips-surge").await?;
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    let (image_a, image_b) = images();
    let strategy = json!({"type": "Recreate", "maxSurge": 1, "maxUnavailable": 1});
    let extra = json!({"podManagementPolicy": "Parallel", "updateStrategy": strategy});
    sets.create(&PostParams::default(), &set(3, &image_a, extra)).await?;
    rolled_out(&sets, 3, Duration::from_secs(120)).await?;
    let original = pods_by_name(&pods).await?;

    let watch_surge = {
        let pods = pods.clone();
        tokio::spawn(async move {
            for _ in 0..600 {
                if pods.get_opt("web-3").await.ok().flatten().is_some() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        })
    };
    sets.patch("web", &PatchParams::default(), &Patch::Merge(app_image_patch(&image_b))).await?;
    ensure!(watch_surge.await?, "no surge pod web-3 appeared during the recreate update");
    rolled_out(&sets, 3, Duration::from_secs(180)).await?;
    // The surge pod goes once the recreated pods are available.
    let mut surge_left = true;
    for _ in 0..120 {
        surge_left = pods.get_opt("web-3").await?.is_some();
        if !surge_left {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!surge_left, "surge pod web-3 still there after the rollout");
    let after = pods_by_name(&pods).await?;
    assert_eq!(after.keys().collect::<Vec<_>>(), ["web-0", "web-1", "web-2"]);
    for (name, (uid, ..)) in &after {
        assert_ne!(uid, &original[name].0, "{name} was recreated (Recreate strategy)");
    }
    ns.delete().await
}

#[tokio::test]
async fn update_priority_picks_which_pods_update_first() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "ips-prio").await?;
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    let (image_a, image_b) = images();
    let priority = json!({"weights": [{"weight": 10, "matchSelector": {"matchLabels": {"canary": "true"}}}]});
    let extra = json!({"podManagementPolicy": "Parallel", "updateStrategy": {"partition": 2, "priority": priority}});
    sets.create(&PostParams::default(), &set(3, &image_a, extra)).await?;
    rolled_out(&sets, 3, Duration::from_secs(120)).await?;
    pods.patch("web-0", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"canary": "true"}}})))
        .await?;

    sets.patch("web", &PatchParams::default(), &Patch::Merge(app_image_patch(&image_b))).await?;
    let s = wait_for(&sets, "web", Duration::from_secs(90), "one pod updated", |s: Option<&InplaceSet>| {
        s.and_then(|s| s.status.as_ref()).is_some_and(|st| st.updated_ready_replicas == 1)
    })
    .await?;
    let revision = s.status.and_then(|s| s.update_revision).unwrap_or_default();
    let now = pods_by_name(&pods).await?;
    let updated: Vec<_> = now.iter().filter(|(_, (_, _, r))| *r == revision).map(|(n, _)| n.as_str()).collect();
    assert_eq!(updated, ["web-0"], "the canary-labelled pod goes first, though its ordinal is lowest");
    ns.delete().await
}
