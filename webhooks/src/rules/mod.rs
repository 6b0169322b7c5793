//! berth's admission rules. Each is a pure decision over the request; the
//! server, TLS and webhook configurations are shared.

pub mod inplaceset;
pub mod lifecycle;
pub mod resize;
pub mod sidecar_injection;
pub mod sidecarset;

use std::sync::Arc;

use crate::{caches::Caches, rule::AdmissionRule};

/// What the rules need from the manager.
#[derive(Clone)]
pub struct Context {
    /// The manager's own username: the one identity allowed to move pod lifecycle states.
    pub manager_username: String,
    /// The manager's namespace: where SidecarSet revisions live; never injected into.
    pub manager_namespace: String,
    pub caches: Caches,
}

impl Context {
    /// A context over empty, loaded caches (tests).
    pub fn empty(manager_username: &str) -> Self {
        Self {
            manager_username: manager_username.into(),
            manager_namespace: "berth-system".into(),
            caches: Caches::fixed(vec![], vec![], vec![]),
        }
    }
}

/// Every rule the manager serves.
pub fn all(ctx: &Context) -> Vec<Arc<dyn AdmissionRule>> {
    vec![
        Arc::new(lifecycle::LifecycleRule { manager_username: ctx.manager_username.clone() }),
        Arc::new(inplaceset::InplaceSetRule),
        Arc::new(resize::ResizeRule::new(&ctx.manager_username, &ctx.manager_namespace)),
        Arc::new(sidecarset::SidecarSetRule { caches: ctx.caches.clone() }),
        Arc::new(sidecar_injection::SidecarInjectionRule {
            caches: ctx.caches.clone(),
            manager_namespace: ctx.manager_namespace.clone(),
        }),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn names_and_paths_are_unique_and_well_formed() {
        let rules = super::all(&super::Context::empty("m"));
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
