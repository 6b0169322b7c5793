//! berth-manager: runs berth's controllers and its admission webhook server
//! against the cluster in KUBECONFIG (or the in-cluster service account).
//!
//! Replicas elect a leader on a Lease (see [`leader`]). Every replica serves
//! the webhooks (admission never waits for an election) and keeps the shared
//! pod cache warm; only the leader runs the controllers, so only the leader
//! writes. The moment it cannot be sure it still leads it stops them and
//! stands by again (its webhook server keeps serving). On SIGTERM/SIGINT the
//! leader lets in-flight reconciles finish, then releases the lease (a standby
//! takes over at once), then exits.
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
use futures::FutureExt;
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

    /// The node agents' --resize-mode (auto, kubelet or agent). Accepting a
    /// request the kubelet applies, the manager sends it to pods/resize
    /// before it records Accepted: the kubelet then acts on it at once,
    /// where a resize arriving behind the Accepted write waits for its next
    /// PLEG relist (up to 1 s).
    #[arg(long, env = "BERTH_RESIZE_MODE", default_value = "auto", value_parser = ["auto", "kubelet", "agent"])]
    resize_mode: String,

    /// Nodes whose resize requests are decided at once (each node's requests stay one after the other).
    #[arg(long, env = "BERTH_RESIZE_NODE_WORKERS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    resize_node_workers: u16,

    /// Pod writes (creations, in-place update steps) one InplaceSet or SidecarSet has in flight at once:
    /// a rollout step's pods are patched together, not one round trip after the other.
    #[arg(long, env = "BERTH_POD_WRITES", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pod_writes: u16,

    /// Milliseconds one InplaceSet or SidecarSet waits after its last reconcile
    /// before the next: the pod events of a burst are handled together, where
    /// each would otherwise read all of the set's pods and write its status.
    /// The first change after a quiet spell, and a change of the set's own
    /// spec (a scale, a new template), is handled at once. 0: no wait.
    #[arg(long, env = "BERTH_RECONCILE_INTERVAL_MS", value_name = "MS", default_value_t = 200)]
    reconcile_interval_ms: u64,

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
    let resize_mode: berth_resize::controller::ResizeMode = args.resize_mode.parse().map_err(anyhow::Error::msg)?;
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
    let pods = Arc::new(berth_inplace::pods::SharedPods::default());
    let store = pods.store();
    tokio::spawn({
        let (pods, client) = (pods.clone(), client.clone());
        async move { pods.run(client).await }
    });

    // Every replica: the webhook server. A failure ends the process, so the
    // apiserver is never left calling a server that is gone.
    let serving = if args.webhooks.disabled { "webhooks disabled" } else { "admission webhooks" };
    let (terms, terms_rx) = tokio::sync::watch::channel(0u64);
    let (configured_tx, mut configured) = tokio::sync::watch::channel(0u64);
    let mut webhooks: Pin<Box<dyn Future<Output = String> + Send>> = if args.webhooks.disabled {
        configured_tx.send_replace(u64::MAX);
        Box::pin(async move {
            let _keep = configured_tx;
            std::future::pending().await
        })
    } else {
        Box::pin(
            berth_webhooks::run_replica(client.clone(), args.webhooks, terms_rx, configured_tx)
                .map(|failed| failed.err().map_or("returned".to_string(), |e| e.to_string())),
        )
    };

    let elector = args.lease.enabled.then(|| leader::Elector::start(client.clone(), &namespace, args.lease.clone()));
    match &elector {
        Some(e) => info!(lease = %args.lease.name, %namespace, identity = e.identity(),
              "berth-manager starting: {serving}; InplaceSet, SidecarSet and resize controllers once leading"),
        None => info!(
            "berth-manager starting: InplaceSet, SidecarSet and resize controllers, {serving} (no leader election)"
        ),
    }
    // One pass per leadership term: stand by, lead, and (fenced) stand by again.
    for term in 1.. {
        let mut leadership = match &elector {
            Some(elector) => tokio::select! {
                leadership = elector.acquire() => Some(leadership),
                signal = &mut shutdown => {
                    info!(signal, "berth-manager stopped (standby)");
                    return Ok(());
                }
                reason = &mut webhooks => {
                    error!("berth-manager stopping: the webhook server failed: {reason}");
                    std::process::exit(1);
                }
            },
            None => None,
        };

        // Leading. With a self-generated CA, point the apiserver here first: a
        // pod the controllers create would otherwise meet another replica's server.
        terms.send_replace(term);
        tokio::select! {
            _ = configured.wait_for(|c| *c >= term) => {}
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
        // The controllers read the whole cache when they start; changes from now on reach them.
        let writes = args.pod_writes.into();
        let interval = Duration::from_millis(args.reconcile_interval_ms);
        let inplacesets =
            berth_inplaceset::controller::run(client.clone(), store.clone(), pods.subscribe(), writes, interval);
        let sidecarsets = berth_sidecarset::controller::run(
            client.clone(),
            store.clone(),
            pods.subscribe(),
            namespace.clone(),
            writes,
            interval,
        );
        let deadline = Duration::from_secs(args.resize_accept_deadline);
        let workers = args.resize_node_workers.into();
        let resizes = berth_resize::controller::run(
            client.clone(),
            store.clone(),
            pods.subscribe(),
            berth_resize::controller::Settings { deadline, node_workers: workers, mode: resize_mode },
        );
        // The first to end (a shutdown signal: they stop on it themselves) ends them all.
        let mut controllers = Box::pin(async {
            tokio::select! {
                () = inplacesets => {}
                () = sidecarsets => {}
                () = resizes => {}
            }
        });
        info!(term, "controllers running");
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
                // Not sure it leads: stop writing, and stand by again. The
                // webhook server goes on serving: a replica that exited would
                // take its webhooks with it (all of them, if every replica is
                // fenced at once by an overloaded apiserver).
                error!(
                    term,
                    "no longer sure it leads ({reason}): controllers stopped, lease not renewed; standing by \
                     (webhooks still served)"
                );
                if let Some(l) = leadership {
                    l.abandon();
                }
            }
            End::WebhooksFailed(reason) => {
                error!("berth-manager stopping: the webhook server failed: {reason}");
                stop(leadership, 1).await
            }
        }
    }
    unreachable!("the terms never run out")
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
