//! The CPU manager: which exclusive CPUs belong to which container.
//!
//! - Allocation takes whole CPUs from the allocatable set, lowest-numbered
//!   free CPUs first; a container that already holds CPUs keeps them (a grow
//!   adds the lowest free ones, a shrink gives back its highest).
//! - Never two owners for one CPU: checked on every change and on load.
//! - Every change is on disk before it is visible: the state file is written
//!   to a temporary file, fsynced, renamed over the old one, and the
//!   directory fsynced; a crash leaves the old file or the new one.
//! - After a restart the file is loaded and reconciled against the
//!   containers the runtime reports: owners that no longer exist are dropped.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::cpuset::CpuSet;

/// A container, as the kubelet names it: pod UID and container name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerKey {
    pub pod_uid: String,
    pub container: String,
}

impl ContainerKey {
    pub fn new(pod_uid: impl Into<String>, container: impl Into<String>) -> Self {
        Self { pod_uid: pod_uid.into(), container: container.into() }
    }
}

impl std::fmt::Display for ContainerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pod_uid, self.container)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CpuManagerError {
    #[error("{0}")]
    DoesNotFit(Box<DoesNotFit>),
    #[error("CPU manager state {path}: CPU {cpu} has two owners, {} and {}", owners.0, owners.1)]
    TwoOwners { path: PathBuf, cpu: u32, owners: Box<(ContainerKey, ContainerKey)> },
    #[error("CPU manager state {path}: {container} holds CPUs {cpus} outside the allocatable set {allocatable}")]
    NotAllocatable { path: PathBuf, container: ContainerKey, cpus: String, allocatable: String },
    #[error("CPU manager state {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("CPU manager state {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// An allocation that does not fit, with the numbers.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot give {container} {want} exclusive CPUs: {free} free ({free_set:?}) of {allocatable} allocatable ({allocatable_set}), it holds {held}"
)]
pub struct DoesNotFit {
    pub container: ContainerKey,
    pub want: usize,
    pub free: usize,
    pub free_set: String,
    pub allocatable: usize,
    pub allocatable_set: String,
    pub held: usize,
}

/// The file's content. `version` lets a later format be told apart.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StateFile {
    version: u32,
    allocatable: CpuSet,
    assignments: Vec<Assignment>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Assignment {
    pod_uid: String,
    container: String,
    cpus: CpuSet,
}

const VERSION: u32 = 1;

#[derive(Debug)]
pub struct CpuManager {
    path: PathBuf,
    allocatable: CpuSet,
    assignments: BTreeMap<ContainerKey, CpuSet>,
}

impl CpuManager {
    /// Loads the state at `path`, or starts empty when there is none. The
    /// CPUs recorded must lie inside `allocatable` (a node whose allocatable
    /// CPUs shrank under existing assignments needs an operator's decision).
    pub fn load(path: impl Into<PathBuf>, allocatable: CpuSet) -> Result<Self, CpuManagerError> {
        let path = path.into();
        let mut mgr = Self { path, allocatable, assignments: BTreeMap::new() };
        let raw = match fs::read(&mgr.path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(mgr),
            Err(source) => return Err(CpuManagerError::Io { path: mgr.path, source }),
        };
        let corrupt = |reason: String| CpuManagerError::Corrupt { path: mgr.path.clone(), reason };
        let file: StateFile = serde_json::from_slice(&raw).map_err(|e| corrupt(e.to_string()))?;
        if file.version != VERSION {
            return Err(corrupt(format!("version {} is not the supported {VERSION}", file.version)));
        }
        let mut assignments = BTreeMap::new();
        for a in file.assignments {
            let key = ContainerKey::new(a.pod_uid, a.container);
            if assignments.insert(key.clone(), a.cpus).is_some() {
                return Err(corrupt(format!("{key} is listed twice")));
            }
        }
        mgr.check(&assignments)?;
        mgr.assignments = assignments;
        Ok(mgr)
    }

