//! Shared by the CRI tests: the pod sandbox the kubelet would ask for.

use std::{collections::BTreeMap, path::Path};

use k8s_cri::v1 as cri;

/// A host-network sandbox (no CNI here) for pod `uid`, its cgroup at
/// `<cgroup_parent>/pod<uid>` as the kubelet's cgroupfs driver names it.
pub fn sandbox_config(
    name: &str,
    namespace: &str,
    uid: &str,
    labels: BTreeMap<String, String>,
    cgroup_parent: &str,
    logs: &Path,
) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt: 0,
        }),
        labels: labels.into_iter().collect(),
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("{cgroup_parent}/pod{uid}"),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
