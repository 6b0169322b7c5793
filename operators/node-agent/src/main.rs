//! berth-node-agent: runs on every node (a DaemonSet), watches the
//! berth-managed pods of its node and carries Accepted resize requests out:
//! through `pods/resize` where the kubelet applies them (then a cpuset policy
//! through CRI), or entirely through CRI for agent-managed pods; Applied or
//! Failed with the reason. Its identity is a service-account token bound to
//! its pod, whose node name the resize webhook checks against the pod's node.

use std::{path::PathBuf, time::Duration};

use berth_api::keys;
use berth_node_agent::{
    agent::ResizeMode,
    cpuset::CpuSet,
    process::{self, Agent, RuntimeConfig},
};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, watcher},
};
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(version, about = "berth's node agent: applies accepted in-place resizes on its node")]
struct Args {
    /// The node this agent serves (from the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME", required_unless_present = "once_pod_file")]
    node_name: Option<String>,
    /// Seconds an accepted resize may take before it is marked Failed.
    #[arg(long, env = "BERTH_RESIZE_DEADLINE", default_value_t = 120)]
    deadline_seconds: u64,
    /// The container runtime's CRI socket. When it cannot be reached, the CRI
    /// path is unavailable: requests that need it fail saying so.
    #[arg(long, env = "BERTH_CRI_SOCKET", default_value = "/run/containerd/containerd.sock")]
    cri_socket: PathBuf,
    /// Where the CPU manager keeps its state (file `cpu_manager_state`).
    #[arg(long, env = "BERTH_STATE_DIR", default_value = "/var/lib/berth/node-agent")]
    state_dir: PathBuf,
    /// CPUs that may be given exclusively, e.g. "2-15". Default: every online
    /// CPU but CPU 0 (interrupts and system daemons run there, and the
    /// shared pool always keeps a CPU).
    #[arg(long, env = "BERTH_EXCLUSIVE_CPUS")]
    exclusive_cpus: Option<String>,
    /// auto: the kubelet's pods/resize, unless the pod is annotated
    /// berth.dev/resize-agent-managed=true; kubelet: always pods/resize;
    /// agent: every request through CRI.
    #[arg(long, env = "BERTH_RESIZE_MODE", default_value = "auto", value_parser = ["auto", "kubelet", "agent"])]
    resize_mode: String,
    /// Seconds between reconciles of the CPU manager with the runtime (CPUs
    /// of gone pods freed; a restarted container put back on its CPUs). The
    /// kubelet's CPU manager reconciles every 10 s too.
    #[arg(long, env = "BERTH_RECONCILE_SECONDS", default_value_t = 10)]
    reconcile_seconds: u64,
    /// One shot, no API server: carry out the request of the pod in this
    /// JSON file through CRI, print what the cgroups hold, exit.
    #[arg(long)]
    once_pod_file: Option<PathBuf>,
    /// Pause before each runtime write, ms (tests kill the agent mid-way).
    #[arg(long, hide = true, default_value_t = 0)]
    step_delay_ms: u64,
    /// Log as JSON lines.
    #[arg(long, env = "BERTH_LOG_JSON")]
    log_json: bool,
}

fn runtime_config(args: &Args) -> anyhow::Result<RuntimeConfig> {
    let node_cpus = process::online_cpus().map_err(anyhow::Error::msg)?;
    let allocatable = match &args.exclusive_cpus {
        None => process::default_exclusive(&node_cpus),
        Some(raw) => {
            let set: CpuSet = raw.parse().map_err(|e| anyhow::anyhow!("--exclusive-cpus: {e}"))?;
            let offline = set.difference(&node_cpus);
            if !offline.is_empty() {
                anyhow::bail!("--exclusive-cpus {set}: CPUs {offline} are not online; online: {node_cpus}");
            }
            set
        }
    };
    Ok(RuntimeConfig {
        socket: args.cri_socket.clone(),
        state_file: args.state_dir.join(process::STATE_FILE),
        allocatable,
        node_cpus,
        step_delay: Duration::from_millis(args.step_delay_ms),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info,kube=warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if args.log_json {
        logs.json().init()
    } else {
        logs.init()
    }

    let config = runtime_config(&args)?;
    if let Some(file) = &args.once_pod_file {
        let result = process::once(&config, file).await.map_err(anyhow::Error::msg)?;
        println!("{result}");
        return Ok(());
    }
    let mode: ResizeMode = args.resize_mode.parse().map_err(anyhow::Error::msg)?;
    let node = args.node_name.clone().unwrap_or_default();

    let client = Client::try_default().await?;
    let mut agent = Agent::new(client.clone(), &node, mode, Duration::from_secs(args.deadline_seconds), config).await;
    let watch =
        watcher::Config::default().fields(&format!("spec.nodeName={node}")).labels(&format!("{}=true", keys::MANAGED));
    let (store, writer) = reflector::store();
    let mut changes =
        Box::pin(watcher(Api::<Pod>::all(client), watch).default_backoff().reflect(writer).touched_objects());
    info!(node = %node, mode = %args.resize_mode, "berth-node-agent watching the managed pods of its node");
    // A DaemonSet pod is stopped with SIGTERM: leave between steps (every
    // change is persisted or verified before the next).
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut reconcile = tokio::time::interval(Duration::from_secs(args.reconcile_seconds.max(1)));
    reconcile.tick().await; // connecting reconciled already
    loop {
        tokio::select! {
            change = changes.next() => match change {
                Some(Ok(_)) => {}
                Some(Err(e)) => { warn!(error = %e, "pod watch error (retrying)"); continue }
                None => break,
            },
            _ = tick.tick() => {}
            _ = reconcile.tick() => { agent.tick().await; continue }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
        for pod in store.state() {
            agent.handle(&pod).await;
        }
    }
    info!("berth-node-agent stopped");
    Ok(())
}
