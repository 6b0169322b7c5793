//! Leader election and failover of berth-manager (issue 8) on the local cluster.
//!
//! Design. Failing over means stopping the leader, and for the failover time
//! nothing reconciles and the webhook configurations point at a server that
//! is gone: the other suites, running beside it, would fail. So this suite is
//! `#[ignore]`d and `make e2e` runs it alone, after them (`cargo test --test
//! failover -- --ignored`). It works on the replicas `e2e/manager.sh` runs
//! (it needs E2E_STATE, BERTH_K8S and BERTH_MANAGER, as `make e2e` exports
//! them; the Lease timings are manager.sh's: 6 s duration, 2 s grace):
//! 1. replica 1 (`manager.sh up`, the one every suite uses) leads; replica 2
//!    (`manager.sh up 2`) starts and stays standby: the Lease names replica 1
//!    and the webhook configurations still point at replica 1;
//! 2. SIGKILL replica 1, scale an InplaceSet at once (through /scale, which no
//!    webhook intercepts): measured until replica 2 holds the Lease, until it
//!    created the new pod, and until the configurations point at it;
//! 3. replica 1 starts again and stands by; SIGTERM replica 2: it releases the
//!    Lease on its way out and replica 1 takes over at once; measured likewise,
//!    with one more pod;
//! 4. fencing: replica 2 stands by again; replica 1, the leader, is frozen
//!    (SIGSTOP) until replica 2 took the Lease, then woken: it can no longer be
//!    sure it leads, so it stops its controllers and stands by, its webhook
//!    server still up; when replica 2 stops, the same replica 1 process leads
//!    again, repoints the webhook configurations and reconciles.
//!
//! It ends as it began: replica 1 running and leading (a guard restores that if
//! the test fails half way). The times are printed; only generous bounds are
//! asserted, tight enough to fail if failover is broken.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use berth_api::InplaceSet;
use berth_e2e::{
    TestNamespace, client, images,
    inplaceset::{rolled_out, set},
    install_crds,
};
use k8s_openapi::api::{
    admissionregistration::v1::ValidatingWebhookConfiguration, coordination::v1::Lease, core::v1::Pod,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

const NAMESPACE: &str = "berth-system";
const LEASE: &str = "berth-manager";
/// A failover that takes longer than this is broken (the lease lasts 6 s).
const BOUND: Duration = Duration::from_secs(15);
/// A leader that releases the lease hands over well within this.
const HANDOVER_BOUND: Duration = Duration::from_secs(4);

fn state_dir() -> Result<PathBuf> {
    Ok(std::env::var("E2E_STATE").context("E2E_STATE (the local cluster's state directory) is not set")?.into())
}

fn manager_sh(args: &[&str]) -> Result<()> {
    let status = Command::new(berth_e2e::repo_root().join("e2e/manager.sh")).args(args).status()?;
    ensure!(status.success(), "manager.sh {args:?}: {status}");
    Ok(())
}

fn pid_of(replica: u32) -> Result<u32> {
    let file = match replica {
        1 => "berth-manager.pid".to_string(),
        n => format!("berth-manager-{n}.pid"),
    };
    let path = state_dir()?.join("pids").join(file);
    Ok(std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?.trim().parse()?)
}

/// The holder identity a manager without POD_NAME takes.
fn identity(pid: u32) -> Result<String> {
    Ok(format!("{}_{pid}", std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim()))
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill").args([sig, &pid.to_string()]).status()?;
    ensure!(status.success(), "kill {sig} {pid}: {status}");
    Ok(())
}

/// Alive and not a zombie (a process manager.sh started is reaped late).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

async fn holder(leases: &Api<Lease>) -> Result<Option<String>> {
    Ok(leases.get_opt(LEASE).await?.and_then(|l| l.spec?.holder_identity))
}

async fn webhook_url(client: &Client) -> Result<String> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let config = api.get("berth-validating").await?;
    Ok(config.webhooks.unwrap_or_default().first().and_then(|w| w.client_config.url.clone()).unwrap_or_default())
}

