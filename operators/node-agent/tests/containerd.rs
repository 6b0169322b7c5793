//! Against a real containerd (`make cri-test` starts one with
//! e2e/containerd/containerd.sh and sets BERTH_CRI_SOCKET): a pod sandbox
//! (host network) with two busybox containers, resized through the agent's
//! CRI path, each value checked in the container's own cgroup files; the
//! CPU manager reloaded from disk and reconciled against the runtime; a
//! memory decrease below usage refused; the update + verify time measured.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use berth_node_agent::{
    cgroup::{self, CgroupFile, CgroupVersion, Resources},
    cgroupfs::ProcCgroup,
    cpu_manager::{ContainerKey, CpuManager},
    cpuset::CpuSet,
    cri::{CriClient, CriError},
    order::{Resource, Step},
};
use k8s_cri::v1 as cri;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

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
    let uid = format!(
        "berth-cri-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis()
    );
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "resize".into(),
            uid: uid.clone(),
            namespace: "berth-test".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            // The pod cgroup, as the kubelet's cgroupfs driver names it.
            cgroup_parent: format!("{}/pod{uid}", env.cgroup_parent),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
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
    let cg = cri.container_cgroup(id).await?;
    read_cg(cri, &cg, controller, file)
}

fn read_cg(cri: &CriClient, cg: &ProcCgroup, controller: &'static str, file: &'static str) -> Res<String> {
    let f = CgroupFile { controller, file, value: String::new() };
    Ok(std::fs::read_to_string(cri.cgroups().file_path(cg, &f)?)?.trim().to_string())
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
    let cg = cri.container_cgroup(&app).await?;
    let usage = cri.memory_usage(&app, &cg)?;
    assert!(usage > 40 * MIB, "app should hold its 48 MiB of /dev/shm, uses {usage}");
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
