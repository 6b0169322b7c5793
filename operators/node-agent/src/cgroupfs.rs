//! Where a container's cgroup files are on this host, read and written
//! directly: the cgroup mounts from `/proc/self/mountinfo`, a process's
//! cgroup from `/proc/PID/cgroup`. Works for the cgroupfs and the systemd
//! driver alike, since the paths come from the kernel, not from a naming rule.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use crate::cgroup::{CgroupFile, CgroupVersion};

/// The cgroup mounts of this host.
#[derive(Clone, Debug)]
pub struct CgroupFs {
    version: CgroupVersion,
    /// v1: controller → mount point.
    v1: BTreeMap<String, PathBuf>,
    /// v2: the unified mount.
    unified: Option<PathBuf>,
}

/// A file's value differs from the one expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub path: PathBuf,
    pub want: String,
    pub got: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: want {}, got {}", self.path.display(), self.want, self.got)
    }
}

impl CgroupFs {
    pub fn detect() -> io::Result<Self> {
        Ok(Self::from_mountinfo(&fs::read_to_string("/proc/self/mountinfo")?))
    }

    /// Parses `/proc/self/mountinfo`. The host is v2 when `/sys/fs/cgroup`
    /// itself is cgroup2 (as runc decides); a hybrid host (v1 controllers
    /// plus an empty cgroup2 at `unified/`) is v1.
    pub fn from_mountinfo(text: &str) -> Self {
        let mut v1 = BTreeMap::new();
        let mut unified = None;
        let mut version = CgroupVersion::V1;
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let mount_point = left.split(' ').nth(4).map(unescape);
            let mut right = right.split(' ');
            let (Some(fstype), Some(_source), Some(opts)) = (right.next(), right.next(), right.next()) else {
                continue;
            };
            let Some(mount_point) = mount_point else { continue };
            match fstype {
                "cgroup" => {
                    for opt in opts.split(',') {
                        if !matches!(opt, "rw" | "ro") && !opt.contains('=') {
                            v1.entry(opt.to_string()).or_insert_with(|| PathBuf::from(&mount_point));
                        }
                    }
                }
                "cgroup2" => {
                    if mount_point == "/sys/fs/cgroup" {
                        version = CgroupVersion::V2;
                    }
                    if unified.is_none() || mount_point == "/sys/fs/cgroup" {
                        unified = Some(PathBuf::from(&mount_point));
                    }
                }
                _ => {}
            }
        }
        if v1.is_empty() && unified.is_some() {
            version = CgroupVersion::V2;
        }
        Self { version, v1, unified }
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The directory of `cgroup` for `controller` (ignored on v2).
    pub fn dir(&self, controller: &str, cgroup: &ProcCgroup) -> io::Result<PathBuf> {
        let (mount, path) = match self.version {
            CgroupVersion::V1 => (self.v1.get(controller), cgroup.v1.get(controller)),
            CgroupVersion::V2 => (self.unified.as_ref(), cgroup.unified.as_ref()),
        };
        let missing = |what: &str| {
            io::Error::new(io::ErrorKind::NotFound, format!("no cgroup {what} for controller {controller:?}"))
        };
        let (mount, path) = (mount.ok_or_else(|| missing("mount"))?, path.ok_or_else(|| missing("path"))?);
        Ok(mount.join(path.trim_start_matches('/')))
    }

    pub fn file_path(&self, cgroup: &ProcCgroup, file: &CgroupFile) -> io::Result<PathBuf> {
        Ok(self.dir(file.controller, cgroup)?.join(file.file))
    }

    pub fn read(&self, cgroup: &ProcCgroup, file: &CgroupFile) -> io::Result<String> {
        let path = self.file_path(cgroup, file)?;
        fs::read_to_string(&path).map(|s| s.trim().to_string()).map_err(|e| with_path(e, &path))
    }

    pub fn write(&self, cgroup: &ProcCgroup, file: &CgroupFile) -> io::Result<()> {
        let path = self.file_path(cgroup, file)?;
        fs::write(&path, &file.value).map_err(|e| with_path(e, &path))
    }

