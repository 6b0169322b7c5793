//! `make bench`: berth's performance toolkit, on a real local cluster with
//! berth-manager running (the Makefile starts both). A benchmark, not a test:
//! every figure is printed beside a baseline measured in the same run on the
//! same cluster, and beside its goal.
//!
//! Scenarios (`--scenarios`, sizes are flags):
//! 1. rollout: in-place image rollout of N pods (InplaceSet) vs a StatefulSet
//!    RollingUpdate of the same N pods; time and pods that changed node;
//!    rollout-real: the same on the real node (kubelet, containerd, runc, CNI);
//! 2. scale: InplaceSet 0 -> M (Parallel) vs a plain client creating M pods
//!    and vs a StatefulSet (Parallel);
//! 3. webhook: bench-webhook (run as a child; its rows join the table);
//! 4. and 7. cache: manager memory per cached pod, and the largest pod (and
//!    node) counts at which the manager still reacts within 1 s, stepped;
//! 5. failover: leader SIGKILLed -> standby reconciling, repeated;
//! 6. resize: Created -> Applied with the real node agent vs pods/resize after a pod write, and alone;
//!    resize-real: the same on the real node, plus the agent's CRI path;
//!
//! plus the apiserver's own latency for the calls made (its /metrics).
//! Writes `bench.json`, `rollout.svg`, `rollout-real.svg` and `scale.svg` under --out-dir.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use berth_bench::{
    perf::{apimetrics, cache, failover, plot, resize, rollout, scale},
    report::{Goal, Row, table, write_json},
};
use clap::Parser;
use serde::Serialize;
use serde_json::Value;

const SCENARIOS: [&str; 8] =
    ["webhook", "rollout", "rollout-real", "scale", "resize", "resize-real", "failover", "cache"];

#[derive(Parser, Debug, Clone, Serialize)]
#[command(about = "berth's benchmarks: every figure beside a same-run baseline and its goal")]
struct Args {
    /// Scenarios to run, comma-separated: webhook, rollout, rollout-real, scale, resize, resize-real,
    /// failover, cache.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "webhook,rollout,rollout-real,scale,resize,resize-real,failover,cache"
    )]
    scenarios: Vec<String>,
    /// Pods rolled on the hollow nodes (InplaceSet in place; StatefulSet RollingUpdate).
    #[arg(long, default_value_t = 500)]
    rollout_pods: usize,
    /// Pods rolled on the real node (`cluster.sh real-node`: kubelet, containerd, runc, CNI).
    #[arg(long, default_value_t = 100)]
    rollout_real_pods: usize,
    /// maxUnavailable of both rollouts (count or percent).
    #[arg(long, default_value = "10%")]
    max_unavailable: String,
    /// Pods of the scale 0 -> M scenario.
    #[arg(long, default_value_t = 2000)]
    scale_pods: usize,
    /// Rounds of the scale scenario (each kind's median round is reported; the order rotates).
    #[arg(long, default_value_t = 3)]
    scale_rounds: usize,
    /// Requests in flight when the bench creates pods (the plain-client baseline, the cache filler).
    #[arg(long, default_value_t = 16)]
    create_concurrency: usize,
    /// Steps of the cache/scale search, `PODS` or `NODES:PODS` (nodes added by --scale-node-simulator).
    #[arg(long, value_delimiter = ',', default_value = "2000,10000,20000,2000:50000")]
    cache_steps: Vec<cache::Step>,
    /// What simulates the nodes the scale search adds (the scenarios before it run on the hollow nodes).
    #[arg(long, value_enum, default_value_t = cache::NodeSimulator::Kwok)]
    scale_node_simulator: cache::NodeSimulator,
    /// Reaction probes per step (each of InplaceSet and StatefulSet).
    #[arg(long, default_value_t = 10)]
    cache_probes: usize,
    /// Seconds the manager settles before its memory is read.
    #[arg(long, default_value_t = 10)]
    cache_settle: u64,
    /// Leader kills.
    #[arg(long, default_value_t = 5)]
    failover_kills: usize,
    /// Lease duration of the failover replicas (berth-manager --lease-duration, whole seconds).
    #[arg(long, default_value_t = 1)]
    lease_duration: u64,
    /// Lease grace of the failover replicas (berth-manager --lease-grace): they renew every
    /// duration - grace seconds.
    #[arg(long, default_value_t = 0.5)]
    lease_grace: f64,
    /// Nodes running a node agent for the resize scenario (hollow-node-0..).
    #[arg(long, default_value_t = 2)]
    resize_nodes: usize,
    /// Resizes per node (and as many through pods/resize, alone and after a pod write).
    #[arg(long, default_value_t = 20)]
    resize_samples: usize,
    /// The real node's containerd socket (resize-real). Default: E2E_STATE (else target/e2e)
    /// /real-node/containerd/containerd.sock, where `cluster.sh real-node` puts it.
    #[arg(long)]
    real_node_cri_socket: Option<PathBuf>,
    /// berth-node-agent binary. Default: BERTH_NODE_AGENT, else target/release/berth-node-agent.
    #[arg(long)]
    node_agent: Option<PathBuf>,
    /// Arguments for bench-webhook (whitespace-separated), e.g. "--duration 10 --pods 100".
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    webhook_args: String,
    /// Seconds any one wait may take before the scenario is given up.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Where bench.json, the SVG plots and logs go.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
}

