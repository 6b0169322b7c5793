//! Leader election among the manager's replicas, on a `coordination.k8s.io/v1`
//! Lease in the manager's namespace, as client-go's `leaderelection` does it:
//! a candidate takes a Lease that is free, released or expired with a write
//! guarded by its resourceVersion; the holder renews it every
//! `duration - grace`; a leader that stops releases it.
//!
//! Our own loop, not a crate's: kube-lease-manager counts the renewal grace in
//! whole seconds (so a lease lasts 2 s at least, and a failover takes up to
//! 2 s plus the takeover) and kube-leader-election is built on another kube
//! major version. Here the grace is fractional: `--lease-duration 1
//! --lease-grace 0.5` renews twice a second and fails over within about 1 s.
//!
//! Two more things, from one watch of that single Lease:
//! - fast handover: a standby waits until the lease it read expires; when the
//!   watch shows the holder released it (a leader stopping on SIGTERM), it
//!   takes it at once;
//! - fencing: the leader counts itself leader only until its last confirmed
//!   renewal (its own write, or the watch, or a GET) plus the lease duration,
//!   minus half the grace period. Past that [`Leadership::lost`] resolves, and
//!   the manager stops its controllers (no write after that), stops renewing,
//!   and stands by again: its webhook server keeps serving.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
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
    /// Seconds the lease stays valid after a renewal (a whole number, as the
    /// Lease stores it): how long a standby waits for a leader that died
    /// without releasing it.
    #[arg(long = "lease-duration", env = "BERTH_LEASE_DURATION", value_name = "SECONDS", default_value_t = 15)]
    pub duration_seconds: u64,
    /// The leader renews this many seconds before its lease would expire (so
    /// every duration - grace seconds), and stops leading half of it before, if
    /// no renewal was confirmed. May be fractional (0.5).
    #[arg(long = "lease-grace", env = "BERTH_LEASE_GRACE", value_name = "SECONDS", default_value_t = 5.0)]
    pub grace_seconds: f64,
    /// Holder identity in the Lease. Default: POD_NAME, else `<hostname>_<pid>`.
    #[arg(long = "lease-identity", env = "POD_NAME")]
    pub identity: Option<String>,
}

