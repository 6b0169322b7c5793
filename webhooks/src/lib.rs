//! berth's admission webhooks (DESIGN.md §1): one HTTPS server for every
//! rule, its certificate, and the webhook configurations that point the
//! apiserver at it. The manager calls [`run`] with its [`Options`].

pub mod caches;
pub mod config;
pub mod rule;
pub mod rules;
pub mod server;
pub mod tls;

#[cfg(test)]
mod fuzz_tests;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch};
use tracing::{error, info, warn};

pub use rule::AdmissionRule;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("webhook certificate: reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("webhook certificate: {0}")]
    Pem(String),
    #[error("webhook certificate: generating: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("webhook TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("webhook server: cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("applying webhook configuration {name} (server-side apply as berth-manager): {source}")]
    Apply { name: String, source: kube::Error },
    #[error("webhook options: {0}")]
    Options(String),
    #[error("webhook server stopped: {0}")]
    Stopped(String),
}

/// How long the server waits for its caches before applying the webhook configurations anyway.
const CACHE_SYNC_WAIT: Duration = Duration::from_secs(30);

/// The manager's webhook flags.
#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Serve no admission webhooks and leave their configurations alone.
    #[arg(long = "no-webhooks", env = "BERTH_NO_WEBHOOKS")]
    pub disabled: bool,
    /// Address the webhook server listens on.
    #[arg(long = "webhook-bind", env = "BERTH_WEBHOOK_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Port the webhook server listens on.
    #[arg(long = "webhook-port", env = "BERTH_WEBHOOK_PORT", default_value_t = 9443)]
    pub port: u16,
    /// Host (name or IP) the apiserver calls, as `https://HOST:PORT/path`: for a
    /// manager running outside the cluster network (e.g. 127.0.0.1 next to a
    /// local apiserver). Unset: the apiserver calls the Service below.
    #[arg(long = "webhook-url-host", env = "BERTH_WEBHOOK_URL_HOST")]
    pub url_host: Option<String>,
    /// Namespace of the Service in front of the manager (when no URL host is set).
    #[arg(long = "webhook-service-namespace", env = "BERTH_WEBHOOK_SERVICE_NAMESPACE", default_value = "berth-system")]
    pub service_namespace: String,
    /// Name of that Service.
    #[arg(long = "webhook-service-name", env = "BERTH_WEBHOOK_SERVICE_NAME", default_value = "berth-webhooks")]
    pub service_name: String,
    /// Port of that Service. Defaults to 443.
    #[arg(long = "webhook-service-port", env = "BERTH_WEBHOOK_SERVICE_PORT", default_value_t = 443)]
    pub service_port: u16,
    /// Directory holding tls.crt and tls.key (and ca.crt, the caBundle), such
    /// as a cert-manager Secret mount; re-read when they change. Unset: the
    /// manager generates a CA and a serving certificate at each start.
    #[arg(long = "webhook-cert-dir", env = "BERTH_WEBHOOK_CERT_DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Leave the webhook configurations to the installer (and, for the caBundle,
    /// to e.g. cert-manager's CA injector). Needs --webhook-cert-dir.
    #[arg(long = "webhook-skip-configurations", env = "BERTH_WEBHOOK_SKIP_CONFIGURATIONS")]
    pub skip_configurations: bool,
    /// The manager's own username: the only one allowed to change a pod's
    /// berth.dev/lifecycle-state.
    #[arg(
        long = "manager-username",
        env = "BERTH_MANAGER_USERNAME",
        default_value = "system:serviceaccount:berth-system:berth-manager"
    )]
    pub manager_username: String,
    /// The manager's namespace: SidecarSet revisions (ControllerRevisions) live there, and
    /// its pods are never sent to the sidecar injection webhook, so the manager can always start.
    #[arg(long = "manager-namespace", env = "BERTH_MANAGER_NAMESPACE", default_value = "berth-system")]
    pub manager_namespace: String,
    /// Larger AdmissionReview bodies are refused with 413.
    #[arg(long = "webhook-max-body-bytes", env = "BERTH_WEBHOOK_MAX_BODY_BYTES", default_value_t = 3 << 20)]
    pub max_body_bytes: usize,
    /// Seconds the server gives one request (handshake, headers, body, decision).
    #[arg(long = "webhook-request-timeout", env = "BERTH_WEBHOOK_REQUEST_TIMEOUT", default_value_t = 10)]
    pub request_timeout_seconds: u64,
    /// timeoutSeconds in the configurations: how long the apiserver waits (1-30).
    #[arg(long = "webhook-timeout-seconds", env = "BERTH_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(i32).range(1..=30))]
    pub apiserver_timeout_seconds: i32,
    /// How often --webhook-cert-dir is checked for a rotated certificate.
    #[arg(long = "webhook-cert-poll-seconds", env = "BERTH_WEBHOOK_CERT_POLL_SECONDS", default_value_t = 5)]
    pub cert_poll_seconds: u64,
}

