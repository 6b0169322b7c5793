//! A container's resources as its cgroup files hold them: the truth the
//! runtime path starts from (also after a crash mid-way) and what it reports
//! in `berth.dev/resize-applied`. Pure: parsing of file contents already read.

use std::collections::BTreeMap;

use berth_api::resize::AppliedContainer;

use crate::{
    cgroup::{
        CgroupFile, CgroupVersion, CriResources, MAX_SHARES, MIN_SHARES, QUOTA_PERIOD_US, Resources, SHARES_PER_CPU,
        UNLIMITED, V1_MEMORY_UNLIMITED, milli_cpu_to_shares, page_align, shares_to_weight,
    },
    cpuset::CpuSet,
};

/// The values of one cgroup, in CRI units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupValues {
    /// v1 `cpu.shares`; v2: the smallest shares runc turns into the weight read.
    pub cpu_shares: i64,
    pub cpu_period: i64,
    /// µs per period, or [`UNLIMITED`].
    pub cpu_quota: i64,
    /// Bytes, or [`UNLIMITED`].
    pub memory_limit_bytes: i64,
    /// `cpuset.cpus`; `None` where the cgroup sets none (v2: inherited).
    pub cpuset: Option<CpuSet>,
}

fn want(controller: &'static str, file: &'static str) -> CgroupFile {
    CgroupFile { controller, file, value: String::new() }
}

/// The files [`parse`] reads.
pub fn files(version: CgroupVersion) -> Vec<CgroupFile> {
    match version {
        CgroupVersion::V1 => vec![
            want("cpu", "cpu.shares"),
            want("cpu", "cpu.cfs_period_us"),
            want("cpu", "cpu.cfs_quota_us"),
            want("memory", "memory.limit_in_bytes"),
            want("cpuset", "cpuset.cpus"),
        ],
        CgroupVersion::V2 => {
            vec![
                want("", "cpu.weight"),
                want("", "cpu.max"),
                want("", "memory.max"),
                want("", "cpuset.cpus"),
                want("", "cpuset.cpus.effective"),
            ]
        }
    }
}

/// The smallest shares that runc converts to `weight` (cgroup v2).
pub fn weight_to_shares(weight: i64) -> i64 {
    if weight <= 1 {
        return 2;
    }
    // Inverse of 1 + (s - 2) * 9999 / 262142, rounded up.
    let s = 2 + ((weight - 1) * 262_142 + 9998) / 9999;
    // Integer division can land one off; step to the smallest that maps back.
    (s - 2..=s + 2).find(|s| shares_to_weight(*s) == weight).unwrap_or(s)
}

/// Parses the contents of [`files`] (file name → content).
pub fn parse(version: CgroupVersion, raw: &BTreeMap<&str, String>) -> Result<CgroupValues, String> {
    let get = |name: &str| raw.get(name).map(|s| s.trim()).ok_or_else(|| format!("{name} could not be read"));
    let int = |name: &str, s: &str| s.parse::<i64>().map_err(|e| format!("{name}: {s:?}: {e}"));
    // v2 leaves cpuset.cpus empty until it is set: the cgroup then runs on
    // what it inherits, cpuset.cpus.effective.
    let list = |name: &'static str| raw.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()).map(|s| (name, s));
    let cpuset = match list("cpuset.cpus").or_else(|| list("cpuset.cpus.effective")) {
        None => None,
        Some((name, s)) => Some(s.parse::<CpuSet>().map_err(|e| format!("{name}: {e}"))?),
    };
    match version {
        CgroupVersion::V1 => {
            let quota = int("cpu.cfs_quota_us", get("cpu.cfs_quota_us")?)?;
            let memory = int("memory.limit_in_bytes", get("memory.limit_in_bytes")?)?;
            Ok(CgroupValues {
                cpu_shares: int("cpu.shares", get("cpu.shares")?)?,
                cpu_period: int("cpu.cfs_period_us", get("cpu.cfs_period_us")?)?,
                cpu_quota: if quota <= 0 { UNLIMITED } else { quota },
                memory_limit_bytes: if memory >= V1_MEMORY_UNLIMITED { UNLIMITED } else { memory },
                cpuset,
            })
        }
        CgroupVersion::V2 => {
            let weight = int("cpu.weight", get("cpu.weight")?)?;
            let max = get("cpu.max")?;
            let (quota, period) =
                max.split_once(' ').ok_or_else(|| format!("cpu.max: {max:?} is not \"QUOTA PERIOD\""))?;
            let memory = get("memory.max")?;
            Ok(CgroupValues {
                cpu_shares: weight_to_shares(weight),
                cpu_period: int("cpu.max period", period)?,
                cpu_quota: if quota == "max" { UNLIMITED } else { int("cpu.max quota", quota)? },
                memory_limit_bytes: if memory == "max" { UNLIMITED } else { int("memory.max", memory)? },
                cpuset,
            })
        }
    }
}

