//! Applied resizes: a pod whose `berth.dev/resize-state` is Applied must carry
//! the requested values in its spec and, where the kubelet reports them, in
//! its container status; and where the node agent recorded what it verified
//! in the runtime (`berth.dev/resize-applied`), those values must be what the
//! request implies, computed as the kubelet computes them: CFS quota
//! `milli * period / 1000` (at least 1000 µs; -1 without a limit), shares
//! `milli * 1024 / 1000` (2..262144), the memory limit in bytes (-1 without),
//! and as many exclusive CPUs as the cpuset policy asks.

use std::collections::BTreeMap;

use berth_api::{
    keys, quantity,
    resize::{AppliedContainer, AppliedResources, ResizeRequest, ResizeState},
    resize_pod,
};
use k8s_openapi::{
    api::core::v1::{Pod, ResourceRequirements},
    apimachinery::pkg::api::resource::Quantity,
};

use crate::{Finding, Kind, pod_ref, resources::show};

/// The kubelet's default CFS period, µs.
const DEFAULT_PERIOD_US: i64 = 100_000;
const MIN_QUOTA_US: i64 = 1_000;
const UNLIMITED: i64 = -1;

pub fn check(pods: &[Pod]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for pod in pods {
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        if annotations.get(keys::RESIZE_STATE).map(String::as_str) != Some(ResizeState::Applied.as_str()) {
            continue;
        }
        let me = pod_ref(pod);
        let unreadable = |why: String| Finding::warning(Kind::Unreadable, me.clone(), why);
        let Some(spec) = pod.spec.as_ref() else { continue };
        let request = match annotations.get(keys::RESIZE).map(|v| v.parse::<ResizeRequest>()) {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                findings.push(unreadable(format!("resize is Applied but its request does not parse: {e}")));
                continue;
            }
            None => {
                findings.push(unreadable(format!("resize is Applied but {} is missing", keys::RESIZE)));
                continue;
            }
        };
        let mut wrong = Vec::new();
        let spec_resources: BTreeMap<&str, &ResourceRequirements> =
            spec.containers.iter().filter_map(|c| Some((c.name.as_str(), c.resources.as_ref()?))).collect();
        let reported: BTreeMap<&str, &ResourceRequirements> = pod
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .filter_map(|c| Some((c.name.as_str(), c.resources.as_ref()?)))
            .collect();
        for (name, asked) in &request.containers {
            for (list, wanted) in [("requests", &asked.requests), ("limits", &asked.limits)] {
                for (resource, q) in wanted {
                    let want = quantity::amount(resource, q);
                    let get = |r: Option<&ResourceRequirements>| -> Option<Quantity> {
                        let l =
                            r.and_then(|r| if list == "requests" { r.requests.as_ref() } else { r.limits.as_ref() });
                        l.and_then(|l| l.get(resource)).cloned()
                    };
                    let differs =
                        |v: &Option<Quantity>| v.as_ref().map(|v| quantity::amount(resource, v)) != Some(want.clone());
                    let in_spec = get(spec_resources.get(name.as_str()).copied());
                    if differs(&in_spec) {
                        wrong.push(format!(
                            "container {name} spec {list}.{resource} is {}, the request asks {}",
                            text(in_spec.as_ref()),
                            q.0
                        ));
                    }
                    if let Some(status) = reported.get(name.as_str()).copied() {
                        let in_status = get(Some(status));
                        if differs(&in_status) {
                            wrong.push(format!(
                                "container {name} status reports {list}.{resource} {}, the request asks {}",
                                text(in_status.as_ref()),
                                q.0
                            ));
                        }
                    }
                }
            }
        }
        if !wrong.is_empty() {
            findings.push(Finding::violation(
                Kind::ResizeNotInApi,
                me.clone(),
                format!("resize Applied, but {}", wrong.join("; ")),
            ));
        }

        let Some(raw) = annotations.get(keys::RESIZE_APPLIED) else { continue };
        let applied: AppliedResources = match serde_json::from_str(raw) {
            Ok(a) => a,
            Err(e) => {
                findings.push(unreadable(format!("{} does not parse: {e}", keys::RESIZE_APPLIED)));
                continue;
            }
        };
        let after = match resize_pod::resized(spec, &request) {
            Ok(a) => a,
            Err(e) => {
                findings.push(unreadable(format!("resize is Applied but does not fit the pod: {e}")));
                continue;
            }
        };
        match runtime_mismatches(&request, &after, &applied) {
            Ok(wrong) if wrong.is_empty() => {}
            Ok(wrong) => findings.push(Finding::violation(
                Kind::ResizeNotInRuntime,
                me.clone(),
                format!("resize Applied, but the node agent recorded {}", wrong.join("; ")),
            )),
            Err(e) => findings.push(unreadable(e)),
        }
    }
    findings
}

