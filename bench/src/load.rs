//! An open-loop HTTPS load generator: requests are due on a fixed schedule
//! (`rate` per second) and handed to a pool of keep-alive HTTP/1.1
//! connections; a slow answer never delays the next send. Each latency is
//! measured from when the request was *due*, so time spent queued behind busy
//! connections (or behind a starved scheduler) is counted, not hidden
//! (no coordinated omission).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, body::Bytes, client::conn::http1::SendRequest, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde::Serialize;
use tokio::{net::TcpStream, sync::mpsc, time::Instant};
use tokio_rustls::TlsConnector;

use crate::stats::{Summary, micros};

/// An `https://host:port` server and the client TLS configuration trusting its CA.
#[derive(Clone)]
pub struct Server {
    pub host: String,
    pub port: u16,
    tls: TlsConnector,
}

impl Server {
    /// The server of `url` (`https://HOST:PORT/...`), trusting the PEM certificates in `ca`.
    pub fn new(url: &str, ca: &[u8]) -> Result<(Self, String)> {
        let rest = url.strip_prefix("https://").context("not an https URL")?;
        let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
        let (host, port) = authority.rsplit_once(':').context("URL without a port")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca) {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = Self {
            host: host.trim_matches(['[', ']']).to_string(),
            port: port.parse().context("URL port")?,
            tls: TlsConnector::from(Arc::new(config)),
        };
        Ok((server, path))
    }

    /// A new keep-alive connection (TCP_NODELAY, TLS verified against the CA).
    pub async fn connect(&self) -> Result<SendRequest<Full<Bytes>>> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.host.clone())?;
        let tls = self.tls.connect(name, tcp).await.context("TLS handshake")?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

/// What to send: `bodies[i % len]` (or no body) to `path`.
#[derive(Clone)]
pub struct Plan {
    pub method: Method,
    pub path: String,
    /// One per request (e.g. each with its own UID); empty for a GET.
    pub bodies: Arc<Vec<Bytes>>,
    /// A reply counts as good only if its body contains this.
    pub expect: Option<&'static str>,
    /// Requests per second.
    pub rate: f64,
    pub duration: Duration,
    /// Keep-alive connections, opened before the first request is due.
    pub connections: usize,
}

/// What runs measured together.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub target_rate: f64,
    /// Good replies per second of wall time (first due → last reply).
    pub achieved_rate: f64,
    pub sent: usize,
    pub good: usize,
    /// Non-200 replies, replies without the expected content, transport errors.
    pub failed: usize,
    pub first_failure: Option<String>,
    /// Due → reply complete, for good replies.
    pub latency: Summary,
    /// Written → reply complete (without queueing), for good replies.
    pub service: Summary,
    /// How late the scheduler handed requests out (the client's own lag on a busy machine).
    pub dispatch_lag: Summary,
    pub reconnects: usize,
    pub wall_seconds: f64,
}

/// The samples of one run.
#[derive(Default)]
pub struct Raw {
    target_rate: f64,
    sent: usize,
    wall: Duration,
    latency: Vec<u64>,
    service: Vec<u64>,
    lag: Vec<u64>,
    failed: usize,
    first_failure: Option<String>,
    reconnects: usize,
    last_done: Option<Instant>,
}

impl Outcome {
    /// The runs' samples together (rounds of the same plan).
    pub fn of(runs: &[Raw]) -> Self {
        let all = |f: fn(&Raw) -> &Vec<u64>| runs.iter().flat_map(|r| f(r).iter().copied()).collect::<Vec<_>>();
        let latency = all(|r| &r.latency);
        let wall: f64 = runs.iter().map(|r| r.wall.as_secs_f64()).sum();
        Self {
            target_rate: runs.first().map_or(0.0, |r| r.target_rate),
            achieved_rate: if wall > 0.0 { latency.len() as f64 / wall } else { 0.0 },
            sent: runs.iter().map(|r| r.sent).sum(),
            good: latency.len(),
            failed: runs.iter().map(|r| r.failed).sum(),
            first_failure: runs.iter().find_map(|r| r.first_failure.clone()),
            latency: Summary::of(&latency),
            service: Summary::of(&all(|r| &r.service)),
            dispatch_lag: Summary::of(&all(|r| &r.lag)),
            reconnects: runs.iter().map(|r| r.reconnects).sum(),
            wall_seconds: wall,
        }
    }
}

