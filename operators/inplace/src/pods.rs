//! The manager's one pod watch, shared by every controller: pods labelled
//! [`keys::MANAGED`], trimmed of what no controller reads, in one cache that
//! each controller reads and subscribes to.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, ReflectHandle, Store, store::Writer},
        watcher,
    },
};

use berth_api::keys;

/// Events buffered per subscriber before the watch waits for the slowest one.
const BUFFER: usize = 4096;

/// The shared pod cache: a store to read, subscriptions to react to changes,
/// and the watch that fills them (run it once).
pub struct SharedPods {
    store: Store<Pod>,
    writer: Writer<Pod>,
}

impl Default for SharedPods {
    fn default() -> Self {
        let (store, writer) = reflector::store_shared(BUFFER);
        Self { store, writer }
    }
}

impl SharedPods {
    /// A read handle on the cache.
    pub fn store(&self) -> Store<Pod> {
        self.store.clone()
    }

    /// A stream of the pods that change; every controller takes one.
    pub fn subscribe(&self) -> ReflectHandle<Pod> {
        self.writer.subscribe().expect("a shared store has subscribers")
    }

    /// Watches the managed pods until the process ends.
    pub async fn run(self, client: Client) {
        let config = watcher::Config::default().labels(&format!("{}=true", keys::MANAGED));
        watcher(Api::<Pod>::all(client), config)
            .default_backoff()
            .modify(trim)
            .reflect_shared(self.writer)
            .for_each(|event| async move {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "pod watch error (retrying)");
                }
            })
            .await;
    }
}

/// Drops what no controller reads: managed fields and kubectl's copy of the last applied object.
fn trim(pod: &mut Pod) {
    pod.managed_fields_mut().clear();
    pod.annotations_mut().remove("kubectl.kubernetes.io/last-applied-configuration");
}
