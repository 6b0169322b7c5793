//! Pure arithmetic: a container's requests and limits → the CRI
//! `LinuxContainerResources` values the kubelet would send, and the cgroup
//! files (v1 or v2) that must hold them afterwards.
//!
//! The conversions follow the kubelet (`pkg/kubelet/cm/helpers_linux.go`:
//! `MilliCPUToShares`, `MilliCPUToQuota`) and runc 1.1 for cgroup v2
//! (`ConvertCPUSharesToCgroupV2Value`, `cpu.max`, `memory.max`).

use crate::cpuset::CpuSet;

/// The kubelet's CFS period (`--cpu-cfs-quota-period` default, 100 ms), µs.
pub const QUOTA_PERIOD_US: i64 = 100_000;
/// The smallest quota the kernel accepts, µs.
pub const MIN_QUOTA_US: i64 = 1_000;
pub const MIN_SHARES: i64 = 2;
pub const MAX_SHARES: i64 = 262_144;
pub const SHARES_PER_CPU: i64 = 1024;
/// What cgroup v1 shows in `memory.limit_in_bytes` without a limit
/// (`i64::MAX` rounded down to a 4 KiB page).
pub const V1_MEMORY_UNLIMITED: i64 = 9_223_372_036_854_771_712;

/// The value meaning "no limit" in the CRI fields this crate sends: runc
/// writes -1 (`cpu.cfs_quota_us`, `memory.limit_in_bytes`) or `max` (v2).
/// The kubelet sends 0 for "unset" when it creates a container; an update
/// must say -1 to lift a limit, since 0 leaves the old value in place.
pub const UNLIMITED: i64 = -1;

/// What one container asks for, in the units the kubelet computes with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU request, milliCPU (0 when not set).
    pub cpu_request_milli: i64,
    /// CPU limit, milliCPU; `None`: no limit.
    pub cpu_limit_milli: Option<i64>,
    /// Memory limit, bytes; `None`: no limit.
    pub memory_limit_bytes: Option<i64>,
    /// The CPUs the container may run on; `None`: leave as it is.
    pub cpuset: Option<CpuSet>,
}

/// The values of a CRI `LinuxContainerResources` this crate sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CriResources {
    pub cpu_period: i64,
    /// µs per period, or [`UNLIMITED`].
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    /// Bytes, or [`UNLIMITED`].
    pub memory_limit_in_bytes: i64,
    /// Kernel list format; empty: leave as it is.
    pub cpuset_cpus: String,
}

/// The kubelet's `MilliCPUToShares`: 1024 shares per CPU, at least 2, at most 262144.
pub fn milli_cpu_to_shares(milli: i64) -> i64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    // Multiply in i128: a huge request must clamp, not overflow.
    let shares = i128::from(milli) * i128::from(SHARES_PER_CPU) / 1000;
    shares.clamp(i128::from(MIN_SHARES), i128::from(MAX_SHARES)) as i64
}

/// The kubelet's `MilliCPUToQuota`: `milli * period / 1000`, at least 1000 µs;
/// 0 (no quota) for no limit.
pub fn milli_cpu_to_quota(milli: i64, period: i64) -> i64 {
    if milli <= 0 {
        return 0;
    }
    let quota = i128::from(milli) * i128::from(period) / 1000;
    (quota.min(i128::from(i64::MAX)) as i64).max(MIN_QUOTA_US)
}

/// runc 1.1's `ConvertCPUSharesToCgroupV2Value`: shares [2, 262144] → weight [1, 10000].
pub fn shares_to_weight(shares: i64) -> i64 {
    if shares <= 0 {
        return 0;
    }
    1 + ((shares.clamp(MIN_SHARES, MAX_SHARES) - 2) * 9999) / 262_142
}