    /// Every file that does not hold its expected value (or cannot be read).
    pub fn verify(&self, cgroup: &ProcCgroup, files: &[CgroupFile]) -> Vec<Mismatch> {
        files
            .iter()
            .filter_map(|f| {
                let path = self.file_path(cgroup, f).unwrap_or_else(|_| PathBuf::from(f.file));
                match self.read(cgroup, f) {
                    Ok(got) if f.matches(&got) => None,
                    Ok(got) => Some(Mismatch { path, want: f.value.clone(), got }),
                    Err(e) => Some(Mismatch { path, want: f.value.clone(), got: format!("unreadable: {e}") }),
                }
            })
            .collect()
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' {
            let code: String = it.clone().take(3).collect();
            if let Ok(n) = u8::from_str_radix(&code, 8) {
                out.push(char::from(n));
                for _ in 0..3 {
                    it.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// A process's cgroup paths (relative to each hierarchy's root).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcCgroup {
    pub v1: BTreeMap<String, String>,
    pub unified: Option<String>,
}

impl ProcCgroup {
    pub fn of_pid(pid: u32) -> io::Result<Self> {
        let path = format!("/proc/{pid}/cgroup");
        Ok(Self::parse(&fs::read_to_string(&path).map_err(|e| with_path(e, Path::new(&path)))?))
    }

    /// Parses `/proc/PID/cgroup` lines `ID:controllers:path`.
    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                out.unified = Some(path.to_string());
                continue;
            }
            for c in controllers.split(',') {
                out.v1.insert(c.trim_start_matches("name=").to_string(), path.to_string());
            }
        }
        out
    }

    /// A container's cgroup from its OCI spec's `linux.cgroupsPath`, as runc
    /// places it: the cgroupfs form (`/kubepods/burstable/pod<UID>/<id>`) under
    /// every hierarchy's root, or the systemd form (`slice:prefix:name`) as the
    /// unit `prefix-name.scope` inside the expanded slice. Unlike
    /// `/proc/PID/cgroup`, it needs neither the host's PID namespace nor its
    /// cgroup namespace.
    pub fn from_cgroups_path(cgroups_path: &str) -> Result<Self, String> {
        let path = match cgroups_path.split(':').collect::<Vec<_>>()[..] {
            [one] if one.starts_with('/') => one.trim_end_matches('/').to_string(),
            [slice, prefix, name] => {
                let slice = if slice.is_empty() { "system.slice" } else { slice };
                let unit = if name.ends_with(".slice") { name.to_string() } else { format!("{prefix}-{name}.scope") };
                format!("{}/{unit}", expand_slice(slice)?.trim_end_matches('/'))
            }
            _ => {
                return Err(format!(
                    "cgroupsPath {cgroups_path:?} is neither an absolute path nor systemd's \"slice:prefix:name\""
                ));
            }
        };
        let controllers = ["cpu", "cpuacct", "memory", "cpuset", "pids", "blkio", "hugetlb"];
        Ok(Self { v1: controllers.iter().map(|c| (c.to_string(), path.clone())).collect(), unified: Some(path) })
    }

    /// The enclosing cgroup: for a container, its pod's (kubelet layout
    /// `.../pod<UID>/<container>`, or a sandbox's `cgroup_parent`).
    pub fn parent(&self) -> Self {
        let up = |p: &String| match p.trim_end_matches('/').rsplit_once('/') {
            Some(("", _)) | None => "/".to_string(),
            Some((parent, _)) => parent.to_string(),
        };
        Self { v1: self.v1.iter().map(|(k, v)| (k.clone(), up(v))).collect(), unified: self.unified.as_ref().map(up) }
    }
}

