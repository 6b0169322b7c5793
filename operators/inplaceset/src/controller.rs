//! The InplaceSet controller's I/O: observe (sets, a label-filtered pod cache,
//! ControllerRevisions), [`crate::plan`], then execute each action and write
//! status with server-side apply. All decisions live in the planner.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use berth_api::{
    InplaceSet,
    inplaceset::{PodManagementPolicy, RolloutStatus, claim_ordinal},
    keys,
};
use berth_inplace::{
    controllers::{Pacer, apply_status},
    pods::{CachedPod, PodCache},
    revision::revision_name,
};
use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::ControllerRevision,
        core::v1::{ObjectReference, PersistentVolumeClaim, Pod, PodTemplateSpec},
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
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tracing::{info, warn};

use crate::{Action, Observed, PodView, execute::execute, history, observed::ClaimView, status};

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
    #[error("revision name {0} is taken by another template (hash collision)")]
    HashCollision(String),
    #[error("spec.volumeClaimTemplates has no template named {0:?}")]
    BadClaimTemplate(String),
}

pub struct Context {
    pub(crate) client: Client,
    pods: PodCache,
    claims: Store<PersistentVolumeClaim>,
    /// Every set's ControllerRevisions, so a reconcile reads its history without a LIST.
    revisions: Store<ControllerRevision>,
    recorder: Recorder,
    /// Pod writes (creations, in-place steps) in flight at once for one set.
    pod_writes: usize,
    /// Spaces out the reconciles of one set (by namespace/name).
    pacer: Pacer<String>,
}

/// Runs the controller until a shutdown signal, reading pods from the
/// manager's shared pod cache ([`berth_inplace::pods::SharedPods`]).
/// `pod_writes` bounds the pod writes one set has in flight (see
/// [`crate::plan::runs`]); one set is reconciled at most once per `interval`.
pub async fn run(
    client: Client,
    pods: PodCache,
    pod_events: impl futures::Stream<Item = Arc<CachedPod>> + Send + 'static,
    pod_writes: usize,
    interval: Duration,
) {
    // Claims from volumeClaimTemplates carry the set label too; they are read, not watched for changes.
    let (claims, claim_stream) = labelled_cache::<PersistentVolumeClaim>(&client);
    // So do the sets' revisions; a reconcile that does not find its revision
    // here reads them from the API before it creates one.
    let (revisions, revision_stream) = labelled_cache::<ControllerRevision>(&client);
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: pods.clone(),
        claims: claims.clone(),
        revisions: revisions.clone(),
        recorder,
        pod_writes: pod_writes.max(1),
        pacer: Pacer::new(interval),
    });
    let controller = async move {
        // Plan only from full caches: an empty one would look like missing pods.
        if pods.wait_until_ready().await.is_err()
            || claims.wait_until_ready().await.is_err()
            || revisions.wait_until_ready().await.is_err()
        {
            warn!("pod, claim or revision cache never became ready");
            return;
        }
        let results = Controller::new(Api::<InplaceSet>::all(client), watcher::Config::default())
            .reconcile_on(pod_events.filter_map(|pod| futures::future::ready(owner_of(&pod))))
            .shutdown_on_signal()
            .run(reconcile, error_policy, ctx);
        berth_inplace::controllers::run_logged(results, "inplaceset").await;
    };
    // The claim and revision watches live exactly as long as the controller (a fenced leader drops all).
    let claim_watch = async {
        futures::join!(claim_stream, revision_stream);
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = controller => {}
        () = claim_watch => {}
    }
}

/// A cache of every `K` carrying the set label (managedFields dropped), and
/// the watch that fills it.
fn labelled_cache<K>(client: &Client) -> (Store<K>, impl std::future::Future<Output = ()> + use<K>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let watch = watcher(Api::<K>::all(client.clone()), watcher::Config::default().labels(keys::INPLACESET_NAME))
        .default_backoff()
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        .for_each(|_| futures::future::ready(()));
    (store, watch)
}

