//! Against a real containerd (`make cri-test` starts one with
//! e2e/containerd/containerd.sh and sets BERTH_CRI_SOCKET): a pod sandbox
//! (host network) with two busybox containers, resized through the agent's
//! CRI path, each value checked in the container's own cgroup files; the
//! CPU manager reloaded from disk and reconciled against the runtime; a
//! memory decrease below usage refused; the update + verify time measured.

mod common;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use berth_api::resize::ResizeRequest;
use berth_node_agent::{
    cgroup::{self, CgroupFile, CgroupVersion, Resources},
    cgroupfs::ProcCgroup,
    cpu_manager::{ContainerKey, CpuManager},
    cpuset::CpuSet,
    cri::{CriClient, CriError, StepBudget},
    order::{Resource, Step},
    runtime_resize::{Runtime, RuntimeResizeError, Scope},
};
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::PodSpec;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The tests share one runtime and the agent moves every other container to
/// the shared pool: one test at a time.
static RUNTIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: i64 = 1 << 20;

struct Env {
    socket: PathBuf,
    image: String,
    cgroup_parent: String,
}

fn env() -> Option<Env> {
    let socket = std::env::var_os("BERTH_CRI_SOCKET")?;
    Some(Env {
        socket: socket.into(),
        image: std::env::var("BERTH_CRI_APP_IMAGE").unwrap_or_else(|_| "berth.local/busybox:1".into()),
        cgroup_parent: std::env::var("BERTH_CRI_CGROUP_PARENT").unwrap_or_else(|_| "/berth-cri-test".into()),
    })
}

/// The pod the test runs: its sandbox and two containers.
struct Pod {
    uid: String,
    sandbox_id: String,
    config: cri::PodSandboxConfig,
    ids: BTreeMap<String, String>,
}

fn initial() -> BTreeMap<String, Resources> {
    BTreeMap::from([
        (
            "app".to_string(),
            Resources {
                cpu_request_milli: 100,
                cpu_limit_milli: Some(500),
                memory_limit_bytes: Some(128 * MIB),
                cpuset: None,
            },
        ),
        (
            "side".to_string(),
            Resources {
                cpu_request_milli: 50,
                cpu_limit_milli: Some(200),
                memory_limit_bytes: Some(32 * MIB),
                cpuset: None,
            },
        ),
    ])
}

async fn start_pod(cri: &mut CriClient, env: &Env, logs: &std::path::Path) -> Res<Pod> {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let uid = format!(
        "berth-cri-{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let config = common::sandbox_config("resize", "berth-test", &uid, BTreeMap::new(), &env.cgroup_parent, logs);
    let sandbox_id = cri
        .runtime()
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let mut pod = Pod { uid, sandbox_id, config, ids: BTreeMap::new() };
    for (name, res) in initial() {
        let r = res.to_cri();
        // app fills 48 MiB of the pod's /dev/shm (charged to its memory
        // cgroup) so that a lower limit has a usage to meet.
        let script = if name == "app" {
            "dd if=/dev/zero of=/dev/shm/fill bs=1M count=48 2>/dev/null; trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"
        } else {
            "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"
        };
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: name.clone(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: env.image.clone(), ..Default::default() }),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            log_path: format!("{name}.log"),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    cpu_period: r.cpu_period,
                    cpu_quota: r.cpu_quota,
                    cpu_shares: r.cpu_shares,
                    memory_limit_in_bytes: r.memory_limit_in_bytes,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = cri
            .runtime()
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.sandbox_id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await?
            .into_inner()
            .container_id;
        cri.runtime().start_container(cri::StartContainerRequest { container_id: id.clone() }).await?;
        pod.ids.insert(name, id);
    }
    Ok(pod)
}

async fn stop_pod(cri: &mut CriClient, env: &Env, pod: &Pod) -> Res<()> {
    let id = pod.sandbox_id.clone();
    cri.runtime().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await?;
    cri.runtime().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id }).await?;
    // runc removed the containers' cgroups; the pod cgroup is ours to remove.
    for dir in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let pod_dir = dir.path().join(env.cgroup_parent.trim_start_matches('/')).join(format!("pod{}", pod.uid));
        let _ = std::fs::remove_dir(&pod_dir);
    }
    Ok(())
}

/// Reads one cgroup file of a container the test's own way (path from
/// /proc/PID/cgroup, plain read), independent of the agent's verification.
async fn read(cri: &mut CriClient, id: &str, controller: &'static str, file: &'static str) -> Res<String> {
    let pid = cri.container_status(id).await?.pid.ok_or("the container has no process")?;
    let cg = ProcCgroup::of_pid(pid)?;
    // The agent finds the same cgroup from the container's OCI spec.
    let agent = cri.container_cgroup(id).await?;
    let dir = |c: &ProcCgroup| cri.cgroups().dir(controller, c).map_err(|e| e.to_string());
    assert_eq!(dir(&agent), dir(&cg), "{controller} cgroup of {id}: spec vs /proc/{pid}/cgroup");
    read_cg(cri, &cg, controller, file)
}

fn read_cg(cri: &CriClient, cg: &ProcCgroup, controller: &'static str, file: &'static str) -> Res<String> {
    let f = CgroupFile { controller, file, value: String::new() };
    Ok(std::fs::read_to_string(cri.cgroups().file_path(cg, &f)?)?.trim().to_string())
}