impl CgroupValues {
    /// Requests and limits that produce these values (the smallest CPU
    /// request giving the shares; the limit giving the quota at the kubelet's
    /// period). Exact for every value the kubelet's arithmetic can produce.
    pub fn to_resources(&self) -> Resources {
        let shares = self.cpu_shares.clamp(MIN_SHARES, MAX_SHARES);
        let guess = shares * 1000 / SHARES_PER_CPU;
        let request = ((guess - 2).max(1)..).find(|m| milli_cpu_to_shares(*m) >= shares).unwrap_or(guess.max(1));
        let limit = (self.cpu_quota > 0).then(|| {
            let period = if self.cpu_period > 0 { self.cpu_period } else { QUOTA_PERIOD_US };
            // Rounded up: the kubelet's 1 ms minimum quota (1m..10m) reads as 10m.
            let period = i128::from(period);
            ((i128::from(self.cpu_quota) * 1000 + period - 1) / period).min(i128::from(i64::MAX)) as i64
        });
        Resources {
            cpu_request_milli: request,
            cpu_limit_milli: limit,
            memory_limit_bytes: (self.memory_limit_bytes > 0).then_some(self.memory_limit_bytes),
            cpuset: self.cpuset.clone(),
        }
    }

    /// Whether this cgroup holds `want` (as [`crate::cgroup::expected_files`]
    /// would check it: v2 compares weights, memory in whole pages; an empty
    /// cpuset in `want` is not checked).
    pub fn holds(&self, want: &CriResources, version: CgroupVersion, page_size: i64) -> bool {
        let shares = match version {
            CgroupVersion::V1 => self.cpu_shares == want.cpu_shares,
            CgroupVersion::V2 => shares_to_weight(self.cpu_shares) == shares_to_weight(want.cpu_shares),
        };
        let quota = if want.cpu_quota > 0 { want.cpu_quota } else { UNLIMITED };
        let memory =
            if want.memory_limit_in_bytes > 0 { page_align(want.memory_limit_in_bytes, page_size) } else { UNLIMITED };
        let cpuset = want.cpuset_cpus.is_empty()
            || want.cpuset_cpus.parse::<CpuSet>().ok().is_some_and(|w| self.cpuset.as_ref() == Some(&w));
        shares
            && self.cpu_period == want.cpu_period
            && self.cpu_quota == quota
            && self.memory_limit_bytes == memory
            && cpuset
    }