impl Options {
    pub fn endpoint(&self) -> config::Endpoint {
        match &self.url_host {
            Some(host) => config::Endpoint::Url { host: host.clone(), port: self.port },
            None => config::Endpoint::Service {
                namespace: self.service_namespace.clone(),
                name: self.service_name.clone(),
                port: self.service_port,
            },
        }
    }
}

/// Serves every rule until the process ends; returns only on failure. With a
/// self-generated CA, applies the webhook configurations (so their caBundle is
/// this run's CA); with a certificate directory, applies them with its ca.crt
/// again whenever it changes, unless the installer owns them.
pub async fn run(client: kube::Client, opts: Options) -> Result<(), Error> {
    let (terms_tx, terms) = watch::channel(1);
    let result = run_replica(client, opts, terms, watch::channel(0).0).await;
    drop(terms_tx);
    result
}

/// [`run`] in one of several manager replicas. Every replica serves, but with
/// a self-generated CA each has its own: only the leader may point the
/// apiserver at itself, so the configurations are applied at the start of each
/// leadership term (`terms`: 0 before this replica first leads, one more each
/// time it takes the lease), as another leader may have repointed them
/// meanwhile. A certificate directory is the same on every replica, so each
/// applies it at once, as [`run`] does. `configured` holds the last term the
/// configurations name this server's CA for (`u64::MAX`: every term, as with
/// a certificate directory or when the installer owns them).
pub async fn run_replica(
    client: kube::Client,
    opts: Options,
    mut terms: watch::Receiver<u64>,
    configured: watch::Sender<u64>,
) -> Result<(), Error> {
    let caches = caches::Caches::start(&client, &opts.manager_namespace);
    let rules = rules::all(&rules::Context {
        manager_username: opts.manager_username.clone(),
        manager_namespace: opts.manager_namespace.clone(),
        caches: caches.clone(),
    });
    let endpoint = opts.endpoint();
    let (resolver, ca_bundle, mut cert_dir) = match &opts.cert_dir {
        Some(dir) => {
            let mut source = tls::CertDir::new(dir);
            let loaded = source.poll()?.ok_or_else(|| Error::Pem(format!("{}: nothing loaded", dir.display())))?;
            (tls::CertResolver::new(loaded.key), loaded.ca_bundle, Some(source))
        }
        None if opts.skip_configurations => {
            return Err(Error::Options(
                "--webhook-skip-configurations needs --webhook-cert-dir: nobody else knows a self-generated CA".into(),
            ));
        }
        None => {
            let generated = tls::SelfSigned::generate(&endpoint.certificate_names())?;
            (tls::CertResolver::new(generated.key), Some(generated.ca_pem.into_bytes()), None)
        }
    };
    let addr = SocketAddr::new(opts.bind, opts.port);
    let listener = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
    let limits = server::Limits {
        max_body_bytes: opts.max_body_bytes,
        request_timeout: Duration::from_secs(opts.request_timeout_seconds),
    };
    let router = Arc::new(server::Router::new(&rules, limits));
    let mut serving = tokio::spawn(server::serve(listener, tls::server_config(resolver.clone())?, router));
    info!(%addr, ?endpoint, certificates = if cert_dir.is_some() { "files" } else { "self-generated CA" },
          rules = ?rules.iter().map(|r| r.path()).collect::<Vec<_>>(), "webhook server listening");

    let target = |ca: Vec<u8>| config::Target {
        endpoint: endpoint.clone(),
        ca_bundle: ca,
        timeout_seconds: opts.apiserver_timeout_seconds,
    };
    let mut applied_ca = None;
    // Until the caches are loaded the SidecarSet rules refuse (rather than
    // admit a pod without its sidecars): point the apiserver here after that.
    if !caches.wait_synced(CACHE_SYNC_WAIT).await {
        error!(wait = ?CACHE_SYNC_WAIT, "webhook caches not loaded (RBAC for sidecarsets, namespaces, \
            controllerrevisions?); pods that SidecarSets could select are refused until they are");
    }
    if cert_dir.is_none() {
        tokio::select! {
            stopped = &mut serving => {
                return Err(Error::Stopped(stopped.err().map_or("the accept loop ended".into(), |e| e.to_string())));
            }
            _ = terms.wait_for(|term| *term >= 1) => {}
        }
    }
    let first_term = *terms.borrow_and_update();
    if !opts.skip_configurations {
        let ca = ca_bundle.ok_or_else(|| {
            Error::Options(format!(
                "no ca.crt in {}: the webhook configurations need the CA that signed tls.crt; add it, \
                 or pass --webhook-skip-configurations and let the installer set the caBundle",
                opts.cert_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default()
            ))
        })?;
        config::apply(&client, &rules, &target(ca.clone())).await?;
        applied_ca = Some(ca);
    }
    let per_term = cert_dir.is_none() && !opts.skip_configurations;
    configured.send_replace(if per_term { first_term } else { u64::MAX });

    let mut tick = tokio::time::interval(Duration::from_secs(opts.cert_poll_seconds.max(1)));
    let mut last_error = None;
    let mut wanted_ca = applied_ca.clone();
    let (mut terms_open, mut unapplied_term) = (per_term, None);
    loop {
        tokio::select! {
            stopped = &mut serving => {
                return Err(Error::Stopped(stopped.err().map_or("the accept loop ended".into(), |e| e.to_string())));
            }
            _ = tick.tick(), if cert_dir.is_some() || unapplied_term.is_some() => {}
            changed = terms.changed(), if terms_open => match changed {
                Ok(()) => unapplied_term = Some(*terms.borrow_and_update()),
                Err(_) => terms_open = false,
            },
        }
        // Leading again: point the apiserver back here (a failed apply is retried on the next tick).
        if let (Some(term), Some(ca)) = (unapplied_term, applied_ca.as_ref()) {
            match config::apply(&client, &rules, &target(ca.clone())).await {
                Ok(()) => {
                    configured.send_replace(term);
                    unapplied_term = None;
                }
                Err(e) => error!(error = %e, term, "webhook configurations not pointed at this leader yet"),
            }
        }
        let Some(source) = cert_dir.as_mut() else { continue };
        match source.poll() {
            Ok(None) => {}
            Ok(Some(loaded)) => {
                resolver.set(loaded.key);
                info!(dir = %source.dir().display(), "webhook certificate reloaded");
                last_error = None;
                wanted_ca = loaded.ca_bundle.or(wanted_ca);
            }
            Err(e) => {
                let message = e.to_string();
                if last_error.as_ref() != Some(&message) {
                    warn!(error = message, "webhook certificate not reloaded; still serving the previous one");
                    last_error = Some(message);
                }
            }
        }
        // A failed apply is retried on the next tick.
        if let Some(ca) = wanted_ca.as_ref().filter(|ca| !opts.skip_configurations && applied_ca.as_ref() != Some(ca)) {
            match config::apply(&client, &rules, &target(ca.clone())).await {
                Ok(()) => applied_ca = Some(ca.clone()),
                Err(e) => error!(error = %e, "the new ca.crt is not in the webhook configurations yet"),
            }
        }
    }
}
