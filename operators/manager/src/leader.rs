//! Leader election among the manager's replicas, on a `coordination.k8s.io/v1`
//! Lease in the manager's namespace, through kube-lease-manager.
//!
//! The crate takes, renews and releases the lease. Two things are added here,
//! from one watch of that single Lease:
//! - fast handover: the crate's standby sleeps until the lease it last read
//!   expires; when the watch shows the holder released it (a leader stopping on
//!   SIGTERM), the standby starts over at once and takes it;
//! - fencing: the leader counts itself leader only until its last renewal the
//!   watch (or, failing that, a GET) confirmed, plus the lease duration, minus
//!   half the grace period. Past that [`Leadership::lost`] resolves, and the
//!   manager stops its controllers (no write after that), stops renewing, and
//!   stands by again: its webhook server keeps serving.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseParams};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

/// The manager's leader election flags.
#[derive(clap::Args, Clone, Debug)]
#[group(id = "leader_election")]
pub struct Options {
    /// Elect one leader among the manager's replicas on a Lease: only the leader
    /// runs the controllers (every replica serves the webhooks and keeps its pod
    /// cache warm). `--leader-elect=false` for a single process that never
    /// shares the cluster with another manager.
    #[arg(long = "leader-elect", env = "BERTH_LEADER_ELECT", default_value_t = true,
          action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub enabled: bool,
    /// Name of the Lease, in --manager-namespace.
    #[arg(long = "lease-name", env = "BERTH_LEASE_NAME", default_value = "berth-manager")]
    pub name: String,
    /// Seconds the lease stays valid after a renewal: how long a standby waits for
    /// a leader that died without releasing it.
    #[arg(long = "lease-duration", env = "BERTH_LEASE_DURATION", value_name = "SECONDS", default_value_t = 15)]
    pub duration_seconds: u64,
    /// The leader renews this many seconds before its lease would expire, and
    /// stops leading (exits) half of it before, if no renewal was confirmed.
    #[arg(long = "lease-grace", env = "BERTH_LEASE_GRACE", value_name = "SECONDS", default_value_t = 5)]
    pub grace_seconds: u64,
    /// Holder identity in the Lease. Default: POD_NAME, else `<hostname>_<pid>`.
    #[arg(long = "lease-identity", env = "POD_NAME")]
    pub identity: Option<String>,
}

impl Options {
    /// The settings, checked.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.grace_seconds >= 1, "--lease-grace must be at least 1 second");
        anyhow::ensure!(
            self.duration_seconds > self.grace_seconds,
            "--lease-duration ({}s) must be longer than --lease-grace ({}s)",
            self.duration_seconds,
            self.grace_seconds
        );
        Ok(())
    }

    /// POD_NAME (or --lease-identity), else `<hostname>_<pid>`.
    pub fn identity(&self) -> String {
        self.identity.clone().filter(|i| !i.is_empty()).unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "berth-manager".into());
            format!("{host}_{}", std::process::id())
        })
    }

    /// How long before the lease would expire the leader stops counting itself leader.
    fn fencing_margin(&self) -> Duration {
        Duration::from_millis(self.grace_seconds * 500)
    }
}

/// What the watch last saw of the Lease.
#[derive(Clone, Debug, Default, PartialEq)]
struct Seen {
    holder: Option<String>,
    renewed: Option<SystemTime>,
}

impl Seen {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec.and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty()),
            renewed: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0.into()),
        }
    }
}

/// Competes for the lease; see [`Elector::acquire`].
pub struct Elector {
    client: Client,
    api: Api<Lease>,
    namespace: String,
    opts: Options,
    identity: String,
    seen: watch::Receiver<Seen>,
}

