//! The InplaceSet controller's I/O: observe (sets, a label-filtered pod cache,
//! ControllerRevisions), [`crate::plan`], then execute each action and write
//! status with server-side apply. All decisions live in the planner.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use berth_api::{InplaceSet, inplaceset::LifecycleHook, keys, lifecycle::LifecycleState};
use berth_inplace::{patch, revision::revision_name};
use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::ControllerRevision,
        core::v1::{ObjectReference, Pod, PodTemplateSpec},
    },
    apimachinery::pkg::runtime::RawExtension,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action as Requeue,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::json;
use tracing::{info, warn};

use crate::{Action, Observed, PodView, history, pod::new_pod, status};

pub const FIELD_MANAGER: &str = "berth-manager";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("InplaceSet {0} has no namespace")]
    NoNamespace(String),
    #[error("pod {0}: {1}")]
    Lifecycle(String, berth_api::lifecycle::LifecycleError),
    #[error("ControllerRevision {name}: {reason}")]
    BadRevision { name: String, reason: String },
}

pub struct Context {
    client: Client,
    pods: Store<Pod>,
    recorder: Recorder,
}

/// Runs the controller until a shutdown signal.
pub async fn run(client: Client) {
    // One pod watch, limited to pods InplaceSets own (they carry the set label).
    let pods_api: Api<Pod> = Api::all(client.clone());
    let (pods, writer) = reflector::store();
    let pod_stream = watcher(pods_api, watcher::Config::default().labels(keys::INPLACESET_NAME))
        .default_backoff()
        .modify(|p| p.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects();
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let ctx = Arc::new(Context { client: client.clone(), pods, recorder: Recorder::new(client.clone(), reporter) });
    Controller::new(Api::<InplaceSet>::all(client), watcher::Config::default())
        .owns_stream(pod_stream)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                // error_policy has logged it, with the set's name; or the set is gone.
                Ok(_)
                | Err(kube::runtime::controller::Error::ReconcilerFailed(..))
                | Err(kube::runtime::controller::Error::ObjectNotFound(..)) => {}
                Err(e) => warn!(error = %e, "controller error"),
            }
        })
        .await;
}

fn error_policy(set: Arc<InplaceSet>, error: &Error, _: Arc<Context>) -> Requeue {
    warn!(inplaceset = %set.name_any(), namespace = set.namespace().unwrap_or_default(), %error, "reconcile error");
    Requeue::requeue(Duration::from_secs(5))
}

async fn reconcile(set: Arc<InplaceSet>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    if set.metadata.deletion_timestamp.is_some() {
        // Being deleted: the garbage collector removes its pods; creating more would fight it.
        return Ok(Requeue::await_change());
    }
    let ns = set.namespace().ok_or_else(|| Error::NoNamespace(set.name_any()))?;
    let name = set.name_any();
    let client = &ctx.client;
    let collision = set.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0);
    let update_revision = revision_name(&name, &set.spec.template, collision);
    let (templates, revision_numbers) = ensure_revisions(client, &set, &ns, &update_revision).await?;

    let uid = set.uid();
    let owned: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| p.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref() && o.controller == Some(true)))
        .collect();
    let mut pods = Vec::new();
    for p in &owned {
        match PodView::from_pod(&name, p) {
            Ok(v) => pods.push(v),
            Err(e) => warn!(inplaceset = %name, error = %e, "ignoring pod"),
        }
    }
    let observed = Observed {
        name: name.clone(),
        spec: set.spec.clone(),
        pods,
        update_revision: update_revision.clone(),
        current_revision: set.status.as_ref().and_then(|s| s.current_revision.clone()),
        templates: templates.clone(),
        now: Timestamp::now(),
    };
    let plan = crate::plan(&observed);

    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut first_error = None;
    for action in &plan.actions {
        if let Err(e) = execute(&ctx, &set, &pods_api, &templates, action).await {
            warn!(inplaceset = %name, ?action, error = %e, "action failed");
            first_error.get_or_insert(e);
        }
    }
    for blocked in &plan.blocked {
        publish(&ctx, &set, None, EventType::Warning, "UpdateBlocked", "Update", status::describe(blocked)).await;
    }

    let in_use = observed.pods.iter().filter_map(|p| p.revision.clone()).collect();
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    for old in history::prune(&revision_numbers, &in_use, &update_revision, set.spec.revision_history_limit) {
        match revisions.delete(&old, &DeleteParams::default()).await {
            Ok(_) => info!(inplaceset = %name, revision = %old, "pruned revision beyond revisionHistoryLimit"),
            Err(e) => warn!(inplaceset = %name, revision = %old, error = %e, "could not prune revision"),
        }
    }

    let new_status = status::status(&observed, &plan, set.metadata.generation, set.status.as_ref());
    let sets: Api<InplaceSet> = Api::namespaced(client.clone(), &ns);
    let apply = json!({"apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet", "status": new_status});
    sets.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(apply)).await?;

    if let Some(e) = first_error {
        return Err(e);
    }
    // Work in flight is re-observed through the pod watch; this is the safety net.
    let busy = !plan.actions.is_empty() || observed.pods.iter().any(|p| !observed.available(p));
    Ok(Requeue::requeue(Duration::from_secs(if busy { 5 } else { 300 })))
}