impl Resources {
    /// The CRI values for these resources, as the kubelet's
    /// `calculateLinuxResources` computes them: shares from the request (or
    /// from the limit when only a limit is set), quota from the limit.
    pub fn to_cri(&self) -> CriResources {
        let shares_from = match (self.cpu_request_milli, self.cpu_limit_milli) {
            (0, Some(limit)) => limit,
            (request, _) => request,
        };
        CriResources {
            cpu_period: QUOTA_PERIOD_US,
            cpu_quota: self.cpu_limit_milli.map_or(UNLIMITED, |l| milli_cpu_to_quota(l, QUOTA_PERIOD_US)),
            cpu_shares: milli_cpu_to_shares(shares_from),
            memory_limit_in_bytes: self.memory_limit_bytes.unwrap_or(UNLIMITED),
            cpuset_cpus: self.cpuset.as_ref().map(CpuSet::to_string).unwrap_or_default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// One cgroup file and the value it must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupFile {
    /// v1: the controller whose hierarchy holds the file; v2: `""` (unified).
    pub controller: &'static str,
    pub file: &'static str,
    pub value: String,
}

impl CgroupFile {
    /// Whether `actual` (the file's content) holds [`Self::value`]; cpu
    /// lists compare as sets.
    pub fn matches(&self, actual: &str) -> bool {
        let actual = actual.trim();
        if self.file == "cpuset.cpus" {
            return match (self.value.parse::<CpuSet>(), actual.parse::<CpuSet>()) {
                (Ok(want), Ok(got)) => want == got,
                _ => false,
            };
        }
        actual == self.value
    }
}

fn file(version: CgroupVersion, controller: &'static str, file: &'static str, value: String) -> CgroupFile {
    let controller = if version == CgroupVersion::V1 { controller } else { "" };
    CgroupFile { controller, file, value }
}

/// The kernel stores memory limits in whole pages, rounded down.
pub fn page_align(bytes: i64, page_size: i64) -> i64 {
    bytes / page_size * page_size
}

/// The cgroup files that hold `r` once runc has written it.
pub fn expected_files(r: &CriResources, version: CgroupVersion, page_size: i64) -> Vec<CgroupFile> {
    use CgroupVersion::{V1, V2};
    let mut out = Vec::new();
    match version {
        V1 => {
            out.push(file(V1, "cpu", "cpu.shares", r.cpu_shares.to_string()));
            out.push(file(V1, "cpu", "cpu.cfs_period_us", r.cpu_period.to_string()));
            let quota = if r.cpu_quota > 0 { r.cpu_quota } else { -1 };
            out.push(file(V1, "cpu", "cpu.cfs_quota_us", quota.to_string()));
            let mem = if r.memory_limit_in_bytes > 0 {
                page_align(r.memory_limit_in_bytes, page_size)
            } else {
                V1_MEMORY_UNLIMITED
            };
            out.push(file(V1, "memory", "memory.limit_in_bytes", mem.to_string()));
        }
        V2 => {
            out.push(file(V2, "cpu", "cpu.weight", shares_to_weight(r.cpu_shares).to_string()));
            let quota = if r.cpu_quota > 0 { r.cpu_quota.to_string() } else { "max".into() };
            out.push(file(V2, "cpu", "cpu.max", format!("{quota} {}", r.cpu_period)));
            let mem = if r.memory_limit_in_bytes > 0 {
                page_align(r.memory_limit_in_bytes, page_size).to_string()
            } else {
                "max".into()
            };
            out.push(file(V2, "memory", "memory.max", mem));
        }
    }
    if !r.cpuset_cpus.is_empty() {
        out.push(file(version, "cpuset", "cpuset.cpus", r.cpuset_cpus.clone()));
    }
    out
}

/// The file that reports a cgroup's memory usage.
pub fn memory_usage_file(version: CgroupVersion) -> CgroupFile {
    match version {
        CgroupVersion::V1 => file(version, "memory", "memory.usage_in_bytes", String::new()),
        CgroupVersion::V2 => file(version, "memory", "memory.current", String::new()),
    }
}

/// Pod-level cgroup values, as the kubelet's `ResourceConfigForPod` sums
/// them: shares from the sum of requests; a quota and a memory limit only
/// when every container has one (else the pod is unlimited).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    pub cpu_shares: i64,
    pub cpu_period: i64,
    /// µs per period, or [`UNLIMITED`].
    pub cpu_quota: i64,
    /// Bytes, or [`UNLIMITED`].
    pub memory_limit_in_bytes: i64,
}

pub fn pod_cgroup<'a>(containers: impl IntoIterator<Item = &'a Resources>) -> PodCgroup {
    let (mut request, mut cpu_limit, mut mem_limit) = (0i64, Some(0i64), Some(0i64));
    for c in containers {
        request = request.saturating_add(c.cpu_request_milli);
        cpu_limit = cpu_limit.zip(c.cpu_limit_milli).map(|(a, b)| a.saturating_add(b));
        mem_limit = mem_limit.zip(c.memory_limit_bytes).map(|(a, b)| a.saturating_add(b));
    }
    PodCgroup {
        cpu_shares: milli_cpu_to_shares(request),
        cpu_period: QUOTA_PERIOD_US,
        cpu_quota: cpu_limit.filter(|l| *l > 0).map_or(UNLIMITED, |l| milli_cpu_to_quota(l, QUOTA_PERIOD_US)),
        memory_limit_in_bytes: mem_limit.filter(|l| *l > 0).unwrap_or(UNLIMITED),
    }
}

