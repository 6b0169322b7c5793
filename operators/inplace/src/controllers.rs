//! What every berth controller does with its results stream.

use futures::{Stream, StreamExt};
use kube::{
    Resource,
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
