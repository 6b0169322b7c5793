//! Carries out the planner's actions, one API call (or a guarded few) each.

use std::collections::BTreeMap;

use berth_api::{InplaceSet, inplaceset::LifecycleHook, keys, lifecycle::LifecycleState};
use berth_inplace::{apply, patch};
use k8s_openapi::{
    api::core::v1::{PersistentVolumeClaim, Pod, PodTemplateSpec},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::events::EventType,
};
use serde_json::json;
use tracing::info;

use crate::{
    Action,
    controller::{Context, Error, publish},
    pod::{new_claim, new_pod},
};

/// Carries out `action`; `Ok(false)` when there was nothing to do (the pod
/// already exists, the start was already made).
pub async fn execute(
    ctx: &Context,
    set: &InplaceSet,
    pods: &Api<Pod>,
    templates: &BTreeMap<String, PodTemplateSpec>,
    action: &Action,
) -> Result<bool, Error> {
    let now = Timestamp::now();
    match action {
        Action::Create { ordinal, revision, avoid_nodes } => {
            let template = templates.get(revision).ok_or_else(|| Error::BadRevision {
                name: revision.clone(),
                reason: "not found for a pod to create".into(),
            })?;
            let pod = new_pod(set, *ordinal, revision, template, avoid_nodes);
            match pods.create(&PostParams::default(), &pod).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => return Ok(false), // already created; the cache lags
                // The namespace is going away (its pods before the set): nothing to do.
                Err(kube::Error::Api(s)) if namespace_terminating(&s) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
            // The Event is one per run of creations, from the caller.
            info!(inplaceset = %set.name_any(), pod = %pod.name_any(), %revision, "created pod");
        }
        Action::ScaleDown { name } | Action::Recreate { name, .. } => {
            pods.delete(name, &DeleteParams::default()).await?;
            let why = match action {
                Action::Recreate { reasons, .. } => format!("recreate for the update revision: {}", reasons.join(", ")),
                _ => "scale down".to_string(),
            };
            info!(inplaceset = %set.name_any(), pod = %name, %why, "deleted pod");
            publish(
                ctx,
                set,
                Some(name),
                EventType::Normal,
                "SuccessfulDelete",
                "Delete",
                format!("deleted pod {name}: {why}"),
            )
            .await;
        }
        Action::StartInPlace { name, revision, changes } => {
            let message = format!("updating in place to {revision}");
            // Out of endpoints, then the containers change. The lifecycle state
            // (Normal with no preUpdate hook, else PreparingUpdate) moves to
            // Updating in the same guarded patch: every pod write before the
            // restart costs the kubelet one more relist (about 1 s) per pod.
            let gated = apply::set_gate(pods, name, false, "InPlaceUpdating", &message, now).await?;
            let mut changes = changes.clone();
            changes.annotations.insert(keys::LIFECYCLE_STATE.into(), Some(LifecycleState::Updating.as_str().into()));
            let revision_of = |p: &Pod| p.labels().get(keys::CONTROLLER_REVISION_HASH).cloned();
            let label = Some(keys::CONTROLLER_REVISION_HASH);
            if !apply::start(pods, gated, revision, label, &changes, revision_of, now).await? {
                return Ok(false);
            }
            let images: Vec<_> = changes.images.iter().map(|(c, i)| format!("{c}={i}")).collect();
            // The Event is one per pass, from the caller.
            info!(inplaceset = %set.name_any(), pod = %name, %revision, ?images, "started in-place update");
        }
        Action::StartResize { name, revision, request } => {
            let revision_of = |p: &Pod| p.labels().get(keys::CONTROLLER_REVISION_HASH).cloned();
            if !apply::start_resize(pods, name, revision, request, revision_of, now).await? {
                return Ok(false);
            }
            let wanted = serde_json::to_string(request).unwrap_or_default();
            info!(inplaceset = %set.name_any(), pod = %name, %revision, request = %wanted, "submitted resize");
            publish(
                ctx,
                set,
                Some(name),
                EventType::Normal,
                "ResizeRequested",
                "Update",
                format!("{name}: resizing in place for {revision}: {wanted}"),
            )
            .await;
        }
        Action::FinishInPlace { name } => {
            // The lifecycle write starts from the pod the gate write returned (guarded, re-read on a conflict).
            let pod = apply::set_gate(pods, name, true, "InPlaceUpdated", "", now).await?;
            if lifecycle_of(&pod) == Some(LifecycleState::Updating) {
                // One write drops the update record and leaves Updating.
                let hook = set.spec.lifecycle.as_ref().and_then(|l| l.post_update.clone());
                let to = LifecycleState::after_update(hook.is_some());
                transition_clearing(pods, &pod, to, hook.as_ref(), &[keys::INPLACE_UPDATE_STATE]).await?;
            } else {
                pods.patch(name, &PatchParams::default(), &Patch::Strategic(patch::finish_patch())).await?;
            }
            // The Event is one per pass, from the caller.
            info!(inplaceset = %set.name_any(), pod = %name, "finished in-place update");
        }
        Action::CloseGate { name } => {
            let message = "leaving Service endpoints ahead of an in-place update";
            prepare_update(pods, name, "InPlaceUpdatePending", message, now).await?;
            info!(inplaceset = %set.name_any(), pod = %name, "closed readiness gate; update starts after the grace period");
        }
        Action::Transition { name, to, hook } => {
            let pod = pods.get(name).await?;
            transition(pods, &pod, *to, hook.as_ref()).await?;
            info!(inplaceset = %set.name_any(), pod = %name, to = %to, "lifecycle transition");
            publish(ctx, set, Some(name), EventType::Normal, "Lifecycle", "Lifecycle", format!("{name} is now {to}"))
                .await;
        }
        Action::OpenGate { name, version } => {
            if !apply::reopen_gate(pods, name, version.as_deref(), now).await? {
                return Ok(false);
            }
        }
        Action::DeleteRequested { name } => {
            delete_pod(pods, name).await?;
            forget_pod_to_delete(ctx, set, name).await?;
            info!(inplaceset = %set.name_any(), pod = %name, "deleted pod named in scaleStrategy.podsToDelete");
            let note = format!("deleted pod {name}: named in scaleStrategy.podsToDelete");
            publish(ctx, set, Some(name), EventType::Normal, "SuccessfulDelete", "Delete", note).await;
        }
        Action::ForgetPodToDelete { name } => {
            forget_pod_to_delete(ctx, set, name).await?;
            let note = format!("scaleStrategy.podsToDelete named {name}, which is not a pod of this set; dropped it");
            publish(ctx, set, None, EventType::Warning, "UnknownPodToDelete", "Delete", note).await;
        }
        Action::Retry { name, node, attempt } => {
            delete_pod(pods, name).await?;
            let place = node.as_ref().map_or("unschedulable".to_string(), |n| format!("Failed on node {n}"));
            let note = format!("recreating {name} ({place}), attempt {attempt}, away from the nodes it failed on");
            info!(inplaceset = %set.name_any(), pod = %name, attempt, node = node.as_deref().unwrap_or(""), "retry on other nodes");
            publish(ctx, set, Some(name), EventType::Warning, "RetryOnOtherNode", "Recreate", note).await;
        }
        Action::CreateClaim { name, template, ordinal } => {
            let spec = set.spec.volume_claim_templates.iter().find(|t| t.metadata.name.as_deref() == Some(template));
            let spec = spec.ok_or_else(|| Error::BadClaimTemplate(template.clone()))?;
            let claims = claims_api(ctx, set);
            match claims.create(&PostParams::default(), &new_claim(set, spec, *ordinal)).await {
                Ok(_) => info!(inplaceset = %set.name_any(), claim = %name, "created claim"),
                Err(kube::Error::Api(s)) if s.code == 409 || namespace_terminating(&s) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Action::DeleteClaim { name } => {
            let claims = claims_api(ctx, set);
            match claims.delete(name, &DeleteParams::default()).await {
                Ok(_) => {
                    let note = format!("deleted claim {name}: its pod was scaled away (whenScaled: Delete)");
                    publish(ctx, set, None, EventType::Normal, "SuccessfulDeleteClaim", "Delete", note).await;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Action::SetClaimOwner { name, owned } => {
            let claims = claims_api(ctx, set);
            let claim = claims.get(name).await?;
            let mut owners: Vec<_> =
                claim.owner_references().iter().filter(|o| Some(&o.uid) != set.uid().as_ref()).cloned().collect();
            if *owned {
                owners.extend(set.controller_owner_ref(&()).map(|mut r| {
                    r.controller = Some(false); // the set owns it for deletion, not as its controller
                    r
                }));
            }
            let patch = json!({"metadata": {"resourceVersion": claim.resource_version(), "ownerReferences": owners}});
            claims.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
            info!(inplaceset = %set.name_any(), claim = %name, owned, "claim owner reference per whenDeleted");
        }
    }
    Ok(true)
}

fn claims_api(ctx: &Context, set: &InplaceSet) -> Api<PersistentVolumeClaim> {
    Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default())
}

async fn delete_pod(pods: &Api<Pod>, name: &str) -> Result<(), Error> {
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes `name` from the set's `scaleStrategy.podsToDelete`, guarded by the
/// set's resourceVersion (re-read and retried on a conflict).
async fn forget_pod_to_delete(ctx: &Context, set: &InplaceSet, name: &str) -> Result<(), Error> {
    let sets: Api<InplaceSet> = Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    for attempt in 1.. {
        let current = sets.get(&set.name_any()).await?;
        let list = current.spec.scale_strategy.map(|s| s.pods_to_delete).unwrap_or_default();
        if !list.iter().any(|n| n == name) {
            return Ok(());
        }
        let rest: Vec<_> = list.into_iter().filter(|n| n != name).collect();
        let patch = json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "spec": {"scaleStrategy": {"podsToDelete": rest}},
        });
        match sets.patch(&set.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => continue,
            result => return result.map(|_| ()).map_err(Error::from),
        }
    }
    unreachable!("the loop returns")
}

/// Moves a Normal pod to PreparingUpdate, then closes its gate. Lifecycle
/// first: closing the gate makes the kubelet rewrite the pod's status, which
/// would race the resourceVersion-guarded lifecycle write.
async fn prepare_update(pods: &Api<Pod>, name: &str, reason: &str, message: &str, now: Timestamp) -> Result<(), Error> {
    let pod = pods.get(name).await?;
    if matches!(lifecycle_of(&pod), None | Some(LifecycleState::Normal)) {
        transition(pods, &pod, LifecycleState::PreparingUpdate, None).await?;
    }
    apply::set_gate(pods, name, false, reason, message, now).await?;
    Ok(())
}

fn lifecycle_of(pod: &Pod) -> Option<LifecycleState> {
    pod.annotations().get(keys::LIFECYCLE_STATE).and_then(|s| s.parse().ok())
}

/// Moves the pod's lifecycle state (refusing an illegal change) and adds the
/// hook's labels and finalizers, guarded by the pod's resourceVersion. The
/// kubelet writes pods often (status after a gate change): on a conflict,
/// re-read and try again while the move is still legal.
async fn transition(pods: &Api<Pod>, pod: &Pod, to: LifecycleState, hook: Option<&LifecycleHook>) -> Result<(), Error> {
    transition_clearing(pods, pod, to, hook, &[]).await
}

/// [`transition`], removing the annotations `clear` in the same write.
async fn transition_clearing(
    pods: &Api<Pod>,
    pod: &Pod,
    to: LifecycleState,
    hook: Option<&LifecycleHook>,
    clear: &[&str],
) -> Result<(), Error> {
    let mut pod = pod.clone();
    for attempt in 1.. {
        let from = lifecycle_of(&pod);
        let from =
            if from.is_none() && to != LifecycleState::PreparingNormal { Some(LifecycleState::Normal) } else { from };
        LifecycleState::check_change(from, Some(to)).map_err(|e| Error::Lifecycle(pod.name_any(), e))?;
        let mut finalizers = pod.finalizers().to_vec();
        let mut labels = serde_json::Map::new();
        if let Some(hook) = hook {
            finalizers.extend(hook.finalizers.iter().filter(|f| !pod.finalizers().contains(f)).cloned());
            labels.extend(hook.labels.iter().map(|(k, v)| (k.clone(), json!(v))));
        }
        let mut annotations = serde_json::Map::from_iter([(keys::LIFECYCLE_STATE.to_string(), json!(to.as_str()))]);
        annotations.extend(clear.iter().map(|key| (key.to_string(), serde_json::Value::Null)));
        let patch = json!({"metadata": {
            "resourceVersion": pod.resource_version(),
            "annotations": annotations,
            "labels": labels,
            "finalizers": finalizers,
        }});
        match pods.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => pod = pods.get(&pod.name_any()).await?,
            result => return result.map(|_| ()).map_err(Error::from),
        }
    }
    unreachable!("the loop returns")
}

fn namespace_terminating(status: &kube::core::Status) -> bool {
    status.code == 403
        && status.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
}
