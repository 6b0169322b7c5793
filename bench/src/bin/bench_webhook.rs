//! `make bench-webhook`: the sidecar injection webhook under load, on a real
//! cluster with berth-manager running (e2e/manager.sh). A benchmark, not a test.
//!
//! 1. Server-side latency at a sustained rate: AdmissionReviews of a pod
//!    CREATE that a SidecarSet made here selects (so the rule injects and
//!    answers with a patch) are POSTed straight to the manager's webhook URL
//!    over TLS (trusting the configuration's caBundle), on keep-alive
//!    connections, open loop at `--rate` for `--duration`. The server's own
//!    latency comes from its decision log (one line per request UID); the
//!    baseline is the same pattern against `/healthz` (TLS + HTTP, no rule).
//! 2. Pod create latency through the apiserver with the injection webhook
//!    (pods injected; and pods sent to the webhook but matched by no
//!    SidecarSet) against pods in a namespace the webhook configuration
//!    excludes (the apiserver never calls it), phases interleaved. A fourth
//!    phase creates, in that namespace, the pod exactly as injection left it
//!    (sidecars in the request): the apiserver's cost of the larger pod alone.
//!
//! Prints one table and writes it as JSON (default target/bench/webhook.json);
//! deletes what it created.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use berth_api::SidecarSet;
use berth_bench::{
    cpu::{Cpu, CpuUse, clock_ticks},
    load::{self, Outcome, Plan, Server},
    report::{Goal, Row, table, write_json},
    stats::{Summary, micros},
};
use berth_e2e::sidecarset::{containers, injection_is, mutating_webhook_endpoint};
use clap::Parser;
use hyper::{Method, body::Bytes};
use k8s_openapi::{
    api::core::v1::{Namespace, Pod},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

const MUTATING_CONFIG: &str = "berth-mutating";
const INJECTION_WEBHOOK: &str = "sidecar-injection.berth.dev";
/// Label on everything the bench creates (value: the run id).
const RUN_LABEL: &str = "berth.dev/bench-run";
/// The sidecar the bench's SidecarSet injects (seen in a reply: the rule did its work).
const SIDECAR: &str = "log-agent";

#[derive(Parser, Debug, Clone, Serialize)]
#[command(about = "Webhook latency at a sustained rate, and pod create latency with vs without the injection webhook")]
struct Args {
    /// AdmissionReviews (and /healthz requests) per second, open loop.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of reviews, and as many of /healthz, split over --rounds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Alternations of /healthz and review runs (cancels drift on a shared machine).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Seconds of unrecorded load of each kind first.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Keep-alive connections to the webhook server.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Pods created in each phase (injected; webhook called, nothing injected; no webhook).
    #[arg(long, default_value_t = 200)]
    pods: usize,
    /// Concurrent pod creators in each phase.
    #[arg(long, default_value_t = 4)]
    creators: usize,
    /// Pods created per second in each phase, open loop (each create timed from
    /// when it was due). 0: closed loop, each creator as fast as the apiserver
    /// answers, which on 2 shared cores saturates the machine and so measures
    /// throughput more than latency.
    #[arg(long, default_value_t = 20.0)]
    pod_rate: f64,
    /// Rounds the pod phases are interleaved in (each round runs every phase, in a rotated order).
    #[arg(long, default_value_t = 4)]
    pod_rounds: usize,
    /// A namespace the injection webhook's namespaceSelector excludes: the "no webhook" phase creates its pods there.
    #[arg(long, default_value = "kube-public")]
    baseline_namespace: String,
    /// berth-manager's log (its decision lines give the server-side latency). Default: $E2E_STATE/logs/berth-manager.log.
    #[arg(long)]
    manager_log: Option<PathBuf>,
    /// berth-manager's pid file (for its CPU time). Default: $E2E_STATE/pids/berth-manager.pid.
    #[arg(long)]
    manager_pid_file: Option<PathBuf>,
    /// Where the JSON goes.
    #[arg(long, default_value = "target/bench/webhook.json")]
    out: PathBuf,
    /// Skip the webhook load phase.
    #[arg(long)]
    skip_load: bool,
    /// Skip the pod create phases.
    #[arg(long)]
    skip_pods: bool,
}

fn state_dir() -> PathBuf {
    std::env::var_os("E2E_STATE").map(PathBuf::from).unwrap_or_else(|| berth_e2e::repo_root().join("target/e2e"))
}

/// CPU seconds used so far by a process, and by the whole machine (busy, all CPUs).
fn manager_pid(args: &Args) -> Option<u32> {
    let file = args.manager_pid_file.clone().unwrap_or_else(|| state_dir().join("pids/berth-manager.pid"));
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// The pod both parts create (and review): an app container with env and a
/// volume for the sidecar to share, held back from scheduling (a benchmark
/// pod needs no node, and deletes at once).
fn bench_pod(name: &str, run: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {RUN_LABEL: run, "app": "bench"}},
        "spec": {
            "containers": [{"name": "app", "image": berth_e2e::images().0,
                            "env": [{"name": "REGION", "value": "eu-1"}],
                            "volumeMounts": [{"name": "app-logs", "mountPath": "/var/log/app"}]}],
            "volumes": [{"name": "app-logs", "emptyDir": {}}],
            "schedulingGates": [{"name": "berth.dev/bench"}]
        }
    }))?)
}

