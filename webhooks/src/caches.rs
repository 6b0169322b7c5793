//! What the rules read besides the request: SidecarSets, namespace labels and
//! the SidecarSets' ControllerRevisions, each a reflector cache the webhook
//! server keeps (a rule's decision must not wait on the apiserver).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use berth_api::{SidecarSet, keys};
use futures::{StreamExt, future::join3};
use k8s_openapi::api::{apps::v1::ControllerRevision, core::v1::Namespace};
use kube::{
    Api, Client, Resource,
    core::{PartialObjectMeta, PartialObjectMetaExt},
    runtime::{
        WatchStreamExt,
        reflector::{self, Lookup, Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

/// The caches the rules read. Cloning shares them.
#[derive(Clone)]
pub struct Caches {
    pub sidecarsets: Store<SidecarSet>,
    /// Namespaces, metadata only (their labels, for namespace selectors).
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// ControllerRevisions labelled [`keys::SIDECARSET_NAME`] in the manager's namespace.
    pub revisions: Store<ControllerRevision>,
    synced: Arc<AtomicBool>,
}

/// Feeds a reflector until the process ends; watch errors are logged and retried with backoff.
fn spawn_reflector<K, S>(what: &'static str, writer: Writer<K>, stream: S)
where
    K: Lookup + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut last_error = None;
        let mut events = std::pin::pin!(reflector::reflector(writer, stream.default_backoff()));
        while let Some(event) = events.next().await {
            match event {
                Ok(_) if last_error.is_some() => {
                    info!(cache = what, "webhook cache watching again");
                    last_error = None;
                }
                Ok(_) => {}
                Err(e) => {
                    let message = e.to_string();
                    if last_error.as_ref() != Some(&message) {
                        warn!(cache = what, error = message, "webhook cache watch failed; retrying");
                        last_error = Some(message);
                    }
                }
            }
        }
    });
}

fn full<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, config)
}

impl Caches {
    /// Starts the watches: SidecarSets and namespaces cluster-wide, and the
    /// SidecarSets' ControllerRevisions in `manager_namespace` only.
    pub fn start(client: &Client, manager_namespace: &str) -> Self {
        let (sidecarsets, sets_writer) = reflector::store();
        let (namespaces, ns_writer) = reflector::store();
        let (revisions, rev_writer) = reflector::store();
        spawn_reflector(
            "sidecarsets",
            sets_writer,
            full(Api::<SidecarSet>::all(client.clone()), watcher::Config::default()),
        );
        spawn_reflector(
            "namespaces",
            ns_writer,
            full(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), watcher::Config::default()),
        );
        spawn_reflector(
            "controllerrevisions",
            rev_writer,
            full(
                Api::<ControllerRevision>::namespaced(client.clone(), manager_namespace),
                watcher::Config::default().labels(keys::SIDECARSET_NAME),
            ),
        );
        let caches = Self { sidecarsets, namespaces, revisions, synced: Arc::default() };
        let (waiting, synced) = (caches.clone(), caches.synced.clone());
        tokio::spawn(async move {
            let (a, b, c) = join3(
                waiting.sidecarsets.wait_until_ready(),
                waiting.namespaces.wait_until_ready(),
                waiting.revisions.wait_until_ready(),
            )
            .await;
            if a.is_ok() && b.is_ok() && c.is_ok() {
                synced.store(true, Ordering::Release);
                info!("webhook caches loaded (SidecarSets, namespaces, SidecarSet revisions)");
            }
        });
        caches
    }

    /// Caches holding exactly these objects, already loaded (tests; or a
    /// server without the caches' watches).
    pub fn fixed(sets: Vec<SidecarSet>, namespaces: Vec<Namespace>, revisions: Vec<ControllerRevision>) -> Self {
        fn load<K>(objects: Vec<K>) -> Store<K>
        where
            K: Lookup + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone + Default,
        {
            let mut writer = Writer::default();
            writer.apply_watcher_event(&watcher::Event::Init);
            for o in objects {
                writer.apply_watcher_event(&watcher::Event::InitApply(o));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
            writer.as_reader()
        }
        let namespaces = namespaces.into_iter().map(|ns| ns.metadata.into_response_partial()).collect();
        Self {
            sidecarsets: load(sets),
            namespaces: load(namespaces),
            revisions: load(revisions),
            synced: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The same caches, reported as not loaded yet (tests).
    #[cfg(test)]
    pub(crate) fn unsynced(mut self) -> Self {
        self.synced = Arc::new(AtomicBool::new(false));
        self
    }

    /// Whether every cache has been listed once.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Waits up to `timeout` until [`Self::synced`]; whether it is.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.synced() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.synced()
    }

    /// A namespace's labels. One not cached yet (created a moment ago) has at
    /// least the `kubernetes.io/metadata.name` label the apiserver sets on every namespace.
    pub fn namespace_labels(&self, name: &str) -> BTreeMap<String, String> {
        let key = reflector::ObjectRef::new(name);
        match self.namespaces.get(&key) {
            Some(ns) => ns.metadata.labels.clone().unwrap_or_default(),
            None => BTreeMap::from([("kubernetes.io/metadata.name".to_string(), name.to_string())]),
        }
    }
}