/// The files to write for a pod cgroup, in an order the kernel accepts
/// (v1: the period before the quota).
pub fn pod_files(p: &PodCgroup, version: CgroupVersion, page_size: i64) -> Vec<CgroupFile> {
    let as_container = CriResources {
        cpu_period: p.cpu_period,
        cpu_quota: p.cpu_quota,
        cpu_shares: p.cpu_shares,
        memory_limit_in_bytes: p.memory_limit_in_bytes,
        cpuset_cpus: String::new(),
    };
    expected_files(&as_container, version, page_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_kubelet() {
        assert_eq!(milli_cpu_to_shares(0), 2, "no request: the minimum");
        assert_eq!(milli_cpu_to_shares(1), 2, "1m is 1.024 shares: clamped to 2");
        assert_eq!(milli_cpu_to_shares(2), 2);
        assert_eq!(milli_cpu_to_shares(3), 3);
        assert_eq!(milli_cpu_to_shares(100), 102);
        assert_eq!(milli_cpu_to_shares(250), 256);
        assert_eq!(milli_cpu_to_shares(1000), 1024);
        assert_eq!(milli_cpu_to_shares(1500), 1536);
        assert_eq!(milli_cpu_to_shares(256_000), MAX_SHARES);
        assert_eq!(milli_cpu_to_shares(1_000_000), MAX_SHARES, "clamped to the kernel's maximum");
        assert_eq!(milli_cpu_to_shares(i64::MAX), MAX_SHARES, "no overflow");
        assert_eq!(milli_cpu_to_shares(-5), 2);
    }

    #[test]
    fn quota_follows_the_kubelet() {
        assert_eq!(milli_cpu_to_quota(0, QUOTA_PERIOD_US), 0, "no limit: no quota");
        assert_eq!(milli_cpu_to_quota(1, QUOTA_PERIOD_US), 1000, "100 µs raised to the 1 ms minimum");
        assert_eq!(milli_cpu_to_quota(9, QUOTA_PERIOD_US), 1000);
        assert_eq!(milli_cpu_to_quota(10, QUOTA_PERIOD_US), 1000);
        assert_eq!(milli_cpu_to_quota(11, QUOTA_PERIOD_US), 1100);
        assert_eq!(milli_cpu_to_quota(250, QUOTA_PERIOD_US), 25_000);
        assert_eq!(milli_cpu_to_quota(1000, QUOTA_PERIOD_US), 100_000);
        assert_eq!(milli_cpu_to_quota(2500, QUOTA_PERIOD_US), 250_000);
        assert_eq!(milli_cpu_to_quota(500, 50_000), 25_000, "another period");
        assert_eq!(milli_cpu_to_quota(i64::MAX, QUOTA_PERIOD_US), i64::MAX, "saturates");
    }

    #[test]
    fn cgroup_v2_weight_follows_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 0, "unset stays unset");
        assert_eq!(shares_to_weight(1), 1, "below the minimum clamps");
    }

    #[test]
    fn resources_to_cri() {
        let r = Resources {
            cpu_request_milli: 500,
            cpu_limit_milli: Some(1500),
            memory_limit_bytes: Some(256 << 20),
            cpuset: Some("2-3".parse().unwrap()),
        };
        assert_eq!(
            r.to_cri(),
            CriResources {
                cpu_period: 100_000,
                cpu_quota: 150_000,
                cpu_shares: 512,
                memory_limit_in_bytes: 268_435_456,
                cpuset_cpus: "2-3".into()
            }
        );
        // Only a limit: the API server defaults the request to it, so do we.
        let limit_only = Resources { cpu_limit_milli: Some(2000), ..Default::default() };
        assert_eq!(limit_only.to_cri().cpu_shares, 2048);
        // Best effort: minimum shares, no quota, no memory limit, cpuset untouched.
        let none = Resources::default().to_cri();
        assert_eq!((none.cpu_shares, none.cpu_quota, none.memory_limit_in_bytes), (2, UNLIMITED, UNLIMITED));
        assert_eq!(none.cpuset_cpus, "");
    }

    #[test]
    fn expected_files_v1_and_v2() {
        let r = Resources {
            cpu_request_milli: 1000,
            cpu_limit_milli: Some(250),
            memory_limit_bytes: Some(100_000_123),
            cpuset: Some("0,1".parse().unwrap()),
        }
        .to_cri();
        let v1: Vec<_> =
            expected_files(&r, CgroupVersion::V1, 4096).into_iter().map(|f| (f.controller, f.file, f.value)).collect();
        assert_eq!(
            v1,
            vec![
                ("cpu", "cpu.shares", "1024".to_string()),
                ("cpu", "cpu.cfs_period_us", "100000".into()),
                ("cpu", "cpu.cfs_quota_us", "25000".into()),
                ("memory", "memory.limit_in_bytes", "99999744".into()),
                ("cpuset", "cpuset.cpus", "0-1".into()),
            ]
        );
        let v2: Vec<_> =
            expected_files(&r, CgroupVersion::V2, 4096).into_iter().map(|f| (f.controller, f.file, f.value)).collect();
        assert_eq!(
            v2,
            vec![
                ("", "cpu.weight", "39".to_string()),
                ("", "cpu.max", "25000 100000".into()),
                ("", "memory.max", "99999744".into()),
                ("", "cpuset.cpus", "0-1".into()),
            ]
        );
        let unlimited = Resources::default().to_cri();
        let v1 = expected_files(&unlimited, CgroupVersion::V1, 4096);
        assert_eq!(v1[2].value, "-1");
        assert_eq!(v1[3].value, V1_MEMORY_UNLIMITED.to_string());
        assert_eq!(v1.len(), 4, "no cpuset expectation when the cpuset is left alone");
        let v2 = expected_files(&unlimited, CgroupVersion::V2, 4096);
        assert_eq!((v2[1].value.as_str(), v2[2].value.as_str()), ("max 100000", "max"));
    }

    #[test]
    fn cpuset_files_compare_as_sets() {
        let f = CgroupFile { controller: "cpuset", file: "cpuset.cpus", value: "0-1".into() };
        assert!(f.matches("0,1\n"));
        assert!(!f.matches("0"));
        let q = CgroupFile { controller: "cpu", file: "cpu.shares", value: "512".into() };
        assert!(q.matches("512\n") && !q.matches("5120"));
    }

    #[test]
    fn pod_cgroup_sums_like_the_kubelet() {
        let a = Resources {
            cpu_request_milli: 500,
            cpu_limit_milli: Some(1000),
            memory_limit_bytes: Some(1 << 30),
            cpuset: None,
        };
        let b = Resources {
            cpu_request_milli: 250,
            cpu_limit_milli: Some(500),
            memory_limit_bytes: Some(1 << 29),
            cpuset: None,
        };
        let p = pod_cgroup([&a, &b]);
        assert_eq!(
            p,
            PodCgroup { cpu_shares: 768, cpu_period: 100_000, cpu_quota: 150_000, memory_limit_in_bytes: 3 << 29 }
        );
        // One container without limits makes the pod unlimited in both.
        let c = Resources { cpu_request_milli: 100, ..Default::default() };
        let p = pod_cgroup([&a, &c]);
        assert_eq!((p.cpu_shares, p.cpu_quota, p.memory_limit_in_bytes), (614, UNLIMITED, UNLIMITED));
        // No containers: minimum shares, unlimited.
        let p = pod_cgroup([]);
        assert_eq!((p.cpu_shares, p.cpu_quota, p.memory_limit_in_bytes), (2, UNLIMITED, UNLIMITED));
    }
}
