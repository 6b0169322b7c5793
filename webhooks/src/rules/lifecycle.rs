//! Validating rule on pod UPDATE: the `berth.dev/lifecycle-state` annotation
//! of an InplaceSet pod changes only through a legal transition
//! ([`LifecycleState::check_change`]) and only by the manager. Everything
//! else about the pod is left alone.

use berth_api::{keys, lifecycle::LifecycleState};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, Operation},
};

use crate::rule::{Admission, AdmissionRule, FailurePolicy, WebhookSpec, allow, deny, namespaces_except, operations};

/// Guards the lifecycle annotation of pods an InplaceSet owns.
pub struct LifecycleRule {
    /// The only user allowed to move the state, e.g. `system:serviceaccount:berth-system:berth-manager`.
    pub manager_username: String,
}

/// The annotation's value, as the controller reads it: an absent or
/// unreadable value is no state.
fn state_of(obj: Option<&DynamicObject>) -> (Option<&str>, Option<LifecycleState>) {
    let raw = obj.and_then(|o| o.metadata.annotations.as_ref()).and_then(|a| a.get(keys::LIFECYCLE_STATE));
    (raw.map(String::as_str), raw.and_then(|s| s.parse().ok()))
}

impl LifecycleRule {
    /// Why the change of the annotation is refused, if it is.
    pub fn check(&self, user: &str, old: Option<&DynamicObject>, new: Option<&DynamicObject>) -> Result<(), String> {
        let (old_raw, from) = state_of(old);
        let (new_raw, to) = state_of(new);
        if old_raw == new_raw {
            return Ok(());
        }
        let shown = |s: Option<&str>| s.unwrap_or("(none)").to_string();
        let (from_s, to_s) = (shown(old_raw), shown(new_raw));
        let legality = match new_raw {
            Some(raw) if to.is_none() => raw.parse::<LifecycleState>().map(|_| ()).map_err(|e| e.to_string()),
            // The controller treats a pod without the annotation as Normal: so does the rule.
            _ => LifecycleState::check_change(from, to)
                .or_else(|e| {
                    if from.is_none() { LifecycleState::check_change(Some(LifecycleState::Normal), to) } else { Err(e) }
                })
                .map_err(|e| e.to_string()),
        };
        if user != self.manager_username {
            let mut message = format!(
                "the {} annotation is written only by the berth manager ({}); {user} may not change it from {from_s} \
                 to {to_s}. To release a pod held by a lifecycle hook, remove the hook's label or finalizer instead",
                keys::LIFECYCLE_STATE,
                self.manager_username,
            );
            if let Err(illegal) = legality {
                message.push_str(&format!(" (the change is also illegal: {illegal})"));
            }
            return Err(message);
        }
        legality.map_err(|illegal| format!("{}: {illegal}", keys::LIFECYCLE_STATE))
    }
}

impl AdmissionRule for LifecycleRule {
    fn name(&self) -> &'static str {
        "pod-lifecycle.berth.dev"
    }

    fn path(&self) -> &'static str {
        "/validate/pod-lifecycle"
    }

    fn webhook(&self) -> WebhookSpec {
        WebhookSpec {
            admission: Admission::Validating,
            // `pods` only: status writes (pods/status) never carry the annotation.
            rules: vec![operations("", "v1", &["pods"], &["UPDATE"])],
            // kube-system never waits for berth, whatever labels its pods carry.
            namespace_selector: Some(namespaces_except(["kube-system".to_string()])),
            // Only InplaceSet pods: an outage cannot block any other pod.
            object_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: keys::INPLACESET_NAME.into(),
                    operator: "Exists".into(),
                    values: None,
                }]),
                ..Default::default()
            }),
            failure_policy: FailurePolicy::Fail,
            failure_policy_reason: "an unchecked write could skip a lifecycle hook; only InplaceSet pods are \
                scoped in, and their controller runs in the same process, so an outage stops nothing that \
                could otherwise progress",
        }
    }

    fn review(&self, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        if req.operation != Operation::Update {
            return allow(req);
        }
        let user = req.user_info.username.as_deref().unwrap_or("(unknown user)");
        match self.check(user, req.old_object.as_ref(), req.object.as_ref()) {
            Ok(()) => allow(req),
            Err(message) => deny(req, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const MANAGER: &str = "system:serviceaccount:berth-system:berth-manager";

    fn rule() -> LifecycleRule {
        LifecycleRule { manager_username: MANAGER.into() }
    }

    fn pod(state: Option<&str>, label: &str) -> DynamicObject {
        let mut annotations = json!({});
        if let Some(s) = state {
            annotations[keys::LIFECYCLE_STATE] = json!(s);
        }
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "labels": {"x": label}, "annotations": annotations}
        }))
        .unwrap()
    }

    fn check(user: &str, from: Option<&str>, to: Option<&str>) -> Result<(), String> {
        rule().check(user, Some(&pod(from, "a")), Some(&pod(to, "b")))
    }

    #[test]
    fn the_manager_makes_legal_transitions() {
        assert_eq!(check(MANAGER, Some("Normal"), Some("PreparingUpdate")), Ok(()));
        assert_eq!(check(MANAGER, Some("Updated"), Some("Normal")), Ok(()));
        assert_eq!(check(MANAGER, None, Some("PreparingNormal")), Ok(()));
        // A pod without the annotation counts as Normal, as in the controller.
        assert_eq!(check(MANAGER, None, Some("PreparingUpdate")), Ok(()));
    }

    #[test]
    fn the_manager_is_refused_an_illegal_transition_with_what_is_allowed() {
        let err = check(MANAGER, Some("Normal"), Some("Updated")).unwrap_err();
        assert_eq!(
            err,
            "berth.dev/lifecycle-state: lifecycle state cannot change from Normal to Updated; \
             from Normal it may become: PreparingUpdate, Updating, PreparingDelete"
        );
        assert!(check(MANAGER, Some("Normal"), None).unwrap_err().contains("from Normal to (none)"));
        let unknown = check(MANAGER, Some("Normal"), Some("normal")).unwrap_err();
        assert!(unknown.contains("unknown lifecycle state \"normal\"; allowed: PreparingNormal, Normal"), "{unknown}");
    }

    #[test]
    fn nobody_else_changes_the_state_even_legally() {
        let err = check("alice", Some("Normal"), Some("PreparingDelete")).unwrap_err();
        assert!(err.starts_with("the berth.dev/lifecycle-state annotation is written only by the berth manager"));
        assert!(err.contains(MANAGER) && err.contains("alice may not change it from Normal to PreparingDelete"));
        assert!(!err.contains("also illegal"), "{err}");
        let err = check("alice", Some("Normal"), Some("Updated")).unwrap_err();
        assert!(err.contains("also illegal: lifecycle state cannot change from Normal to Updated"), "{err}");
    }

    #[test]
    fn other_changes_pass_for_everyone() {
        assert_eq!(check("alice", Some("Updating"), Some("Updating")), Ok(()));
        assert_eq!(check("alice", None, None), Ok(()));
        // Even an unreadable value, left as it is.
        assert_eq!(check("alice", Some("bogus"), Some("bogus")), Ok(()));
    }
}
