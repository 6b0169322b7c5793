//! The agent path end to end, on the local cluster and a real containerd at
//! once: a berth-managed, agent-managed pod on a hollow node, whose
//! containers run in containerd under the pod's UID (CRI labels as the
//! kubelet sets them); a resize submitted through the API is Accepted by the
//! manager and carried out by the real `berth-node-agent` (node-bound token,
//! `--cri-socket` at that containerd): Applied, with `berth.dev/resize-applied`
//! equal to the container's cgroup files.
//!
//! Needs both: `E2E_KUBECONFIG` (a cluster with berth-manager, e.g.
//! `make cluster-up` + `e2e/manager.sh up`) and `BERTH_CRI_SOCKET`
//! (`e2e/containerd/containerd.sh up`); skipped otherwise.

mod common;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use berth_api::{
    keys,
    resize::{AppliedResources, NODE_AGENT_SERVICE_ACCOUNT},
};
use berth_node_agent::{
    cgroup::{CgroupFile, Resources},
    cri::{CriClient, LABEL_CONTAINER_NAME, LABEL_POD_UID},
};
use k8s_cri::v1 as cri;
use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{Namespace, Pod, ServiceAccount},
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    config::{AuthInfo, KubeConfigOptions, Kubeconfig},
};
use serde_json::json;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const NODE: &str = "hollow-node-1";
const AGENT_NAMESPACE: &str = "berth-system";
const MIB: i64 = 1 << 20;

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn node_agent_token(client: &Client, placeholder: &str) -> Res<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": placeholder},
        "spec": {"nodeName": NODE, "serviceAccountName": NODE_AGENT_SERVICE_ACCOUNT,
            "containers": [{"name": "agent", "image": "berth.local/busybox:1"}]}});
    let pod = pods.patch(placeholder, &PatchParams::apply("berth-test").force(), &Patch::Apply(pod)).await?;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let token = accounts.create_token_request(NODE_AGENT_SERVICE_ACCOUNT, &PostParams::default(), &request).await?;
    Ok(token.status.and_then(|s| s.token).ok_or("no token in the TokenRequest status")?)
}

