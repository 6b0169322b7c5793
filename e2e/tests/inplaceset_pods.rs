//! What happens to individual InplaceSet pods on the real cluster: claims from
//! volumeClaimTemplates kept or deleted per the retention policy, pods deleted
//! on request, and pods that cannot be scheduled retried a bounded number of times.

use std::time::Duration;

use anyhow::Result;
use berth_api::InplaceSet;
use berth_e2e::{
    TestNamespace, client, images,
    inplaceset::{rolled_out, set},
    install_crds, wait_for,
};
use k8s_openapi::api::{
    core::v1::{PersistentVolumeClaim, Pod},
    events::v1::Event,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

async fn claim_names(claims: &Api<PersistentVolumeClaim>) -> Result<Vec<String>> {
    let mut names: Vec<_> = claims
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .map(|c| c.name_any())
        .collect();
    names.sort();
    Ok(names)
}

/// Polls until `claims` holds exactly `want` (claims go through their
/// protection finalizer once their pod is gone).
async fn claims_become(claims: &Api<PersistentVolumeClaim>, want: &[&str]) -> Result<()> {
    let mut last = vec![];
    for _ in 0..120 {
        last = claim_names(claims).await?;
        if last == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("claims are {last:?}, expected {want:?}")
}

#[tokio::test]
async fn claims_are_created_per_pod_and_kept_or_deleted_per_the_retention_policy() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "ips-claims").await?;
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    let claims: Api<PersistentVolumeClaim> = ns.api();
    // No storage class binds these claims here, so the pods stay Pending; the
    // claims' life is what is under test. Parallel so all pods are created.
    let extra = json!({
        "podManagementPolicy": "Parallel",
        "volumeClaimTemplates": [{"metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete", "whenDeleted": "Retain"}
    });
    sets.create(&PostParams::default(), &set(3, &images().0, extra)).await?;
    claims_become(&claims, &["data-web-0", "data-web-1", "data-web-2"]).await?;
    let pod = wait_for(&pods, "web-2", Duration::from_secs(30), "created", |p: Option<&Pod>| p.is_some()).await?;
    let volume = pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).and_then(|v| v.iter().find(|v| v.name == "data"));
    let claim = volume.and_then(|v| v.persistent_volume_claim.as_ref()).map(|c| c.claim_name.clone());
    assert_eq!(claim.as_deref(), Some("data-web-2"), "the pod mounts its own claim");
    let labels = claims.get("data-web-2").await?.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("apps.kubernetes.io/pod-index").map(String::as_str), Some("2"));
    assert!(claims.get("data-web-0").await?.owner_references().is_empty(), "whenDeleted Retain: not owned");

    // whenScaled Delete: scaling to 1 removes the claims of web-1 and web-2 with their pods.
    sets.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}}))).await?;
    claims_become(&claims, &["data-web-0"]).await?;

    // whenDeleted Delete: the set comes to own the claim, so it goes with the set.
    let policy =
        json!({"spec": {"persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete", "whenDeleted": "Delete"}}});
    sets.patch("web", &PatchParams::default(), &Patch::Merge(policy)).await?;
    let uid = sets.get("web").await?.uid();
    wait_for(
        &claims,
        "data-web-0",
        Duration::from_secs(60),
        "owned by the set",
        |c: Option<&PersistentVolumeClaim>| {
            c.is_some_and(|c| c.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref()))
        },
    )
    .await?;
    sets.delete("web", &DeleteParams::foreground()).await?;
    claims_become(&claims, &[]).await?;

    // whenScaled Retain (the default): a scaled-away pod's claim stays, for a later scale-up.
    let extra = json!({"podManagementPolicy": "Parallel",
        "volumeClaimTemplates": [{"metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]});
    wait_for(&sets, "web", Duration::from_secs(60), "deleted", |s: Option<&InplaceSet>| s.is_none()).await.ok();
    sets.create(&PostParams::default(), &set(2, &images().0, extra)).await?;
    claims_become(&claims, &["data-web-0", "data-web-1"]).await?;
    sets.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}}))).await?;
    wait_for(&pods, "web-1", Duration::from_secs(60), "gone", |p: Option<&Pod>| p.is_none()).await.ok();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(claim_names(&claims).await?, ["data-web-0", "data-web-1"], "Retain keeps web-1's claim");
    ns.delete().await
}