async fn execute(
    ctx: &Context,
    set: &InplaceSet,
    pods: &Api<Pod>,
    templates: &BTreeMap<String, PodTemplateSpec>,
    action: &Action,
) -> Result<(), Error> {
    let now = Timestamp::now();
    match action {
        Action::Create { ordinal, revision } => {
            let template = templates.get(revision).ok_or_else(|| Error::BadRevision {
                name: revision.clone(),
                reason: "not found for a pod to create".into(),
            })?;
            let pod = new_pod(set, *ordinal, revision, template);
            match pods.create(&PostParams::default(), &pod).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()), // already created; the cache lags
                // The namespace is going away (its pods before the set): nothing to do.
                Err(kube::Error::Api(s)) if namespace_terminating(&s) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            let name = pod.name_any();
            info!(inplaceset = %set.name_any(), pod = %name, %revision, "created pod");
            publish(
                ctx,
                set,
                Some(&name),
                EventType::Normal,
                "SuccessfulCreate",
                "Create",
                format!("created pod {name}"),
            )
            .await;
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
            prepare_update(pods, name, "InPlaceUpdating", &message, now).await?;
            start_in_place(pods, name, revision, changes, now).await?;
            let images: Vec<_> = changes.images.iter().map(|(c, i)| format!("{c}={i}")).collect();
            info!(inplaceset = %set.name_any(), pod = %name, %revision, ?images, "started in-place update");
            publish(
                ctx,
                set,
                Some(name),
                EventType::Normal,
                "InPlaceUpdateStarted",
                "Update",
                format!("{name}: {message} ({})", images.join(", ")),
            )
            .await;
        }
        Action::FinishInPlace { name } => {
            set_gate(pods, name, true, "InPlaceUpdated", "", now).await?;
            pods.patch(name, &PatchParams::default(), &Patch::Strategic(patch::finish_patch())).await?;
            let pod = pods.get(name).await?;
            if lifecycle_of(&pod) == Some(LifecycleState::Updating) {
                let hook = set.spec.lifecycle.as_ref().and_then(|l| l.post_update.clone());
                transition(pods, &pod, LifecycleState::Updated, hook.as_ref()).await?;
            }
            info!(inplaceset = %set.name_any(), pod = %name, "finished in-place update");
            publish(
                ctx,
                set,
                Some(name),
                EventType::Normal,
                "InPlaceUpdateDone",
                "Update",
                format!("{name} updated in place"),
            )
            .await;
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
        Action::OpenGate { name } => set_gate(pods, name, true, "Ready", "", now).await?,
    }
    Ok(())
}