fn text(q: Option<&Quantity>) -> String {
    q.map_or("unset".to_string(), |q| q.0.clone())
}

/// What the node agent recorded that differs from what `after` (the pod's
/// resources with the request applied) implies.
fn runtime_mismatches(
    request: &ResizeRequest,
    after: &BTreeMap<String, ResourceRequirements>,
    applied: &AppliedResources,
) -> Result<Vec<String>, String> {
    let mut wrong = Vec::new();
    for (name, got) in applied {
        let Some(resources) = after.get(name) else {
            wrong.push(format!("container {name}, which the pod does not have"));
            continue;
        };
        let amount = |list: Option<&BTreeMap<String, Quantity>>, r: &str| {
            list.and_then(|l| l.get(r))
                .map(|q| quantity::amount(r, q).map_err(|e| format!("container {name} {r}: {e}")))
                .transpose()
        };
        let cpu_limit = amount(resources.limits.as_ref(), "cpu")?;
        let cpu_request = amount(resources.requests.as_ref(), "cpu")?;
        let memory_limit = amount(resources.limits.as_ref(), "memory")?;
        let AppliedContainer { cpu_quota, cpu_period, cpu_shares, memory_limit_bytes, .. } = got;
        if let Some(quota) = *cpu_quota {
            let period = cpu_period.unwrap_or(DEFAULT_PERIOD_US);
            let want = cpu_limit.map_or(UNLIMITED, |m| quota_of(m, period));
            if quota != want {
                let limit = cpu_limit.map_or("no cpu limit".to_string(), |m| format!("cpu limit {}", show("cpu", m)));
                wrong.push(format!("container {name} cpu quota {quota}µs per {period}µs, {limit} implies {want}µs"));
            }
        }
        if let Some(shares) = *cpu_shares {
            let milli = cpu_request.or(cpu_limit).unwrap_or(0);
            let want = shares_of(milli);
            // cgroup v2 keeps a weight (1..10000): shares converted to it and back
            // lose precision, so equal within one weight step is equal.
            if shares != want && (weight_of(shares) - weight_of(want)).abs() > 1 {
                wrong.push(format!(
                    "container {name} cpu shares {shares}, cpu request {} implies {want}",
                    show("cpu", milli)
                ));
            }
        }
        if let Some(bytes) = *memory_limit_bytes {
            let want = memory_limit.unwrap_or(UNLIMITED);
            if bytes != want {
                wrong.push(format!("container {name} memory limit {bytes} bytes, the pod's limit is {want}"));
            }
        }
    }
    if let Some(policy) = &request.cpuset {
        let mut cpus = std::collections::BTreeSet::new();
        for (name, got) in applied {
            if let Some(list) = &got.cpuset_cpus {
                cpus.extend(cpu_list(list).map_err(|e| format!("container {name} cpuset {list:?}: {e}"))?);
            }
        }
        if cpus.len() != policy.exclusive_cpus as usize {
            wrong.push(format!(
                "{} exclusive CPUs ({}), the request asks {}",
                cpus.len(),
                cpus.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
                policy.exclusive_cpus
            ));
        }
    }
    Ok(wrong)
}

/// The kubelet's `MilliCPUToQuota`.
fn quota_of(milli: i64, period: i64) -> i64 {
    if milli <= 0 {
        return UNLIMITED;
    }
    (i128::from(milli) * i128::from(period) / 1000).clamp(i128::from(MIN_QUOTA_US), i128::from(i64::MAX)) as i64
}

/// The kubelet's `MilliCPUToShares`.
fn shares_of(milli: i64) -> i64 {
    (i128::from(milli.max(0)) * 1024 / 1000).clamp(2, 262_144) as i64
}