#[derive(Default, Serialize)]
struct Scenarios {
    rollout: Option<rollout::Report>,
    rollout_real: Option<rollout::Report>,
    scale: Option<scale::Report>,
    webhook: Option<Value>,
    cache: Option<cache::Report>,
    failover: Option<failover::Report>,
    resize: Option<resize::Report>,
    resize_real: Option<resize::Report>,
    apiserver: Vec<apimetrics::Latency>,
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    run: String,
    started_unix: u64,
    seconds: f64,
    args: Args,
    machine: Value,
    rows: Vec<Row>,
    notes: Vec<String>,
    errors: Vec<String>,
    scenarios: Scenarios,
}

fn want(args: &Args, s: &str) -> bool {
    args.scenarios.iter().any(|x| x == s)
}

/// bench-webhook as a child (stdout to webhook.log); its JSON report.
fn webhook(args: &Args) -> Result<Value> {
    let bin = std::env::current_exe()?.with_file_name("bench-webhook");
    let out = args.out_dir.join("webhook.json");
    let log = std::fs::File::create(args.out_dir.join("webhook.log"))?;
    eprintln!("[bench] webhook: {} (output in {})", bin.display(), args.out_dir.join("webhook.log").display());
    let status = std::process::Command::new(&bin)
        .arg("--out")
        .arg(&out)
        .args(args.webhook_args.split_whitespace())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    anyhow::ensure!(status.success(), "bench-webhook: {status}; see {}", args.out_dir.join("webhook.log").display());
    Ok(serde_json::from_slice(&std::fs::read(&out)?)?)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    for s in &args.scenarios {
        anyhow::ensure!(SCENARIOS.contains(&s.as_str()), "unknown scenario {s:?}; allowed: {}", SCENARIOS.join(", "));
    }
    anyhow::ensure!(
        args.lease_duration as f64 > args.lease_grace && args.lease_grace >= 0.1,
        "--lease-duration ({}) must be longer than --lease-grace ({}), which must be at least 0.1",
        args.lease_duration,
        args.lease_grace
    );
    std::fs::create_dir_all(&args.out_dir)?;
    let client = berth_e2e::client().await?;
    berth_e2e::install_crds(&client).await?;
    let nodes = kube::Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .list_metadata(&Default::default())
        .await?
        .items
        .len();
    let started = std::time::SystemTime::now();
    let t0 = tokio::time::Instant::now();
    let run = format!("{}", started.duration_since(std::time::UNIX_EPOCH)?.as_secs());
    let timeout = Duration::from_secs(args.timeout);
    let mut s = Scenarios::default();
    let (mut errors, mut notes) = (vec![], vec![]);
    let api_before = apimetrics::snapshot(&client).await;

    macro_rules! scenario {
        ($name:literal, $body:expr) => {
            if want(&args, $name) {
                eprintln!("[bench] ---- {} ----", $name);
                match $body {
                    Ok(r) => Some(r),
                    Err(e) => {
                        eprintln!("[bench] {} failed: {e:#}", $name);
                        errors.push(format!("{}: {e:#}", $name));
                        None
                    }
                }
            } else {
                None
            }
        };
    }

    s.webhook = scenario!("webhook", webhook(&args));
    let rollout_opts =
        |nodes, pods| rollout::Options { nodes, pods, max_unavailable: args.max_unavailable.clone(), timeout };
    s.rollout = scenario!(
        "rollout",
        rollout::run(&client, &run, &rollout_opts(rollout::Nodes::Hollow, args.rollout_pods)).await
    );
    s.rollout_real = scenario!(
        "rollout-real",
        rollout::run(&client, &run, &rollout_opts(rollout::Nodes::Real, args.rollout_real_pods)).await
    );
    s.scale = scenario!(
        "scale",
        scale::run(
            &client,
            &run,
            &scale::Options {
                pods: args.scale_pods,
                concurrency: args.create_concurrency,
                rounds: args.scale_rounds,
                timeout
            }
        )
        .await
    );
    let agent_bin = args.node_agent.clone().unwrap_or_else(|| {
        std::env::var_os("BERTH_NODE_AGENT")
            .map(PathBuf::from)
            .unwrap_or_else(|| berth_e2e::repo_root().join("target/release/berth-node-agent"))
    });
    let resize_opts = |nodes: Vec<String>, cri_socket: Option<PathBuf>, work: &str| resize::Options {
        nodes,
        cri_socket,
        samples: args.resize_samples,
        agent_bin: agent_bin.clone(),
        work_dir: args.out_dir.join(work),
    };
    s.resize = scenario!(
        "resize",
        resize::run(
            &client,
            &run,
            &resize_opts((0..args.resize_nodes).map(|i| format!("hollow-node-{i}")).collect(), None, "agents")
        )
        .await
    );
    s.resize_real = scenario!(
        "resize-real",
        async {
            let node = rollout::real_node(&client).await?;
            let socket = args.real_node_cri_socket.clone().unwrap_or_else(|| {
                std::env::var_os("E2E_STATE")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| berth_e2e::repo_root().join("target/e2e"))
                    .join("real-node/containerd/containerd.sock")
            });
            resize::run(&client, &run, &resize_opts(vec![node], Some(socket), "agents-real")).await
        }
        .await
    );
    s.failover = scenario!(
        "failover",
        failover::run(
            &client,
            &run,
            &failover::Options {
                kills: args.failover_kills,
                lease_duration: args.lease_duration,
                lease_grace: args.lease_grace,
            }
        )
        .await
    );
    s.cache = scenario!(
        "cache",
        cache::run(
            &client,
            &run,
            &cache::Options {
                steps: args.cache_steps.clone(),
                node_simulator: args.scale_node_simulator,
                concurrency: args.create_concurrency,
                probes: args.cache_probes,
                settle: Duration::from_secs(args.cache_settle),
                timeout,
            }
        )
        .await
    );
    match (api_before, apimetrics::snapshot(&client).await) {
        (Ok(a), Ok(b)) => s.apiserver = apimetrics::between(&a, &b),
        (Err(e), _) | (_, Err(e)) => errors.push(format!("apiserver metrics: {e:#}")),
    }

    let rows = rows(&s, &args, &mut notes);
    plots(&s, &args)?;
    let report = Report {
        bench: "bench",
        run,
        started_unix: started.duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        seconds: t0.elapsed().as_secs_f64(),
        args: args.clone(),
        machine: serde_json::json!({
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "nodes_at_start": nodes,
        }),
        rows,
        notes,
        errors,
        scenarios: s,
    };
    println!("\nberth bench ({:.0} s), every figure beside a same-run baseline:\n", report.seconds);
    println!("{}", table(&report.rows));
    for n in &report.notes {
        println!("note: {n}");
    }
    for e in &report.errors {
        println!("FAILED: {e}");
    }
    let out = args.out_dir.join("bench.json");
    write_json(&out, &report)?;
    println!(
        "\nwritten: {}, and the plots (rollout.svg, rollout-real.svg, scale.svg) of the scenarios run, in {}",
        out.display(),
        args.out_dir.display()
    );
    if !report.errors.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// A rollout's time, in place against the StatefulSet's, beside the 0.2x goal.
