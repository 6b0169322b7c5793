//! berth-manager: runs berth's controllers and its admission webhook server
//! against the cluster in KUBECONFIG (or the in-cluster service account).
//!
//! Replicas elect a leader on a Lease (see [`leader`]). Every replica serves
//! the webhooks (admission never waits for an election) and keeps the shared
//! pod cache warm; only the leader runs the controllers, so only the leader
//! writes. It stops them and exits the moment it cannot be sure it still
//! leads. On SIGTERM/SIGINT the leader lets in-flight reconciles finish, then
//! releases the lease (a standby takes over at once), then exits.
//!
//! Webhook configurations: with certificates from --webhook-cert-dir (one
//! Secret mounted by every replica) each replica applies the same caBundle.
//! With a self-generated CA each replica has its own, so only the leader
//! applies them, pointing the apiserver at its CA, before its controllers
//! start; behind one Service that mode still fits a single replica only.

mod audit;
mod leader;

use std::{pin::Pin, sync::Arc, time::Duration};

use clap::Parser;
use futures::{FutureExt, Stream, StreamExt};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

/// How long the leader waits, on a signal, for in-flight reconciles.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// How long a new leader waits for the webhook configurations to name its CA
/// before starting its controllers anyway.
const CONFIGURED_WAIT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(version, about = "Runs berth's controllers (InplaceSet, SidecarSet) and admission webhooks")]
struct Args {
    /// Without a command: run the manager.
    #[command(subcommand)]
    command: Option<Command>,

    /// Log as JSON lines (for log collectors) instead of text.
    #[arg(long, env = "BERTH_LOG_JSON")]
    log_json: bool,

    /// Seconds an accepted resize may wait for the node agent before the manager marks it Failed.
    #[arg(long, env = "BERTH_RESIZE_ACCEPT_DEADLINE", default_value_t = 300)]
    resize_accept_deadline: u64,

    /// Nodes whose resize requests are decided at once (each node's requests stay one after the other).
    #[arg(long, env = "BERTH_RESIZE_NODE_WORKERS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    resize_node_workers: u16,

    /// Pod writes (creations, in-place update steps) one InplaceSet or SidecarSet has in flight at once:
    /// a rollout step's pods are patched together, not one round trip after the other.
    #[arg(long, env = "BERTH_POD_WRITES", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pod_writes: u16,

    #[command(flatten)]
    webhooks: berth_webhooks::Options,

    #[command(flatten)]
    lease: leader::Options,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Check the cluster once (over-commit, affinity, InplaceSet replicas, applied resizes); exit 1 on a violation.
    Audit(audit::Args),
}