/// `pod` as its client would have sent it: only its labels, annotations and
/// spec, without what the apiserver added (the service account token volume
/// comes again on create).
fn as_created_by_a_client(pod: &Pod) -> Pod {
    let token = |name: &str| name.starts_with("kube-api-access-");
    let mut spec = pod.spec.clone().unwrap_or_default();
    spec.volumes.get_or_insert_default().retain(|v| !token(&v.name));
    let containers = spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten());
    for c in containers {
        c.volume_mounts.get_or_insert_default().retain(|m| !token(&m.name));
    }
    spec.node_name = None;
    Pod {
        metadata: ObjectMeta {
            labels: pod.metadata.labels.clone(),
            annotations: pod.metadata.annotations.clone(),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Like the e2e injection suite's: a native sidecar proxy, and a log agent
/// after the app sharing its volumes and env, with a volume of its own.
fn bench_sidecarset(name: &str, ns: &str, run: &str) -> Result<SidecarSet> {
    let image = berth_e2e::images().0;
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps.berth.dev/v1alpha1", "kind": "SidecarSet",
        "metadata": {"name": name, "labels": {RUN_LABEL: run}},
        "spec": {
            "selector": {"matchLabels": {RUN_LABEL: run}},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "initContainers": [{"name": "proxy", "image": image, "restartPolicy": "Always"}],
            "containers": [{"name": SIDECAR, "image": image,
                            "volumeMounts": [{"name": "agent-scratch", "mountPath": "/scratch"}]}],
            "volumes": [{"name": "agent-scratch", "emptyDir": {}}],
            "shareVolumePolicy": {"type": "Enabled"},
            "transferEnv": [{"sourceContainerName": "app", "envName": "REGION"}],
            "patchPodMetadata": [{"annotations": {"bench.berth.dev/agent": "on"}}]
        }
    }))?)
}

/// The pod as the apiserver sends it to the webhook (defaults and the
/// service account volume applied): a dry-run create where no webhook is
/// called, moved to `namespace`.
async fn admitted_object(client: &Client, baseline_ns: &str, namespace: &str, run: &str) -> Result<Value> {
    let api: Api<Pod> = Api::namespaced(client.clone(), baseline_ns);
    let dry_run = PostParams { dry_run: true, ..Default::default() };
    let pod = api.create(&dry_run, &bench_pod("template", run)?).await.context("dry-run pod create")?;
    let mut v = serde_json::to_value(&pod)?;
    // Set by the registry after admission.
    for field in ["uid", "creationTimestamp", "resourceVersion", "managedFields"] {
        v["metadata"].as_object_mut().map(|m| m.remove(field));
    }
    v.as_object_mut().map(|o| o.remove("status"));
    v["metadata"]["namespace"] = json!(namespace);
    Ok(v)
}

