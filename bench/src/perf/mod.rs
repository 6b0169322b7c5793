//! `make bench`: the performance toolkit's scenarios, each measured beside a
//! baseline run on the same cluster in the same run (see `bin/bench.rs`).
//! Shared here: a bench namespace, a pod watch that timestamps when each pod
//! first meets a condition, bulk pod creation, process memory, and the local
//! cluster's helper scripts.

pub mod apimetrics;
pub mod cache;
pub mod failover;
pub mod plot;
pub mod resize;
pub mod rollout;
pub mod scale;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use berth_api::InplaceSet;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{Namespace, Pod},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tokio::{task::JoinHandle, time::Instant};

/// Label on every namespace the bench creates (value: the run id), so leftovers can be found.
pub const RUN_LABEL: &str = "berth.dev/bench-run";
/// A scheduling gate nobody removes: pods that exist (in etcd, in every
/// cache) without being scheduled or run, to measure creation and caching
/// without the hollow kubelets' cost.
pub const HOLD_GATE: &str = "berth.dev/bench-hold";

/// The local cluster's state directory (E2E_STATE).
pub fn state_dir() -> PathBuf {
    std::env::var_os("E2E_STATE").map(PathBuf::from).unwrap_or_else(|| berth_e2e::repo_root().join("target/e2e"))
}

/// Runs `e2e/manager.sh ARGS` with `env` added; fails with its status.
pub fn manager_sh(args: &[&str], env: &[(&str, String)]) -> Result<()> {
    let mut cmd = Command::new(berth_e2e::repo_root().join("e2e/manager.sh"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd.status().context("running e2e/manager.sh")?;
    ensure!(status.success(), "manager.sh {args:?}: {status}");
    Ok(())
}

/// The pid of manager replica `n` (1 = berth-manager), from manager.sh's pid file.
pub fn manager_pid(replica: u32) -> Result<u32> {
    let file = match replica {
        1 => "berth-manager.pid".to_string(),
        n => format!("berth-manager-{n}.pid"),
    };
    let path = state_dir().join("pids").join(file);
    Ok(std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?.trim().parse()?)
}

/// Resident memory of a process in bytes (VmRSS of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("process {pid}"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    let kib: u64 = line.split_whitespace().nth(1).context("VmRSS value")?.parse()?;
    Ok(kib * 1024)
}

/// A namespace for one scenario, labelled with the run id; deleted by [`BenchNamespace::delete`].
pub struct BenchNamespace {
    pub name: String,
    client: Client,
}

impl BenchNamespace {
    pub async fn create(client: &Client, prefix: &str, run: &str) -> Result<Self> {
        let api: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("bench-{prefix}-")),
                labels: Some(BTreeMap::from([(RUN_LABEL.to_string(), run.to_string())])),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = api.create(&PostParams::default(), &ns).await?;
        Ok(Self { name: created.name_any(), client: client.clone() })
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the namespace's InplaceSets and StatefulSets, then its pods at
    /// once (one delete-collection call, no grace) and the namespace, and waits until the pods are gone, so the
    /// next scenario starts on a quiet cluster.
    pub async fn delete(self, timeout: Duration) -> Result<()> {
        // The workloads first, or their controllers recreate the pods deleted below.
        let _ = self.api::<InplaceSet>().delete_collection(&DeleteParams::background(), &ListParams::default()).await;
        let _ = self.api::<StatefulSet>().delete_collection(&DeleteParams::background(), &ListParams::default()).await;
        let pods: Api<Pod> = self.api();
        let now = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
        let _ = pods.delete_collection(&now, &ListParams::default()).await;
        Api::<Namespace>::all(self.client.clone()).delete(&self.name, &DeleteParams::background()).await?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = pods.list_metadata(&ListParams::default().limit(1)).await.map(|l| l.items.len()).unwrap_or(0);
            if left == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("namespace {}: pods still there after {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Watches pods matching a label selector and records, per pod name, the
/// first time it was seen meeting a condition.
pub struct Tracker {
    seen: Arc<Mutex<BTreeMap<String, Instant>>>,
    task: JoinHandle<()>,
}

impl Tracker {
    pub async fn start(
        api: Api<Pod>,
        labels: &str,
        condition: impl Fn(&Pod) -> bool + Send + Sync + 'static,
    ) -> Result<Self> {
        let seen: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
        let record = seen.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let config = watcher::Config::default().labels(labels);
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut events = std::pin::pin!(watcher(api, config).default_backoff());
            while let Some(event) = events.next().await {
                let pods: Vec<Pod> = match event {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => vec![p],
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                        vec![]
                    }
                    _ => vec![],
                };
                let now = Instant::now();
                let mut seen = record.lock().expect("tracker lock");
                for pod in pods.iter().filter(|p| condition(p)) {
                    seen.entry(pod.name_any()).or_insert(now);
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), ready_rx).await.context("pod watch did not start")??;
        Ok(Self { seen, task })
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("tracker lock").len()
    }

    /// Waits until `n` pods met the condition; fails after `timeout` saying how many did.
    pub async fn wait(&self, n: usize, timeout: Duration, what: &str) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.count();
            if count >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{what}: {count} of {n} pods after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Seconds after `t0` at which each pod met the condition, sorted.
    pub fn seconds_since(&self, t0: Instant) -> Vec<f64> {
        let mut out: Vec<f64> = self
            .seen
            .lock()
            .expect("tracker lock")
            .values()
            .map(|t| t.saturating_duration_since(t0).as_secs_f64())
            .collect();
        out.sort_by(f64::total_cmp);
        out
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A pod held by [`HOLD_GATE`] (never scheduled), labelled `labels`.
pub fn held_pod(name: &str, labels: serde_json::Value) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [{"name": "app", "image": berth_e2e::images().0,
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
            "schedulingGates": [{"name": HOLD_GATE}]
        }
    }))?)
}

/// Creates `pods` with at most `concurrency` requests in flight; the wall time taken.
pub async fn create_all(api: &Api<Pod>, pods: Vec<Pod>, concurrency: usize) -> Result<Duration> {
    let start = Instant::now();
    futures::stream::iter(pods)
        .map(|pod| {
            let api = api.clone();
            async move {
                for attempt in 1.. {
                    match api.create(&PostParams::default(), &pod).await {
                        Ok(_) => return Ok(()),
                        // The apiserver sheds load with 429 (and a busy webhook with 5xx): retry, as a controller would.
                        Err(kube::Error::Api(s)) if (s.code == 429 || s.code >= 500) && attempt < 20 => {
                            tokio::time::sleep(Duration::from_millis(100 * attempt)).await
                        }
                        Err(e) => {
                            return Err(anyhow::Error::from(e).context(format!("creating pod {}", pod.name_any())));
                        }
                    }
                }
                Ok(())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(start.elapsed())
}

/// The pod's node, if bound.
pub fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

/// Whether the pod's container `name` runs `image` in its spec.
pub fn spec_image_is(pod: &Pod, name: &str, image: &str) -> bool {
    pod.spec.as_ref().is_some_and(|s| s.containers.iter().any(|c| c.name == name && c.image.as_deref() == Some(image)))
}