/// The InplaceSet controlling `pod`, to reconcile when it changes.
fn owner_of(pod: &CachedPod) -> Option<ObjectRef<InplaceSet>> {
    let owner = pod.controller()?;
    (*owner.kind == *InplaceSet::kind(&())).then(|| ObjectRef::new(&owner.name).within(pod.namespace()))
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
    let _paced = ctx.pacer.pace(format!("{ns}/{name}"), set.metadata.generation).await;
    let client = &ctx.client;
    let collision = set.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0);
    let update_revision = revision_name(&name, &set.spec.template, collision);
    let history = revisions_of(&ctx, &set, &ns);
    let (templates, revision_numbers) = match ensure_revisions(client, &set, &ns, history, &update_revision).await {
        Err(Error::HashCollision(taken)) => {
            warn!(inplaceset = %name, revision = %taken, "revision hash collision; bumping status.collisionCount");
            // A merge patch: an apply of this one field would drop the rest of the status.
            let bump = json!({"status": {"collisionCount": collision + 1}});
            let sets: Api<InplaceSet> = Api::namespaced(client.clone(), &ns);
            sets.patch_status(&name, &PatchParams::default(), &Patch::Merge(bump)).await?;
            return Ok(Requeue::requeue(Duration::from_millis(100)));
        }
        result => result?,
    };

    let owned = match set.uid() {
        Some(uid) => ctx.pods.controlled_by(&ns, &uid),
        None => Vec::new(),
    };
    let mut pods = Vec::new();
    for p in &owned {
        match PodView::from_pod(&name, p) {
            Ok(v) => pods.push(v),
            Err(e) => warn!(inplaceset = %name, error = %e, "ignoring pod"),
        }
    }
    let previous = set.status.clone().unwrap_or_default();
    let observed = Observed {
        name: name.clone(),
        spec: set.spec.clone(),
        pods,
        update_revision: update_revision.clone(),
        current_revision: previous.current_revision.clone(),
        templates: templates.clone(),
        claims: claims_of(&ctx, &set, &ns),
        previous,
        now: Timestamp::now(),
    };
    let plan = crate::plan(&observed);

    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut first_error = None;
    let mut failed_creates = Vec::new();
    // Actions on distinct pods go out together, up to the limit; the rest in order.
    let parallel = set.spec.pod_management_policy == PodManagementPolicy::Parallel;
    let mut results = Vec::with_capacity(plan.actions.len());
    for run in crate::plan::runs::concurrent_runs(&plan.actions, parallel) {
        // Indices, not references: a closure over `&Action` makes the future not Send.
        // Unordered: a slow write must not hold finished ones' slots (`buffered` would).
        let mut batch: Vec<_> = futures::stream::iter(run)
            .map(|i| {
                let (ctx, set, pods_api, templates, action) = (&ctx, &set, &pods_api, &templates, &plan.actions[i]);
                async move { (i, execute(ctx, set, pods_api, templates, action).await) }
            })
            .buffer_unordered(ctx.pod_writes)
            .collect()
            .await;
        batch.sort_by_key(|(i, _)| *i);
        results.extend(batch.into_iter().map(|(i, result)| (&plan.actions[i], result)));
    }
    let (mut created, mut started, mut updated) = (Vec::new(), Vec::new(), Vec::new());
    // The images of this pass's starts (one update revision: usually one set).
    let mut started_images = std::collections::BTreeSet::new();
    for (action, result) in results {
        match (action, result) {
            (Action::Create { ordinal, .. }, Ok(true)) => created.push(format!("{name}-{ordinal}")),
            (Action::StartInPlace { name, changes, .. }, Ok(true)) => {
                started.push(name.clone());
                let images = changes.images.iter().map(|(c, i)| format!("{c}={i}"));
                started_images.extend(images);
            }
            (Action::FinishInPlace { name }, Ok(true)) => updated.push(name.clone()),
            (_, Ok(_)) => {}
            (action, Err(e)) => {
                warn!(inplaceset = %name, ?action, error = %e, "action failed");
                if let Action::Create { ordinal, .. } | Action::CreateClaim { ordinal, .. } = action {
                    failed_creates.push(format!("{name}-{ordinal}: {e}"));
                }
                first_error.get_or_insert(e);
            }
        }
    }
    // One Event per pass, not per pod: a scale-up of thousands would double
    // the apiserver writes (and wait on each).
    if !created.is_empty() {
        let note = status::pods_note("created", &created);
        publish(&ctx, &set, None, EventType::Normal, "SuccessfulCreate", "Create", note).await;
    }
    if !started.is_empty() {
        let images = started_images.into_iter().collect::<Vec<_>>().join(", ");
        let note = format!("{} to {update_revision} ({images})", status::pods_note("updating in place", &started));
        publish(&ctx, &set, None, EventType::Normal, "InPlaceUpdateStarted", "Update", note).await;
    }
    if !updated.is_empty() {
        let note = status::pods_note("updated in place", &updated);
        publish(&ctx, &set, None, EventType::Normal, "InPlaceUpdateDone", "Update", note).await;
    }
    if !failed_creates.is_empty() {
        let note = status::summary(&failed_creates);
        publish(&ctx, &set, None, EventType::Warning, "FailedCreate", "Create", note).await;
    }
    if !plan.blocked.is_empty() {
        let lines: Vec<String> = plan.blocked.iter().map(status::describe).collect();
        publish(&ctx, &set, None, EventType::Warning, "UpdateBlocked", "Update", status::summary(&lines)).await;
    }
    report_rollout(&ctx, &set, observed.previous.rollout.as_ref(), plan.rollout.as_ref()).await;

    let mut in_use: std::collections::BTreeSet<String> =
        observed.pods.iter().filter_map(|p| p.revision.clone()).collect();
    in_use.extend(observed.current_revision.clone());
    in_use.extend(plan.rollout.as_ref().and_then(|r| r.rolled_back_to.clone()));
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    for old in history::prune(&revision_numbers, &in_use, &update_revision, set.spec.revision_history_limit) {
        match revisions.delete(&old, &DeleteParams::default()).await {
            Ok(_) => info!(inplaceset = %name, revision = %old, "pruned revision beyond revisionHistoryLimit"),
            // Pruned by an earlier pass; the cache had not seen it go yet.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => warn!(inplaceset = %name, revision = %old, error = %e, "could not prune revision"),
        }
    }

    let new_status = status::status(&observed, &plan, set.metadata.generation, &failed_creates);
    let was_stalled =
        set.status.iter().flat_map(|s| &s.conditions).any(|c| c.reason == status::PROGRESS_DEADLINE_EXCEEDED);
    let stalled = new_status.conditions.iter().find(|c| c.reason == status::PROGRESS_DEADLINE_EXCEEDED);
    if let (false, Some(c)) = (was_stalled, stalled) {
        publish(&ctx, &set, None, EventType::Warning, status::PROGRESS_DEADLINE_EXCEEDED, "Update", c.message.clone())
            .await;
    }
    let sets: Api<InplaceSet> = Api::namespaced(client.clone(), &ns);
    if !apply_status(&sets, FIELD_MANAGER, &name, set.status.as_ref(), &new_status).await? {
        return Ok(Requeue::await_change()); // deleted meanwhile
    }

    if let Some(e) = first_error {
        return Err(e);
    }
    // Work in flight is re-observed through the pod watch; this is the safety net.
    let busy = !plan.actions.is_empty() || observed.pods.iter().any(|p| !observed.available(p));
    let mut after = Duration::from_secs(if busy { 5 } else { 300 });
    if let Some(pause) = plan.requeue_after.and_then(|d| Duration::try_from(d).ok()) {
        after = after.min(pause + Duration::from_millis(100));
    }
    Ok(Requeue::requeue(after))
}

