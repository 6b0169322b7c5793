//! CPU time from /proc: the machine's busy time, and per process (the
//! manager, the control plane's components from the cluster's pid files, the
//! bench itself), so a scenario can say where the CPU of a run went.

use std::{collections::BTreeMap, path::Path};

use serde::Serialize;

/// Clock ticks per second of /proc's counters.
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds of a process so far.
pub fn process_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces): state is field 3; utime, stime are 14, 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (u, s): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some((u + s) / ticks)
}

/// One reading.
#[derive(Clone, Debug, Default)]
pub struct Cpu {
    /// The process asked for, if any.
    pub process: Option<f64>,
    /// Named processes' CPU seconds.
    pub processes: BTreeMap<String, f64>,
    pub machine_busy: f64,
    pub machine_total: f64,
}

impl Cpu {
    /// The machine, `pid`, and each `<name>.pid` under `pid_dir` (plus this process as "bench").
    pub fn now(pid: Option<u32>, pid_dir: Option<&Path>, ticks: f64) -> Cpu {
        let mut processes = BTreeMap::new();
        for entry in pid_dir.and_then(|d| std::fs::read_dir(d).ok()).into_iter().flatten().flatten() {
            let path = entry.path();
            let (Some(name), Some(pid)) = (
                path.file_stem().and_then(|s| s.to_str()).map(String::from),
                std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u32>().ok()),
            ) else {
                continue;
            };
            if path.extension().is_some_and(|e| e == "pid")
                && let Some(seconds) = process_seconds(pid, ticks)
            {
                processes.insert(name, seconds);
            }
        }
        if let Some(seconds) = process_seconds(std::process::id(), ticks) {
            processes.insert("bench".into(), seconds);
        }
        let (mut busy, mut total) = (0.0, 0.0);
        if let Some(line) = std::fs::read_to_string("/proc/stat").ok().and_then(|s| s.lines().next().map(String::from))
        {
            let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            total = v.iter().take(8).sum::<f64>() / ticks;
            let idle = (v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0)) / ticks;
            busy = total - idle;
        }
        Cpu {
            process: pid.and_then(|p| process_seconds(p, ticks)),
            processes,
            machine_busy: busy,
            machine_total: total,
        }
    }
}

/// CPU used between two readings.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuUse {
    /// The asked-for process's CPU seconds (the manager's).
    pub manager_seconds: Option<f64>,
    /// Busy share of the whole machine (all CPUs), 0..1.
    pub machine_busy: f64,
    /// Busy CPU seconds of the whole machine.
    pub machine_busy_seconds: f64,
    /// CPU seconds per named process present in both readings.
    pub processes: BTreeMap<String, f64>,
}

impl CpuUse {
    pub fn between(a: &Cpu, b: &Cpu) -> CpuUse {
        let total = b.machine_total - a.machine_total;
        let busy = b.machine_busy - a.machine_busy;
        let processes =
            b.processes.iter().filter_map(|(k, v)| a.processes.get(k).map(|before| (k.clone(), v - before))).collect();
        CpuUse {
            manager_seconds: a.process.zip(b.process).map(|(x, y)| y - x),
            machine_busy: if total > 0.0 { busy / total } else { 0.0 },
            machine_busy_seconds: busy,
            processes,
        }
    }

    /// "total 4.1 s: kube-apiserver 2.0, etcd 0.6, ..." (largest first).
    pub fn describe(&self) -> String {
        let mut by_use: Vec<(&String, &f64)> = self.processes.iter().collect();
        by_use.sort_by(|a, b| b.1.total_cmp(a.1));
        let parts: Vec<String> = by_use.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
        format!("machine {:.2} CPU s ({})", self.machine_busy_seconds, parts.join(", "))
    }
}

/// Waits until the machine is quiet: a one-second window with at most
/// `busy` (0..1) of all CPUs busy, for at most `limit`. What an earlier
/// scenario left running (pods of a real node being torn down) would
/// otherwise be charged to the next measurement. Returns the last window's
/// busy share, and whether it settled.
pub async fn settle(busy: f64, limit: std::time::Duration) -> (f64, bool) {
    let ticks = clock_ticks();
    let start = std::time::Instant::now();
    loop {
        let a = Cpu::now(None, None, ticks);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let share = CpuUse::between(&a, &Cpu::now(None, None, ticks)).machine_busy;
        if share <= busy || start.elapsed() >= limit {
            return (share, share <= busy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read_and_differences_are_per_process() {
        let ticks = clock_ticks();
        let a = Cpu::now(Some(std::process::id()), None, ticks);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = Cpu::now(Some(std::process::id()), None, ticks);
        let used = CpuUse::between(&a, &b);
        assert!(used.manager_seconds.is_some_and(|s| s >= 0.0));
        assert!(used.processes.contains_key("bench"), "{:?}", used.processes);
        assert!(used.machine_busy_seconds >= 0.0 && (0.0..=1.0).contains(&used.machine_busy));
        assert!(used.describe().starts_with("machine "), "{}", used.describe());
    }
}
