//! The manager's one pod watch, shared by every controller: pods labelled
//! [`keys::MANAGED`], trimmed of what no controller reads and packed
//! ([`CachedPod`]), in one cache that each controller reads, plus a stream of
//! changed pods per controller.
//!
//! The fan-out is a broadcast channel rather than kube-runtime's shared
//! reflector: there, a subscriber that meets an object deleted before it read
//! it stops being woken (its stream returns Pending with no waker), and its
//! full buffer then holds back the watch for every controller. Here a
//! controller that falls behind loses triggers (logged; its periodic
//! requeue catches up) and never blocks the others; deletions are delivered too.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodSpec, PodStatus};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::{broadcast, watch};

use berth_api::keys;

/// Changed pods buffered per subscriber; one further behind loses the oldest.
const BUFFER: usize = 16384;

/// The annotations kept unpacked, for scans over every pod (resize requests
/// awaiting a decision or overdue; the SidecarSets a pod's record names).
const SCANNED: [&str; 3] = [keys::RESIZE_STATE, keys::RESIZE_ACCEPTED_AT, keys::SIDECARSET_REVISIONS];

/// The controller owner of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub kind: Box<str>,
    pub name: Box<str>,
    pub uid: Box<str>,
}

/// A pod in the shared cache: what scans over every pod read stays plain
/// (namespace, name, controller, node, [`SCANNED`] annotations); the rest of
/// the trimmed pod is packed (JSON, LZ4) and read back with [`CachedPod::pod`].
/// A k8s-openapi `Pod` costs over 6 KB even with its fields emptied (the
/// structs are large inline); packed, a pod costs about a tenth of that.
#[derive(Debug)]
pub struct CachedPod {
    namespace: Box<str>,
    name: Box<str>,
    controller: Option<Owner>,
    node: Option<Box<str>>,
    scanned: Box<[(&'static str, Box<str>)]>,
    packed: Box<[u8]>,
}

impl CachedPod {
    /// Trims `pod` ([`trim`]) and packs it.
    pub fn new(mut pod: Pod) -> Self {
        trim(&mut pod);
        let controller = pod.owner_references().iter().find(|o| o.controller == Some(true)).map(|o| Owner {
            kind: o.kind.as_str().into(),
            name: o.name.as_str().into(),
            uid: o.uid.as_str().into(),
        });
        let annotations = pod.annotations();
        let scanned = SCANNED.iter().filter_map(|&k| annotations.get(k).map(|v| (k, v.as_str().into()))).collect();
        // Serializing a Pod to JSON cannot fail (string keys, no non-finite floats).
        let json = serde_json::to_vec(&pod).unwrap_or_default();
        Self {
            namespace: pod.metadata.namespace.as_deref().unwrap_or_default().into(),
            name: pod.metadata.name.as_deref().unwrap_or_default().into(),
            controller,
            node: pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).map(Into::into),
            scanned,
            packed: lz4_flex::compress_prepend_size(&json).into_boxed_slice(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The owner reference with `controller: true`, if any.
    pub fn controller(&self) -> Option<&Owner> {
        self.controller.as_ref()
    }

    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// One of the [`SCANNED`] annotations (any other key reads `None`).
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.scanned.iter().find(|(k, _)| *k == key).map(|(_, v)| &**v)
    }

    /// The trimmed pod. Packed by [`CachedPod::new`] from a valid pod, it
    /// always unpacks; should it not, the pod reads as its name alone.
    pub fn pod(&self) -> Pod {
        let unpacked = lz4_flex::decompress_size_prepended(&self.packed)
            .map_err(|e| e.to_string())
            .and_then(|json| serde_json::from_slice(&json).map_err(|e| e.to_string()));
        unpacked.unwrap_or_else(|e| {
            tracing::error!(pod = %self.name, namespace = %self.namespace, error = %e, "cached pod does not unpack");
            let mut pod = Pod::default();
            pod.metadata.name = Some(self.name.to_string());
            pod.metadata.namespace = Some(self.namespace.to_string());
            pod
        })
    }

    /// Bytes this entry holds on the heap (packed pod and plain fields).
    pub fn heap_bytes(&self) -> usize {
        let owner = self.controller.as_ref().map_or(0, |o| o.kind.len() + o.name.len() + o.uid.len());
        let scanned = self.scanned.iter().map(|(_, v)| 16 + v.len()).sum::<usize>();
        self.namespace.len()
            + self.name.len()
            + owner
            + self.node.as_ref().map_or(0, |n| n.len())
            + scanned
            + self.packed.len()
    }
}

type Key = (Box<str>, Box<str>);

/// A read handle on the shared pod cache.
#[derive(Clone)]
pub struct PodCache {
    pods: Arc<RwLock<HashMap<Key, Arc<CachedPod>>>>,
    ready: watch::Receiver<bool>,
}

impl PodCache {
    /// The cached pods `keep` accepts (a snapshot). Only the matches are
    /// copied out of the lock: a scan of 300k pods for the few with a resize
    /// request copies the few.
    pub fn matching(&self, keep: impl Fn(&CachedPod) -> bool) -> Vec<Arc<CachedPod>> {
        self.pods.read().unwrap_or_else(|e| e.into_inner()).values().filter(|p| keep(p)).cloned().collect()
    }

    /// The pods in `namespace` whose controller has `uid`, unpacked outside
    /// the lock (a large set's unpacking would hold up the watch).
    pub fn controlled_by(&self, namespace: &str, uid: &str) -> Vec<Pod> {
        let owned = |p: &CachedPod| &*p.namespace == namespace && p.controller().is_some_and(|o| &*o.uid == uid);
        self.matching(owned).iter().map(|p| p.pod()).collect()
    }

    pub fn len(&self) -> usize {
        self.pods.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once the first full list is in (an empty cache before it
    /// would look like missing pods); `Err` if the watch ended first.
    pub async fn wait_until_ready(&self) -> Result<(), watch::error::RecvError> {
        self.ready.clone().wait_for(|ready| *ready).await.map(|_| ())
    }
}

/// The shared pod cache: a store to read, subscriptions to react to changes,
/// and the watch that fills them (run it once).
pub struct SharedPods {
    cache: PodCache,
    ready: watch::Sender<bool>,
    changes: broadcast::Sender<Arc<CachedPod>>,
}

impl Default for SharedPods {
    fn default() -> Self {
        let (ready, ready_rx) = watch::channel(false);
        let cache = PodCache { pods: Arc::default(), ready: ready_rx };
        Self { cache, ready, changes: broadcast::channel(BUFFER).0 }
    }
}

impl SharedPods {
    /// A read handle on the cache.
    pub fn store(&self) -> PodCache {
        self.cache.clone()
    }

    /// The pods that change (applied or deleted) from now on; every controller takes one.
    pub fn subscribe(&self) -> impl Stream<Item = Arc<CachedPod>> + Send + 'static {
        futures::stream::unfold(self.changes.subscribe(), |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(pod) => return Some((pod, rx)),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "a controller fell behind the pod watch; it catches up on its requeue");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    /// Watches the managed pods until the process ends.
    pub async fn run(&self, client: Client) {
        let config = watcher::Config::default().labels(&format!("{}=true", keys::MANAGED));
        let mut relist: Option<HashMap<Key, Arc<CachedPod>>> = None;
        let mut events = std::pin::pin!(watcher(Api::<Pod>::all(client), config).default_backoff());
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(error = %e, "pod watch error (retrying)");
                    continue;
                }
            };
            self.apply(event, &mut relist);
        }
    }

    /// One watch event into the cache: a relist is buffered whole and then
    /// replaces the cache (pods gone meanwhile drop out), as kube's reflector.
    fn apply(&self, event: watcher::Event<Pod>, relist: &mut Option<HashMap<Key, Arc<CachedPod>>>) {
        let key = |p: &CachedPod| (p.namespace.clone(), p.name.clone());
        let changed = match event {
            watcher::Event::Init => {
                *relist = Some(HashMap::new());
                None
            }
            watcher::Event::InitApply(pod) => {
                let pod = Arc::new(CachedPod::new(pod));
                relist.get_or_insert_default().insert(key(&pod), pod.clone());
                Some(pod)
            }
            watcher::Event::InitDone => {
                if let Some(pods) = relist.take() {
                    *self.cache.pods.write().unwrap_or_else(|e| e.into_inner()) = pods;
                }
                self.ready.send_replace(true);
                None
            }
            watcher::Event::Apply(pod) => {
                let pod = Arc::new(CachedPod::new(pod));
                self.cache.pods.write().unwrap_or_else(|e| e.into_inner()).insert(key(&pod), pod.clone());
                Some(pod)
            }
            watcher::Event::Delete(pod) => {
                let pod = Arc::new(CachedPod::new(pod));
                self.cache.pods.write().unwrap_or_else(|e| e.into_inner()).remove(&key(&pod));
                Some(pod)
            }
        };
        // No subscriber yet is fine: they read the cache when they start.
        if let Some(pod) = changed {
            drop(self.changes.send(pod));
        }
    }
}

/// Keeps only what the controllers read, so a cached pod costs a fraction
/// of the full object: metadata (without managed fields or kubectl's copy of
/// the last applied object); per container its name, image, resources and
/// restart policy; the node, the readiness gates; the phase, start time,
/// conditions and, per container status, its identity, image, readiness,
/// restarts and resources. Everything else (volumes, env, probes, affinity,
/// IPs, container states...) is dropped. A controller that needs more reads
/// the pod from the API.
fn trim(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.annotations_mut().remove("kubectl.kubernetes.io/last-applied-configuration");
    if let Some(spec) = pod.spec.take() {
        let slim = |c: Container| Container {
            name: c.name,
            image: c.image,
            resources: c.resources,
            restart_policy: c.restart_policy,
            ..Container::default()
        };
        pod.spec = Some(PodSpec {
            containers: spec.containers.into_iter().map(slim).collect(),
            init_containers: spec.init_containers.map(|cs| cs.into_iter().map(slim).collect()),
            node_name: spec.node_name,
            readiness_gates: spec.readiness_gates,
            ..PodSpec::default()
        });
    }
    if let Some(status) = pod.status.take() {
        let slim = |c: ContainerStatus| ContainerStatus {
            name: c.name,
            image: c.image,
            image_id: c.image_id,
            container_id: c.container_id,
            ready: c.ready,
            restart_count: c.restart_count,
            resources: c.resources,
            ..ContainerStatus::default()
        };
        let slim_all = |cs: Option<Vec<ContainerStatus>>| cs.map(|cs| cs.into_iter().map(slim).collect());
        pod.status = Some(PodStatus {
            phase: status.phase,
            start_time: status.start_time,
            conditions: status.conditions,
            container_statuses: slim_all(status.container_statuses),
            init_container_statuses: slim_all(status.init_container_statuses),
            ..PodStatus::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Arc<CachedPod> {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        Arc::new(CachedPod::new(p))
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_change_and_a_laggard_blocks_no_one() {
        let shared = SharedPods::default();
        let (mut a, b) = (Box::pin(shared.subscribe()), Box::pin(shared.subscribe()));
        for i in 0..3 {
            shared.changes.send(pod(&format!("p{i}"))).unwrap();
        }
        let names = |p: Option<Arc<CachedPod>>| p.unwrap().name().to_string();
        assert_eq!(names(a.next().await), "p0");
        assert_eq!(names(a.next().await), "p1");
        assert_eq!(names(a.next().await), "p2");
        // b reads nothing yet; sending far past its buffer never waits.
        for i in 3..BUFFER + 10 {
            shared.changes.send(pod(&format!("p{i}"))).unwrap();
        }
        let mut b = b;
        let first = names(b.next().await);
        assert_ne!(first, "p0", "b lost the oldest changes and goes on from there");
        let last = format!("p{}", BUFFER + 9);
        assert!(b.take(BUFFER).any(|p| futures::future::ready(p.name() == last)).await);
    }

    #[test]
    fn trimming_keeps_what_the_controllers_read_and_drops_the_rest() {
        let full = serde_json::json!({
            "metadata": {"name": "web-0", "labels": {"app": "web"}, "annotations": {"a": "b"},
                "ownerReferences": [{"apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet", "name": "web", "uid": "u"}],
                "finalizers": ["f"]},
            "spec": {
                "nodeName": "n1",
                "readinessGates": [{"conditionType": keys::INPLACE_UPDATE_READY}],
                "containers": [{"name": "app", "image": "web:1", "env": [{"name": "A", "value": "1"}],
                    "resources": {"requests": {"cpu": "1"}}, "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
                "initContainers": [{"name": "proxy", "image": "p:1", "restartPolicy": "Always", "command": ["x"]}],
                "volumes": [{"name": "v", "emptyDir": {}}],
                "tolerations": [{"key": "k", "operator": "Exists"}]
            },
            "status": {
                "phase": "Running", "startTime": "2026-11-23T05:00:00Z", "podIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "image": "web:1", "imageID": "sha256:a", "containerID": "cri://1",
                    "ready": true, "restartCount": 2, "state": {"running": {"startedAt": "2026-11-23T05:00:00Z"}},
                    "resources": {"requests": {"cpu": "1"}}}]
            }
        });
        let mut p: Pod = serde_json::from_value(full).unwrap();
        trim(&mut p);
        let mut kept = serde_json::to_value(&p).unwrap();
        kept.as_object_mut().unwrap().retain(|k, _| k != "apiVersion" && k != "kind");
        assert_eq!(
            kept,
            serde_json::json!({
                "metadata": {"name": "web-0", "labels": {"app": "web"}, "annotations": {"a": "b"},
                    "ownerReferences": [{"apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet", "name": "web", "uid": "u"}],
                    "finalizers": ["f"]},
                "spec": {
                    "nodeName": "n1",
                    "readinessGates": [{"conditionType": keys::INPLACE_UPDATE_READY}],
                    "containers": [{"name": "app", "image": "web:1", "resources": {"requests": {"cpu": "1"}}}],
                    "initContainers": [{"name": "proxy", "image": "p:1", "restartPolicy": "Always"}]
                },
                "status": {
                    "phase": "Running", "startTime": "2026-11-23T05:00:00Z",
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [{"name": "app", "image": "web:1", "imageID": "sha256:a",
                        "containerID": "cri://1", "ready": true, "restartCount": 2, "resources": {"requests": {"cpu": "1"}}}]
                }
            })
        );
        // What the planners read comes through unchanged.
        assert_eq!(crate::progress::progress(&p), Ok(crate::progress::Progress::Idle));
    }

    #[test]
    fn trimming_drops_managed_fields_and_the_last_applied_copy() {
        let mut p: Pod = serde_json::from_value(serde_json::json!({"metadata": {
            "name": "a", "managedFields": [{"manager": "kubectl"}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "me"}
        }}))
        .unwrap();
        trim(&mut p);
        assert!(p.metadata.managed_fields.unwrap_or_default().is_empty());
        assert_eq!(p.metadata.annotations.unwrap().into_keys().collect::<Vec<_>>(), ["keep"]);
    }

    fn managed(ns: &str, name: &str, owner_uid: &str, annotations: serde_json::Value) -> Pod {
        let conditions: Vec<_> =
            ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
                .into_iter()
                .chain([keys::INPLACE_UPDATE_READY])
                .map(|t| serde_json::json!({"type": t, "status": "True", "lastTransitionTime": "2026-11-23T05:00:02Z"}))
                .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": "12345",
                "creationTimestamp": "2026-11-23T05:00:00Z",
                "labels": {"app": "web", keys::MANAGED: "true", keys::INPLACESET_NAME: "web",
                           keys::CONTROLLER_REVISION_HASH: "web-5d8f7c9b4"},
                "annotations": annotations,
                "ownerReferences": [{"apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet", "name": "web",
                                     "uid": owner_uid, "controller": true, "blockOwnerDeletion": true}],
                "managedFields": [{"manager": "berth-manager", "operation": "Update"}]},
            "spec": {"nodeName": "hollow-node-7", "containers": [{"name": "app", "image": "registry.local/web:1.2.3",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}, "env": [{"name": "A", "value": "1"}]}],
                "readinessGates": [{"conditionType": keys::INPLACE_UPDATE_READY}]},
            "status": {"phase": "Running", "startTime": "2026-11-23T05:00:01Z", "podIP": "10.1.2.3",
                "conditions": conditions,
                "containerStatuses": [{"name": "app", "image": "registry.local/web:1.2.3", "ready": true,
                    "imageID": "registry.local/web@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "containerID": "containerd://4f1b2b0b822cd15d6c15b0f00a089f86d081884c7d659a2feaa0c55ad015a3bf",
                    "restartCount": 0, "started": true, "state": {"running": {"startedAt": "2026-11-23T05:00:02Z"}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_cached_pod_unpacks_to_the_trimmed_pod_and_keeps_what_scans_read() {
        let full =
            managed("prod", "web-0", "set-uid", serde_json::json!({keys::RESIZE_STATE: "Created", "other": "x"}));
        let mut trimmed = full.clone();
        trim(&mut trimmed);
        let cached = CachedPod::new(full.clone());
        assert_eq!(cached.pod(), trimmed);
        assert_eq!((cached.namespace(), cached.name(), cached.node()), ("prod", "web-0", Some("hollow-node-7")));
        let owner = cached.controller().unwrap();
        assert_eq!((&*owner.kind, &*owner.name, &*owner.uid), ("InplaceSet", "web", "set-uid"));
        assert_eq!(cached.annotation(keys::RESIZE_STATE), Some("Created"));
        assert_eq!(cached.annotation("other"), None, "only the scanned annotations are plain");
        // A typical managed pod costs well under the 2 KiB goal (the full Pod struct alone is over 2 KiB inline).
        let total = std::mem::size_of::<CachedPod>() + cached.heap_bytes();
        assert!(total < 1400, "cached pod costs {total} bytes");
    }

    #[test]
    fn the_cache_follows_the_watch_and_a_relist_replaces_it() {
        let shared = SharedPods::default();
        let cache = shared.store();
        let mut relist = None;
        let pod = |name: &str, uid: &str| managed("prod", name, uid, serde_json::json!({}));
        shared.apply(watcher::Event::Init, &mut relist);
        shared.apply(watcher::Event::InitApply(pod("web-0", "a")), &mut relist);
        shared.apply(watcher::Event::InitApply(pod("web-1", "a")), &mut relist);
        assert!(cache.is_empty(), "nothing is visible before the list is complete");
        shared.apply(watcher::Event::InitDone, &mut relist);
        assert_eq!(cache.len(), 2);
        shared.apply(watcher::Event::Apply(pod("other-0", "b")), &mut relist);
        let names = |uid| {
            let mut n: Vec<_> = cache.controlled_by("prod", uid).into_iter().map(|p| p.name_any()).collect();
            n.sort();
            n
        };
        assert_eq!(names("a"), ["web-0", "web-1"]);
        assert_eq!(names("b"), ["other-0"]);
        assert!(cache.controlled_by("staging", "a").is_empty());
        shared.apply(watcher::Event::Delete(pod("web-0", "a")), &mut relist);
        assert_eq!(names("a"), ["web-1"]);
        // A relist without web-1 (deleted while the watch was down) drops it.
        shared.apply(watcher::Event::Init, &mut relist);
        shared.apply(watcher::Event::InitApply(pod("other-0", "b")), &mut relist);
        assert_eq!(cache.len(), 2, "the old cache serves until the relist completes");
        shared.apply(watcher::Event::InitDone, &mut relist);
        assert!(names("a").is_empty());
        assert_eq!(names("b"), ["other-0"]);
    }

    #[tokio::test]
    async fn ready_once_the_first_list_is_in() {
        let shared = SharedPods::default();
        let cache = shared.store();
        let mut relist = None;
        let waiting = tokio::spawn(async move { cache.wait_until_ready().await });
        shared.apply(watcher::Event::Init, &mut relist);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        shared.apply(watcher::Event::InitDone, &mut relist);
        assert!(waiting.await.unwrap().is_ok());
    }
}
