//! berth's admission rules. Each is a pure decision over the request; the
//! server, TLS and webhook configurations are shared.

pub mod inplaceset;
pub mod lifecycle;

use std::sync::Arc;

use crate::rule::AdmissionRule;

/// Every rule the manager serves, given the manager's own username (the one
/// identity allowed to move pod lifecycle states).
pub fn all(manager_username: &str) -> Vec<Arc<dyn AdmissionRule>> {
    vec![
        Arc::new(lifecycle::LifecycleRule { manager_username: manager_username.to_string() }),
        Arc::new(inplaceset::InplaceSetRule),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn names_and_paths_are_unique_and_well_formed() {
        let rules = super::all("m");
        let names: HashSet<_> = rules.iter().map(|r| r.name()).collect();
        let paths: HashSet<_> = rules.iter().map(|r| r.path()).collect();
        assert_eq!((names.len(), paths.len()), (rules.len(), rules.len()));
        for rule in &rules {
            // The apiserver wants a fully qualified webhook name (at least three segments).
            assert!(rule.name().split('.').count() >= 3, "{}", rule.name());
            assert!(rule.path().starts_with('/') && rule.path() != "/healthz", "{}", rule.path());
            assert!(!rule.webhook().failure_policy_reason.is_empty(), "{}", rule.name());
        }
    }
}
