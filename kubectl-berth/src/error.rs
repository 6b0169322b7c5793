//! The plugin's one error type, and how every outcome maps to an exit code.

/// Exit codes (documented in `--help`): scripts tell the outcomes apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Done: a rollout completed, a resize was Applied, a plan fits.
    Success = 0,
    /// The thing watched failed: a rollout stalled or failed, a resize was Rejected or Failed, a plan does not fit.
    Failed = 1,
    /// `--timeout` passed before an outcome.
    Timeout = 2,
    /// Bad input, or the cluster could not be read or written.
    Error = 3,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("{kind} {name:?} not found{}", in_namespace(.namespace))]
    NotFound { kind: &'static str, name: String, namespace: String },
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("watch: {0}")]
    Watch(#[from] kube::runtime::watcher::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("reading {path}: {reason}")]
    File { path: String, reason: String },
    #[error("encoding output: {0}")]
    Output(#[from] serde_json::Error),
}

impl Error {
    /// A 404 from the API as a [`Error::NotFound`] naming the object.
    pub fn from_get(e: kube::Error, kind: &'static str, name: &str, namespace: &str) -> Self {
        match e {
            kube::Error::Api(s) if s.code == 404 => {
                Error::NotFound { kind, name: name.into(), namespace: namespace.into() }
            }
            e => Error::Kube(e),
        }
    }
}

/// ` in namespace "x"`, or nothing for a cluster-scoped object.
fn in_namespace(namespace: &str) -> String {
    if namespace.is_empty() { String::new() } else { format!(" in namespace {namespace:?}") }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_object_and_its_namespace_if_it_has_one() {
        let e = |namespace: &str| Error::NotFound { kind: "pod", name: "web-0".into(), namespace: namespace.into() };
        assert_eq!(e("prod").to_string(), "pod \"web-0\" not found in namespace \"prod\"");
        assert_eq!(
            Error::NotFound { kind: "node", name: "n1".into(), namespace: String::new() }.to_string(),
            "node \"n1\" not found"
        );
        assert_eq!(Exit::Timeout as i32, 2);
    }
}
