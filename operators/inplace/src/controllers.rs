//! What every berth controller shares: driving its results stream, pacing
//! the reconciles of one object, and writing status only when it changed.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
    runtime::{
        controller::{Action, Error},
        reflector::ObjectRef,
    },
};

/// Drives a controller to the end, logging errors its error policy has not:
/// a failed reconcile is logged there, with the object's name, and an object
/// gone before its turn is no error.
pub async fn run_logged<K, E, Q>(results: impl Stream<Item = Result<(ObjectRef<K>, Action), Error<E, Q>>>, name: &str)
where
    K: Resource,
    E: std::error::Error + 'static,
    Q: std::error::Error + 'static,
{
    results
        .for_each(|result| async move {
            match result {
                Ok(_) | Err(Error::ReconcilerFailed(..)) | Err(Error::ObjectNotFound(..)) => {}
                Err(e) => tracing::warn!(controller = name, error = %e, "controller error"),
            }
        })
        .await;
}

/// Server-side applies `status` to the object `name` as `field_manager`,
/// unless it equals `previous` (the status the reconcile read): `Ok(false)` if
/// the object is gone. A change to an object's status triggers its next
/// reconcile, so a cache that lags behind our own last write is corrected then.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    field_manager: &str,
    name: &str,
    previous: Option<&S>,
    status: &S,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    S: serde::Serialize + PartialEq,
{
    if previous == Some(status) {
        return Ok(true);
    }
    let apply = serde_json::json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    match api.patch_status(name, &PatchParams::apply(field_manager).force(), &Patch::Apply(apply)).await {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        result => result.map(|_| true),
    }
}

/// Spaces out the reconciles of one object: the next starts no sooner than
/// `interval` after the previous one ended. The controller runs one reconcile
/// of an object at a time and merges the triggers that arrive meanwhile, so a
/// burst of pod events (a scale-up, a stream of pod creations) becomes one
/// reconcile per interval instead of one per event: each reconcile reads every
/// pod of the set and writes status, so per event it cost O(pods) each time.
/// The first trigger after a quiet spell runs at once, and so does a change of
/// the object's own spec (a new `metadata.generation`: a scale, a new
/// template), which a user waits on.
pub struct Pacer<K> {
    interval: Duration,
    ended: Mutex<HashMap<K, Ended>>,
}

/// When the last reconcile of an object ended, and the generation it saw.
#[derive(Clone, Copy)]
struct Ended {
    at: Instant,
    generation: Option<i64>,
}

/// Records when a paced reconcile ended (on drop, so errors count too).
pub struct Paced<'a, K: Eq + Hash + Clone> {
    pacer: &'a Pacer<K>,
    key: K,
    generation: Option<i64>,
}

impl<K: Eq + Hash + Clone> Pacer<K> {
    pub fn new(interval: Duration) -> Self {
        Self { interval, ended: Mutex::new(HashMap::new()) }
    }

    /// How long a reconcile of `key` at `generation` starting at `now` must wait.
    pub fn wait_at(&self, key: &K, generation: Option<i64>, now: Instant) -> Duration {
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        match ended.get(key) {
            Some(last) if last.generation == generation => (last.at + self.interval).saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    /// Waits for `key`'s turn; the returned guard marks the reconcile's end.
    pub async fn pace(&self, key: K, generation: Option<i64>) -> Paced<'_, K> {
        let wait = self.wait_at(&key, generation, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Paced { pacer: self, key, generation }
    }

    fn ended(&self, key: K, generation: Option<i64>, at: Instant) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        // Entries past their interval no longer delay anything.
        if ended.len() >= 1024 {
            ended.retain(|_, last| at.saturating_duration_since(last.at) < self.interval);
        }
        ended.insert(key, Ended { at, generation });
    }
}

impl<K: Eq + Hash + Clone> Drop for Paced<'_, K> {
    fn drop(&mut self) {
        self.pacer.ended(self.key.clone(), self.generation, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconcile_waits_out_the_interval_after_the_last_one_of_the_same_object() {
        let pacer = Pacer::new(Duration::from_millis(200));
        let t0 = Instant::now();
        assert_eq!(pacer.wait_at(&"a", Some(1), t0), Duration::ZERO, "nothing ran yet: at once");
        pacer.ended("a", Some(1), t0);
        assert_eq!(pacer.wait_at(&"a", Some(1), t0 + Duration::from_millis(50)), Duration::from_millis(150));
        assert_eq!(pacer.wait_at(&"a", Some(1), t0 + Duration::from_millis(300)), Duration::ZERO, "quiet long enough");
        assert_eq!(pacer.wait_at(&"b", Some(1), t0), Duration::ZERO, "other objects are not held back");
    }

    #[test]
    fn a_new_generation_of_the_object_runs_at_once() {
        let pacer = Pacer::new(Duration::from_millis(200));
        let t0 = Instant::now();
        pacer.ended("a", Some(1), t0);
        assert_eq!(pacer.wait_at(&"a", Some(2), t0), Duration::ZERO, "its spec changed: a user waits on it");
        pacer.ended("a", Some(2), t0 + Duration::from_millis(10));
        assert_eq!(
            pacer.wait_at(&"a", Some(2), t0 + Duration::from_millis(10)),
            Duration::from_millis(200),
            "pod events after it are paced again"
        );
    }

    #[test]
    fn a_zero_interval_never_waits() {
        let pacer = Pacer::new(Duration::ZERO);
        let t0 = Instant::now();
        pacer.ended("a", None, t0);
        assert_eq!(pacer.wait_at(&"a", None, t0), Duration::ZERO);
    }

    #[test]
    fn old_entries_are_dropped_once_the_map_is_large() {
        let pacer = Pacer::new(Duration::from_millis(10));
        let t0 = Instant::now();
        for i in 0..1024 {
            pacer.ended(i, None, t0);
        }
        pacer.ended(5000, None, t0 + Duration::from_secs(1));
        assert_eq!(pacer.ended.lock().unwrap().len(), 1, "only the fresh entry is kept");
    }

    #[tokio::test]
    async fn the_guard_records_the_end_when_dropped() {
        let pacer = Pacer::new(Duration::from_secs(60));
        drop(pacer.pace("a", Some(3)).await);
        assert!(pacer.wait_at(&"a", Some(3), Instant::now()) > Duration::from_secs(59));
    }
}