fn rollout_row(r: &rollout::Report, where_: &str) -> Row {
    Row::new(
        &format!("rollout {} pods{where_}: InplaceSet in place", r.inplaceset.pods),
        "s",
        r.inplaceset.rollout_seconds,
        Some((r.statefulset.rollout_seconds, "StatefulSet RollingUpdate")),
        Goal::RatioBelow { limit: 0.2 },
    )
}

fn rows(s: &Scenarios, args: &Args, notes: &mut Vec<String>) -> Vec<Row> {
    let mut rows = vec![];
    if let Some(r) = &s.rollout_real {
        let (i, t) = (&r.inplaceset, &r.statefulset);
        rows.push(rollout_row(r, ", real node"));
        notes.push(format!(
            "rollout on the real node (kubelet, containerd, runc, CNI bridge): pods Ready after creation in \
             {:.1} s (InplaceSet) and {:.1} s (StatefulSet); pods recreated: InplaceSet {}, StatefulSet {}",
            i.start_seconds, t.start_seconds, i.uid_changes, t.uid_changes
        ));
    }
    if let Some(r) = &s.rollout {
        let (i, t) = (&r.inplaceset, &r.statefulset);
        rows.push(rollout_row(r, ""));
        rows.push(Row::new(
            "rollout: pods that changed node (InplaceSet)",
            "pods",
            i.node_changes as f64,
            Some((t.node_changes as f64, "StatefulSet")),
            Goal::ValueBelow { limit: 1.0 },
        ));
        notes.push(format!(
            "rollout maxUnavailable: InplaceSet {}; StatefulSet {}; pods recreated: InplaceSet {}, StatefulSet {}",
            i.max_unavailable, t.max_unavailable, i.uid_changes, t.uid_changes
        ));
    }
    if let Some(r) = &s.scale {
        let (i, p, t) = (&r.inplaceset, &r.plain_client, &r.statefulset);
        rows.push(Row::new(
            &format!("scale 0->{}: InplaceSet vs plain client", i.pods),
            "pods/s",
            i.pods_per_second,
            Some((p.pods_per_second, &format!("plain client, {} in flight", args.create_concurrency))),
            Goal::RatioAtLeast { limit: 0.9 },
        ));
        rows.push(Row::new(
            &format!("scale 0->{}: InplaceSet vs StatefulSet", i.pods),
            "pods/s",
            i.pods_per_second,
            Some((t.pods_per_second, "StatefulSet Parallel")),
            Goal::RatioAtLeast { limit: 1.5 },
        ));
        // Where the CPU went (all three are CPU-bound on a small machine): the same median rounds.
        let per_pod = |run: &scale::Run, cpu: f64| cpu * 1e3 / run.pods.max(1) as f64;
        rows.push(Row::new(
            "scale: machine CPU per pod created, InplaceSet",
            "ms",
            per_pod(i, i.cpu.machine_busy_seconds),
            Some((per_pod(p, p.cpu.machine_busy_seconds), "plain client")),
            Goal::None,
        ));
        let manager = |run: &scale::Run| run.cpu.processes.get("berth-manager").copied().unwrap_or_default();
        rows.push(Row::new(
            "scale: berth-manager CPU per pod created, InplaceSet",
            "ms",
            per_pod(i, manager(i)),
            Some((per_pod(p, manager(p)), "plain client's pods: the webhook alone")),
            Goal::None,
        ));
        let each = |f: fn(&scale::Round) -> f64| r.rounds.iter().map(|x| format!("{:.0}", f(x))).collect::<Vec<_>>();
        notes.push(format!(
            "scale: median of {} rounds; pods/s per round: plain client {:?}, InplaceSet {:?}, StatefulSet {:?}",
            r.rounds.len(),
            each(|x| x.plain_client),
            each(|x| x.inplaceset),
            each(|x| x.statefulset)
        ));
    }
    if let Some(w) = &s.webhook
        && let Some(webhook_rows) = w.get("rows").and_then(|r| serde_json::from_value::<Vec<Row>>(r.clone()).ok())
    {
        rows.extend(webhook_rows.into_iter().map(|mut r| {
            if !r.figure.starts_with("webhook") {
                r.figure = format!("webhook: {}", r.figure);
            }
            r
        }));
    }
    if let Some(r) = &s.cache {
        if let Some(top) = r.steps.iter().max_by_key(|s| s.pods) {
            rows.push(Row::new(
                &format!("manager memory per cached pod ({} pods)", top.pods),
                "B",
                top.bytes_per_pod,
                Some((r.pod_json_bytes as f64, "the pod's JSON")),
                Goal::ValueBelow { limit: 2048.0 },
            ));
        }
        match r.reached() {
            Some(top) => {
                rows.push(Row::new(
                    "scale reached: pods, reaction p99 < 1 s",
                    "pods",
                    top.pods as f64,
                    None,
                    Goal::ValueAtLeast { limit: 50000.0 },
                ));
                rows.push(Row::new(
                    &format!("scale reached: nodes (added: {}), reaction p99 < 1 s", r.node_simulator.name()),
                    "nodes",
                    top.nodes as f64,
                    None,
                    Goal::ValueAtLeast { limit: 2000.0 },
                ));
                rows.push(Row::new(
                    &format!("reaction p99 at {} pods (scale probe -> pod seen)", top.pods),
                    "ms",
                    ms(top.inplaceset_lag.p99_us),
                    Some((ms(top.statefulset_lag.p99_us), "StatefulSet probe")),
                    Goal::ValueBelow { limit: 1000.0 },
                ));
            }
            None => notes.push("scale search: no step sustained a reaction p99 under 1 s".into()),
        }
        if let Some(why) = &r.stopped {
            notes.push(format!("scale search stopped: {why}"));
        }
    }
    if let Some(r) = &s.failover {
        let lease = r.lease_duration_seconds as f64;
        let what = format!("lease duration {}s", r.lease_duration_seconds);
        rows.push(Row::new(
            &format!("failover p50 ({} SIGKILLs -> reconciling)", r.reconciling.count),
            "s",
            r.reconciling.p50_us as f64 / 1e6,
            Some((lease, &what)),
            Goal::None,
        ));
        rows.push(Row::new(
            &format!("failover p99 ({} SIGKILLs -> reconciling)", r.reconciling.count),
            "s",
            r.reconciling.p99_us as f64 / 1e6,
            Some((lease, &what)),
            Goal::ValueBelow { limit: 2.0 },
        ));
    }
    for r in [&s.resize, &s.resize_real].into_iter().flatten() {
        let after = "pods/resize after a pod write, seen";
        let on = if r.real_nodes { "real node".to_string() } else { format!("{} nodes", r.nodes) };
        let mut berth = vec![("", &r.berth)];
        berth.extend(r.berth_cri.as_ref().map(|s| (", agent CRI path", s)));
        for (how, s) in berth {
            rows.push(Row::new(
                &format!("resize Created->Applied p50 ({on}{how})"),
                "ms",
                ms(s.p50_us),
                Some((ms(r.after_write.p50_us), after)),
                Goal::None,
            ));
            rows.push(Row::new(
                &format!("resize Created->Applied p99 ({on}{how})"),
                "ms",
                ms(s.p99_us),
                Some((ms(r.after_write.p99_us), after)),
                Goal::ValueBelow { limit: 500.0 },
            ));
        }
        let alone = [("p50", r.direct.p50_us, r.after_write.p50_us), ("p99", r.direct.p99_us, r.after_write.p99_us)];
        for (q, us, base) in alone {
            rows.push(Row::new(
                &format!("resize: pods/resize alone {q} ({on}, kubelet, pod idle)"),
                "ms",
                ms(us),
                Some((ms(base), after)),
                Goal::None,
            ));
        }
    }
    let all = s.apiserver.iter().find(|l| l.class == apimetrics::ALL);
    for l in s.apiserver.iter().filter(|l| l.class != apimetrics::ALL && l.calls > 0.0) {
        rows.push(Row::new(
            &format!("apiserver p99, {} ({:.0} calls)", l.class, l.calls),
            "s",
            l.p99_seconds,
            all.map(|a| (a.p99_seconds, "all mutating calls")),
            Goal::ValueBelow { limit: 1.0 },
        ));
    }
    rows
}