/// AdmissionReview bodies, one UID each: `<prefix><i>`.
fn reviews(object: &Value, namespace: &str, prefix: &str, count: usize) -> Result<Vec<Bytes>> {
    (0..count)
        .map(|i| {
            let name = format!("bench-{i}");
            let mut pod = object.clone();
            pod["metadata"]["name"] = json!(name);
            let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
                "uid": format!("{prefix}{i}"), "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "name": name, "namespace": namespace, "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                             "groups": ["system:serviceaccounts", "system:authenticated"]},
                "object": pod, "oldObject": null, "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}}});
            Ok(Bytes::from(serde_json::to_vec(&review)?))
        })
        .collect()
}

/// Server-side latencies (µs) of the decisions whose UID starts with `prefix`, from the manager's log.
fn server_latencies(log: &str, prefix: &str) -> Vec<u64> {
    let key = format!(" uid={prefix}");
    log.lines()
        .filter(|l| l.contains("admission decision") && l.contains(&key))
        .filter_map(|l| l.rsplit_once("latency_us=")?.1.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Server-side latencies (µs) of the decisions on pods `<namespace>/<prefix><round>-...` (not the warm-up's).
fn server_latencies_of_pods(log: &str, namespace: &str, prefix: &str) -> Vec<u64> {
    let key = format!(" object=\"{namespace}/{prefix}");
    log.lines()
        .filter(|l| l.contains("admission decision") && l.contains("rule=\"sidecar-injection.berth.dev\""))
        .filter_map(|l| {
            let after = &l[l.find(&key)? + key.len()..];
            after.starts_with(|c: char| c.is_ascii_digit()).then_some(())?;
            l.rsplit_once("latency_us=")?.1.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

fn manager_log(args: &Args) -> PathBuf {
    args.manager_log.clone().unwrap_or_else(|| state_dir().join("logs/berth-manager.log"))
}

/// (sum of seconds, count) of the apiserver's calls to the injection webhook so far, from its /metrics.
async fn webhook_calls(client: &Client) -> Result<(f64, f64)> {
    let req = hyper::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let (mut sum, mut count) = (0.0, 0.0);
    for line in text.lines().filter(|l| l.contains(&format!("name=\"{INJECTION_WEBHOOK}\""))) {
        let value = |l: &str| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()).unwrap_or(0.0);
        if line.starts_with("apiserver_admission_webhook_admission_duration_seconds_sum{") {
            sum += value(line);
        } else if line.starts_with("apiserver_admission_webhook_admission_duration_seconds_count{") {
            count += value(line);
        }
    }
    Ok((sum, count))
}

#[derive(Serialize)]
struct LoadReport {
    url: String,
    healthz: Outcome,
    review: Outcome,
    /// From the manager's decision log lines of the recorded reviews.
    server_side: Summary,
    review_body_bytes: usize,
    cpu_healthz: CpuUse,
    cpu_review: CpuUse,
    /// Manager CPU per request (µs).
    manager_cpu_us_per_healthz: Option<f64>,
    manager_cpu_us_per_review: Option<f64>,
}

async fn webhook_load(args: &Args, client: &Client, ns: &str, run: &str, pid: Option<u32>) -> Result<LoadReport> {
    let (url, ca) = mutating_webhook_endpoint(client, MUTATING_CONFIG, INJECTION_WEBHOOK).await?;
    let (server, path) = Server::new(&url, &ca)?;
    let object = admitted_object(client, &args.baseline_namespace, ns, run).await?;
    let rounds = args.rounds.max(1);
    let per_round = Duration::from_secs_f64(args.duration / rounds as f64);
    let count = |d: Duration| (args.rate * d.as_secs_f64()).round() as usize;
    let plan = |method: Method, path: &str, bodies: Vec<Bytes>, expect, duration| Plan {
        method,
        path: path.to_string(),
        bodies: Arc::new(bodies),
        expect,
        rate: args.rate,
        duration,
        connections: args.connections,
    };
    // The rule must really inject: check one reply before loading the server.
    let probe = reviews(&object, ns, &format!("bench-{run}-probe-"), 1)?;
    let probe_run = load::run(
        &server,
        &Plan {
            rate: 10.0,
            duration: Duration::from_millis(100),
            connections: 1,
            ..plan(Method::POST, &path, probe, Some("\"patch\""), Duration::ZERO)
        },
    )
    .await?;
    let checked = Outcome::of(&[probe_run]);
    if checked.good != 1 {
        bail!("the webhook did not answer a review with a patch: {:?}", checked.first_failure);
    }
    let review_bytes = reviews(&object, ns, "x", 1)?[0].len();
    let ticks = clock_ticks();
    let healthz = |d| plan(Method::GET, "/healthz", vec![], Some("ok"), d);
    let review = |prefix: &str, d| -> Result<Plan> {
        Ok(plan(Method::POST, &path, reviews(&object, ns, prefix, count(d))?, Some("\"patch\""), d))
    };
    if args.warmup > 0.0 {
        let d = Duration::from_secs_f64(args.warmup);
        eprintln!("[bench] warm-up: {:.0}/s for {d:?} each of /healthz and reviews", args.rate);
        load::run(&server, &healthz(d)).await?;
        load::run(&server, &review(&format!("bench-{run}-warm-"), d)?).await?;
    }
    let (mut h_runs, mut r_runs) = (vec![], vec![]);
    let (mut cpu_h, mut cpu_r) = (CpuUse::default(), CpuUse::default());
    let add = |acc: &mut CpuUse, u: CpuUse| {
        acc.manager_seconds = acc.manager_seconds.or(Some(0.0)).zip(u.manager_seconds).map(|(a, b)| a + b);
        acc.machine_busy += u.machine_busy / rounds as f64;
    };
    for round in 0..rounds {
        eprintln!(
            "[bench] round {}/{rounds}: /healthz then reviews, {:.0}/s for {per_round:?} each",
            round + 1,
            args.rate
        );
        let plan = healthz(per_round);
        let before = Cpu::now(pid, None, ticks);
        h_runs.push(load::run(&server, &plan).await?);
        add(&mut cpu_h, CpuUse::between(&before, &Cpu::now(pid, None, ticks)));
        let plan = review(&format!("bench-{run}-r{round}-"), per_round)?;
        let before = Cpu::now(pid, None, ticks);
        r_runs.push(load::run(&server, &plan).await?);
        add(&mut cpu_r, CpuUse::between(&before, &Cpu::now(pid, None, ticks)));
    }
    let (healthz, review) = (Outcome::of(&h_runs), Outcome::of(&r_runs));
    // The decision lines of the recorded reviews (the log is written as they are decided).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log_path = manager_log(args);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let server_side = Summary::of(&server_latencies(&log, &format!("bench-{run}-r")));
    if server_side.count == 0 {
        eprintln!("[bench] no decision lines for this run in {}: server-side figures are missing", log_path.display());
    }
    let per = |cpu: &CpuUse, o: &Outcome| cpu.manager_seconds.map(|s| s * 1e6 / (o.good + o.failed).max(1) as f64);
    Ok(LoadReport {
        url,
        manager_cpu_us_per_healthz: per(&cpu_h, &healthz),
        manager_cpu_us_per_review: per(&cpu_r, &review),
        healthz,
        review,
        server_side,
        review_body_bytes: review_bytes,
        cpu_healthz: cpu_h,
        cpu_review: cpu_r,
    })
}

#[derive(Serialize)]
struct PhaseReport {
    namespace: String,
    create: Summary,
    failed: usize,
    first_failure: Option<String>,
    /// Created pods that did (not) come back with the sidecar, against what the phase expects.
    wrong_injection: usize,
    cpu: CpuUse,
    /// Calls of the injection webhook the apiserver made during the phase, and
    /// their mean duration as it timed them (apiserver_admission_webhook_admission_duration_seconds).
    apiserver_webhook_calls: f64,
    apiserver_webhook_mean_ms: Option<f64>,
    /// The webhook server's own latency for this phase's pods (its decision log).
    server_side: Summary,
}

#[derive(Default)]
struct Phase {
    name: &'static str,
    namespace: String,
    /// The pod created (each under its own name).
    template: Pod,
    injected: bool,
    samples: Vec<u64>,
    failed: usize,
    first_failure: Option<String>,
    wrong: usize,
    cpu: CpuUse,
    webhook_calls: (f64, f64),
}

/// How pods are sent: `creators` concurrent callers, and with `rate` > 0 the
/// i-th pod is due at i/rate seconds.
#[derive(Clone, Copy)]
struct Pace {
    creators: usize,
    rate: f64,
}

impl Pace {
    /// When pod `i` is due, from `start` (None: at once).
    fn due(self, start: Instant, i: usize) -> Option<Instant> {
        (self.rate > 0.0).then(|| start + Duration::from_secs_f64(i as f64 / self.rate))
    }
}

/// Creates `count` pods in `ns`, paced by `pace`; each call's latency (µs),
/// from when it was due (a late start counts against it).
async fn create_pods(
    client: &Client,
    ns: &str,
    (run, tag): (&str, &str),
    template: &Pod,
    count: usize,
    pace: Pace,
    injected: bool,
) -> Result<(Vec<u64>, usize, Option<String>, usize)> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let creators = pace.creators.max(1);
    let start = Instant::now();
    let tasks = (0..creators).map(|c| {
        let api = api.clone();
        let share: Vec<usize> = (c..count).step_by(creators).collect();
        let (run, tag) = (run.to_string(), tag.to_string());
        let template = template.clone();
        async move {
            let (mut samples, mut failed, mut first, mut wrong) = (vec![], 0, None, 0);
            for i in share {
                let mut pod = template.clone();
                pod.metadata.name = Some(format!("bench-{run}-{tag}-{i}"));
                let started = match pace.due(start, i) {
                    Some(due) => {
                        tokio::time::sleep_until(due).await;
                        due
                    }
                    None => Instant::now(),
                };
                let result = api.create(&PostParams::default(), &pod).await;
                let took = micros(started.elapsed());
                match result {
                    Ok(p) => {
                        samples.push(took);
                        if containers(&p).iter().any(|c| c == SIDECAR) != injected {
                            wrong += 1;
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        first.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            anyhow::Ok((samples, failed, first, wrong))
        }
    });
    let mut out = (vec![], 0, None, 0);
    for r in futures::future::join_all(tasks).await {
        let (s, f, first, w) = r?;
        out.0.extend(s);
        out.1 += f;
        out.2 = out.2.or(first);
        out.3 += w;
    }
    Ok(out)
}

async fn pod_phases(
    args: &Args,
    client: &Client,
    inject_ns: &str,
    plain_ns: &str,
    run: &str,
    pid: Option<u32>,
) -> Result<BTreeMap<&'static str, PhaseReport>> {
    let plain = bench_pod("", run)?;
    let phase = |name, namespace: &str, template: &Pod, injected| Phase {
        name,
        namespace: namespace.into(),
        template: template.clone(),
        injected,
        ..Default::default()
    };
    let mut phases = vec![
        phase("injected", inject_ns, &plain, true),
        phase("webhook_no_match", plain_ns, &plain, false),
        phase("no_webhook", &args.baseline_namespace, &plain, false),
    ];
    let ticks = clock_ticks();
    // Warm the client's connections and the apiserver's caches for each namespace.
    for p in &phases {
        create_pods(
            client,
            &p.namespace,
            (run, &format!("{}-warm", p.name.replace('_', "-"))),
            &p.template,
            2 * args.creators,
            Pace { creators: args.creators, rate: 0.0 },
            p.injected,
        )
        .await?;
    }
    // The pod as injection left it, created where no webhook runs: what a pod
    // of that size costs the apiserver alone.
    let injected: Api<Pod> = Api::namespaced(client.clone(), inject_ns);
    let sample = injected.get(&format!("bench-{run}-injected-warm-0")).await.context("an injected warm-up pod")?;
    let presized = phase("no_webhook_presized", &args.baseline_namespace, &as_created_by_a_client(&sample), true);
    create_pods(
        client,
        &presized.namespace,
        (run, "presized-warm"),
        &presized.template,
        args.creators,
        Pace { creators: args.creators, rate: 0.0 },
        true,
    )
    .await?;
    phases.push(presized);
    let rounds = args.pod_rounds.max(1);
    for round in 0..rounds {
        let count = args.pods / rounds + usize::from(round < args.pods % rounds);
        // A, B, C, then B, C, A, ...: each phase runs first, middle and last alike.
        let order: Vec<usize> = (0..phases.len()).map(|k| (k + round) % phases.len()).collect();
        eprintln!(
            "[bench] pod round {}/{rounds}: {count} pods per phase, {}, order {:?}",
            round + 1,
            load_label(args),
            order.iter().map(|&k| phases[k].name).collect::<Vec<_>>()
        );
        for k in order {
            let p = &mut phases[k];
            let before = Cpu::now(pid, None, ticks);
            let calls_before = webhook_calls(client).await;
            let (samples, failed, first, wrong) = create_pods(
                client,
                &p.namespace,
                (run, &format!("{}-{round}", p.name.replace('_', "-"))),
                &p.template,
                count,
                Pace { creators: args.creators, rate: args.pod_rate },
                p.injected,
            )
            .await?;
            let used = CpuUse::between(&before, &Cpu::now(pid, None, ticks));
            if let (Ok(a), Ok(b)) = (calls_before, webhook_calls(client).await) {
                p.webhook_calls.0 += b.0 - a.0;
                p.webhook_calls.1 += b.1 - a.1;
            }
            p.cpu.manager_seconds = p.cpu.manager_seconds.or(Some(0.0)).zip(used.manager_seconds).map(|(a, b)| a + b);
            p.cpu.machine_busy += used.machine_busy / rounds as f64;
            p.samples.extend(samples);
            p.failed += failed;
            p.first_failure = p.first_failure.take().or(first);
            p.wrong += wrong;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = std::fs::read_to_string(manager_log(args)).unwrap_or_default();
    Ok(phases
        .into_iter()
        .map(|p| {
            (
                p.name,
                PhaseReport {
                    namespace: p.namespace.clone(),
                    create: Summary::of(&p.samples),
                    failed: p.failed,
                    first_failure: p.first_failure,
                    wrong_injection: p.wrong,
                    cpu: p.cpu,
                    apiserver_webhook_calls: p.webhook_calls.1,
                    apiserver_webhook_mean_ms: (p.webhook_calls.1 > 0.0)
                        .then(|| 1000.0 * p.webhook_calls.0 / p.webhook_calls.1),
                    server_side: Summary::of(&server_latencies_of_pods(
                        &log,
                        &p.namespace,
                        &format!("bench-{run}-{}-", p.name.replace('_', "-")),
                    )),
                },
            )
        })
        .collect())
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    run: String,
    started_unix: u64,
    args: Args,
    machine: Value,
    manager: Value,
    rows: Vec<Row>,
    load: Option<LoadReport>,
    pod_create: Option<BTreeMap<&'static str, PhaseReport>>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The load the pod phases ran at, for labels.
fn load_label(args: &Args) -> String {
    if args.pod_rate > 0.0 {
        format!("{} pods/s", args.pod_rate)
    } else {
        format!("{} creators, closed loop", args.creators)
    }
}

fn rows(args: &Args, load: Option<&LoadReport>, pods: Option<&BTreeMap<&'static str, PhaseReport>>) -> Vec<Row> {
    let mut rows = vec![];
    if let Some(l) = load {
        let (h, r) = (&l.healthz, &l.review);
        rows.push(Row::new(
            "webhook: reviews answered",
            "/s",
            r.achieved_rate,
            Some((h.achieved_rate, "/healthz")),
            Goal::ValueAtLeast { limit: 0.99 * args.rate },
        ));
        let s = &l.server_side;
        rows.push(Row::new(
            "webhook server-side p50 (log)",
            "ms",
            ms(s.p50_us),
            Some((ms(h.service.p50_us), "/healthz round trip")),
            Goal::None,
        ));
        rows.push(Row::new(
            "webhook server-side p99 (log)",
            "ms",
            ms(s.p99_us),
            Some((ms(h.service.p99_us), "/healthz round trip")),
            Goal::ValueBelow { limit: 2.0 },
        ));
        // Written → reply (the open-loop latency from the schedule, which adds the
        // client's own timer lag, is in the JSON as `latency`).
        for (what, v, b) in [
            ("p50", r.service.p50_us, h.service.p50_us),
            ("p99", r.service.p99_us, h.service.p99_us),
            ("max", r.service.max_us, h.service.max_us),
        ] {
            rows.push(Row::new(
                &format!("webhook client round trip {what}"),
                "ms",
                ms(v),
                Some((ms(b), "/healthz")),
                Goal::None,
            ));
        }
        if let (Some(r), Some(h)) = (l.manager_cpu_us_per_review, l.manager_cpu_us_per_healthz) {
            rows.push(Row::new("manager CPU per request", "us", r, Some((h, "/healthz")), Goal::None));
        }
    }
    if let Some(p) = pods {
        let base = &p["no_webhook"].create;
        for (phase, label) in [("injected", "injected"), ("webhook_no_match", "webhook, no match")] {
            let Some(c) = p.get(phase).map(|p| &p.create) else { continue };
            for (what, v, b) in [("p50", c.p50_us, base.p50_us), ("p99", c.p99_us, base.p99_us)] {
                let goal = if phase == "injected" { Goal::RatioBelow { limit: 1.10 } } else { Goal::None };
                rows.push(Row::new(
                    &format!("pod create {what}, {label} ({})", load_label(args)),
                    "ms",
                    ms(v),
                    Some((ms(b), "no webhook")),
                    goal,
                ));
            }
        }
    }
    // The same injected pod, sent whole by the client where no webhook runs:
    // the injection's cost apart from the larger pod it makes.
    if let Some(p) = pods
        && let (Some(i), Some(b)) = (p.get("injected"), p.get("no_webhook_presized"))
    {
        for (what, v, b) in [("p50", i.create.p50_us, b.create.p50_us), ("p99", i.create.p99_us, b.create.p99_us)] {
            rows.push(Row::new(
                &format!("pod create {what}, injected vs the same pod sent whole"),
                "ms",
                ms(v),
                Some((ms(b), "no webhook, sidecars in the request")),
                Goal::None,
            ));
        }
    }
    if let Some(p) = pods
        && let (Some(a), Some(b)) =
            (p["injected"].apiserver_webhook_mean_ms, p["webhook_no_match"].apiserver_webhook_mean_ms)
    {
        rows.push(Row::new(
            "apiserver-timed webhook call (mean), injected",
            "ms",
            a,
            Some((b, "webhook, no match")),
            Goal::None,
        ));
    }
    rows
}

async fn cleanup(client: &Client, run: &str, set: &str, namespaces: &[String], baseline_ns: &str) {
    let sets: Api<SidecarSet> = Api::all(client.clone());
    if let Err(e) = sets.delete(set, &DeleteParams::default()).await
        && !matches!(&e, kube::Error::Api(s) if s.code == 404)
    {
        eprintln!("[bench] cleanup: deleting SidecarSet {set}: {e}");
    }
    let nss: Api<Namespace> = Api::all(client.clone());
    for ns in namespaces {
        if let Err(e) = nss.delete(ns, &DeleteParams::background()).await {
            eprintln!("[bench] cleanup: deleting namespace {ns}: {e}");
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), baseline_ns);
    let now = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::background() };
    if let Err(e) = pods.delete_collection(&now, &ListParams::default().labels(&format!("{RUN_LABEL}={run}"))).await {
        eprintln!("[bench] cleanup: deleting the bench pods in {baseline_ns}: {e}");
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.rate <= 0.0 || args.duration <= 0.0 {
        bail!("--rate and --duration must be positive");
    }
    let client = berth_e2e::client().await?;
    let started = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let run = format!("{:x}", started.as_millis() % 0xff_ffff);
    let set_name = format!("bench-wh-{run}");
    let (inject_ns, plain_ns) = (format!("bench-wh-{run}"), format!("bench-wh-{run}-plain"));
    let pid = manager_pid(&args);
    let exe = pid.and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok()).map(|p| p.display().to_string());
    let build = exe.as_deref().map(|e| {
        if e.contains("/release/") {
            "release"
        } else if e.contains("/debug/") {
            "debug"
        } else {
            "unknown"
        }
    });
    eprintln!(
        "[bench] run {run}; berth-manager pid {pid:?} ({}), build {}",
        exe.as_deref().unwrap_or("?"),
        build.unwrap_or("?")
    );

    let nss: Api<Namespace> = Api::all(client.clone());
    let mut created = vec![];
    let outcome = async {
        for ns in [&inject_ns, &plain_ns] {
            let namespace: Namespace =
                serde_json::from_value(json!({"metadata": {"name": ns, "labels": {RUN_LABEL: run}}}))?;
            nss.create(&PostParams::default(), &namespace).await.with_context(|| format!("creating namespace {ns}"))?;
            created.push(ns.clone());
        }
        let sets: Api<SidecarSet> = Api::all(client.clone());
        sets.create(&PostParams::default(), &bench_sidecarset(&set_name, &inject_ns, &run)?).await?;
        // The webhook is live and its caches hold the set (and the namespaces).
        let probe = bench_pod("probe", &run)?;
        injection_is(&Api::namespaced(client.clone(), &inject_ns), &probe, SIDECAR, true).await?;
        injection_is(&Api::namespaced(client.clone(), &plain_ns), &probe, SIDECAR, false).await?;
        let load = if args.skip_load { None } else { Some(webhook_load(&args, &client, &inject_ns, &run, pid).await?) };
        let pods = if args.skip_pods {
            None
        } else {
            Some(pod_phases(&args, &client, &inject_ns, &plain_ns, &run, pid).await?)
        };
        anyhow::Ok((load, pods))
    }
    .await;
    cleanup(&client, &run, &set_name, &created, &args.baseline_namespace).await;
    let (load, pods) = outcome?;

    let rows = rows(&args, load.as_ref(), pods.as_ref());
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let report = Report {
        bench: "webhook",
        run,
        started_unix: started.as_secs(),
        machine: json!({"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                        "loadavg_at_end": loadavg.trim()}),
        manager: json!({"pid": pid, "exe": exe, "build": build}),
        args: args.clone(),
        rows,
        load,
        pod_create: pods,
    };
    println!("{}", table(&report.rows));
    if let Some(l) = &report.load {
        println!(
            "webhook: {} reviews ({} failed), {} /healthz ({} failed); review body {} B; {} decision lines; client dispatch lag p99 {:.2} ms; machine busy {:.0}% during reviews; manager {}",
            l.review.sent,
            l.review.failed,
            l.healthz.sent,
            l.healthz.failed,
            l.review_body_bytes,
            l.server_side.count,
            ms(l.review.dispatch_lag.p99_us),
            100.0 * l.cpu_review.machine_busy,
            build.unwrap_or("build unknown"),
        );
        for (what, o) in [("review", &l.review), ("/healthz", &l.healthz)] {
            if let Some(f) = &o.first_failure {
                println!("  first {what} failure: {f}");
            }
        }
    }
    if let Some(p) = &report.pod_create {
        for (name, r) in p {
            println!(
                "pod create {name} ({}): {} pods, {} failed, {} with the wrong injection{}",
                r.namespace,
                r.create.count,
                r.failed,
                r.wrong_injection,
                r.first_failure.as_ref().map(|f| format!("; first failure: {f}")).unwrap_or_default()
            );
            if r.apiserver_webhook_calls > 0.0 {
                println!(
                    "  the apiserver's {} calls to the injection webhook: mean {:.2} ms as it times them; server-side (log) p50 {:.2} ms, p99 {:.2} ms",
                    r.apiserver_webhook_calls,
                    r.apiserver_webhook_mean_ms.unwrap_or(0.0),
                    ms(r.server_side.p50_us),
                    ms(r.server_side.p99_us),
                );
            }
        }
    }
    let out = if args.out.is_absolute() { args.out.clone() } else { berth_e2e::repo_root().join(&args.out) };
    write_json(&out, &report)?;
    println!("written: {}", out.display());
    let load_failed = report.load.as_ref().map_or(0, |l| l.review.failed + l.healthz.failed);
    let pods_failed = report.pod_create.iter().flatten().map(|(_, p)| p.failed + p.wrong_injection).sum::<usize>();
    if load_failed + pods_failed > 0 {
        bail!(
            "{load_failed} webhook requests and {pods_failed} pod creates failed: the figures above are not comparable"
        );
    }
    Ok(())
}