    /// What `berth.dev/resize-applied` reports for the container; the
    /// cpuset only where it is the pod's exclusive set.
    pub fn to_applied(&self, exclusive: bool) -> AppliedContainer {
        AppliedContainer {
            cpu_quota: Some(self.cpu_quota),
            cpu_period: Some(self.cpu_period),
            cpu_shares: Some(self.cpu_shares),
            memory_limit_bytes: Some(self.memory_limit_bytes),
            cpuset_cpus: if exclusive { self.cpuset.as_ref().map(CpuSet::to_string) } else { None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&'static str, &str)]) -> BTreeMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, format!("{v}\n"))).collect()
    }

    #[test]
    fn parses_v1_files() {
        let v = parse(
            CgroupVersion::V1,
            &raw(&[
                ("cpu.shares", "768"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "150000"),
                ("memory.limit_in_bytes", "268435456"),
                ("cpuset.cpus", "0-1"),
            ]),
        )
        .unwrap();
        assert_eq!(
            v,
            CgroupValues {
                cpu_shares: 768,
                cpu_period: 100_000,
                cpu_quota: 150_000,
                memory_limit_bytes: 256 << 20,
                cpuset: Some("0-1".parse().unwrap())
            }
        );
        let unlimited = parse(
            CgroupVersion::V1,
            &raw(&[
                ("cpu.shares", "2"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "-1"),
                ("memory.limit_in_bytes", "9223372036854771712"),
            ]),
        )
        .unwrap();
        assert_eq!((unlimited.cpu_quota, unlimited.memory_limit_bytes, unlimited.cpuset), (UNLIMITED, UNLIMITED, None));
    }

    #[test]
    fn parses_v2_files() {
        let v = parse(
            CgroupVersion::V2,
            &raw(&[("cpu.weight", "39"), ("cpu.max", "150000 100000"), ("memory.max", "max"), ("cpuset.cpus", "")]),
        )
        .unwrap();
        assert_eq!(shares_to_weight(v.cpu_shares), 39);
        assert_eq!((v.cpu_quota, v.cpu_period, v.memory_limit_bytes, v.cpuset), (150_000, 100_000, UNLIMITED, None));
        let inherited = parse(
            CgroupVersion::V2,
            &raw(&[
                ("cpu.weight", "39"),
                ("cpu.max", "max 100000"),
                ("memory.max", "max"),
                ("cpuset.cpus", ""),
                ("cpuset.cpus.effective", "0-3"),
            ]),
        )
        .unwrap();
        assert_eq!(inherited.cpuset, Some("0-3".parse().unwrap()), "an unset cpuset runs on the effective one");
        let set = parse(
            CgroupVersion::V2,
            &raw(&[
                ("cpu.weight", "39"),
                ("cpu.max", "max 100000"),
                ("memory.max", "max"),
                ("cpuset.cpus", "2"),
                ("cpuset.cpus.effective", "2"),
            ]),
        )
        .unwrap();
        assert_eq!(set.cpuset, Some("2".parse().unwrap()));
        let v =
            parse(CgroupVersion::V2, &raw(&[("cpu.weight", "1"), ("cpu.max", "max 100000"), ("memory.max", "4096")]))
                .unwrap();
        assert_eq!((v.cpu_shares, v.cpu_quota, v.memory_limit_bytes), (2, UNLIMITED, 4096));
    }

    #[test]
    fn bad_or_missing_files_say_which() {
        let err = parse(CgroupVersion::V1, &raw(&[("cpu.shares", "x")])).unwrap_err();
        assert!(err.starts_with("cpu.cfs_quota_us could not be read") || err.contains("cpu.shares"), "{err}");
        let err = parse(CgroupVersion::V2, &raw(&[("cpu.weight", "1"), ("cpu.max", "max"), ("memory.max", "1")]))
            .unwrap_err();
        assert!(err.contains("cpu.max: \"max\" is not \"QUOTA PERIOD\""), "{err}");
        let err = parse(
            CgroupVersion::V1,
            &raw(&[
                ("cpu.shares", "2"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "-1"),
                ("memory.limit_in_bytes", "1"),
                ("cpuset.cpus", "3-1"),
            ]),
        )
        .unwrap_err();
        assert!(err.starts_with("cpuset.cpus: invalid cpu list \"3-1\""), "{err}");
    }

    #[test]
    fn weight_maps_back_to_shares_that_give_the_same_weight() {
        for w in [1, 2, 38, 39, 40, 100, 5000, 9999, 10_000] {
            let s = weight_to_shares(w);
            assert_eq!(shares_to_weight(s), w, "weight {w} -> shares {s}");
            assert!(s == 2 || shares_to_weight(s - 1) < w, "smallest shares for weight {w}");
        }
    }

    #[test]
    fn every_value_the_kubelet_computes_round_trips_through_the_files() {
        for request in [0, 1, 2, 10, 41, 42, 100, 250, 333, 750, 1000, 1500, 64_000] {
            for limit in [None, Some(1), Some(10), Some(11), Some(250), Some(1500), Some(64_000)] {
                for memory in [None, Some(64 << 20)] {
                    let r = Resources {
                        cpu_request_milli: request,
                        cpu_limit_milli: limit,
                        memory_limit_bytes: memory,
                        cpuset: Some("1".parse().unwrap()),
                    };
                    let cri = r.to_cri();
                    for version in [CgroupVersion::V1, CgroupVersion::V2] {
                        let read = CgroupValues {
                            cpu_shares: if version == CgroupVersion::V1 {
                                cri.cpu_shares
                            } else {
                                weight_to_shares(shares_to_weight(cri.cpu_shares))
                            },
                            cpu_period: cri.cpu_period,
                            cpu_quota: if cri.cpu_quota > 0 { cri.cpu_quota } else { UNLIMITED },
                            memory_limit_bytes: cri.memory_limit_in_bytes,
                            cpuset: Some("1".parse().unwrap()),
                        };
                        assert!(read.holds(&cri, version, 4096), "{r:?} {version:?}");
                        // Read back → resources → CRI values: the same files.
                        let again = read.to_resources().to_cri();
                        assert!(read.holds(&again, version, 4096), "{r:?} {version:?}: {again:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn holds_notices_each_difference() {
        let r = Resources {
            cpu_request_milli: 500,
            cpu_limit_milli: Some(1000),
            memory_limit_bytes: Some(100_000_123),
            cpuset: Some("2-3".parse().unwrap()),
        };
        let cri = r.to_cri();
        let read = CgroupValues {
            cpu_shares: 512,
            cpu_period: 100_000,
            cpu_quota: 100_000,
            memory_limit_bytes: 99_999_744,
            cpuset: Some("2,3".parse().unwrap()),
        };
        assert!(read.holds(&cri, CgroupVersion::V1, 4096), "memory compared in whole pages, cpus as sets");
        for changed in [
            CgroupValues { cpu_shares: 513, ..read.clone() },
            CgroupValues { cpu_quota: UNLIMITED, ..read.clone() },
            CgroupValues { memory_limit_bytes: 1 << 30, ..read.clone() },
            CgroupValues { cpuset: Some("2".parse().unwrap()), ..read.clone() },
            CgroupValues { cpuset: None, ..read.clone() },
        ] {
            assert!(!changed.holds(&cri, CgroupVersion::V1, 4096), "{changed:?}");
        }
        let any_cpus = CriResources { cpuset_cpus: String::new(), ..cri };
        assert!(CgroupValues { cpuset: None, ..read.clone() }.holds(&any_cpus, CgroupVersion::V1, 4096));
        let applied = read.to_applied(true);
        assert_eq!(applied.cpuset_cpus.as_deref(), Some("2-3"));
        assert_eq!((applied.cpu_quota, applied.memory_limit_bytes), (Some(100_000), Some(99_999_744)));
        assert_eq!(read.to_applied(false).cpuset_cpus, None, "a shared cpuset is not reported as exclusive");
    }
}