#[tokio::test]
async fn a_pod_named_in_pods_to_delete_is_recreated_fresh_and_the_name_dropped() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "ips-ptd").await?;
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    sets.create(&PostParams::default(), &set(3, &images().0, json!({"podManagementPolicy": "Parallel"}))).await?;
    rolled_out(&sets, 3, Duration::from_secs(120)).await?;
    let old_uid = pods.get("web-1").await?.uid();
    let others = (pods.get("web-0").await?.uid(), pods.get("web-2").await?.uid());

    let request = json!({"spec": {"scaleStrategy": {"podsToDelete": ["web-1", "web-7"]}}});
    sets.patch("web", &PatchParams::default(), &Patch::Merge(request)).await?;
    wait_for(&pods, "web-1", Duration::from_secs(90), "recreated and Ready", |p: Option<&Pod>| {
        p.is_some_and(|p| p.uid() != old_uid && berth_e2e::pod_ready(p))
    })
    .await?;
    let s = wait_for(&sets, "web", Duration::from_secs(30), "list emptied", |s: Option<&InplaceSet>| {
        s.is_some_and(|s| s.spec.scale_strategy.as_ref().is_none_or(|st| st.pods_to_delete.is_empty()))
    })
    .await?;
    assert!(s.spec.scale_strategy.is_none_or(|st| st.pods_to_delete.is_empty()), "web-1 handled, web-7 unknown");
    assert_eq!((pods.get("web-0").await?.uid(), pods.get("web-2").await?.uid()), others, "other pods untouched");
    ns.delete().await
}

#[tokio::test]
async fn a_pod_that_stays_unschedulable_is_retried_a_bounded_number_of_times() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "ips-retry").await?;
    let sets: Api<InplaceSet> = ns.api();
    let events: Api<Event> = ns.api();
    let mut s = set(1, &images().0, json!({"retryOnOtherNodes": {"afterSeconds": 2, "maxAttempts": 2}}));
    s.spec.template.spec.as_mut().expect("spec").node_selector =
        Some([("berth.dev/no-such-node".into(), "x".into())].into());
    sets.create(&PostParams::default(), &s).await?;

    let s = wait_for(&sets, "web", Duration::from_secs(120), "retries exhausted", |s: Option<&InplaceSet>| {
        s.and_then(|s| s.status.as_ref()).is_some_and(|st| {
            st.retries.iter().any(|r| r.pod == "web-0" && r.attempts == 2)
                && st.conditions.iter().any(|c| c.type_ == "FailedUpdate" && c.message.contains("after 2 recreations"))
        })
    })
    .await?;
    let failed = s.status.as_ref().and_then(|st| st.conditions.iter().find(|c| c.type_ == "FailedUpdate")).cloned();
    assert_eq!(
        failed.map(|c| c.message),
        Some("web-0 is still unschedulable or Failed after 2 recreations on other nodes".into())
    );
    // Bounded: no third attempt.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = sets.get("web").await?;
    assert_eq!(s.status.as_ref().map(|st| st.retries[0].attempts), Some(2));
    let retried = events.list(&ListParams::default()).await?.items;
    let retried = retried.iter().filter(|e| e.reason.as_deref() == Some("RetryOnOtherNode")).count();
    assert!(retried >= 1, "RetryOnOtherNode Events recorded");
    ns.delete().await
}

#[tokio::test]
async fn a_revision_hash_collision_bumps_collision_count_and_leaves_the_other_revision_alone() -> Result<()> {
    use k8s_openapi::api::apps::v1::ControllerRevision;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "ips-collide").await?;
    let sets: Api<InplaceSet> = ns.api();
    let revisions: Api<ControllerRevision> = ns.api();
    let web = set(1, &images().0, json!({}));
    // A revision already holding the name the set's template hashes to, with another template.
    let taken = berth_inplace::revision::revision_name("web", &web.spec.template, 0);
    let rogue: ControllerRevision = serde_json::from_value(json!({
        "metadata": {"name": taken, "labels": {"berth.dev/inplaceset": "web"}},
        "data": {"template": {"metadata": {"labels": {"app": "other"}}, "spec": {"containers": [{"name": "x", "image": "x"}]}}},
        "revision": 1
    }))?;
    revisions.create(&PostParams::default(), &rogue).await?;
    sets.create(&PostParams::default(), &web).await?;

    let s = rolled_out(&sets, 1, Duration::from_secs(90)).await?;
    let status = s.status.expect("status");
    assert_eq!(status.collision_count, Some(1));
    let revision = status.update_revision.expect("update revision");
    assert_ne!(revision, taken);
    assert_eq!(revision, berth_inplace::revision::revision_name("web", &web.spec.template, 1));
    let kept = revisions.get(&taken).await?;
    assert_eq!(kept.data.0["template"]["metadata"]["labels"]["app"], "other", "the other revision is untouched");
    ns.delete().await
}
