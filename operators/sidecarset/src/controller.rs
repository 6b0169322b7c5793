//! The SidecarSet controller's I/O: observe (sets, the manager's shared pod
//! cache, revisions in the manager's namespace), [`crate::plan`], execute,
//! and write status with server-side apply. Decisions live in the planner.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use berth_api::{
    SidecarSet, keys,
    sidecarset::{InjectedRevision, injected_revisions, injected_revisions_in},
};
use berth_inplace::{
    apply,
    controllers::{Pacer, apply_status},
    pods::{CachedPod, PodCache},
};
use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::ControllerRevision,
        core::v1::{ObjectReference, Pod},
    },
    apimachinery::pkg::runtime::RawExtension,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{
        Controller,
        controller::Action as Requeue,
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{Event as Finalize, finalizer},
        reflector::ObjectRef,
        watcher,
    },
};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::{
    plan::{self, Action, Blocked, Observed, SidecarPod},
    revision::revision,
    status,
};

pub const FIELD_MANAGER: &str = "berth-manager";
/// Held on every SidecarSet so its deletion is reported (status, Event) before it goes.
pub const FINALIZER: &str = "berth.dev/sidecarset-report";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("revision name {0} is taken by another SidecarSet spec (hash collision)")]
    HashCollision(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

pub struct Context {
    client: Client,
    pods: PodCache,
    recorder: Recorder,
    /// Where the sets' ControllerRevisions live (SidecarSets are cluster-scoped).
    namespace: String,
    /// Pod writes one set has in flight at once.
    pod_writes: usize,
    /// Spaces out the reconciles of one set (by name).
    pacer: Pacer<String>,
    /// Per set, the revision last found in place and the revisions last kept
    /// by pruning: while they hold, a reconcile reads no revision from the API.
    checked: Mutex<HashMap<String, Checked>>,
}

/// How long a revision check or a pruning pass is trusted.
const RECHECK: Duration = Duration::from_secs(60);

/// What one set's last revision check and pruning found, and when.
#[derive(Clone, Default)]
struct Checked {
    revision: Option<(String, Instant)>,
    kept: Option<(BTreeSet<String>, Instant)>,
}

/// `found` is `value`, found less than [`RECHECK`] ago.
fn still<T: PartialEq>(found: &Option<(T, Instant)>, value: &T) -> bool {
    found.as_ref().is_some_and(|(v, at)| v == value && at.elapsed() < RECHECK)
}

impl Context {
    fn checked(&self, set: &str) -> Checked {
        let all = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        all.get(set).cloned().unwrap_or_default()
    }

    fn record(&self, set: &str, update: impl FnOnce(&mut Checked)) {
        let mut all = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        update(all.entry(set.to_string()).or_default());
    }
}

/// Runs the controller until a shutdown signal, reading pods from the
/// manager's shared pod cache; revisions go to `namespace`; `pod_writes`
/// bounds the pod writes one set has in flight; one set is reconciled at most
/// once per `interval`.
pub async fn run(
    client: Client,
    pods: PodCache,
    pod_events: impl futures::Stream<Item = Arc<CachedPod>> + Send + 'static,
    namespace: String,
    pod_writes: usize,
    interval: Duration,
) {
    if pods.wait_until_ready().await.is_err() {
        warn!("pod cache never became ready");
        return;
    }
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods,
        recorder: Recorder::new(client.clone(), reporter),
        namespace,
        pod_writes: pod_writes.max(1),
        pacer: Pacer::new(interval),
        checked: Mutex::new(HashMap::new()),
    });
    let results = Controller::new(Api::<SidecarSet>::all(client), watcher::Config::default())
        // A pod change concerns every set its record names.
        .reconcile_on(pod_events.flat_map(|pod| {
            let records = injected_revisions_in(pod.annotation(keys::SIDECARSET_REVISIONS)).unwrap_or_default();
            futures::stream::iter(records.into_keys().map(|name| ObjectRef::new(&name)).collect::<Vec<_>>())
        }))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx);
    berth_inplace::controllers::run_logged(results, "sidecarset").await;
}