impl Options {
    /// The settings, checked.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.duration_seconds >= 1, "--lease-duration must be at least 1 second");
        anyhow::ensure!(
            self.grace_seconds >= 0.1 && self.grace_seconds < self.duration_seconds as f64,
            "--lease-grace ({}s) must be at least 0.1 s and shorter than --lease-duration ({}s)",
            self.grace_seconds,
            self.duration_seconds
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

    fn duration(&self) -> Duration {
        Duration::from_secs(self.duration_seconds)
    }

    /// How often the leader renews.
    fn renew_every(&self) -> Duration {
        self.duration().saturating_sub(Duration::from_secs_f64(self.grace_seconds))
    }

    /// How long before the lease would expire the leader stops counting itself leader.
    fn fencing_margin(&self) -> Duration {
        Duration::from_secs_f64(self.grace_seconds / 2.0)
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

/// What a candidate does with the Lease it read.
#[derive(Debug, PartialEq)]
enum Step {
    /// There is none: create it, held.
    Create,
    /// Free, released, expired, or already this identity's: take it.
    Take,
    /// Another holds it for this long yet.
    Wait(Duration),
}

fn step(lease: Option<&Lease>, identity: &str, now: SystemTime) -> Step {
    let Some(lease) = lease else { return Step::Create };
    let seen = Seen::of(lease);
    let (Some(holder), Some(renewed)) = (seen.holder, seen.renewed) else { return Step::Take };
    if holder == identity {
        return Step::Take;
    }
    let seconds = lease.spec.as_ref().and_then(|s| s.lease_duration_seconds).unwrap_or(0).max(0);
    let expiry = renewed + Duration::from_secs(seconds as u64);
    match expiry.duration_since(now) {
        Ok(left) if !left.is_zero() => Step::Wait(left),
        _ => Step::Take,
    }
}

/// The spec of a lease `identity` holds from `now` (`acquired`: when it took it).
fn held(identity: &str, duration_seconds: u64, acquired: SystemTime, now: SystemTime, transitions: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(identity.into()),
        lease_duration_seconds: Some(duration_seconds.min(i32::MAX as u64) as i32),
        acquire_time: Some(MicroTime(acquired.try_into().unwrap_or_default())),
        renew_time: Some(MicroTime(now.try_into().unwrap_or_default())),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// Writes `spec` over `lease`, only if nobody wrote it since it was read.
async fn write(api: &Api<Lease>, lease: &Lease, spec: &LeaseSpec) -> Result<Lease, kube::Error> {
    let name = lease.metadata.name.clone().unwrap_or_default();
    let patch = json!({"metadata": {"resourceVersion": lease.metadata.resource_version}, "spec": spec});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Competes for the lease; see [`Elector::acquire`].
pub struct Elector {
    api: Api<Lease>,
    namespace: String,
    opts: Options,
    identity: String,
    seen: watch::Receiver<Seen>,
}

impl Elector {
    /// Starts watching the Lease (on every replica, leader or not).
    pub fn start(client: Client, namespace: &str, opts: Options) -> Self {
        let api: Api<Lease> = Api::namespaced(client, namespace);
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
        Self { api, namespace: namespace.into(), opts, identity, seen }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Resolves once this replica holds the lease. A holder that releases it
    /// (on SIGTERM) hands over at once; one that dies, once the lease expires.
    pub async fn acquire(&self) -> Leadership {
        let mut seen = self.seen.clone();
        let mut logged_holder = None;
        let retry = Duration::from_secs(1);
        loop {
            // Only a release from now on cuts a wait short.
            seen.mark_unchanged();
            let lease = match self.api.get_opt(&self.opts.name).await {
                Ok(lease) => lease,
                Err(e) => {
                    warn!(lease = %self.opts.name, error = %e, "cannot read the lease (RBAC for leases?); retrying");
                    tokio::time::sleep(retry).await;
                    continue;
                }
            };
            let now = SystemTime::now();
            let taken = match step(lease.as_ref(), &self.identity, now) {
                Step::Create => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(self.opts.name.clone()),
                            namespace: Some(self.namespace.clone()),
                            ..Default::default()
                        },
                        spec: Some(held(&self.identity, self.opts.duration_seconds, now, now, 0)),
                    };
                    self.api.create(&PostParams::default(), &lease).await
                }
                Step::Take => {
                    let lease = lease.expect("Take is for a lease that exists");
                    let spec = lease.spec.clone().unwrap_or_default();
                    let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
                    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
                    let acquired = if ours { spec.acquire_time.map_or(now, |t| t.0.into()) } else { now };
                    write(
                        &self.api,
                        &lease,
                        &held(&self.identity, self.opts.duration_seconds, acquired, now, transitions),
                    )
                    .await
                }
                Step::Wait(left) => {
                    let holder = lease.as_ref().and_then(|l| Seen::of(l).holder);
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
                    tokio::select! {
                        () = tokio::time::sleep(left) => {}
                        () = released => debug!(lease = %self.opts.name, "the lease was released; taking it"),
                    }
                    continue;
                }
            };
            match taken {
                Ok(lease) => return self.leading(lease, now),
                // Another candidate wrote first: read again.
                Err(e) if conflict(&e) => debug!(lease = %self.opts.name, "lost a race for the lease"),
                Err(e) => {
                    warn!(lease = %self.opts.name, error = %e, "taking the lease failed; retrying");
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }

    fn leading(&self, lease: Lease, renewed: SystemTime) -> Leadership {
        let (leader_tx, leader) = watch::channel(true);
        let (renewed_tx, renewals) = watch::channel(renewed);
        let task = tokio::spawn(renew(
            self.api.clone(),
            self.opts.clone(),
            self.identity.clone(),
            lease,
            leader_tx,
            renewed_tx,
        ));
        info!(lease = %self.opts.name, identity = %self.identity, renew_every = ?self.opts.renew_every(), "leading");
        Leadership {
            leader,
            renewals,
            task,
            seen: self.seen.clone(),
            api: self.api.clone(),
            name: self.opts.name.clone(),
            identity: self.identity.clone(),
            duration: self.opts.duration(),
            margin: self.opts.fencing_margin(),
            confirmed: renewed,
        }
    }
}

/// The holder's renewals, every `renew_every`, until another holds the lease.
/// A failed write is retried after a quarter of the grace period; fencing
/// decides when that has gone on too long. Each confirmed renewal goes to
/// `renewed`.
async fn renew(
    api: Api<Lease>,
    opts: Options,
    identity: String,
    mut lease: Lease,
    leader: watch::Sender<bool>,
    renewed: watch::Sender<SystemTime>,
) {
    let grace = Duration::from_secs_f64(opts.grace_seconds);
    let retry = (grace / 4).max(Duration::from_millis(50));
    let mut next = opts.renew_every();
    loop {
        tokio::time::sleep(next).await;
        next = retry;
        let now = SystemTime::now();
        let spec = lease.spec.clone().unwrap_or_default();
        let acquired = spec.acquire_time.map_or(now, |t| t.0.into());
        let update = held(&identity, opts.duration_seconds, acquired, now, spec.lease_transitions.unwrap_or(0));
        match tokio::time::timeout(grace, write(&api, &lease, &update)).await {
            Ok(Ok(written)) => {
                lease = written;
                renewed.send_replace(now);
                // The next renewal is due `renew_every` after this one was stamped.
                next = opts.renew_every().saturating_sub(now.elapsed().unwrap_or_default());
            }
            Ok(Err(e)) if conflict(&e) => match api.get_opt(&opts.name).await {
                // Written meanwhile (a renewal whose answer was lost): still ours.
                Ok(Some(current)) if Seen::of(&current).holder.as_deref() == Some(identity.as_str()) => {
                    lease = current;
                    next = Duration::ZERO;
                }
                Ok(_) => {
                    leader.send_replace(false);
                    return;
                }
                Err(e) => warn!(lease = %opts.name, error = %e, "cannot read the lease"),
            },
            Ok(Err(e)) => warn!(lease = %opts.name, error = %e, "renewing the lease failed; retrying"),
            Err(_) => warn!(lease = %opts.name, timeout = ?grace, "renewing the lease timed out; retrying"),
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

/// This replica holds the lease: its renewal task runs.
pub struct Leadership {
    leader: watch::Receiver<bool>,
    renewals: watch::Receiver<SystemTime>,
    task: JoinHandle<()>,
    seen: watch::Receiver<Seen>,
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    margin: Duration,
    /// The last renewal confirmed (the renewTime written, with this host's clock).
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
            self.confirmed = self.confirmed.max(*self.renewals.borrow_and_update());
            let deadline = self.confirmed + self.duration - self.margin;
            let left = deadline.duration_since(SystemTime::now()).unwrap_or_default();
            if left.is_zero() {
                // The renewal's answer may be late: ask the server before giving up.
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
                    if changed.is_err() || !*self.leader.borrow_and_update() {
                        return "another replica holds the lease".into();
                    }
                }
                _ = self.renewals.changed() => {}
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
        self.task.abort();
        let released = async {
            let lease = self.api.get(&self.name).await?;
            if Seen::of(&lease).holder.as_deref() != Some(self.identity.as_str()) {
                return Ok(false);
            }
            // As client-go: no holder, and a 1 s duration for anyone who reads it late.
            let patch = json!({
                "metadata": {"resourceVersion": lease.metadata.resource_version},
                "spec": {"holderIdentity": null, "leaseDurationSeconds": 1},
            });
            self.api.patch(&self.name, &PatchParams::default(), &Patch::Merge(patch)).await.map(|_| true)
        };
        match tokio::time::timeout(Duration::from_secs(5), released).await {
            Ok(Ok(true)) => info!(lease = %self.name, "lease released"),
            Ok(Ok(false)) => info!(lease = %self.name, "the lease was no longer ours; nothing to release"),
            Ok(Err(e)) => warn!(lease = %self.name, error = %e, "releasing the lease failed; it expires instead"),
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
        assert_eq!((o.duration_seconds, o.grace_seconds, o.name.as_str()), (6, 2.0, "x"));
        assert_eq!(o.fencing_margin(), Duration::from_secs(1));
        assert_eq!(o.renew_every(), Duration::from_secs(4));
        // Sub-second: a 1 s lease renewed twice a second.
        let o = parse(&["--lease-duration", "1", "--lease-grace", "0.5"]);
        assert!(o.validate().is_ok());
        assert_eq!((o.renew_every(), o.fencing_margin()), (Duration::from_millis(500), Duration::from_millis(250)));
    }

    #[test]
    fn timings_are_checked() {
        assert!(parse(&[]).validate().is_ok());
        assert!(parse(&["--lease-duration", "5", "--lease-grace", "5"]).validate().is_err());
        assert!(parse(&["--lease-grace", "0"]).validate().is_err());
        assert!(parse(&["--lease-duration", "0", "--lease-grace", "0.5"]).validate().is_err());
        assert!(parse(&["--lease-duration", "1", "--lease-grace", "1"]).validate().is_err());
    }

    fn lease(holder: Option<&str>, renewed: Option<&str>, seconds: i32) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "berth-manager", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "renewTime": renewed, "leaseDurationSeconds": seconds}
        }))
        .unwrap()
    }

    fn at(t: &str) -> SystemTime {
        t.parse::<k8s_openapi::jiff::Timestamp>().unwrap().into()
    }

    #[test]
    fn a_candidate_creates_a_missing_lease_and_takes_a_free_or_expired_one() {
        let now = at("2026-01-02T03:04:05.500Z");
        assert_eq!(step(None, "me", now), Step::Create);
        assert_eq!(step(Some(&lease(None, None, 1)), "me", now), Step::Take, "released");
        assert_eq!(step(Some(&lease(Some(""), Some("2026-01-02T03:04:05.000000Z"), 1)), "me", now), Step::Take);
        // Renewed 1.5 s ago with a 1 s duration: expired.
        assert_eq!(step(Some(&lease(Some("other"), Some("2026-01-02T03:04:04.000000Z"), 1)), "me", now), Step::Take);
        // Its own (a restart under the same identity): taken back at once.
        assert_eq!(step(Some(&lease(Some("me"), Some("2026-01-02T03:04:05.400000Z"), 15)), "me", now), Step::Take);
    }

    #[test]
    fn a_candidate_waits_until_another_holders_lease_expires_to_the_microsecond() {
        let now = at("2026-01-02T03:04:05.500Z");
        let held = lease(Some("other"), Some("2026-01-02T03:04:05.250000Z"), 1);
        assert_eq!(step(Some(&held), "me", now), Step::Wait(Duration::from_millis(750)));
        assert_eq!(step(Some(&held), "me", at("2026-01-02T03:04:06.250Z")), Step::Take, "expires exactly then");
    }

    #[test]
    fn a_held_spec_names_the_holder_times_and_whole_second_duration() {
        let (acquired, now) = (at("2026-01-02T03:04:00Z"), at("2026-01-02T03:04:05.123456Z"));
        let spec = held("me", 1, acquired, now, 3);
        let value = serde_json::to_value(&spec).unwrap();
        assert_eq!(value["holderIdentity"], "me");
        assert_eq!(value["leaseDurationSeconds"], 1);
        assert_eq!(value["leaseTransitions"], 3);
        assert_eq!(value["renewTime"], "2026-01-02T03:04:05.123456Z");
        assert_eq!(value["acquireTime"], "2026-01-02T03:04:00.000000Z");
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