/// systemd's slice nesting, as runc expands it: `a-b-c.slice` is
/// `/a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
pub fn expand_slice(slice: &str) -> Result<String, String> {
    let bad = |why: &str| format!("systemd slice {slice:?}: {why}");
    let name = slice.strip_suffix(".slice").ok_or_else(|| bad("does not end in .slice"))?;
    if name == "-" {
        return Ok("/".into());
    }
    if name.contains('/') {
        return Err(bad("contains '/'"));
    }
    let (mut path, mut prefix) = (String::new(), String::new());
    for part in name.split('-') {
        if part.is_empty() {
            return Err(bad("has an empty component"));
        }
        path.push_str(&format!("/{prefix}{part}.slice"));
        prefix.push_str(&format!("{part}-"));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
24 30 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
25 24 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
26 24 0:24 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
27 24 0:25 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
28 24 0:26 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
29 24 0:27 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
30 24 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_hosts_are_v1_and_v2_hosts_are_v2() {
        let fs = CgroupFs::from_mountinfo(HYBRID);
        assert_eq!(fs.version(), CgroupVersion::V1);
        let proc =
            ProcCgroup::parse("4:memory:/berth/pod-a/c1\n3:cpuset:/berth/pod-a/c1\n1:cpu:/berth/pod-a/c1\n0::/\n");
        let f = CgroupFile { controller: "memory", file: "memory.limit_in_bytes", value: String::new() };
        assert_eq!(
            fs.file_path(&proc, &f).unwrap(),
            PathBuf::from("/sys/fs/cgroup/memory/berth/pod-a/c1/memory.limit_in_bytes")
        );
        assert_eq!(fs.dir("cpu", &proc.parent()).unwrap(), PathBuf::from("/sys/fs/cgroup/cpu/berth/pod-a"));
        assert!(fs.dir("pids", &proc).is_err());

        let v2 = CgroupFs::from_mountinfo("30 24 0:28 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n");
        assert_eq!(v2.version(), CgroupVersion::V2);
        let proc = ProcCgroup::parse("0::/kubepods/burstable/podx/abc\n");
        let f = CgroupFile { controller: "", file: "cpu.max", value: String::new() };
        assert_eq!(
            v2.file_path(&proc, &f).unwrap(),
            PathBuf::from("/sys/fs/cgroup/kubepods/burstable/podx/abc/cpu.max")
        );
        assert_eq!(proc.parent().unified.as_deref(), Some("/kubepods/burstable/podx"));
        assert_eq!(ProcCgroup::parse("0::/top\n").parent().unified.as_deref(), Some("/"));
    }

    #[test]
    fn a_containers_cgroup_from_its_spec_for_both_drivers() {
        let fs = CgroupFs::from_mountinfo(HYBRID);
        let cg = ProcCgroup::from_cgroups_path("/kubepods/burstable/pod1/abc").unwrap();
        let f = CgroupFile { controller: "cpu", file: "cpu.shares", value: String::new() };
        assert_eq!(
            fs.file_path(&cg, &f).unwrap(),
            PathBuf::from("/sys/fs/cgroup/cpu/kubepods/burstable/pod1/abc/cpu.shares")
        );
        assert_eq!(
            fs.dir("cpuset", &cg.parent()).unwrap(),
            PathBuf::from("/sys/fs/cgroup/cpuset/kubepods/burstable/pod1")
        );

        let cg = ProcCgroup::from_cgroups_path("kubepods-burstable-pod1.slice:cri-containerd:abc").unwrap();
        let want = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope";
        assert_eq!(cg.unified.as_deref(), Some(want));
        assert_eq!(cg.v1["memory"], want);
        assert_eq!(
            cg.parent().unified.as_deref(),
            Some("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice")
        );
        assert_eq!(expand_slice("-.slice").unwrap(), "/");
        assert_eq!(expand_slice("system.slice").unwrap(), "/system.slice");
        for bad in ["kubepods", "a--b.slice", "a/b.slice"] {
            assert!(expand_slice(bad).unwrap_err().contains(bad), "{bad}");
        }
        assert!(ProcCgroup::from_cgroups_path("relative/path").unwrap_err().contains("neither an absolute path"));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
    }
}