impl Elector {
    /// Starts watching the Lease (on every replica, leader or not).
    pub fn start(client: Client, namespace: &str, opts: Options) -> Self {
        let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
        let (tx, seen) = watch::channel(Seen::default());
        let config = watcher::Config::default().fields(&format!("metadata.name={}", opts.name));
        let stream = watcher(api.clone(), config).default_backoff();
        tokio::spawn(async move {
            stream
                .for_each(|event| {
                    match event {
                        Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease)) => {
                            tx.send_if_modified(|s| std::mem::replace(s, Seen::of(&lease)) != *s);
                        }
                        Ok(watcher::Event::Delete(_)) => {
                            tx.send_if_modified(|s| std::mem::take(s) != Seen::default());
                        }
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "lease watch error (retrying)"),
                    }
                    futures::future::ready(())
                })
                .await
        });
        let identity = opts.identity();
        Self { client, api, namespace: namespace.into(), opts, identity, seen }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Resolves once this replica holds the lease. A holder that releases it
    /// (on SIGTERM) hands over at once; one that dies, after the lease expires.
    pub async fn acquire(&self) -> Leadership {
        let params = LeaseParams::new(self.identity.clone(), self.opts.duration_seconds, self.opts.grace_seconds);
        let mut seen = self.seen.clone();
        let mut logged_holder = None;
        loop {
            // Only a release from now on cuts the crate's wait short.
            seen.mark_unchanged();
            let manager = LeaseManagerBuilder::new(self.client.clone(), &self.opts.name)
                .with_namespace(&self.namespace)
                .with_parameters(params.clone())
                .build()
                .await;
            let manager = match manager {
                Ok(m) => m,
                Err(e) => {
                    warn!(lease = %self.opts.name, error = %e, "cannot read the lease (RBAC for leases?); retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let holder = seen.borrow().holder.clone();
            if holder.is_some() && holder != logged_holder {
                info!(lease = %self.opts.name, holder = holder.as_deref().unwrap_or_default(), "standby: another replica leads");
                logged_holder = holder;
            }
            let released = async {
                loop {
                    if seen.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    if seen.borrow_and_update().holder.is_none() {
                        return;
                    }
                }
            };
            let outcome = tokio::select! {
                result = manager.changed() => Some(result),
                () = released => None,
            };
            match outcome {
                Some(Ok(true)) => return self.leading(manager).await,
                Some(Ok(false)) => {}
                Some(Err(e)) => {
                    warn!(lease = %self.opts.name, error = %e, "lease election error; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => debug!(lease = %self.opts.name, "the lease was released; taking it"),
            }
        }
    }

    async fn leading(&self, manager: LeaseManager) -> Leadership {
        // The renewal the lock just wrote: the fencing deadline starts from it.
        // Unread, the watch gets one fencing margin to confirm it.
        let duration = Duration::from_secs(self.opts.duration_seconds);
        let confirmed = confirm(&self.api, &self.opts.name, &self.identity)
            .await
            .unwrap_or_else(|| SystemTime::now() + 2 * self.opts.fencing_margin() - duration);
        let (leader, task) = manager.watch().await;
        info!(lease = %self.opts.name, identity = %self.identity, "leading");
        Leadership {
            leader,
            task,
            seen: self.seen.clone(),
            api: self.api.clone(),
            name: self.opts.name.clone(),
            identity: self.identity.clone(),
            duration,
            margin: self.opts.fencing_margin(),
            confirmed,
        }
    }
}

/// The lease's last renewal, read from the server, if this replica holds it.
async fn confirm(api: &Api<Lease>, name: &str, identity: &str) -> Option<SystemTime> {
    match tokio::time::timeout(Duration::from_secs(2), api.get(name)).await {
        Ok(Ok(lease)) => {
            let seen = Seen::of(&lease);
            seen.holder.filter(|h| h == identity).and(seen.renewed)
        }
        Ok(Err(e)) => {
            warn!(lease = name, error = %e, "cannot read the lease");
            None
        }
        Err(_) => {
            warn!(lease = name, "reading the lease timed out");
            None
        }
    }
}

/// This replica holds the lease: the crate's task renews it.
pub struct Leadership {
    leader: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
    seen: watch::Receiver<Seen>,
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    margin: Duration,
    /// The last renewal seen (the server's renewTime, written with this host's clock).
    confirmed: SystemTime,
}

impl Leadership {
    /// Resolves (with the reason) once this replica can no longer be sure it
    /// leads: another holds the lease, or no renewal was confirmed in time.
    pub async fn lost(&mut self) -> String {
        loop {
            {
                let seen = self.seen.borrow_and_update();
                if let Some(renewed) = seen.renewed.filter(|_| seen.holder.as_deref() == Some(self.identity.as_str())) {
                    self.confirmed = self.confirmed.max(renewed);
                }
            }
            let deadline = self.confirmed + self.duration - self.margin;
            let left = deadline.duration_since(SystemTime::now()).unwrap_or_default();
            if left.is_zero() {
                // The watch may lag: ask the server before giving up.
                match confirm(&self.api, &self.name, &self.identity).await {
                    Some(renewed) if renewed > self.confirmed => {
                        self.confirmed = renewed;
                        continue;
                    }
                    _ => {
                        let since = SystemTime::now().duration_since(self.confirmed).unwrap_or_default();
                        return format!("no renewal of the lease confirmed for {since:.1?}");
                    }
                }
            }
            tokio::select! {
                changed = self.leader.changed() => {
                    if changed.is_err() {
                        return "the lease task ended".into();
                    }
                    if !*self.leader.borrow_and_update() {
                        return "another replica holds the lease".into();
                    }
                }
                _ = self.seen.changed() => {}
                () = tokio::time::sleep(left) => {}
            }
        }
    }

    /// Stops renewing without releasing: this replica is no longer sure it
    /// leads, so the lease may be another's by now and is left to expire.
    pub fn abandon(self) {
        self.task.abort();
    }

    /// Gives the lease up, so a standby takes it at once.
    pub async fn release(self) {
        drop(self.leader);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => info!(lease = %self.name, "lease released"),
            Ok(Ok(Err(e))) => warn!(lease = %self.name, error = %e, "releasing the lease failed; it expires instead"),
            Ok(Err(e)) => warn!(lease = %self.name, error = %e, "the lease task failed; the lease expires instead"),
            Err(_) => warn!(lease = %self.name, "releasing the lease timed out; it expires instead"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        lease: Options,
    }

    fn parse(args: &[&str]) -> Options {
        Cli::try_parse_from(std::iter::once("berth-manager").chain(args.iter().copied())).unwrap().lease
    }

    #[test]
    fn leader_election_is_on_by_default_and_can_be_turned_off() {
        assert!(parse(&[]).enabled);
        assert!(parse(&["--leader-elect"]).enabled);
        assert!(!parse(&["--leader-elect=false"]).enabled);
        let o = parse(&["--lease-duration", "6", "--lease-grace", "2", "--lease-name", "x"]);
        assert_eq!((o.duration_seconds, o.grace_seconds, o.name.as_str()), (6, 2, "x"));
        assert_eq!(o.fencing_margin(), Duration::from_secs(1));
    }

    #[test]
    fn timings_are_checked() {
        assert!(parse(&[]).validate().is_ok());
        assert!(parse(&["--lease-duration", "5", "--lease-grace", "5"]).validate().is_err());
        assert!(parse(&["--lease-grace", "0"]).validate().is_err());
    }

    #[test]
    fn identity_is_the_pod_name_or_host_and_pid() {
        let mut o = parse(&[]);
        o.identity = Some("berth-manager-7c9-abc".into());
        assert_eq!(o.identity(), "berth-manager-7c9-abc");
        o.identity = None;
        assert!(o.identity().ends_with(&format!("_{}", std::process::id())));
    }

    #[test]
    fn a_released_lease_has_no_holder() {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "berth-manager"},
            "spec": {"holderIdentity": "a", "renewTime": "2026-01-02T03:04:05.000000Z", "leaseDurationSeconds": 15}
        }))
        .unwrap();
        let seen = Seen::of(&lease);
        assert_eq!(seen.holder.as_deref(), Some("a"));
        assert!(seen.renewed.is_some());
        let released: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "berth-manager"}, "spec": {}
        }))
        .unwrap();
        assert_eq!(Seen::of(&released), Seen::default());
    }
}