fn error_policy(set: Arc<SidecarSet>, error: &Error, _: Arc<Context>) -> Requeue {
    warn!(sidecarset = %set.name_any(), %error, "reconcile error");
    Requeue::requeue(Duration::from_secs(5))
}

async fn reconcile(set: Arc<SidecarSet>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let _paced = ctx.pacer.pace(set.name_any(), set.metadata.generation).await;
    let api: Api<SidecarSet> = Api::all(ctx.client.clone());
    finalizer(&api, FINALIZER, set, |event| async {
        match event {
            Finalize::Apply(set) => apply_set(&set, &ctx).await,
            Finalize::Cleanup(set) => report_deletion(&set, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// The pods `name` injected, from the shared cache (only those are unpacked).
fn pods_of(ctx: &Context, name: &str) -> Vec<SidecarPod> {
    let names_set = |p: &CachedPod| {
        injected_revisions_in(p.annotation(keys::SIDECARSET_REVISIONS)).map_or(true, |r| r.contains_key(name))
    };
    ctx.pods
        .matching(|p| p.annotation(keys::SIDECARSET_REVISIONS).is_some())
        .iter()
        .filter(|p| names_set(p))
        .filter_map(|p| match SidecarPod::from_pod(name, &p.pod()) {
            Ok(view) => view,
            Err(e) => {
                warn!(sidecarset = %name, error = %e, "ignoring pod");
                None
            }
        })
        .collect()
}

async fn apply_set(set: &SidecarSet, ctx: &Context) -> Result<Requeue, Error> {
    let name = set.name_any();
    debug!(sidecarset = %name, "reconcile");
    let collision = set.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0);
    let latest = revision(&name, &set.spec, collision);
    let sets: Api<SidecarSet> = Api::all(ctx.client.clone());
    let known = still(&ctx.checked(&name).revision, &latest.revision);
    match if known { Ok(()) } else { ensure_revision(ctx, set, &latest).await } {
        Ok(()) => ctx.record(&name, |c| c.revision = Some((latest.revision.clone(), Instant::now()))),
        Err(Error::HashCollision(taken)) => {
            warn!(sidecarset = %name, revision = %taken, "revision hash collision; bumping status.collisionCount");
            let bump = json!({"status": {"collisionCount": collision + 1}});
            sets.patch_status(&name, &PatchParams::default(), &Patch::Merge(bump)).await?;
            return Ok(Requeue::requeue(Duration::from_millis(100)));
        }
        Err(e) => return Err(e),
    }
    let observed = Observed {
        name: name.clone(),
        spec: set.spec.clone(),
        latest,
        pods: pods_of(ctx, &name),
        now: Timestamp::now(),
    };
    let plan = plan::plan(&observed);
    let mut first_error = None;
    // Actions on distinct pods go out together, up to the limit.
    for run in berth_inplace::runs::concurrent_runs(&plan.actions, |a| Some(a.pod())) {
        // Indices, not references: a closure over `&Action` makes the future not Send.
        let results: Vec<_> = futures::stream::iter(run)
            .map(|i| {
                let (latest, action) = (&observed.latest, &plan.actions[i]);
                async move { (action, execute(ctx, set, latest, action).await) }
            })
            // Unordered: a slow write must not hold finished ones' slots (`buffered` would).
            .buffer_unordered(ctx.pod_writes)
            .collect()
            .await;
        for (action, result) in results {
            if let Err(e) = result {
                warn!(sidecarset = %name, ?action, error = %e, "action failed");
                first_error.get_or_insert(e);
            }
        }
    }
    let previous = set.status.as_ref();
    let new_status = status::status(
        &observed,
        &plan,
        set.metadata.generation,
        previous,
        set.status.as_ref().and_then(|s| s.collision_count),
    );
    report_blocked(
        ctx,
        set,
        &plan.blocked,
        previous.map_or(0, |s| s.not_updatable_pods),
        new_status.not_updatable_pods,
    )
    .await;
    if !apply_status(&sets, FIELD_MANAGER, &name, previous, &new_status).await? {
        return Ok(Requeue::await_change()); // deleted meanwhile
    }
    prune_revisions(ctx, set, &observed).await;
    if let Some(e) = first_error {
        return Err(e);
    }
    let busy = !plan.actions.is_empty()
        || observed.pods.iter().any(|p| !matches!(p.progress, berth_inplace::progress::Progress::Idle));
    Ok(Requeue::requeue(Duration::from_secs(if busy { 5 } else { 300 })))
}

async fn execute(ctx: &Context, set: &SidecarSet, latest: &InjectedRevision, action: &Action) -> Result<(), Error> {
    let now = Timestamp::now();
    match action {
        Action::Upgrade { namespace, name, changes } => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
            let message = format!("upgrading sidecars to {}", latest.revision);
            let gated = apply::set_gate(&pods, name, false, "SidecarUpgrading", &message, now).await?;
            let set_name = set.name_any();
            let marker = |p: &Pod| {
                injected_revisions(p.metadata.annotations.as_ref()).ok()?.get(&set_name).map(|r| r.revision.clone())
            };
            if apply::start(&pods, gated, &latest.revision, None, changes, marker, now).await? {
                let images: Vec<_> = changes.images.iter().map(|(c, i)| format!("{c}={i}")).collect();
                info!(sidecarset = %set_name, pod = %name, %namespace, ?images, "sidecar upgrade started");
                let note = format!("{namespace}/{name}: {message} ({})", images.join(", "));
                publish(ctx, set, Some((namespace, name)), EventType::Normal, "SidecarUpgradeStarted", note).await;
            }
        }
        Action::Finish { namespace, name } => {
            apply::finish(&Api::namespaced(ctx.client.clone(), namespace), name, now).await?;
            info!(sidecarset = %set.name_any(), pod = %name, %namespace, "sidecar upgrade done");
            let note = format!("{namespace}/{name}: sidecars upgraded in place");
            publish(ctx, set, Some((namespace, name)), EventType::Normal, "SidecarUpgraded", note).await;
        }
        Action::OpenGate { namespace, name, version } => {
            apply::reopen_gate(&Api::namespaced(ctx.client.clone(), namespace), name, version.as_deref(), now).await?;
        }
    }
    Ok(())
}

/// A Warning when the number of pods that need recreation changes, and one per overdue upgrade.
async fn report_blocked(ctx: &Context, set: &SidecarSet, blocked: &[Blocked], before: i32, after: i32) {
    if after != before && after > 0 {
        let note = format!("{after} pods get the new sidecars only when recreated: the change is more than images");
        publish(ctx, set, None, EventType::Warning, "NotInPlaceUpdatable", note).await;
    }
    for b in blocked {
        if let Blocked::Overdue { namespace, name, .. } = b {
            let note = format!("{namespace}/{name}: sidecar upgrade not complete after its deadline");
            publish(ctx, set, Some((namespace, name)), EventType::Warning, "SidecarUpgradeStuck", note).await;
        }
    }
}

/// Deleting a set stops injection; running pods keep their sidecars until
/// recreated (a container cannot be removed in place). Say so, then let go.
async fn report_deletion(set: &SidecarSet, ctx: &Context) -> Result<Requeue, Error> {
    let name = set.name_any();
    ctx.checked.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
    let keeping = pods_of(ctx, &name).iter().filter(|p| !p.terminating).count();
    let note =
        format!("SidecarSet deleted: no more injection; {keeping} running pods keep its sidecars until recreated");
    info!(sidecarset = %name, keeping, "deleted");
    let condition = json!({"type": "Deleting", "status": "True", "reason": "SidecarSetDeleted", "message": note,
        "lastTransitionTime": Timestamp::now().to_string()});
    let patch =
        json!({"apiVersion": "apps.berth.dev/v1alpha1", "kind": "SidecarSet", "status": {"conditions": [condition]}});
    let sets: Api<SidecarSet> = Api::all(ctx.client.clone());
    if let Err(e) = sets.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await {
        warn!(sidecarset = %name, error = %e, "could not write the Deleting condition");
    }
    publish(ctx, set, None, EventType::Normal, "SidecarSetDeleted", note).await;
    Ok(Requeue::await_change())
}

/// Lists the set's revisions and creates the latest if missing; a revision of
/// that name with other content is a hash collision.
async fn ensure_revision(ctx: &Context, set: &SidecarSet, latest: &InjectedRevision) -> Result<(), Error> {
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let data = json!({"spec": set.spec, "injected": latest});
    let existing = match api.get_opt(&latest.revision).await? {
        Some(r) => r,
        None => {
            let highest = revisions(ctx, &set.name_any()).await?.iter().filter_map(|r| r.revision).max().unwrap_or(0);
            let revision = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(latest.revision.clone()),
                    namespace: Some(ctx.namespace.clone()),
                    labels: Some([(keys::SIDECARSET_NAME.to_string(), set.name_any())].into()),
                    owner_references: set.controller_owner_ref(&()).map(|r| vec![r]),
                    ..Default::default()
                },
                data: RawExtension(data),
                revision: Some(highest + 1),
            };
            match api.create(&PostParams::default(), &revision).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => api.get(&latest.revision).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    if existing.data.0.get("injected") != Some(&json!(latest)) {
        return Err(Error::HashCollision(latest.revision.clone()));
    }
    Ok(())
}

async fn revisions(ctx: &Context, set: &str) -> Result<Vec<ControllerRevision>, Error> {
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    Ok(api.list(&ListParams::default().labels(&format!("{}={set}", keys::SIDECARSET_NAME))).await?.items)
}

/// Deletes the oldest revisions beyond revisionHistoryLimit, never the latest,
/// the pinned one, or one a pod still runs.
/// Skipped while the revisions to keep are those of the last pass (RECHECK).
async fn prune_revisions(ctx: &Context, set: &SidecarSet, o: &Observed) {
    let limit = set.spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let mut keep: BTreeSet<String> = o.pods.iter().map(|p| p.records[&o.name].revision.clone()).collect();
    keep.insert(o.latest.revision.clone());
    keep.extend(set.spec.injection_strategy.as_ref().and_then(|s| s.revision.clone()));
    if still(&ctx.checked(&o.name).kept, &keep) {
        return;
    }
    let Ok(mut all) = revisions(ctx, &o.name).await else { return };
    ctx.record(&o.name, |c| c.kept = Some((keep.clone(), Instant::now())));
    all.sort_by_key(|r| std::cmp::Reverse(r.revision.unwrap_or(0)));
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let old: Vec<String> = all.iter().map(|r| r.name_any()).filter(|n| !keep.contains(n)).skip(limit).collect();
    for name in old {
        if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
            warn!(sidecarset = %o.name, revision = %name, error = %e, "could not prune revision");
        }
    }
}

/// Records an Event on the set; `pod` (namespace, name) is the pod it concerns.
async fn publish(
    ctx: &Context,
    set: &SidecarSet,
    pod: Option<(&String, &String)>,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let secondary = pod.map(|(namespace, name)| ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name.clone()),
        namespace: Some(namespace.clone()),
        ..Default::default()
    });
    let event = Event { type_, reason: reason.into(), note: Some(note), action: "Upgrade".into(), secondary };
    if let Err(e) = ctx.recorder.publish(&event, &set.object_ref(&())).await {
        warn!(sidecarset = %set.name_any(), error = %e, "could not record Event");
    }
}
