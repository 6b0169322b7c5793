//! berth-node-agent: runs on every node (a DaemonSet), watches the
//! berth-managed pods of its node and carries Accepted resize requests out:
//! through `pods/resize` where the kubelet supports it, then Applied once the
//! container status reports the new resources, or Failed with the reason. Its
//! identity is a service-account token bound to its pod, whose node name the
//! resize webhook checks against the pod's node.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use berth_api::{keys, resize::ResizeState};
use berth_node_agent::agent::{Step, next_step};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::json;
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(version, about = "berth's node agent: applies accepted in-place resizes on its node")]
struct Args {
    /// The node this agent serves (from the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Seconds an accepted resize may take before it is marked Failed.
    #[arg(long, env = "BERTH_RESIZE_DEADLINE", default_value_t = 120)]
    deadline_seconds: u64,
    /// Log as JSON lines.
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

    let client = Client::try_default().await?;
    let config = watcher::Config::default()
        .fields(&format!("spec.nodeName={}", args.node_name))
        .labels(&format!("{}=true", keys::MANAGED));
    let (store, writer) = reflector::store();
    let mut changes =
        Box::pin(watcher(Api::<Pod>::all(client.clone()), config).default_backoff().reflect(writer).touched_objects());
    info!(node = %args.node_name, "berth-node-agent watching the managed pods of its node");
    let deadline = Duration::from_secs(args.deadline_seconds);
    // When each request was first seen Accepted (pod UID → instant): the deadline's start.
    let mut seen: BTreeMap<String, Instant> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            change = changes.next() => match change {
                Some(Ok(_)) => {}
                Some(Err(e)) => { warn!(error = %e, "pod watch error (retrying)"); continue }
                None => break,
            },
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        for pod in store.state() {
            let Some(step) = next_step(&pod) else {
                seen.remove(&pod.uid().unwrap_or_default());
                continue;
            };
            let since = *seen.entry(pod.uid().unwrap_or_default()).or_insert_with(Instant::now);
            if let Err(e) = act(&client, &pod, step, since.elapsed() > deadline, deadline).await {
                warn!(pod = %pod.name_any(), namespace = pod.namespace().unwrap_or_default(), error = %e, "resize step failed; retrying");
            }
        }
    }
    info!("berth-node-agent stopped");
    Ok(())
}

async fn act(client: &Client, pod: &Pod, step: Step, overdue: bool, deadline: Duration) -> kube::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let name = pod.name_any();
    let finish = |state: ResizeState, message: String| {
        json!({"metadata": {"resourceVersion": pod.resource_version(),
            "annotations": {keys::RESIZE_STATE: state.as_str(), keys::RESIZE_MESSAGE: message}}})
    };
    let (state, message) = match step {
        Step::Resize(patch) => {
            info!(pod = %name, "sending the new resources through pods/resize");
            return pods.patch_resize(&name, &PatchParams::default(), &Patch::Strategic(patch)).await.map(|_| ());
        }
        Step::Wait(why) if overdue => {
            (ResizeState::Failed, format!("not applied within {}s: {why}", deadline.as_secs()))
        }
        Step::Wait(_) => return Ok(()),
        Step::Applied(m) => (ResizeState::Applied, m),
        Step::Failed(m) => (ResizeState::Failed, m),
    };
    info!(pod = %name, %state, %message, "resize finished");
    match pods.patch(&name, &PatchParams::default(), &Patch::Merge(finish(state, message))).await {
        // Changed since read: the next pass looks again.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        result => result.map(|_| ()),
    }
}
