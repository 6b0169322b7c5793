//! The shared in-place update library driven by hand against the real
//! cluster: the sequence an InplaceSet or SidecarSet executor sends, checked
//! against what the kubelet (simulated node) actually does.

use std::time::Duration;

use anyhow::{Result, bail};
use berth_api::keys;
use berth_e2e::{TestNamespace, client, images, pod_ready as ready, wait_for};
use berth_inplace::{UpdatePlan, patch, plan_update, progress::Progress};
use k8s_openapi::{
    api::core::v1::{Pod, PodTemplateSpec},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

fn template(app_image: &str, tier: &str) -> PodTemplateSpec {
    serde_json::from_value(json!({
        "metadata": {"labels": {"app": "web", "tier": tier}},
        "spec": {
            "readinessGates": [{"conditionType": keys::INPLACE_UPDATE_READY}],
            "containers": [{"name": "app", "image": app_image}, {"name": "log", "image": images().0}]
        }
    }))
    .unwrap()
}

fn gate(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == keys::INPLACE_UPDATE_READY)
        .map(|c| c.status.clone())
}

fn restarts(pod: &Pod, name: &str) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.name == name)
        .map_or(-1, |c| c.restart_count)
}

#[tokio::test]
async fn an_image_and_label_change_rolls_in_place_behind_the_readiness_gate() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "inplace").await?;
    let pods: Api<Pod> = ns.api();
    let (image_a, image_b) = images();
    let (old, new) = (template(&image_a, "v1"), template(&image_b, "v2"));

    let mut pod =
        Pod { metadata: old.metadata.clone().unwrap_or_default(), spec: old.spec.clone(), ..Default::default() };
    pod.metadata.name = Some("web-0".into());
    pods.create(&PostParams::default(), &pod).await?;
    let status = |p| Patch::Strategic(p);
    pods.patch_status(
        "web-0",
        &PatchParams::default(),
        &status(patch::readiness_patch(true, "Created", "", Timestamp::now())),
    )
    .await?;
    let before =
        wait_for(&pods, "web-0", Duration::from_secs(60), "Ready", |p: Option<&Pod>| p.is_some_and(ready)).await?;

    let UpdatePlan::InPlace(changes) = plan_update(&old, &new) else { bail!("expected an in-place plan") };
    // 1. Out of Service endpoints first.
    pods.patch_status(
        "web-0",
        &PatchParams::default(),
        &status(patch::readiness_patch(false, "InPlaceUpdating", "updating app", Timestamp::now())),
    )
    .await?;
    wait_for(&pods, "web-0", Duration::from_secs(30), "not Ready", |p: Option<&Pod>| p.is_some_and(|p| !ready(p)))
        .await?;
    // 2. The change itself.
    let current = pods.get("web-0").await?;
    pods.patch(
        "web-0",
        &PatchParams::default(),
        &Patch::Strategic(patch::start_patch(&current, &changes, "web-v2", Timestamp::now())),
    )
    .await?;
    // 3. Wait until the library says done; the gate keeps the pod unready meanwhile.
    let done = wait_for(&pods, "web-0", Duration::from_secs(90), "updated in place", |p: Option<&Pod>| {
        p.is_some_and(|p| matches!(berth_inplace::progress::progress(p), Ok(Progress::Done { .. })))
    })
    .await?;
    assert!(!ready(&done), "the readiness gate holds the pod out of endpoints until the update is confirmed");
    assert_eq!(gate(&done).as_deref(), Some("False"));
    // 4. Back in.
    pods.patch_status(
        "web-0",
        &PatchParams::default(),
        &status(patch::readiness_patch(true, "InPlaceUpdated", "", Timestamp::now())),
    )
    .await?;
    pods.patch("web-0", &PatchParams::default(), &Patch::Strategic(patch::finish_patch())).await?;
    let after =
        wait_for(&pods, "web-0", Duration::from_secs(30), "Ready again", |p: Option<&Pod>| p.is_some_and(ready))
            .await?;

    assert_eq!(after.uid(), before.uid(), "same pod");
    assert_eq!(
        after.spec.as_ref().and_then(|s| s.node_name.clone()),
        before.spec.as_ref().and_then(|s| s.node_name.clone())
    );
    assert_eq!(restarts(&after, "app"), 1, "the changed container restarted once");
    assert_eq!(restarts(&after, "log"), 0, "the unchanged container did not");
    assert_eq!(after.labels().get("tier").map(String::as_str), Some("v2"));
    assert_eq!(after.labels().get(keys::CONTROLLER_REVISION_HASH).map(String::as_str), Some("web-v2"));
    assert!(!after.annotations().contains_key(keys::INPLACE_UPDATE_STATE));
    assert_eq!(berth_inplace::progress::progress(&after), Ok(Progress::Idle));
    ns.delete().await
}

#[tokio::test]
async fn a_stale_plan_is_refused_by_the_resource_version() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "stale").await?;
    let pods: Api<Pod> = ns.api();
    let (old, new) = (template(&images().0, "v1"), template(&images().1, "v1"));
    let mut pod =
        Pod { metadata: old.metadata.clone().unwrap_or_default(), spec: old.spec.clone(), ..Default::default() };
    pod.metadata.name = Some("web-0".into());
    let created = pods.create(&PostParams::default(), &pod).await?;
    // Someone else changes the pod after the plan was made from `created`.
    pods.patch("web-0", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})))
        .await?;
    let UpdatePlan::InPlace(changes) = plan_update(&old, &new) else { bail!("expected an in-place plan") };
    let result = pods
        .patch(
            "web-0",
            &PatchParams::default(),
            &Patch::Strategic(patch::start_patch(&created, &changes, "web-v2", Timestamp::now())),
        )
        .await;
    let (code, message) = berth_e2e::refusal(result)?;
    assert_eq!(code, 409, "{message}");
    let unchanged = pods.get("web-0").await?;
    assert_eq!(unchanged.spec.unwrap().containers[0].image.as_deref(), Some(images().0.as_str()));
    ns.delete().await
}
