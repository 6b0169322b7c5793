//! berth-manager: runs berth's controllers and its admission webhook server
//! against the cluster in KUBECONFIG (or the in-cluster service account).
//! Leader election and metrics join with their issues.

use clap::Parser;
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(version, about = "Runs berth's controllers (InplaceSet, SidecarSet) and admission webhooks")]
struct Args {
    /// Log as JSON lines (for log collectors) instead of text.
    #[arg(long, env = "BERTH_LOG_JSON")]
    log_json: bool,

    #[command(flatten)]
    webhooks: berth_webhooks::Options,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info,kube=warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if args.log_json {
        logs.json().init()
    } else {
        logs.init()
    }

    let client = kube::Client::try_default().await?;
    // One pod watch for every controller.
    let pods = berth_inplace::pods::SharedPods::default();
    let inplacesets = berth_inplaceset::controller::run(client.clone(), pods.store(), pods.subscribe());
    let namespace = args.webhooks.manager_namespace.clone();
    let sidecarsets = berth_sidecarset::controller::run(client.clone(), pods.store(), pods.subscribe(), namespace);
    let watch = pods.run(client.clone());
    let controllers = async {
        // The first to end (a shutdown signal) ends them all.
        tokio::select! {
            () = watch => {}
            () = inplacesets => {}
            () = sidecarsets => {}
        }
    };
    if args.webhooks.disabled {
        info!("berth-manager starting: InplaceSet and SidecarSet controllers (webhooks disabled)");
        controllers.await;
    } else {
        info!("berth-manager starting: InplaceSet and SidecarSet controllers, admission webhooks");
        // Both run for the life of the process; a webhook failure ends it, so
        // the apiserver is never left calling a server that is gone.
        tokio::select! {
            () = controllers => {}
            failed = berth_webhooks::run(client, args.webhooks) => {
                let reason = failed.err().map_or("returned".to_string(), |e| e.to_string());
                error!("berth-manager stopping: the webhook server failed: {reason}");
                std::process::exit(1);
            }
        }
    }
    info!("berth-manager stopped");
    Ok(())
}