struct Job {
    index: usize,
    due: Instant,
    dispatched: Instant,
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn one(sender: &mut SendRequest<Full<Bytes>>, server: &Server, plan: &Plan, index: usize) -> Result<()> {
    let body = if plan.bodies.is_empty() { Bytes::new() } else { plan.bodies[index % plan.bodies.len()].clone() };
    let mut req = Request::builder()
        .method(plan.method.clone())
        .uri(plan.path.as_str())
        .header(header::HOST, format!("{}:{}", server.host, server.port));
    if !body.is_empty() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    sender.ready().await?;
    let reply = sender.send_request(req.body(Full::new(body))?).await?;
    let status = reply.status();
    let bytes = reply.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)]));
    }
    if let Some(want) = plan.expect.filter(|w| !contains(&bytes, w)) {
        bail!("reply lacks {want:?}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)]));
    }
    Ok(())
}

/// Sends `rate * duration` requests on schedule and measures them.
pub async fn run(server: &Server, plan: &Plan) -> Result<Raw> {
    let total = (plan.rate * plan.duration.as_secs_f64()).round() as usize;
    let mut senders = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections.max(1) {
        senders.push(server.connect().await.with_context(|| format!("connecting to {}:{}", server.host, server.port))?);
    }
    let (tx, rx) = mpsc::unbounded_channel::<Job>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let tally = Arc::new(Mutex::new(Raw::default()));
    let mut workers = Vec::new();
    for mut sender in senders {
        let (rx, tally, server, plan) = (rx.clone(), tally.clone(), server.clone(), plan.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(job) = rx.lock().await.recv().await else { return };
                let written = Instant::now();
                let result = one(&mut sender, &server, &plan, job.index).await;
                let done = Instant::now();
                let closed = sender.is_closed();
                {
                    let mut t = tally.lock().expect("tally lock");
                    t.lag.push(micros(job.dispatched - job.due));
                    match result {
                        Ok(()) => {
                            t.latency.push(micros(done - job.due));
                            t.service.push(micros(done - written));
                        }
                        Err(e) => {
                            t.failed += 1;
                            t.first_failure.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                    t.last_done = Some(t.last_done.map_or(done, |d| d.max(done)));
                    t.reconnects += usize::from(closed);
                }
                if closed {
                    match server.connect().await {
                        Ok(s) => sender = s,
                        Err(_) => return,
                    }
                }
            }
        }));
    }
    // The schedule: request i is due at start + i/rate, whatever happened to the ones before.
    let start = Instant::now() + Duration::from_millis(20);
    let period = Duration::from_secs_f64(1.0 / plan.rate);
    let mut next = 0usize;
    while next < total {
        let now = Instant::now();
        while next < total {
            let due = start + period.mul_f64(next as f64);
            if due > now {
                break;
            }
            let _ = tx.send(Job { index: next, due, dispatched: now });
            next += 1;
        }
        if next < total {
            tokio::time::sleep_until(start + period.mul_f64(next as f64)).await;
        }
    }
    drop(tx);
    for w in workers {
        let _ = w.await;
    }
    let mut raw =
        Arc::try_unwrap(tally).map_err(|_| anyhow::anyhow!("workers still running"))?.into_inner().expect("tally");
    raw.wall = raw.last_done.map_or(Duration::ZERO, |d| d.saturating_duration_since(start));
    raw.target_rate = plan.rate;
    raw.sent = total;
    Ok(raw)
}