/// The set's claims from the claim cache.
fn claims_of(ctx: &Context, set: &InplaceSet, ns: &str) -> Vec<ClaimView> {
    let name = set.name_any();
    let templates: Vec<&str> =
        set.spec.volume_claim_templates.iter().filter_map(|t| t.metadata.name.as_deref()).collect();
    ctx.claims
        .state()
        .iter()
        .filter(|c| c.namespace().as_deref() == Some(ns) && c.labels().get(keys::INPLACESET_NAME) == Some(&name))
        .filter_map(|c| {
            let claim = c.name_any();
            let ordinal = templates.iter().find_map(|t| claim_ordinal(&claim, t, &name))?;
            Some(ClaimView {
                ordinal,
                owned_by_set: c.owner_references().iter().any(|o| Some(&o.uid) == set.uid().as_ref()),
                terminating: c.metadata.deletion_timestamp.is_some(),
                name: claim,
            })
        })
        .collect()
}

/// Events for rollout plan state changes (a batch done, paused, failed, rolled back).
async fn report_rollout(
    ctx: &Context,
    set: &InplaceSet,
    before: Option<&RolloutStatus>,
    after: Option<&RolloutStatus>,
) {
    let Some(after) = after else { return };
    let key = |r: &RolloutStatus| (r.revision.clone(), r.current_batch, r.state.clone());
    if before.map(key) == Some(key(after)) {
        return;
    }
    let failed = matches!(after.state.as_str(), crate::plan::rollout::FAILED | crate::plan::rollout::ROLLED_BACK);
    let type_ = if failed { EventType::Warning } else { EventType::Normal };
    let mut note = format!("rollout to {}: batch {} {}", after.revision, after.current_batch, after.state);
    if let Some(message) = &after.message {
        note = format!("{note}: {message}");
    }
    info!(inplaceset = %set.name_any(), batch = after.current_batch, state = %after.state, "rollout plan");
    publish(ctx, set, None, type_, &format!("Rollout{}", after.state), "Rollout", note).await;
}