type PodEvents = Pin<Box<dyn Stream<Item = Arc<berth_inplace::pods::CachedPod>> + Send>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Audit(audit)) = args.command {
        std::process::exit(audit::run(audit).await);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info,kube=warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if args.log_json {
        logs.json().init()
    } else {
        logs.init()
    }
    args.lease.validate()?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut shutdown = Box::pin(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        }
    });

    let client = kube::Client::try_default().await?;
    let namespace = args.webhooks.manager_namespace.clone();

    // Every replica: one pod watch for every controller, kept warm on standbys.
    let pods = berth_inplace::pods::SharedPods::default();
    let store = pods.store();
    let mut events: [PodEvents; 3] =
        [Box::pin(pods.subscribe()), Box::pin(pods.subscribe()), Box::pin(pods.subscribe())];
    tokio::spawn(pods.run(client.clone()));

    // Every replica: the webhook server. A failure ends the process, so the
    // apiserver is never left calling a server that is gone.
    let serving = if args.webhooks.disabled { "webhooks disabled" } else { "admission webhooks" };
    let (leading_tx, leading_rx) = tokio::sync::oneshot::channel::<()>();
    let (configured_tx, mut configured_rx) = tokio::sync::oneshot::channel::<()>();
    let mut webhooks: Pin<Box<dyn Future<Output = String> + Send>> = if args.webhooks.disabled {
        let _ = configured_tx.send(());
        Box::pin(std::future::pending())
    } else {
        let leading = async move { drop(leading_rx.await) };
        let configured = move || {
            let _ = configured_tx.send(());
        };
        Box::pin(
            berth_webhooks::run_replica(client.clone(), args.webhooks, leading, configured)
                .map(|failed| failed.err().map_or("returned".to_string(), |e| e.to_string())),
        )
    };

    let mut leadership = if args.lease.enabled {
        let elector = leader::Elector::start(client.clone(), &namespace, args.lease.clone());
        info!(lease = %args.lease.name, %namespace, identity = elector.identity(),
              "berth-manager starting: {serving}; InplaceSet, SidecarSet and resize controllers once leading");
        // Standby: pod changes are read and dropped (the controllers read the
        // whole cache when they start).
        let [a, b, c] = &mut events;
        let drain = async {
            let all = futures::stream::select(futures::stream::select(a.as_mut(), b.as_mut()), c.as_mut());
            all.for_each(|_| futures::future::ready(())).await;
            std::future::pending::<()>().await
        };
        tokio::select! {
            leadership = elector.acquire() => Some(leadership),
            () = drain => unreachable!(),
            signal = &mut shutdown => {
                info!(signal, "berth-manager stopped (standby)");
                return Ok(());
            }
            reason = &mut webhooks => {
                error!("berth-manager stopping: the webhook server failed: {reason}");
                std::process::exit(1);
            }
        }
    } else {
        info!("berth-manager starting: InplaceSet, SidecarSet and resize controllers, {serving} (no leader election)");
        None
    };

    // Leading. With a self-generated CA, point the apiserver here first: a
    // pod the controllers create would otherwise meet the old leader's server.
    let _ = leading_tx.send(());
    tokio::select! {
        _ = &mut configured_rx => {}
        () = tokio::time::sleep(CONFIGURED_WAIT) => warn!(wait = ?CONFIGURED_WAIT,
            "webhook configurations not applied yet; starting the controllers anyway"),
        signal = &mut shutdown => {
            info!(signal, "stopping before the controllers started");
            stop(leadership, 0).await;
        }
        reason = &mut webhooks => {
            error!("berth-manager stopping: the webhook server failed: {reason}");
            stop(leadership, 1).await;
        }
    }
    let [inplaceset_events, sidecarset_events, resize_events] = events;
    let inplacesets =
        berth_inplaceset::controller::run(client.clone(), store.clone(), inplaceset_events, args.pod_writes.into());
    let sidecarsets = berth_sidecarset::controller::run(
        client.clone(),
        store.clone(),
        sidecarset_events,
        namespace,
        args.pod_writes.into(),
    );
    let deadline = Duration::from_secs(args.resize_accept_deadline);
    let resizes =
        berth_resize::controller::run(client.clone(), store, resize_events, deadline, args.resize_node_workers.into());
    // The first to end (a shutdown signal: they stop on it themselves) ends them all.
    let mut controllers = Box::pin(async {
        tokio::select! {
            () = inplacesets => {}
            () = sidecarsets => {}
            () = resizes => {}
        }
    });
    info!("controllers running");
    let end = {
        let lost = async {
            match leadership.as_mut() {
                Some(l) => l.lost().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(lost);
        tokio::select! {
            () = &mut controllers => End::Stopped,
            signal = &mut shutdown => {
                info!(signal, grace = ?SHUTDOWN_GRACE, "stopping: waiting for in-flight reconciles");
                tokio::select! {
                    () = &mut controllers => End::Stopped,
                    () = tokio::time::sleep(SHUTDOWN_GRACE) => {
                        warn!("reconciles still running; stopping them");
                        End::Stopped
                    }
                    reason = &mut lost => End::Fenced(reason),
                }
            }
            reason = &mut lost => End::Fenced(reason),
            reason = &mut webhooks => End::WebhooksFailed(reason),
        }
    };
    // No write after this point: reconciles still running are aborted.
    drop(controllers);
    match end {
        End::Stopped => {
            info!("controllers stopped");
            stop(leadership, 0).await
        }
        End::Fenced(reason) => {
            error!(
                "berth-manager stopping: no longer sure it leads ({reason}); exiting so that it never writes \
                    as a second leader"
            );
            std::process::exit(1)
        }
        End::WebhooksFailed(reason) => {
            error!("berth-manager stopping: the webhook server failed: {reason}");
            stop(leadership, 1).await
        }
    }
}

enum End {
    Stopped,
    Fenced(String),
    WebhooksFailed(String),
}

/// Releases the lease (the controllers have stopped) and ends the process.
async fn stop(leadership: Option<leader::Leadership>, code: i32) -> ! {
    if let Some(l) = leadership {
        l.release().await;
    }
    info!("berth-manager stopped");
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_flags_are_consistent() {
        super::Args::command().debug_assert();
    }
}