/// A sandbox with one container `app` for the API pod `uid`, labelled as the kubelet labels them.
async fn run_app(cri: &mut CriClient, uid: &str, image: &str, logs: &std::path::Path) -> Res<(String, String)> {
    let labels = [(LABEL_POD_UID.to_string(), uid.to_string())].into();
    let config = common::sandbox_config("grow", "berth-agent-path", uid, labels, "/berth-cri-test", logs);
    let sandbox = cri
        .runtime()
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let r = Resources {
        cpu_request_milli: 100,
        cpu_limit_milli: Some(500),
        memory_limit_bytes: Some(128 * MIB),
        cpuset: None,
    }
    .to_cri();
    let container = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "app".into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done".into(),
        ],
        labels: [(LABEL_POD_UID.to_string(), uid.to_string()), (LABEL_CONTAINER_NAME.to_string(), "app".to_string())]
            .into(),
        log_path: "app.log".into(),
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
            pod_sandbox_id: sandbox.clone(),
            config: Some(container),
            sandbox_config: Some(config),
        })
        .await?
        .into_inner()
        .container_id;
    cri.runtime().start_container(cri::StartContainerRequest { container_id: id.clone() }).await?;
    Ok((sandbox, id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_managed_pod_is_resized_through_cri_by_the_real_agent() -> Res<()> {
    let (Some(kubeconfig), Some(socket)) = (std::env::var_os("E2E_KUBECONFIG"), std::env::var_os("BERTH_CRI_SOCKET"))
    else {
        eprintln!("SKIPPED: needs E2E_KUBECONFIG (a cluster with berth-manager) and BERTH_CRI_SOCKET (a containerd)");
        return Ok(());
    };
    let kubeconfig = PathBuf::from(kubeconfig);
    let socket = PathBuf::from(socket);
    let image = std::env::var("BERTH_CRI_APP_IMAGE").unwrap_or_else(|_| "berth.local/busybox:1".into());
    let options = KubeConfigOptions::default();
    let client =
        Client::try_from(Config::from_custom_kubeconfig(Kubeconfig::read_from(&kubeconfig)?, &options).await?)?;
    let work = std::env::temp_dir().join(format!("berth-agent-path-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;

    let ns_name = format!("agent-path-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns_name, "labels": {"berth.dev/e2e": "true"}}});
    namespaces.create(&PostParams::default(), &serde_json::from_value(ns)?).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns_name);
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "grow", "labels": {keys::MANAGED: "true"}, "annotations": {keys::RESIZE_AGENT_MANAGED: "true"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": image,
            "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "500m", "memory": "128Mi"}}}]}});
    let pod = pods.create(&PostParams::default(), &serde_json::from_value(pod)?).await?;
    let uid = pod.uid().ok_or("no uid")?;

    let mut cri = CriClient::connect(&socket).await?;
    let (sandbox, app) = run_app(&mut cri, &uid, &image, &work).await?;
    // A failed assertion still removes the sandbox (it would disturb the CRI tests).
    let result = {
        use futures::FutureExt;
        std::panic::AssertUnwindSafe(scenario(&client, &kubeconfig, &socket, &work, &pods, &mut cri, &app))
            .catch_unwind()
            .await
    };

    let _ = cri.runtime().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() }).await;
    let _ = cri.runtime().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sandbox }).await;
    for dir in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let _ = std::fs::remove_dir(dir.path().join(format!("berth-cri-test/pod{uid}")));
    }
    let _ = namespaces.delete(&ns_name, &DeleteParams::default()).await;
    let placeholders: Api<Pod> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let _ = placeholders.delete(&format!("agent-path-{}", std::process::id()), &DeleteParams::default()).await;
    let _ = std::fs::remove_dir_all(&work);
    match result {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn scenario(
    client: &Client,
    kubeconfig: &std::path::Path,
    socket: &std::path::Path,
    work: &std::path::Path,
    pods: &Api<Pod>,
    cri: &mut CriClient,
    app: &str,
) -> Res<()> {
    // The real agent of NODE, with a token bound to a pod on NODE.
    let token = node_agent_token(client, &format!("agent-path-{}", std::process::id())).await?;
    let mut config = Kubeconfig::read_from(kubeconfig)?;
    for named in &mut config.auth_infos {
        named.auth_info = Some(AuthInfo { token: Some(token.clone().into()), ..Default::default() });
    }
    let agent_kubeconfig = work.join("agent.kubeconfig");
    std::fs::write(&agent_kubeconfig, serde_json::to_vec(&config)?)?; // JSON is YAML
    let log = work.join("agent.log");
    let agent = Kill(
        std::process::Command::new(env!("CARGO_BIN_EXE_berth-node-agent"))
            .env("KUBECONFIG", &agent_kubeconfig)
            .env("NODE_NAME", NODE)
            .arg("--cri-socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(work.join("state"))
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .spawn()?,
    );

    let request =
        json!({"containers": {"app": {"requests": {"cpu": "200m"}, "limits": {"cpu": "1", "memory": "256Mi"}}}});
    let submit =
        json!({"metadata": {"annotations": {keys::RESIZE: request.to_string(), keys::RESIZE_STATE: "Created"}}});
    let start = Instant::now();
    pods.patch("grow", &PatchParams::default(), &Patch::Merge(submit)).await?;
    let pod = loop {
        let p = pods.get("grow").await?;
        let state = p.annotations().get(keys::RESIZE_STATE).cloned().unwrap_or_default();
        if state == "Applied" || state == "Failed" || state == "Rejected" {
            break p;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let logs = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("still {state} after 60 s; agent log:\n{logs}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = start.elapsed();
    let a = pod.annotations();
    let message = a.get(keys::RESIZE_MESSAGE).cloned().unwrap_or_default();
    assert_eq!(a.get(keys::RESIZE_STATE).map(String::as_str), Some("Applied"), "{message}");
    assert!(message.starts_with("applied through CRI and verified in the cgroup files"), "{message}");
    let applied: AppliedResources = serde_json::from_str(a.get(keys::RESIZE_APPLIED).ok_or("no resize-applied")?)?;
    let app_applied = &applied["app"];
    assert_eq!(
        (app_applied.cpu_quota, app_applied.cpu_shares, app_applied.memory_limit_bytes),
        (Some(100_000), Some(204), Some(256 * MIB))
    );
    // The record is what the container's cgroup holds.
    let cg = cri.container_cgroup(app).await?;
    let v1 = cri.cgroup_version() == berth_node_agent::cgroup::CgroupVersion::V1;
    let read = |controller: &'static str, file: &'static str| {
        let f = CgroupFile { controller, file, value: String::new() };
        cri.cgroups().read(&cg, &f)
    };
    if v1 {
        assert_eq!(read("cpu", "cpu.cfs_quota_us")?, "100000");
        assert_eq!(read("cpu", "cpu.shares")?, "204");
        assert_eq!(read("memory", "memory.limit_in_bytes")?, (256 * MIB).to_string());
    } else {
        assert_eq!(read("", "cpu.max")?, "100000 100000");
        assert_eq!(read("", "memory.max")?, (256 * MIB).to_string());
    }
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logs.contains("resize carried out through CRI"), "{logs}");
    println!(
        "agent path on the local cluster + containerd: Created -> Applied in {:.0} ms; {message}",
        took.as_secs_f64() * 1e3
    );

    // A new request with one exclusive CPU (it names the resources again: on
    // the agent path a request is relative to the pod spec, which stays).
    let pin = json!({"containers": request["containers"], "cpuset": {"exclusiveCpus": 1}});
    let submit = json!({"metadata": {"annotations": {keys::RESIZE: pin.to_string(), keys::RESIZE_STATE: "Created"}}});
    pods.patch("grow", &PatchParams::default(), &Patch::Merge(submit)).await?;
    let start = Instant::now();
    let pod = loop {
        let p = pods.get("grow").await?;
        let state = p.annotations().get(keys::RESIZE_STATE).cloned().unwrap_or_default();
        if state == "Applied" || state == "Failed" || state == "Rejected" {
            break p;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "still {state} after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let a = pod.annotations();
    let message = a.get(keys::RESIZE_MESSAGE).cloned().unwrap_or_default();
    assert_eq!(a.get(keys::RESIZE_STATE).map(String::as_str), Some("Applied"), "{message}");
    let applied: AppliedResources = serde_json::from_str(a.get(keys::RESIZE_APPLIED).ok_or("no resize-applied")?)?;
    let pinned = applied["app"].cpuset_cpus.clone().ok_or("no exclusive cpus recorded")?;
    let cg = cri.container_cgroup(app).await?;
    let f = CgroupFile { controller: "cpuset", file: "cpuset.cpus", value: String::new() };
    assert_eq!(cri.cgroups().read(&cg, &f)?, pinned);
    assert_ne!(pinned, "0", "CPU 0 stays shared");
    assert_eq!(applied["app"].cpu_quota, Some(100_000), "the resources stay");
    println!("exclusive CPU on the agent path: app pinned to {pinned}; {message}");

    // Each finish is an Event on the pod, from the agent of its node.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let applied_events: Vec<_> = events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ResizeApplied"))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("grow"))
        .collect();
    assert!(!applied_events.is_empty(), "no ResizeApplied Event");
    assert_eq!(applied_events[0].reporting_controller.as_deref(), Some("berth-node-agent"));
    assert_eq!(applied_events[0].reporting_instance.as_deref(), Some(NODE));

    // Measurement (a figure, not asserted): Created -> Applied through the
    // manager's feasibility check and the agent's CRI path, 20 requests.
    let mut took = Vec::new();
    for i in 0..20 {
        let cpu = if i % 2 == 0 { "1500m" } else { "1" };
        let r = json!({"containers": {"app": {"requests": {"cpu": "200m"}, "limits": {"cpu": cpu, "memory": "256Mi"}}},
            "cpuset": {"exclusiveCpus": 1}});
        let submit = json!({"metadata": {"annotations": {keys::RESIZE: r.to_string(), keys::RESIZE_STATE: "Created"}}});
        let start = Instant::now();
        pods.patch("grow", &PatchParams::default(), &Patch::Merge(submit)).await?;
        loop {
            let p = pods.get("grow").await?;
            match p.annotations().get(keys::RESIZE_STATE).map(String::as_str) {
                Some("Applied") => break,
                Some("Failed" | "Rejected") => {
                    return Err(format!("{:?}", p.annotations().get(keys::RESIZE_MESSAGE)).into());
                }
                _ => {}
            }
            assert!(start.elapsed() < Duration::from_secs(60), "not Applied after 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        took.push(start.elapsed());
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "MEASUREMENT agent path Created -> Applied (feasibility + agent through CRI, polled every 20 ms), {} requests: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        took.len(),
        ms(took[took.len() / 2]),
        ms(took[(took.len() * 99 / 100).min(took.len() - 1)]),
        ms(took[took.len() - 1])
    );

    // An agent whose runtime socket is not there: the request fails, saying why.
    drop(agent);
    let log2 = work.join("agent-no-cri.log");
    let _agent = Kill(
        std::process::Command::new(env!("CARGO_BIN_EXE_berth-node-agent"))
            .env("KUBECONFIG", &agent_kubeconfig)
            .env("NODE_NAME", NODE)
            .arg("--cri-socket")
            .arg(work.join("no-such.sock"))
            .arg("--state-dir")
            .arg(work.join("state"))
            .stdout(std::fs::File::create(&log2)?)
            .stderr(std::fs::File::options().append(true).open(&log2)?)
            .spawn()?,
    );
    let submit =
        json!({"metadata": {"annotations": {keys::RESIZE: request.to_string(), keys::RESIZE_STATE: "Created"}}});
    pods.patch("grow", &PatchParams::default(), &Patch::Merge(submit)).await?;
    let start = Instant::now();
    let pod = loop {
        let p = pods.get("grow").await?;
        let state = p.annotations().get(keys::RESIZE_STATE).cloned().unwrap_or_default();
        if state == "Applied" || state == "Failed" || state == "Rejected" {
            break p;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "still {state} after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let a = pod.annotations();
    let message = a.get(keys::RESIZE_MESSAGE).cloned().unwrap_or_default();
    assert_eq!(a.get(keys::RESIZE_STATE).map(String::as_str), Some("Failed"), "{message}");
    assert!(message.starts_with("not applied through CRI: the CRI path is unavailable on this node"), "{message}");
    assert!(message.contains("no-such.sock"), "{message}");
    assert!(!a.contains_key(keys::RESIZE_APPLIED), "the earlier record is removed with a failure");
    println!("without a runtime: {message}");
    Ok(())
}