/// Sets the pod's in-place readiness gate condition.
async fn set_gate(
    pods: &Api<Pod>,
    name: &str,
    open: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Result<(), Error> {
    let condition = Patch::Strategic(patch::readiness_patch(open, reason, message, now));
    pods.patch_status(name, &PatchParams::default(), &condition).await?;
    Ok(())
}

/// Moves a Normal pod to PreparingUpdate, then closes its gate. Lifecycle
/// first: closing the gate makes the kubelet rewrite the pod's status, which
/// would race the resourceVersion-guarded lifecycle write.
async fn prepare_update(pods: &Api<Pod>, name: &str, reason: &str, message: &str, now: Timestamp) -> Result<(), Error> {
    let pod = pods.get(name).await?;
    if matches!(lifecycle_of(&pod), None | Some(LifecycleState::Normal)) {
        transition(pods, &pod, LifecycleState::PreparingUpdate, None).await?;
    }
    set_gate(pods, name, false, reason, message, now).await
}

fn lifecycle_of(pod: &Pod) -> Option<LifecycleState> {
    pod.annotations().get(keys::LIFECYCLE_STATE).and_then(|s| s.parse().ok())
}

/// Moves the pod's lifecycle state (refusing an illegal change) and adds the
/// hook's labels and finalizers, guarded by the pod's resourceVersion.
async fn transition(pods: &Api<Pod>, pod: &Pod, to: LifecycleState, hook: Option<&LifecycleHook>) -> Result<(), Error> {
    let from = lifecycle_of(pod);
    let from =
        if from.is_none() && to != LifecycleState::PreparingNormal { Some(LifecycleState::Normal) } else { from };
    LifecycleState::check_change(from, Some(to)).map_err(|e| Error::Lifecycle(pod.name_any(), e))?;
    let mut finalizers = pod.finalizers().to_vec();
    let mut labels = serde_json::Map::new();
    if let Some(hook) = hook {
        finalizers.extend(hook.finalizers.iter().filter(|f| !pod.finalizers().contains(f)).cloned());
        labels.extend(hook.labels.iter().map(|(k, v)| (k.clone(), json!(v))));
    }
    let patch = json!({"metadata": {
        "resourceVersion": pod.resource_version(),
        "annotations": {keys::LIFECYCLE_STATE: to.as_str()},
        "labels": labels,
        "finalizers": finalizers,
    }});
    pods.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

fn namespace_terminating(status: &kube::core::Status) -> bool {
    status.code == 403
        && status.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
}

/// Sends the start patch. The kubelet rewrites the pod's status as the gate
/// closes, so the first try can meet a newer resourceVersion: re-read and
/// retry while the pod is still at the revision the plan saw.
async fn start_in_place(
    pods: &Api<Pod>,
    name: &str,
    revision: &str,
    changes: &berth_inplace::InPlaceChanges,
    now: Timestamp,
) -> Result<(), Error> {
    let mut current = pods.get(name).await?;
    let planned_from = current.labels().get(keys::CONTROLLER_REVISION_HASH).cloned();
    for attempt in 1.. {
        let mut start = patch::start_patch(&current, changes, revision, now);
        start["metadata"]["annotations"][keys::LIFECYCLE_STATE] = json!(LifecycleState::Updating.as_str());
        let start = Patch::Strategic(start);
        match pods.patch(name, &PatchParams::default(), &start).await {
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => {
                current = pods.get(name).await?;
                if current.labels().get(keys::CONTROLLER_REVISION_HASH) != planned_from.as_ref() {
                    return Ok(()); // someone else moved it; the next pass re-plans
                }
            }
            result => return result.map(|_| ()).map_err(Error::from),
        }
    }
    unreachable!("the loop returns")
}

/// Lists the set's ControllerRevisions (revision name → template) and
/// creates the one for the current template if it is missing.
async fn ensure_revisions(
    client: &Client,
    set: &InplaceSet,
    ns: &str,
    update_revision: &str,
) -> Result<(BTreeMap<String, PodTemplateSpec>, Vec<(String, i64)>), Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    let list =
        api.list(&ListParams::default().labels(&format!("{}={}", keys::INPLACESET_NAME, set.name_any()))).await?;
    let mut templates = BTreeMap::new();
    let mut numbers = Vec::new();
    let mut highest = 0;
    for rev in list.items {
        let name = rev.name_any();
        highest = highest.max(rev.revision.unwrap_or(0));
        numbers.push((name.clone(), rev.revision.unwrap_or(0)));
        let template = rev
            .data
            .0
            .get("template")
            .cloned()
            .ok_or_else(|| "no data.template".to_string())
            .and_then(|t| serde_json::from_value::<PodTemplateSpec>(t).map_err(|e| e.to_string()))
            .map_err(|reason| Error::BadRevision { name: name.clone(), reason })?;
        templates.insert(name, template);
    }
    if !templates.contains_key(update_revision) {
        let revision = ControllerRevision {
            metadata: ObjectMeta {
                name: Some(update_revision.into()),
                namespace: Some(ns.into()),
                labels: Some(BTreeMap::from([(keys::INPLACESET_NAME.into(), set.name_any())])),
                owner_references: set.controller_owner_ref(&()).map(|r| vec![r]),
                ..Default::default()
            },
            data: RawExtension(json!({"template": set.spec.template})),
            revision: Some(highest + 1),
        };
        match api.create(&PostParams::default(), &revision).await {
            // 409: another pass created it first; the name is the template's hash.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        templates.insert(update_revision.into(), set.spec.template.clone());
        numbers.push((update_revision.into(), highest + 1));
    }
    Ok((templates, numbers))
}

/// Records an Event on the set; `pod` names the pod it concerns (Events are
/// aggregated per reason and related object, so each pod keeps its own).
async fn publish(
    ctx: &Context,
    set: &InplaceSet,
    pod: Option<&str>,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let secondary = pod.map(|name| ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name.into()),
        namespace: set.namespace(),
        ..Default::default()
    });
    let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary };
    if let Err(e) = ctx.recorder.publish(&event, &set.object_ref(&())).await {
        warn!(inplaceset = %set.name_any(), error = %e, "could not record Event");
    }
}
