//! The apiserver's own latency for the calls berth makes, from its /metrics
//! (`apiserver_request_duration_seconds`, which carries no user agent): the
//! histogram is read before and after the run and the difference summed over
//! the series of berth's kinds (group apps.berth.dev) and of pods (which
//! berth creates, patches and deletes, along with the baselines), mutating
//! verbs only, against the Kubernetes SLO (mutating calls p99 <= 1 s); all
//! mutating calls of the cluster are the same-run baseline.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use kube::Client;
use serde::Serialize;

/// Cumulative bucket counts by upper bound (seconds), per class of calls.
#[derive(Clone, Debug, Default)]
pub struct Snapshot(BTreeMap<&'static str, BTreeMap<u64, f64>>);

/// Classes of calls measured.
pub const BERTH_KINDS: &str = "berth kinds (apps.berth.dev), mutating";
pub const PODS: &str = "pods (all clients), mutating";
pub const ALL: &str = "all mutating calls";

const MUTATING: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split("\",").find_map(|kv| {
        let (k, v) = kv.split_once("=\"")?;
        (k.trim_start_matches(',') == key).then(|| v.trim_end_matches('"'))
    })
}

/// Parses the exposition text.
pub fn parse(text: &str) -> Snapshot {
    let mut out: BTreeMap<&'static str, BTreeMap<u64, f64>> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_duration_seconds_bucket{") else { continue };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let (Some(verb), Some(le)) = (label(labels, "verb"), label(labels, "le")) else { continue };
        if !MUTATING.contains(&verb) {
            continue;
        }
        let Ok(count) = value.trim().parse::<f64>() else { continue };
        // Upper bounds in microseconds as keys (+Inf: u64::MAX).
        let le = if le == "+Inf" { u64::MAX } else { le.parse::<f64>().map_or(u64::MAX, |s| (s * 1e6) as u64) };
        let mut classes = vec![ALL];
        if label(labels, "group") == Some("apps.berth.dev") {
            classes.push(BERTH_KINDS);
        }
        if label(labels, "resource") == Some("pods") && label(labels, "group") == Some("") {
            classes.push(PODS);
        }
        for class in classes {
            *out.entry(class).or_default().entry(le).or_default() += count;
        }
    }
    Snapshot(out)
}

pub async fn snapshot(client: &Client) -> Result<Snapshot> {
    let request = http::Request::get("/metrics").body(vec![]).context("building the /metrics request")?;
    Ok(parse(&client.request_text(request).await.context("reading the apiserver's /metrics")?))
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub class: &'static str,
    pub calls: f64,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
}

/// histogram_quantile over cumulative buckets (linear within a bucket).
fn quantile(buckets: &[(u64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le == u64::MAX {
                return lower;
            }
            let upper = le as f64 / 1e6;
            let inside = count - below;
            return if inside <= 0.0 { upper } else { lower + (upper - lower) * (rank - below) / inside };
        }
        lower = le as f64 / 1e6;
        below = count;
    }
    lower
}

/// Latencies of the calls made between two snapshots.
pub fn between(before: &Snapshot, after: &Snapshot) -> Vec<Latency> {
    [BERTH_KINDS, PODS, ALL]
        .into_iter()
        .map(|class| {
            let empty = BTreeMap::new();
            let (a, b) = (before.0.get(class).unwrap_or(&empty), after.0.get(class).unwrap_or(&empty));
            let diff: Vec<(u64, f64)> =
                b.iter().map(|(le, n)| (*le, (n - a.get(le).copied().unwrap_or(0.0)).max(0.0))).collect();
            Latency {
                class,
                calls: diff.last().map_or(0.0, |d| d.1),
                p50_seconds: quantile(&diff, 0.50),
                p99_seconds: quantile(&diff, 0.99),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn berth_calls_are_picked_out_and_differenced() {
        let line = |group: &str, resource: &str, verb: &str, le: &str, n: u32| {
            format!(
                "apiserver_request_duration_seconds_bucket{{component=\"apiserver\",dry_run=\"\",group=\"{group}\",\
                 resource=\"{resource}\",scope=\"resource\",subresource=\"\",verb=\"{verb}\",version=\"v1\",le=\"{le}\"}} {n}\n"
            )
        };
        let text = |n: u32| {
            [
                line("apps.berth.dev", "inplacesets", "PATCH", "0.1", 0),
                line("apps.berth.dev", "inplacesets", "PATCH", "1", 100 * n),
                line("apps.berth.dev", "inplacesets", "PATCH", "+Inf", 100 * n),
                line("", "pods", "GET", "0.1", 50),
                line("", "pods", "GET", "+Inf", 50),
                line("", "pods", "POST", "0.1", 10 * n),
                line("", "pods", "POST", "+Inf", 10 * n),
            ]
            .concat()
        };
        let lat = between(&parse(&text(1)), &parse(&text(3)));
        let berth = lat.iter().find(|l| l.class == BERTH_KINDS).unwrap();
        assert_eq!(berth.calls, 200.0);
        assert!((berth.p50_seconds - 0.55).abs() < 1e-9, "{berth:?}");
        let pods = lat.iter().find(|l| l.class == PODS).unwrap();
        assert_eq!(pods.calls, 20.0, "GETs are not mutating");
        assert!(pods.p99_seconds <= 0.1);
        assert_eq!(lat.iter().find(|l| l.class == ALL).unwrap().calls, 220.0);
    }
}