    /// Never two owners; nothing outside the allocatable set.
    fn check(&self, assignments: &BTreeMap<ContainerKey, CpuSet>) -> Result<(), CpuManagerError> {
        let mut owner: BTreeMap<u32, &ContainerKey> = BTreeMap::new();
        for (key, cpus) in assignments {
            if !cpus.is_subset(&self.allocatable) {
                return Err(CpuManagerError::NotAllocatable {
                    path: self.path.clone(),
                    container: key.clone(),
                    cpus: cpus.difference(&self.allocatable).to_string(),
                    allocatable: self.allocatable.to_string(),
                });
            }
            for cpu in cpus.iter() {
                if let Some(first) = owner.insert(cpu, key) {
                    return Err(CpuManagerError::TwoOwners {
                        path: self.path.clone(),
                        cpu,
                        owners: Box::new((first.clone(), key.clone())),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn allocatable(&self) -> &CpuSet {
        &self.allocatable
    }
    pub fn assignments(&self) -> &BTreeMap<ContainerKey, CpuSet> {
        &self.assignments
    }
    pub fn get(&self, key: &ContainerKey) -> Option<&CpuSet> {
        self.assignments.get(key)
    }

    /// CPUs no container holds exclusively: where shared containers run.
    pub fn shared_pool(&self) -> CpuSet {
        self.assignments.values().fold(self.allocatable.clone(), |free, held| free.difference(held))
    }

    /// Gives `key` exactly `n` exclusive CPUs (idempotent) and persists the
    /// change before returning them. `n == 0` releases.
    pub fn allocate(&mut self, key: &ContainerKey, n: usize) -> Result<CpuSet, CpuManagerError> {
        if n == 0 {
            self.release(key)?;
            return Ok(CpuSet::new());
        }
        let held = self.assignments.get(key).cloned().unwrap_or_default();
        if held.len() == n {
            return Ok(held);
        }
        let cpus: CpuSet = if n < held.len() {
            held.iter().take(n).collect()
        } else {
            let free = self.shared_pool();
            let need = n - held.len();
            if free.len() < need {
                return Err(CpuManagerError::DoesNotFit(Box::new(DoesNotFit {
                    container: key.clone(),
                    want: n,
                    free: free.len(),
                    free_set: free.to_string(),
                    allocatable: self.allocatable.len(),
                    allocatable_set: self.allocatable.to_string(),
                    held: held.len(),
                })));
            }
            held.union(&free.iter().take(need).collect())
        };
        let mut next = self.assignments.clone();
        next.insert(key.clone(), cpus.clone());
        self.commit(next)?;
        Ok(cpus)
    }

    /// Gives `key`'s CPUs back to the shared pool. Returns what it held.
    pub fn release(&mut self, key: &ContainerKey) -> Result<Option<CpuSet>, CpuManagerError> {
        if !self.assignments.contains_key(key) {
            return Ok(None);
        }
        let mut next = self.assignments.clone();
        let old = next.remove(key);
        self.commit(next)?;
        Ok(old)
    }

    /// Drops the owners that are not among `live` (the containers the
    /// runtime reports), persists, and returns what was dropped.
    pub fn reconcile(&mut self, live: &BTreeSet<ContainerKey>) -> Result<Vec<(ContainerKey, CpuSet)>, CpuManagerError> {
        let (keep, dropped): (BTreeMap<_, _>, BTreeMap<_, _>) =
            self.assignments.clone().into_iter().partition(|(key, _)| live.contains(key));
        if !dropped.is_empty() {
            self.commit(keep)?;
        }
        Ok(dropped.into_iter().collect())
    }

    /// Checks `next`, writes it, then makes it the state: memory never runs
    /// ahead of the disk.
    fn commit(&mut self, next: BTreeMap<ContainerKey, CpuSet>) -> Result<(), CpuManagerError> {
        self.check(&next)?;
        let file = StateFile {
            version: VERSION,
            allocatable: self.allocatable.clone(),
            assignments: next
                .iter()
                .map(|(key, cpus)| Assignment {
                    pod_uid: key.pod_uid.clone(),
                    container: key.container.clone(),
                    cpus: cpus.clone(),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| CpuManagerError::Corrupt { path: self.path.clone(), reason: format!("serialize: {e}") })?;
        write_atomically(&self.path, &bytes)
            .map_err(|source| CpuManagerError::Io { path: self.path.clone(), source })?;
        self.assignments = next;
        Ok(())
    }
}

/// Temp file in the same directory, fsync, rename over `path`, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-cpu-manager-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.join("cpu_manager_state")
    }

    fn key(pod: &str, c: &str) -> ContainerKey {
        ContainerKey::new(pod, c)
    }

    #[test]
    fn allocates_lowest_free_cpus_and_never_shares_one() {
        let path = tmp("alloc");
        let mut m = CpuManager::load(&path, "0-7".parse().unwrap()).unwrap();
        assert_eq!(m.allocate(&key("a", "app"), 2).unwrap().to_string(), "0-1");
        assert_eq!(m.allocate(&key("b", "app"), 3).unwrap().to_string(), "2-4");
        assert_eq!(m.allocate(&key("a", "app"), 2).unwrap().to_string(), "0-1", "idempotent");
        assert_eq!(m.shared_pool().to_string(), "5-7");
        // a grows: keeps 0-1 and takes the lowest free.
        assert_eq!(m.allocate(&key("a", "app"), 3).unwrap().to_string(), "0-1,5");
        // b shrinks: gives back its highest.
        assert_eq!(m.allocate(&key("b", "app"), 1).unwrap().to_string(), "2");
        assert_eq!(m.release(&key("a", "app")).unwrap().unwrap().to_string(), "0-1,5");
        assert_eq!(m.allocate(&key("c", "app"), 4).unwrap().to_string(), "0-1,3-4");
        let mut seen = BTreeSet::new();
        for cpus in m.assignments().values() {
            for cpu in cpus.iter() {
                assert!(seen.insert(cpu), "CPU {cpu} twice");
            }
        }
        assert_eq!(m.allocate(&key("c", "app"), 0).unwrap(), CpuSet::new(), "0 releases");
        assert!(m.get(&key("c", "app")).is_none());
    }

    #[test]
    fn an_allocation_that_does_not_fit_says_the_numbers_and_changes_nothing() {
        let path = tmp("nofit");
        let mut m = CpuManager::load(&path, "0-3".parse().unwrap()).unwrap();
        m.allocate(&key("a", "app"), 3).unwrap();
        let before = fs::read_to_string(&path).unwrap();
        let err = m.allocate(&key("b", "app"), 2).unwrap_err();
        let CpuManagerError::DoesNotFit(e) = &err else { panic!("{err:?}") };
        assert_eq!((e.want, e.free, e.allocatable, e.held), (2, 1, 4, 0));
        assert_eq!(
            err.to_string(),
            "cannot give b/app 2 exclusive CPUs: 1 free (\"3\") of 4 allocatable (0-3), it holds 0"
        );
        // A grow that does not fit keeps what the container held.
        let err = m.allocate(&key("a", "app"), 5).unwrap_err().to_string();
        assert!(err.contains("5 exclusive CPUs: 1 free") && err.contains("it holds 3"), "{err}");
        assert_eq!(m.get(&key("a", "app")).unwrap().to_string(), "0-2");
        assert_eq!(fs::read_to_string(&path).unwrap(), before);
    }

    #[test]
    fn recovers_from_the_file_and_reconciles_with_the_runtime() {
        let path = tmp("recover");
        {
            let mut m = CpuManager::load(&path, "0-7".parse().unwrap()).unwrap();
            m.allocate(&key("a", "app"), 2).unwrap();
            m.allocate(&key("b", "app"), 2).unwrap();
            m.allocate(&key("b", "sidecar"), 1).unwrap();
        } // the agent "dies" here: only the file remains
        let mut m = CpuManager::load(&path, "0-7".parse().unwrap()).unwrap();
        assert_eq!(m.get(&key("a", "app")).unwrap().to_string(), "0-1");
        assert_eq!(m.get(&key("b", "app")).unwrap().to_string(), "2-3");
        assert_eq!(m.get(&key("b", "sidecar")).unwrap().to_string(), "4");
        // Pod a went away while the agent was down.
        let live: BTreeSet<_> = [key("b", "app"), key("b", "sidecar"), key("z", "unpinned")].into();
        let dropped = m.reconcile(&live).unwrap();
        assert_eq!(dropped, vec![(key("a", "app"), "0-1".parse().unwrap())]);
        assert_eq!(m.shared_pool().to_string(), "0-1,5-7");
        // The reconciled state is what a second restart sees.
        let again = CpuManager::load(&path, "0-7".parse().unwrap()).unwrap();
        assert_eq!(again.assignments(), m.assignments());
        // A new allocation reuses the freed CPUs.
        assert_eq!(m.allocate(&key("c", "app"), 2).unwrap().to_string(), "0-1");
        // No temporary file is left beside the state.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("cpu_manager_state")]);
    }

    #[test]
    fn a_bad_file_is_refused_with_the_reason() {
        let path = tmp("bad");
        let write = |s: &str| fs::write(&path, s).unwrap();
        let load = || CpuManager::load(&path, "0-3".parse().unwrap()).unwrap_err().to_string();
        write(
            r#"{"version":1,"allocatable":"0-3","assignments":[{"podUid":"a","container":"x","cpus":"0-1"},{"podUid":"b","container":"y","cpus":"1-2"}]}"#,
        );
        assert!(load().ends_with("CPU 1 has two owners, a/x and b/y"), "{}", load());
        write(r#"{"version":1,"allocatable":"0-7","assignments":[{"podUid":"a","container":"x","cpus":"3-5"}]}"#);
        assert!(load().ends_with("a/x holds CPUs 4-5 outside the allocatable set 0-3"), "{}", load());
        write(r#"{"version":2,"allocatable":"0-3","assignments":[]}"#);
        assert!(load().contains("version 2 is not the supported 1"), "{}", load());
        write("{");
        assert!(load().contains("EOF"), "{}", load());
        write(
            r#"{"version":1,"allocatable":"0-3","assignments":[{"podUid":"a","container":"x","cpus":"0"},{"podUid":"a","container":"x","cpus":"1"}]}"#,
        );
        assert!(load().contains("a/x is listed twice"), "{}", load());
    }
}