/// app's memory usage once it holds its 48 MiB of /dev/shm (it fills it as
/// it starts; on a busy machine that takes a moment).
async fn filled(cri: &mut CriClient, id: &str) -> Res<i64> {
    let cg = cri.container_cgroup(id).await?;
    let start = Instant::now();
    let mut usage = cri.memory_usage(id, &cg)?;
    while usage <= 40 * MIB && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        usage = cri.memory_usage(id, &cg)?;
    }
    assert!(usage > 40 * MIB, "app should hold its 48 MiB of /dev/shm, uses {usage}");
    Ok(usage)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn host_cpus() -> Res<CpuSet> {
    Ok(std::fs::read_to_string("/sys/fs/cgroup/cpuset/cpuset.cpus")
        .or_else(|_| std::fs::read_to_string("/sys/fs/cgroup/cpuset.cpus.effective"))
        .or_else(|_| std::fs::read_to_string("/sys/devices/system/cpu/online"))?
        .parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resizes_a_running_container_through_containerd() -> Res<()> {
    let Some(env) = env() else {
        eprintln!(
            "SKIPPED: BERTH_CRI_SOCKET is not set; `make cri-test` starts a real containerd and runs this test against it"
        );
        return Ok(());
    };
    let _one_at_a_time = RUNTIME.lock().await;
    let mut cri = CriClient::connect(&env.socket).await?;
    let v = cri.version().await?;
    println!(
        "runtime {} {} (CRI {}), cgroup {:?}",
        v.runtime_name,
        v.runtime_version,
        v.runtime_api_version,
        cri.cgroup_version()
    );
    let work = std::env::temp_dir().join(format!("berth-cri-test-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let pod = match start_pod(&mut cri, &env, &work).await {
        Ok(pod) => pod,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    let result = scenario(&mut cri, &pod, &work).await;
    let cleanup = stop_pod(&mut cri, &env, &pod).await;
    let _ = std::fs::remove_dir_all(&work);
    result?;
    cleanup?;
    // The sandbox is gone from the runtime.
    let left = cri.live_keys().await?;
    assert!(left.keys().all(|k| k.pod_uid != pod.uid), "containers left: {left:?}");
    Ok(())
}

async fn scenario(cri: &mut CriClient, pod: &Pod, work: &std::path::Path) -> Res<()> {
    let v1 = cri.cgroup_version() == CgroupVersion::V1;
    let app = pod.ids["app"].clone();
    let side = pod.ids["side"].clone();
    let (quota_file, shares_file, mem_file) = if v1 {
        ("cpu.cfs_quota_us", "cpu.shares", "memory.limit_in_bytes")
    } else {
        ("cpu.max", "cpu.weight", "memory.max")
    };

    // The containers run with the values they were created with.
    assert_eq!(read(cri, &app, "cpu", quota_file).await?, if v1 { "50000" } else { "50000 100000" });
    assert_eq!(read(cri, &app, "memory", mem_file).await?, (128 * MIB).to_string());

    let mut app_res = initial()["app"].clone();

    // 1. CPU quota: limit 500m → 1500m.
    app_res.cpu_limit_milli = Some(1500);
    cri.update_container(&app, &app_res.to_cri()).await?;
    assert_eq!(read(cri, &app, "cpu", quota_file).await?, if v1 { "150000" } else { "150000 100000" });
    println!("cpu quota: 500m → 1500m, {quota_file} = {}", read(cri, &app, "cpu", quota_file).await?);

    // 2. CPU shares: request 100m → 750m.
    app_res.cpu_request_milli = 750;
    cri.update_container(&app, &app_res.to_cri()).await?;
    let want_shares = if v1 { "768".to_string() } else { cgroup::shares_to_weight(768).to_string() };
    assert_eq!(read(cri, &app, "cpu", shares_file).await?, want_shares);
    println!("cpu shares: request 100m → 750m, {shares_file} = {want_shares}");

    // 3. Memory limit: 128 MiB → 256 MiB.
    app_res.memory_limit_bytes = Some(256 * MIB);
    cri.update_container(&app, &app_res.to_cri()).await?;
    assert_eq!(read(cri, &app, "memory", mem_file).await?, (256 * MIB).to_string());
    println!("memory limit: 128Mi → 256Mi, {mem_file} = {}", 256 * MIB);

    // 4. A memory decrease below usage is refused, with the numbers, and
    //    nothing changes.
    filled(cri, &app).await?;
    let mut too_small = app_res.clone();
    too_small.memory_limit_bytes = Some(16 * MIB);
    match cri.update_container(&app, &too_small.to_cri()).await {
        Err(e @ CriError::MemoryBelowUsage { limit, usage: u, .. }) => {
            assert_eq!(limit, 16 * MIB);
            assert!(u >= 40 * MIB);
            println!("refused: {e}");
        }
        other => panic!("a memory limit below usage must be refused, got {other:?}"),
    }
    assert_eq!(read(cri, &app, "memory", mem_file).await?, (256 * MIB).to_string());

    // 5. cpuset through the CPU manager: app gets an exclusive CPU, side the
    //    shared rest.
    let allocatable = host_cpus()?;
    println!("allocatable CPUs: {allocatable}");
    let state = work.join("cpu_manager_state");
    let app_key = ContainerKey::new(&pod.uid, "app");
    let side_key = ContainerKey::new(&pod.uid, "side");
    let gone_key = ContainerKey::new("pod-deleted-while-agent-was-down", "app");
    let mut side_res = initial()["side"].clone();
    let app_cpus;
    {
        let mut mgr = CpuManager::load(&state, allocatable.clone())?;
        if allocatable.len() >= 3 {
            // A stale owner that the runtime no longer has.
            mgr.allocate(&gone_key, 1)?;
        }
        app_cpus = mgr.allocate(&app_key, 1)?;
        app_res.cpuset = Some(app_cpus.clone());
        cri.update_container(&app, &app_res.to_cri()).await?;
        side_res.cpuset = Some(mgr.shared_pool());
        cri.update_container(&side, &side_res.to_cri()).await?;
        assert_eq!(read(cri, &app, "cpuset", "cpuset.cpus").await?.parse::<CpuSet>()?, app_cpus);
        assert_eq!(read(cri, &side, "cpuset", "cpuset.cpus").await?.parse::<CpuSet>()?, mgr.shared_pool());
        println!("cpuset: app {app_cpus} (exclusive), side {}", mgr.shared_pool());
        if allocatable.len() < 3 {
            // Two CPUs: make room for a stale owner by moving app. The
            // new assignment (app on the other CPU) is persisted, and the
            // agent "dies" before it reaches the runtime.
            mgr.release(&app_key)?;
            mgr.allocate(&gone_key, 1)?; // the lowest free: app's old CPU
            let moved = mgr.allocate(&app_key, 1)?;
            assert_ne!(moved, app_cpus);
        }
        // The agent "dies" here, mid-way: the state file is all that remains.
    }

    // 6. Restart: reload from disk, reconcile against the runtime.
    let mut mgr = CpuManager::load(&state, allocatable.clone())?;
    assert!(mgr.get(&gone_key).is_some(), "the stale owner was persisted");
    let live = cri.live_key_set().await?;
    assert!(live.contains(&app_key) && live.contains(&side_key), "{live:?}");
    let dropped = mgr.reconcile(&live)?;
    assert_eq!(dropped.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), vec![gone_key.clone()]);
    // Re-applying the (persisted) request is idempotent and keeps one owner per CPU.
    let app_now = mgr.allocate(&app_key, 1)?;
    app_res.cpuset = Some(app_now.clone());
    cri.update_container(&app, &app_res.to_cri()).await?;
    side_res.cpuset = Some(mgr.shared_pool());
    cri.update_container(&side, &side_res.to_cri()).await?;
    let got_app: CpuSet = read(cri, &app, "cpuset", "cpuset.cpus").await?.parse()?;
    let got_side: CpuSet = read(cri, &side, "cpuset", "cpuset.cpus").await?.parse()?;
    assert_eq!(got_app, app_now);
    assert!(got_app.intersection(&got_side).is_empty(), "app {got_app} and side {got_side} share a CPU");
    assert_eq!(got_app.union(&got_side), allocatable, "after the reconcile every CPU is in use again");
    let reloaded = CpuManager::load(&state, allocatable.clone())?;
    assert_eq!(reloaded.assignments(), mgr.assignments(), "the reconciled state is on disk");
    println!("restart: dropped {dropped:?}; app {got_app}, side {got_side}");

    // 7. Pod-level cgroup order. Give the pod cgroup its limits as the
    //    kubelet would at creation, then grow and shrink app through
    //    resize_pod: pod first on an increase, last on a decrease.
    let mut current: BTreeMap<String, (String, Resources)> = BTreeMap::from([
        ("app".to_string(), (app.clone(), app_res.clone())),
        ("side".to_string(), (side.clone(), side_res.clone())),
    ]);
    let pod_now = cgroup::pod_cgroup(current.values().map(|(_, r)| r));
    cri.write_pod_cgroup(&app, &pod_now, Resource::Cpu).await?;
    cri.write_pod_cgroup(&app, &pod_now, Resource::Memory).await?;
    let pod_cg = cri.container_cgroup(&app).await?.parent();
    assert_eq!(read_cg(cri, &pod_cg, "cpu", quota_file)?, if v1 { "170000" } else { "170000 100000" });
    if v1 {
        // cgroup v1 refuses a child quota above its parent's: the reason
        // for the order.
        let mut wrong = app_res.clone();
        wrong.cpu_limit_milli = Some(2000);
        let err = cri.update_container(&app, &wrong.to_cri()).await.expect_err("child quota above the pod's");
        println!("container before pod on an increase fails here: {err}");
        assert_eq!(read(cri, &app, "cpu", quota_file).await?, "150000");
    }
    let mut up = app_res.clone();
    up.cpu_limit_milli = Some(2000);
    up.memory_limit_bytes = Some(384 * MIB);
    let steps = cri.resize_pod(&current, &BTreeMap::from([("app".to_string(), up.clone())])).await?;
    assert_eq!(
        steps,
        vec![
            Step::Pod(Resource::Memory),
            Step::Container("app".into(), Resource::Memory),
            Step::Pod(Resource::Cpu),
            Step::Container("app".into(), Resource::Cpu),
        ]
    );
    assert_eq!(read_cg(cri, &pod_cg, "cpu", quota_file)?, if v1 { "220000" } else { "220000 100000" });
    assert_eq!(read(cri, &app, "cpu", quota_file).await?, if v1 { "200000" } else { "200000 100000" });
    assert_eq!(read_cg(cri, &pod_cg, "memory", mem_file)?, (416 * MIB).to_string());
    current.get_mut("app").unwrap().1 = up.clone();
    let mut down = up.clone();
    down.cpu_limit_milli = Some(300);
    down.memory_limit_bytes = Some(96 * MIB);
    let steps = cri.resize_pod(&current, &BTreeMap::from([("app".to_string(), down.clone())])).await?;
    assert_eq!(
        steps,
        vec![
            Step::Container("app".into(), Resource::Memory),
            Step::Pod(Resource::Memory),
            Step::Container("app".into(), Resource::Cpu),
            Step::Pod(Resource::Cpu),
        ]
    );
    assert_eq!(read_cg(cri, &pod_cg, "cpu", quota_file)?, if v1 { "50000" } else { "50000 100000" });
    assert_eq!(read(cri, &app, "cpu", quota_file).await?, if v1 { "30000" } else { "30000 100000" });
    assert_eq!(read_cg(cri, &pod_cg, "memory", mem_file)?, (128 * MIB).to_string());
    println!("pod-level order: increase pod→app, decrease app→pod; pod cpu quota 170000 → 220000 → 50000");
    app_res = down;

    // 8. Measurement (not asserted): agent-side UpdateContainerResources +
    //    verify, alternating two quota/shares values.
    let n = 100;
    let mut total = Vec::with_capacity(n);
    let mut rpc = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let mut r = app_res.clone();
        r.cpu_limit_milli = Some(if i % 2 == 0 { 250 } else { 300 });
        r.cpu_request_milli = if i % 2 == 0 { 200 } else { 250 };
        let t = cri.update_container(&app, &r.to_cri()).await?;
        total.push(t.total());
        rpc.push(t.update);
    }
    let wall = start.elapsed();
    total.sort();
    rpc.sort();
    println!(
        "MEASUREMENT agent-side CRI update + verify over {n} updates: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (UpdateContainerResources alone: p50 {:.2} ms, p99 {:.2} ms); {:.0} updates/s",
        percentile(&total, 0.5).as_secs_f64() * 1e3,
        percentile(&total, 0.99).as_secs_f64() * 1e3,
        total.last().unwrap().as_secs_f64() * 1e3,
        percentile(&rpc, 0.5).as_secs_f64() * 1e3,
        percentile(&rpc, 0.99).as_secs_f64() * 1e3,
        n as f64 / wall.as_secs_f64(),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The agent's runtime path (runtime_resize): a whole request carried out
// through CRI, exclusive CPUs, idempotence, an interrupted apply resumed by a
// restarted agent.

/// The spec of the pods [`start_pod`] runs (its containers' values at creation).
fn pod_spec() -> PodSpec {
    serde_json::from_value(serde_json::json!({"containers": [
        {"name": "app", "image": "a", "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "500m", "memory": "128Mi"}}},
        {"name": "side", "image": "a", "resources": {"requests": {"cpu": "50m"}, "limits": {"cpu": "200m", "memory": "32Mi"}}}
    ]}))
    .expect("a valid pod spec")
}

fn request(raw: serde_json::Value) -> ResizeRequest {
    raw.to_string().parse().expect("a valid request")
}

/// The node's CPUs and the exclusive ones as the agent's default: all but CPU 0.
fn cpus() -> Res<(CpuSet, CpuSet)> {
    let node = host_cpus()?;
    let mut allocatable = node.clone();
    allocatable.remove(0);
    Ok((node, allocatable))
}

async fn runtime(env: &Env, state: &std::path::Path) -> Res<Runtime> {
    let (node_cpus, allocatable) = cpus()?;
    Ok(Runtime { cri: CriClient::connect(&env.socket).await?, cpus: CpuManager::load(state, allocatable)?, node_cpus })
}

/// A container's CPU quota and memory limit files.
async fn limits(cri: &mut CriClient, id: &str, v1: bool) -> Res<(String, String)> {
    let (quota, memory) = if v1 { ("cpu.cfs_quota_us", "memory.limit_in_bytes") } else { ("cpu.max", "memory.max") };
    Ok((read(cri, id, "cpu", quota).await?, read(cri, id, "memory", memory).await?))
}

async fn cpuset_of(cri: &mut CriClient, id: &str) -> Res<CpuSet> {
    Ok(read(cri, id, "cpuset", "cpuset.cpus").await?.parse()?)
}

/// Runs `pods` pods, the scenario, and always removes the pods.
async fn with_pods<F>(env: &Env, pods: usize, scenario: F) -> Res<()>
where
    F: for<'a> FnOnce(
        &'a mut CriClient,
        &'a [Pod],
        &'a std::path::Path,
    ) -> futures::future::LocalBoxFuture<'a, Res<()>>,
{
    let mut cri = CriClient::connect(&env.socket).await?;
    let work = std::env::temp_dir().join(format!("berth-cri-agent-{}-{}", std::process::id(), pods));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut started = Vec::new();
    let mut result = Ok(());
    for _ in 0..pods {
        match start_pod(&mut cri, env, &work).await {
            Ok(p) => started.push(p),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let mut panic = None;
    if result.is_ok() {
        // A failed assertion still removes the pods (they would disturb the next test).
        use futures::FutureExt;
        match std::panic::AssertUnwindSafe(scenario(&mut cri, &started, &work)).catch_unwind().await {
            Ok(r) => result = r,
            Err(p) => panic = Some(p),
        }
    }
    for p in &started {
        match stop_pod(&mut cri, env, p).await {
            // The scenario removed it itself.
            Err(e) if e.to_string().contains("not found") => {}
            Err(e) => eprintln!("cleanup of pod {}: {e}", p.uid),
            Ok(()) => {}
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    if let Some(p) = panic {
        std::panic::resume_unwind(p);
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_resizes_a_pod_through_cri_and_pins_exclusive_cpus() -> Res<()> {
    let Some(env) = env() else {
        eprintln!("SKIPPED: BERTH_CRI_SOCKET is not set (make cri-test)");
        return Ok(());
    };
    let _one_at_a_time = RUNTIME.lock().await;
    let env2 = Env { socket: env.socket.clone(), image: env.image.clone(), cgroup_parent: env.cgroup_parent.clone() };
    with_pods(&env, 2, move |cri, pods, work| Box::pin(agent_scenario(env2, cri, pods, work))).await
}

async fn agent_scenario(env: Env, cri: &mut CriClient, pods: &[Pod], work: &std::path::Path) -> Res<()> {
    let (a, b) = (&pods[0], &pods[1]);
    let v1 = cri.cgroup_version() == CgroupVersion::V1;
    let (quota_file, shares_file, mem_file) = if v1 {
        ("cpu.cfs_quota_us", "cpu.shares", "memory.limit_in_bytes")
    } else {
        ("cpu.max", "cpu.weight", "memory.max")
    };
    let quota = |q: i64| if v1 { q.to_string() } else { format!("{q} 100000") };
    let shares = |s: i64| if v1 { s.to_string() } else { cgroup::shares_to_weight(s).to_string() };
    let state = work.join("cpu_manager_state");
    let mut rt = runtime(&env, &state).await?;
    let spec = pod_spec();
    let (app, side) = (a.ids["app"].clone(), a.ids["side"].clone());

    // 1. One request changes quota, shares and memory limit of app; side is untouched.
    let grow = serde_json::json!({"app": {"requests": {"cpu": "750m"}, "limits": {"cpu": "1500m", "memory": "256Mi"}}});
    let req = request(serde_json::json!({"containers": grow}));
    let side_before = (read(cri, &side, "cpu", quota_file).await?, read(cri, &side, "memory", mem_file).await?);
    let out = rt.apply(&a.uid, &spec, &req, Scope::Full, &mut StepBudget::default()).await?;
    assert_eq!(read(cri, &app, "cpu", quota_file).await?, quota(150_000));
    assert_eq!(read(cri, &app, "cpu", shares_file).await?, shares(768));
    assert_eq!(read(cri, &app, "memory", mem_file).await?, (256 * MIB).to_string());
    assert_eq!((read(cri, &side, "cpu", quota_file).await?, read(cri, &side, "memory", mem_file).await?), side_before);
    assert_eq!(
        out.steps,
        vec![
            Step::Pod(Resource::Memory),
            Step::Container("app".into(), Resource::Memory),
            Step::Pod(Resource::Cpu),
            Step::Container("app".into(), Resource::Cpu),
        ],
        "the kubelet's order for an increase"
    );
    let applied = &out.applied["app"];
    assert_eq!(
        (applied.cpu_quota, applied.cpu_shares, applied.memory_limit_bytes),
        (Some(150_000), Some(768), Some(256 * MIB))
    );
    assert_eq!(out.applied["side"].cpu_quota, Some(20_000));
    println!("agent path: {}", out.summary());

    // 2. The same request again changes nothing.
    let again = rt.apply(&a.uid, &spec, &req, Scope::Full, &mut StepBudget::default()).await?;
    assert!(again.unchanged(), "re-run wrote {:?} and moved {:?}", again.steps, again.moved);
    assert_eq!(again.applied, out.applied);

    // 2b. A running container the spec's containers do not list (a native
    //     sidecar among the init containers) keeps what it has.
    let mut only_app = spec.clone();
    only_app.containers.retain(|c| c.name == "app");
    let side_values = (read(cri, &side, "cpu", quota_file).await?, read(cri, &side, "memory", mem_file).await?);
    let out = rt.apply(&a.uid, &only_app, &req, Scope::Full, &mut StepBudget::default()).await?;
    assert!(out.unchanged(), "{:?}", out.steps);
    assert_eq!((read(cri, &side, "cpu", quota_file).await?, read(cri, &side, "memory", mem_file).await?), side_values);

    // 3. A memory decrease below usage is refused with the numbers; nothing changes.
    filled(cri, &app).await?;
    let shrink = request(serde_json::json!({"containers": {"app": {"limits": {"memory": "16Mi"}}}}));
    let err = rt.apply(&a.uid, &spec, &shrink, Scope::Full, &mut StepBudget::default()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, RuntimeResizeError::MemoryBelowUsage(_))
            && text.contains("container \"app\": memory limit 16777216 bytes (16 MiB) is below its current usage of"),
        "{text}"
    );
    assert_eq!(read(cri, &app, "memory", mem_file).await?, (256 * MIB).to_string());
    println!("refused: {text}");
    // With a cpuset policy too: refused before any CPU is taken.
    let shrink_pinned = request(serde_json::json!({"containers": {"app": {"limits": {"memory": "16Mi"}}},
        "cpuset": {"exclusiveCpus": 1}}));
    let err = rt.apply(&a.uid, &spec, &shrink_pinned, Scope::Full, &mut StepBudget::default()).await.unwrap_err();
    assert!(matches!(err, RuntimeResizeError::MemoryBelowUsage(_)), "{err}");
    assert!(rt.cpus.assignments().is_empty(), "a refused request holds no CPU: {:?}", rt.cpus.assignments());

    // 4. Exclusive CPUs: the pod's containers on its own CPU, pod b moved to the shared pool.
    let (node, allocatable) = cpus()?;
    if allocatable.is_empty() {
        println!("one CPU only: no exclusive CPU to give (CPU 0 stays shared)");
        return Ok(());
    }
    let pin = request(serde_json::json!({"containers": grow, "cpuset": {"exclusiveCpus": 1}}));
    let out = rt.apply(&a.uid, &spec, &pin, Scope::Full, &mut StepBudget::default()).await?;
    let mine = out.exclusive.clone().expect("exclusive CPUs");
    assert_eq!(mine.len(), 1);
    assert!(mine.is_subset(&allocatable) && !mine.contains(0), "{mine} from {allocatable}, never CPU 0");
    let shared = node.difference(&mine);
    for id in [&app, &side] {
        assert_eq!(cpuset_of(cri, id).await?, mine, "every container of the pod on its CPUs");
    }
    for id in b.ids.values() {
        assert_eq!(cpuset_of(cri, id).await?, shared, "other pods on the shared pool");
    }
    assert_eq!(out.moved.len(), 2, "both containers of pod b moved: {:?}", out.moved);
    assert_eq!(out.applied["app"].cpuset_cpus.as_deref(), Some(mine.to_string().as_str()));
    assert_eq!(read(cri, &app, "cpu", quota_file).await?, quota(150_000), "the resources stay");
    let on_disk = CpuManager::load(&state, allocatable.clone())?;
    assert_eq!(on_disk.assignments().clone(), BTreeMap::from([(ContainerKey::new(&a.uid, "app"), mine.clone())]));
    let again = rt.apply(&a.uid, &spec, &pin, Scope::Full, &mut StepBudget::default()).await?;
    assert!(again.unchanged(), "re-run wrote {:?} and moved {:?}", again.steps, again.moved);
    println!("exclusive: pod a on {mine}, pod b on {shared}");

    // 5. Measurement (a figure, not asserted): agent-side time of a whole
    //    resize through CRI (list, read back, update, verify, read back),
    //    alternating two values.
    let n = 50;
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let cpu = if i % 2 == 0 { "1" } else { "1500m" };
        let r = request(
            serde_json::json!({"containers": {"app": {"requests": {"cpu": "750m"}, "limits": {"cpu": cpu, "memory": "256Mi"}}},
            "cpuset": {"exclusiveCpus": 1}}),
        );
        let out = rt.apply(&a.uid, &spec, &r, Scope::Full, &mut StepBudget::default()).await?;
        assert_eq!(out.steps.len(), 2, "quota down and up: pod and container CPU writes");
        took.push(out.took);
    }
    took.sort();
    println!(
        "MEASUREMENT agent-side CRI time per resize (runtime_resize::apply, {n} resizes of a 2-container pod, cgroup {}): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        if v1 { "v1" } else { "v2" },
        percentile(&took, 0.5).as_secs_f64() * 1e3,
        percentile(&took, 0.99).as_secs_f64() * 1e3,
        took.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    );

    // 6. Releasing (exclusiveCpus 0): everyone back on every CPU.
    let release = request(serde_json::json!({"cpuset": {"exclusiveCpus": 0}}));
    rt.apply(&a.uid, &spec, &release, Scope::Full, &mut StepBudget::default()).await?;
    for id in a.ids.values().chain(b.ids.values()) {
        assert_eq!(cpuset_of(cri, id).await?, node);
    }
    assert!(CpuManager::load(&state, allocatable.clone())?.assignments().is_empty());

    // 7. After the kubelet applied the resources (pods/resize path), only the
    //    cpuset goes through CRI: the other values stay as the kubelet left them.
    let before = (limits(cri, &app, v1).await?, limits(cri, &side, v1).await?);
    let out = rt.apply(&a.uid, &spec, &pin, Scope::CpusetOnly, &mut StepBudget::default()).await?;
    let mine = out.exclusive.clone().expect("exclusive CPUs");
    assert_eq!(
        out.steps,
        vec![Step::Container("app".into(), Resource::Cpu), Step::Container("side".into(), Resource::Cpu)]
    );
    for id in [&app, &side] {
        assert_eq!(cpuset_of(cri, id).await?, mine);
    }
    for id in b.ids.values() {
        assert_eq!(cpuset_of(cri, id).await?, node.difference(&mine));
    }
    assert_eq!((limits(cri, &app, v1).await?, limits(cri, &side, v1).await?), before, "only the cpuset changed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_killed_and_restarted_mid_way_keeps_cpu_assignments_consistent() -> Res<()> {
    let Some(env) = env() else {
        eprintln!("SKIPPED: BERTH_CRI_SOCKET is not set (make cri-test)");
        return Ok(());
    };
    let _one_at_a_time = RUNTIME.lock().await;
    if cpus()?.1.is_empty() {
        println!("one CPU only: no exclusive CPU to give");
        return Ok(());
    }
    let env2 = Env { socket: env.socket.clone(), image: env.image.clone(), cgroup_parent: env.cgroup_parent.clone() };
    with_pods(&env, 2, move |cri, pods, work| Box::pin(restart_scenario(env2, cri, pods, work))).await
}

/// One owner per CPU in the state file, and every running container's
/// `cpuset.cpus` equal to what the file says (its pod's set, or the rest).
async fn consistent(cri: &mut CriClient, state: &std::path::Path, pods: &[Pod]) -> Res<BTreeMap<ContainerKey, CpuSet>> {
    let (node, allocatable) = cpus()?;
    // Loading checks for two owners and for CPUs outside the allocatable set.
    let mgr = CpuManager::load(state, allocatable)?;
    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(state)?)?;
    let mut seen = CpuSet::new();
    for a in raw["assignments"].as_array().into_iter().flatten() {
        let cpus: CpuSet = a["cpus"].as_str().unwrap_or_default().parse()?;
        assert!(seen.intersection(&cpus).is_empty(), "a CPU with two owners in {raw}");
        seen = seen.union(&cpus);
    }
    let shared = node.difference(&seen);
    for p in pods {
        let want =
            mgr.assignments().iter().find(|(k, _)| k.pod_uid == p.uid).map_or(shared.clone(), |(_, c)| c.clone());
        for (name, id) in &p.ids {
            assert_eq!(cpuset_of(cri, id).await?, want, "{}/{name} against the state file {raw}", p.uid);
        }
    }
    Ok(mgr.assignments().clone())
}

async fn restart_scenario(env: Env, cri: &mut CriClient, pods: &[Pod], work: &std::path::Path) -> Res<()> {
    let a = &pods[0];
    let state = work.join("cpu_manager_state");
    let spec = pod_spec();
    let pin = request(serde_json::json!({
        "containers": {"app": {"limits": {"cpu": "1", "memory": "192Mi"}}, "side": {"limits": {"cpu": "300m"}}},
        "cpuset": {"exclusiveCpus": 1}}));

    // The first agent makes one write and "dies": the CPU manager has
    // persisted the pod's CPU; the runtime has only part of the change.
    {
        let mut rt = runtime(&env, &state).await?;
        let err = rt.apply(&a.uid, &spec, &pin, Scope::Full, &mut StepBudget::stop_after(1)).await.unwrap_err();
        assert!(matches!(err, RuntimeResizeError::Interrupted(_)), "{err}");
        println!("first agent: {err}");
    }
    let recorded = CpuManager::load(&state, cpus()?.1)?.assignments().clone();
    assert_eq!(recorded.keys().cloned().collect::<Vec<_>>(), vec![ContainerKey::new(&a.uid, "app")], "persisted first");
    let mine = recorded.values().next().cloned().unwrap_or_default();
    let mut behind = 0;
    for id in pods.iter().flat_map(|p| p.ids.values()) {
        let want = if a.ids.values().any(|i| i == id) { mine.clone() } else { host_cpus()?.difference(&mine) };
        behind += usize::from(cpuset_of(cri, id).await? != want);
    }
    assert!(behind > 0, "the interruption left the runtime behind the state file");

    // Restarted agents, each killed after one more write, until one finishes.
    // Each starts as the real one does: state from disk, reconcile with the runtime.
    let mut restarts = 0;
    let out = loop {
        restarts += 1;
        assert!(restarts < 30, "no progress after {restarts} restarts");
        let mut rt = runtime(&env, &state).await?;
        let (freed, _) = rt.reconcile().await?;
        assert!(freed.is_empty(), "the pod is running: nothing to free, got {freed:?}");
        consistent(cri, &state, pods).await?;
        match rt.apply(&a.uid, &spec, &pin, Scope::Full, &mut StepBudget::stop_after(1)).await {
            Ok(out) => break out,
            Err(RuntimeResizeError::Interrupted(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let final_state = consistent(cri, &state, pods).await?;
    assert_eq!(final_state, recorded, "the CPU chosen before the crash is the one kept");
    let app = &a.ids["app"];
    let v1 = cri.cgroup_version() == CgroupVersion::V1;
    assert_eq!(
        read(cri, app, "cpu", if v1 { "cpu.cfs_quota_us" } else { "cpu.max" }).await?,
        if v1 { "100000" } else { "100000 100000" }
    );
    assert_eq!(
        read(cri, app, "memory", if v1 { "memory.limit_in_bytes" } else { "memory.max" }).await?,
        (192 * MIB).to_string()
    );

    // A further restart and run changes nothing.
    let mut rt = runtime(&env, &state).await?;
    let (freed, moved) = rt.reconcile().await?;
    assert!(freed.is_empty() && moved.is_empty(), "{freed:?} {moved:?}");
    let again = rt.apply(&a.uid, &spec, &pin, Scope::Full, &mut StepBudget::default()).await?;
    assert!(again.unchanged(), "re-run wrote {:?} and moved {:?}", again.steps, again.moved);
    assert_eq!(again.applied, out.applied);
    println!("restarted {restarts} times (killed after each write); pod a on {mine}; {}", out.summary());

    // The owner container (the pod's first) is removed and not yet created
    // again: the pod keeps its CPU while another of its containers exists.
    let app_id = a.ids["app"].clone();
    cri.runtime().stop_container(cri::StopContainerRequest { container_id: app_id.clone(), timeout: 5 }).await?;
    cri.runtime().remove_container(cri::RemoveContainerRequest { container_id: app_id }).await?;
    let (freed, _) = rt.reconcile().await?;
    assert!(freed.is_empty(), "freed {freed:?} while side still runs");
    assert_eq!(cpuset_of(cri, &a.ids["side"]).await?, mine);

    // The pod goes away while no agent runs: the next start frees its CPU and
    // gives it back to the other pod.
    drop(rt);
    stop_pod(cri, &env, a).await?;
    let mut rt = runtime(&env, &state).await?;
    let (freed, moved) = rt.reconcile().await?;
    assert_eq!(freed, vec![(ContainerKey::new(&a.uid, "app"), mine.clone())]);
    assert_eq!(moved.len(), 2, "pod b's containers back on every CPU: {moved:?}");
    for id in pods[1].ids.values() {
        assert_eq!(cpuset_of(cri, id).await?, host_cpus()?);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_agent_binary_sigkilled_mid_way_and_run_again_keeps_cpu_assignments_consistent() -> Res<()> {
    let Some(env) = env() else {
        eprintln!("SKIPPED: BERTH_CRI_SOCKET is not set (make cri-test)");
        return Ok(());
    };
    let _one_at_a_time = RUNTIME.lock().await;
    if cpus()?.1.is_empty() {
        println!("one CPU only: no exclusive CPU to give");
        return Ok(());
    }
    let env2 = Env { socket: env.socket.clone(), image: env.image.clone(), cgroup_parent: env.cgroup_parent.clone() };
    with_pods(&env, 2, move |cri, pods, work| Box::pin(binary_scenario(env2, cri, pods, work))).await
}

/// `berth-node-agent --once-pod-file`: the agent binary, one request, no API server.
fn agent_once(env: &Env, work: &std::path::Path, pod_file: &std::path::Path, delay_ms: u64) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth-node-agent"));
    cmd.arg("--once-pod-file")
        .arg(pod_file)
        .arg("--cri-socket")
        .arg(&env.socket)
        .arg("--state-dir")
        .arg(work.join("agent-state"))
        .arg("--step-delay-ms")
        .arg(delay_ms.to_string())
        .env_remove("NODE_NAME")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

async fn binary_scenario(env: Env, cri: &mut CriClient, pods: &[Pod], work: &std::path::Path) -> Res<()> {
    use std::os::unix::process::ExitStatusExt;
    let a = &pods[0];
    let state = work.join("agent-state").join("cpu_manager_state");
    let pin = serde_json::json!({
        "containers": {"app": {"limits": {"cpu": "1", "memory": "192Mi"}}, "side": {"limits": {"cpu": "300m"}}},
        "cpuset": {"exclusiveCpus": 1}});
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "a", "namespace": "berth-test", "uid": a.uid,
            "annotations": {berth_api::keys::RESIZE: pin.to_string(), berth_api::keys::RESIZE_STATE: "Accepted"}},
        "spec": pod_spec()});
    let pod_file = work.join("pod.json");
    std::fs::write(&pod_file, serde_json::to_vec(&pod)?)?;
    let v1 = cri.cgroup_version() == CgroupVersion::V1;
    let mem_file = if v1 { "memory.limit_in_bytes" } else { "memory.max" };

    // The agent, slowed to 300 ms per write, is SIGKILLed once the pod's CPU
    // is on disk and app's memory is changed, before the rest.
    let mut child = agent_once(&env, work, &pod_file, 300).spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let recorded = std::fs::read_to_string(&state).unwrap_or_default().contains(&a.uid);
        let memory = read(cri, &a.ids["app"], "memory", mem_file).await? == (192 * MIB).to_string();
        if recorded && memory {
            break;
        }
        if let Some(status) = child.try_wait()? {
            let out = child.wait_with_output()?;
            return Err(format!(
                "the agent exited ({status}) before it could be killed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        assert!(Instant::now() < deadline, "the agent made no progress in 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill()?; // SIGKILL
    let status = child.wait()?;
    assert_eq!(status.signal(), Some(9), "killed, not finished: {status}");
    let mine = CpuManager::load(&state, cpus()?.1)?.get(&ContainerKey::new(&a.uid, "app")).cloned().expect("recorded");
    let mut behind = Vec::new();
    for p in pods {
        for (name, id) in &p.ids {
            let want = if p.uid == a.uid { mine.clone() } else { host_cpus()?.difference(&mine) };
            if cpuset_of(cri, id).await? != want {
                behind.push(format!("{}/{name}", p.uid));
            }
        }
    }
    assert!(!behind.is_empty(), "killed mid-way: some container is not yet on its CPUs");
    println!("agent binary SIGKILLed mid-way: CPU {mine} recorded, not yet applied to {behind:?}");

    // Run again, as the restarted agent: finishes, consistent.
    let out = agent_once(&env, work, &pod_file, 0).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(first["exclusive"], mine.to_string());
    assert_eq!(first["applied"]["app"]["memoryLimitBytes"], 192 * MIB);
    assert_eq!(first["applied"]["app"]["cpusetCpus"], mine.to_string());
    let assignments = consistent(cri, &state, pods).await?;
    assert_eq!(assignments.len(), 1);
    // And once more: nothing to do.
    let out = agent_once(&env, work, &pod_file, 0).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!((again["writes"].as_u64(), again["moved"].as_u64()), (Some(0), Some(0)), "{again}");
    assert_eq!(again["applied"], first["applied"]);
    println!("re-run finished it ({} writes), a third run wrote nothing", first["writes"]);
    Ok(())
}