fn plots(s: &Scenarios, args: &Args) -> Result<()> {
    for (r, file, nodes) in
        [(&s.rollout, "rollout.svg", "hollow nodes"), (&s.rollout_real, "rollout-real.svg", "real node")]
    {
        let Some(r) = r else { continue };
        let svg = plot::chart(
            &format!("image rollout of {} pods, {nodes} (maxUnavailable {})", r.inplaceset.pods, args.max_unavailable),
            "pods updated (new image, Ready)",
            &[
                plot::Series {
                    name: "berth InplaceSet, in place".into(),
                    color: "#1f77b4",
                    times: &r.inplaceset.progress,
                },
                plot::Series {
                    name: "StatefulSet RollingUpdate".into(),
                    color: "#d62728",
                    times: &r.statefulset.progress,
                },
            ],
        );
        std::fs::write(args.out_dir.join(file), svg)?;
    }
    if let Some(r) = &s.scale {
        let svg = plot::chart(
            &format!("scale 0 -> {} pods", r.inplaceset.pods),
            "pods created",
            &[
                plot::Series {
                    name: "berth InplaceSet (Parallel)".into(),
                    color: "#1f77b4",
                    times: &r.inplaceset.progress,
                },
                plot::Series { name: "plain client".into(), color: "#2ca02c", times: &r.plain_client.progress },
                plot::Series {
                    name: "StatefulSet (Parallel)".into(),
                    color: "#d62728",
                    times: &r.statefulset.progress,
                },
            ],
        );
        std::fs::write(args.out_dir.join("scale.svg"), svg)?;
    }
    Ok(())
}