/// A set's revisions: name → template, and (name, number) of each.
type History = (BTreeMap<String, PodTemplateSpec>, Vec<(String, i64)>);

/// The [`History`] of these revisions.
fn index_revisions<'a>(revisions: impl IntoIterator<Item = &'a ControllerRevision>) -> Result<History, Error> {
    let mut templates = BTreeMap::new();
    let mut numbers = Vec::new();
    for rev in revisions {
        let name = rev.name_any();
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
    Ok((templates, numbers))
}

/// The set's ControllerRevisions from the revision cache (not being deleted).
fn revisions_of(ctx: &Context, set: &InplaceSet, ns: &str) -> Vec<Arc<ControllerRevision>> {
    let name = set.name_any();
    ctx.revisions
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(ns) && r.labels().get(keys::INPLACESET_NAME) == Some(&name))
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .collect()
}

/// The set's ControllerRevisions (revision name → template, and numbers);
/// creates the one for the current template if it is missing. The cache
/// serves the usual pass; before a create the history is read from the API,
/// so a revision the cache has not seen yet cannot be given the same number.
async fn ensure_revisions(
    client: &Client,
    set: &InplaceSet,
    ns: &str,
    cached: Vec<Arc<ControllerRevision>>,
    update_revision: &str,
) -> Result<History, Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    let (mut templates, mut numbers) = index_revisions(cached.iter().map(|r| r.as_ref()))?;
    if !templates.contains_key(update_revision) {
        let selector = format!("{}={}", keys::INPLACESET_NAME, set.name_any());
        let listed = api.list(&ListParams::default().labels(&selector)).await?;
        (templates, numbers) = index_revisions(listed.items.iter())?;
    }
    let highest = numbers.iter().map(|(_, n)| *n).max().unwrap_or(0);
    // Same name, other template: a hash collision; the caller bumps collisionCount.
    if templates.get(update_revision).is_some_and(|t| *t != set.spec.template) {
        return Err(Error::HashCollision(update_revision.into()));
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
            // 409: another pass created it first (the name is the template's hash), or a collision.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let existing = api.get(update_revision).await?;
                let same = existing.data.0.get("template").cloned().and_then(|t| serde_json::from_value(t).ok());
                if same.as_ref() != Some(&set.spec.template) {
                    return Err(Error::HashCollision(update_revision.into()));
                }
            }
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
pub(crate) async fn publish(
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