/// Whether the webhook server behind `url` (https://HOST:PORT/...) answers /healthz.
fn serves_healthz(url: &str) -> Result<bool> {
    let authority = url.strip_prefix("https://").and_then(|u| u.split('/').next()).context("an https URL")?;
    let status =
        Command::new("curl").args(["-sfk", "--max-time", "5", &format!("https://{authority}/healthz")]).status()?;
    Ok(status.success())
}

/// Polls (every 50 ms) until `check` holds; the time it took from `since`.
async fn measure<F, Fut>(what: &str, since: Instant, bound: Duration, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    loop {
        if check().await.unwrap_or(false) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > bound {
            bail!("{what}: not after {bound:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whatever happens, leave replica 1 running (and so leading) and no replica 2.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = manager_sh(&["down", "2"]);
        let _ = manager_sh(&["up"]);
    }
}

#[tokio::test]
#[ignore = "stops the manager the other suites use: `make e2e` runs it alone, after them"]
async fn a_standby_takes_over_when_the_leader_is_killed_or_stopped() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let _restore = Restore;
    manager_sh(&["up"])?;
    let first = identity(pid_of(1)?)?;
    measure("replica 1 holds the lease", Instant::now(), BOUND, || async {
        Ok(holder(&leases).await?.as_deref() == Some(first.as_str()))
    })
    .await?;

    let ns = TestNamespace::create(&client, "failover").await?;
    let sets: Api<InplaceSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    sets.create(&PostParams::default(), &set(1, &images().0, json!({}))).await?;
    rolled_out(&sets, 1, Duration::from_secs(60)).await?;

    // 1. A standby: it serves, keeps its caches, and leaves the lease and the configurations alone.
    let url_of_first = webhook_url(&client).await?;
    manager_sh(&["up", "2"])?;
    let second = identity(pid_of(2)?)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holder(&leases).await?.as_deref(), Some(first.as_str()), "one holder: replica 1");
    assert_eq!(webhook_url(&client).await?, url_of_first, "the standby left the webhook configurations alone");

    // 2. SIGKILL the leader: the lease must expire first.
    signal(pid_of(1)?, "-KILL")?;
    let killed = Instant::now();
    let scale = |n: i32| {
        let sets = sets.clone();
        async move {
            sets.patch_scale("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": n}}))).await
        }
    };
    scale(2).await?;
    let lease_taken = measure("replica 2 holds the lease after SIGKILL", killed, BOUND, || async {
        Ok(holder(&leases).await?.as_deref() == Some(second.as_str()))
    })
    .await?;
    let reconciled = measure("pod web-1 created by replica 2", killed, BOUND, || async {
        Ok(pods.get_opt("web-1").await?.is_some())
    })
    .await?;
    let repointed = measure("webhook configurations point at replica 2", killed, BOUND, || async {
        Ok(webhook_url(&client).await? != url_of_first)
    })
    .await?;
    rolled_out(&sets, 2, Duration::from_secs(60)).await?;
    let url_of_second = webhook_url(&client).await?;
    println!(
        "failover after SIGKILL of the leader (lease 6 s, grace 2 s): lease taken after {lease_taken:.2?}, \
         webhook configurations repointed after {repointed:.2?}, new pod created after {reconciled:.2?}"
    );

    // 3. Replica 1 again, as standby; then SIGTERM the leader: it releases the lease on its way out.
    manager_sh(&["up"])?;
    let third = identity(pid_of(1)?)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holder(&leases).await?.as_deref(), Some(second.as_str()), "one holder: replica 2");
    let pid2 = pid_of(2)?;
    signal(pid2, "-TERM")?;
    let stopped = Instant::now();
    let handed_over = measure("replica 1 holds the lease after SIGTERM", stopped, BOUND, || async {
        Ok(holder(&leases).await?.as_deref() == Some(third.as_str()))
    })
    .await?;
    let repointed = measure("webhook configurations point at replica 1", stopped, BOUND, || async {
        Ok(webhook_url(&client).await? != url_of_second)
    })
    .await?;
    let exited = measure("replica 2 exits", stopped, BOUND, || async { Ok(!running(pid2)) }).await?;
    manager_sh(&["down", "2"])?;
    scale(3).await?;
    let scaled = Instant::now();
    let reconciled = measure("pod web-2 created by replica 1", scaled, BOUND, || async {
        Ok(pods.get_opt("web-2").await?.is_some())
    })
    .await?;
    rolled_out(&sets, 3, Duration::from_secs(60)).await?;
    let log = std::fs::read_to_string(state_dir()?.join("logs/berth-manager-2.log"))?;
    println!(
        "handover after SIGTERM of the leader: lease taken after {handed_over:.2?}, webhook configurations \
         repointed after {repointed:.2?}, the old leader exited after {exited:.2?}; a pod created {reconciled:.2?} \
         after the next scale"
    );
    assert!(log.contains("lease released"), "replica 2 released the lease on SIGTERM; its log:\n{log}");
    assert!(handed_over < HANDOVER_BOUND, "a released lease is taken at once, not on expiry: {handed_over:?}");

    // 4. Fencing: a leader frozen past its lease (SIGSTOP: a long pause, a partition) finds
    // on waking that it can no longer be sure it leads: it stops its controllers and stands
    // by, still serving its webhooks, and leads again once the lease is free.
    manager_sh(&["up", "2"])?;
    let fourth = identity(pid_of(2)?)?;
    let pid1 = pid_of(1)?;
    let url_of_first = webhook_url(&client).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(pid1, "-STOP")?;
    let frozen = Instant::now();
    let taken = measure("replica 2 holds the lease while replica 1 is frozen", frozen, BOUND, || async {
        Ok(holder(&leases).await?.as_deref() == Some(fourth.as_str()))
    })
    .await?;
    measure("webhook configurations point at replica 2", frozen, BOUND, || async {
        Ok(webhook_url(&client).await? != url_of_first)
    })
    .await?;
    // The log is appended to across runs: only what replica 1 writes from now on counts.
    let log_path = state_dir()?.join("logs/berth-manager.log");
    let logged_before = std::fs::read(&log_path)?.len();
    let logged_since = || -> Result<String> {
        let log = std::fs::read(&log_path)?;
        Ok(String::from_utf8_lossy(log.get(logged_before..).unwrap_or_default()).into_owned())
    };
    signal(pid1, "-CONT")?;
    let fenced = measure("the woken old leader stands by", Instant::now(), BOUND, || async {
        Ok(logged_since()?.contains("standing by (webhooks still served)"))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(running(pid1), "a fenced leader stays up as a standby; its log since waking:\n{}", logged_since()?);
    assert_eq!(holder(&leases).await?.as_deref(), Some(fourth.as_str()), "the standby leaves the lease alone");
    ensure!(serves_healthz(&url_of_first)?, "the fenced replica still serves its webhooks ({url_of_first})");
    println!("a leader frozen past its lease: taken over after {taken:.2?}; on waking it stood by after {fenced:.2?}");
    // Replica 2 stops and hands over: replica 1, the same process, leads again, points
    // the webhook configurations back at itself, and its controllers act.
    manager_sh(&["down", "2"])?;
    let released = Instant::now();
    measure("replica 1 leads again", released, BOUND, || async {
        Ok(holder(&leases).await?.as_deref() == Some(identity(pid1)?.as_str()))
    })
    .await?;
    measure("webhook configurations point back at replica 1", released, BOUND, || async {
        Ok(webhook_url(&client).await? == url_of_first)
    })
    .await?;
    scale(4).await?;
    measure("pod web-3 created by replica 1 in its second term", Instant::now(), BOUND, || async {
        Ok(pods.get_opt("web-3").await?.is_some())
    })
    .await?;
    ensure!(pid_of(1)? == pid1, "replica 1 was never restarted");
    ns.delete().await?;
    Ok(())
}