/// runc's shares → cgroup v2 weight.
fn weight_of(shares: i64) -> i64 {
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// A cpuset list ("0-2,5") as its CPUs.
fn cpu_list(list: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} is not a CPU or a range like 2-5");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b - a > 4096 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::{Severity, testing::*};

    /// A pod whose `app` container runs with `resources`, resize Applied for `request`.
    fn resized(resources: Value, request: Value, applied: Option<Value>) -> Pod {
        let mut annotations = json!({keys::RESIZE_STATE: "Applied", keys::RESIZE: request.to_string()});
        if let Some(a) = applied {
            annotations[keys::RESIZE_APPLIED] = json!(a.to_string());
        }
        with(
            pod("a", "p", "n0", &[], "1", "1Gi"),
            json!({"metadata": {"annotations": annotations},
                   "spec": {"containers": [{"name": "app", "image": "a", "resources": resources}]},
                   "status": {"containerStatuses": [{"name": "app", "image": "a", "imageID": "", "ready": true,
                              "restartCount": 0, "resources": resources}]}}),
        )
    }

    fn request() -> Value {
        json!({"containers": {"app": {"requests": {"cpu": "800m", "memory": "1Gi"}, "limits": {"cpu": "1500m", "memory": "2Gi"}}}})
    }

    fn now() -> Value {
        json!({"requests": {"cpu": "0.8", "memory": "1Gi"}, "limits": {"cpu": "1500m", "memory": "2Gi"}})
    }

    #[test]
    fn an_applied_resize_equal_everywhere_is_clean() {
        let runtime = json!({"app": {"cpuQuota": 150000, "cpuPeriod": 100000, "cpuShares": 819, "memoryLimitBytes": 2147483648i64}});
        assert_eq!(check(&[resized(now(), request(), Some(runtime))]), vec![]);
        assert_eq!(check(&[resized(now(), request(), None)]), vec![], "no runtime record: the API alone");
        // cgroup v2: shares read back through the weight.
        // Weight 32 read back as 2 + (32 - 1) * 262142 / 9999 = 814 shares.
        let v2 = json!({"app": {"cpuShares": 814}});
        assert_eq!((weight_of(819), weight_of(814)), (32, 31));
        assert_eq!(check(&[resized(now(), request(), Some(v2))]), vec![]);
        // Not Applied: nothing to compare yet.
        let mut accepted = resized(json!({}), request(), None);
        accepted.metadata.annotations.as_mut().unwrap().insert(keys::RESIZE_STATE.into(), "Accepted".into());
        assert_eq!(check(&[accepted]), vec![]);
    }

    #[test]
    fn an_applied_resize_the_api_does_not_show_is_a_violation() {
        let old = json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1500m", "memory": "2Gi"}});
        let f = check(&[resized(old, request(), None)]);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].severity, f[0].kind), (Severity::Violation, Kind::ResizeNotInApi));
        assert_eq!(
            f[0].message,
            "resize Applied, but container app spec requests.cpu is 500m, the request asks 800m; container app status \
             reports requests.cpu 500m, the request asks 800m"
        );
    }

    #[test]
    fn runtime_values_that_differ_from_the_request_are_a_violation() {
        let runtime = json!({"app": {"cpuQuota": 100000, "cpuShares": 512, "memoryLimitBytes": -1}});
        let f = check(&[resized(now(), request(), Some(runtime))]);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!((f[0].severity, f[0].kind), (Severity::Violation, Kind::ResizeNotInRuntime));
        assert_eq!(
            f[0].message,
            "resize Applied, but the node agent recorded container app cpu quota 100000µs per 100000µs, cpu limit 1500m \
             implies 150000µs; container app cpu shares 512, cpu request 800m implies 819; container app memory limit -1 \
             bytes, the pod's limit is 2147483648"
        );
    }

    #[test]
    fn the_exclusive_cpuset_must_have_the_requested_size() {
        let with_cpuset = |cpus: &str| {
            let mut r = request();
            r["cpuset"] = json!({"exclusiveCpus": 2});
            resized(now(), r, Some(json!({"app": {"cpusetCpus": cpus}})))
        };
        assert_eq!(check(&[with_cpuset("2-3")]), vec![]);
        let f = check(&[with_cpuset("2-4")]);
        assert_eq!(
            f[0].message,
            "resize Applied, but the node agent recorded 3 exclusive CPUs (2,3,4), the request asks 2"
        );
        let f = check(&[with_cpuset("two")]);
        assert_eq!(f[0].kind, Kind::Unreadable);
        assert_eq!(cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
    }

    #[test]
    fn kubelet_arithmetic() {
        assert_eq!(quota_of(1500, 100_000), 150_000);
        assert_eq!(quota_of(1, 100_000), 1_000, "at least 1 ms");
        assert_eq!(quota_of(0, 100_000), -1);
        assert_eq!((shares_of(0), shares_of(1000), shares_of(1_000_000)), (2, 1024, 262_144));
    }
}
