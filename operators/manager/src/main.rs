//! berth-manager: runs berth's controllers against the cluster in KUBECONFIG
//! (or the in-cluster service account). Leader election, metrics and the
//! webhook server join with their issues.

use clap::Parser;
use tracing::info;

#[derive(Parser, Debug)]
#[command(version, about = "Runs berth's controllers (InplaceSet)")]
struct Args {
    /// Log as JSON lines (for log collectors) instead of text.
    #[arg(long, env = "BERTH_LOG_JSON")]
    log_json: bool,
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
    info!("berth-manager starting: InplaceSet controller");
    berth_inplaceset::controller::run(client).await;
    info!("berth-manager stopped");
    Ok(())
}
