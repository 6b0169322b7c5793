//! Validating rule on InplaceSet CREATE/UPDATE: checks a CEL rule cannot
//! afford. Each check is a pure function of the spec returning its problems;
//! add a check by adding a function to [`CHECKS`].

use std::collections::BTreeMap;

use berth_api::{InplaceSet, InplaceSetSpec};
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, Operation},
};

use crate::rule::{Admission, AdmissionRule, FailurePolicy, WebhookSpec, allow, deny, operations};
use berth_api::selector::{Requirement, requirements};

/// The checks, in the order their problems are reported.
const CHECKS: &[fn(&InplaceSetSpec) -> Vec<String>] = &[selector_matches_template];

/// Every problem of `spec`; empty when it is valid.
pub fn problems(spec: &InplaceSetSpec) -> Vec<String> {
    CHECKS.iter().flat_map(|check| check(spec)).collect()
}

/// The selector must be well-formed, non-empty and match the template's
/// labels: otherwise the set would not own the pods it creates and would
/// create them again and again.
pub fn selector_matches_template(spec: &InplaceSetSpec) -> Vec<String> {
    let requirements = match requirements(&spec.selector, "spec.selector") {
        Ok(r) => r,
        Err(malformed) => return vec![malformed],
    };
    if requirements.is_empty() {
        return vec![
            "spec.selector is empty, which would select every pod in the namespace; \
             name at least one of the spec.template.metadata.labels in spec.selector.matchLabels"
                .into(),
        ];
    }
    let empty = BTreeMap::new();
    let labels = spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref()).unwrap_or(&empty);
    let failing: Vec<String> = requirements.iter().filter(|r| !r.matches(labels)).map(describe).collect();
    if failing.is_empty() {
        return vec![];
    }
    let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    vec![format!(
        "spec.selector does not match spec.template.metadata.labels {{{}}}: {} must hold for the template's labels, \
         so that the set owns the pods it creates",
        shown.join(","),
        failing.join("; "),
    )]
}

fn describe(r: &Requirement) -> String {
    match r {
        Requirement::Equals(..) => format!("matchLabels {r}"),
        _ => format!("matchExpressions {r}"),
    }
}

/// Serves [`problems`] for InplaceSet writes.
pub struct InplaceSetRule;

impl AdmissionRule for InplaceSetRule {
    fn name(&self) -> &'static str {
        "inplaceset.apps.berth.dev"
    }

    fn path(&self) -> &'static str {
        "/validate/inplaceset"
    }

    fn webhook(&self) -> WebhookSpec {
        WebhookSpec {
            admission: Admission::Validating,
            // Not inplacesets/scale nor /status: an HPA and the controller keep working during an outage.
            rules: vec![operations(berth_api::GROUP, berth_api::VERSION, &["inplacesets"], &["CREATE", "UPDATE"])],
            namespace_selector: None,
            object_selector: None,
            failure_policy: FailurePolicy::Fail,
            failure_policy_reason: "an InplaceSet whose selector misses its own pods makes the controller create pods \
                without end; only InplaceSet spec writes wait for the server, never pods or scaling",
        }
    }

    fn review(&self, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let Some(object) = req.object.clone() else {
            return allow(req);
        };
        let set: InplaceSet = match object.try_parse() {
            Ok(set) => set,
            Err(e) => return deny(req, format!("not a valid InplaceSet: {e}")),
        };
        // An unchanged spec is not re-judged: metadata writes (finalizers,
        // labels) to a set admitted before this rule existed stay possible.
        if req.operation == Operation::Update {
            let old = req.old_object.clone().and_then(|o| o.try_parse::<InplaceSet>().ok());
            if old.is_some_and(|old| old.spec == set.spec) {
                return allow(req);
            }
        }
        match problems(&set.spec).as_slice() {
            [] => allow(req),
            found => deny(req, found.join("; ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn spec(selector: Value, labels: Value) -> InplaceSetSpec {
        serde_json::from_value(json!({
            "selector": selector,
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app", "image": "a"}]}}
        }))
        .unwrap()
    }

    #[test]
    fn a_selector_matching_the_template_is_valid() {
        assert!(problems(&spec(json!({"matchLabels": {"app": "web"}}), json!({"app": "web", "tier": "x"}))).is_empty());
        let exprs = json!({"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["x", "y"]}, {"key": "canary", "operator": "DoesNotExist"}]});
        assert!(problems(&spec(exprs, json!({"tier": "y"}))).is_empty());
    }

    #[test]
    fn a_mismatch_names_both_fields_and_each_failing_requirement() {
        let sel = json!({"matchLabels": {"app": "web"}, "matchExpressions": [
            {"key": "tier", "operator": "NotIn", "values": ["db"]}, {"key": "zone", "operator": "Exists"}]});
        let found = problems(&spec(sel, json!({"app": "api", "tier": "db"})));
        assert_eq!(
            found,
            ["spec.selector does not match spec.template.metadata.labels {app=api,tier=db}: \
              matchLabels app=web; matchExpressions tier notin (db); matchExpressions zone must hold for the \
              template's labels, so that the set owns the pods it creates"]
        );
    }

    #[test]
    fn a_template_without_labels_matches_nothing() {
        let found = problems(&spec(json!({"matchLabels": {"app": "web"}}), Value::Null));
        assert!(found[0].contains("spec.template.metadata.labels {}: matchLabels app=web"), "{found:?}");
    }

    #[test]
    fn empty_and_malformed_selectors_are_refused() {
        let found = problems(&spec(json!({}), json!({"app": "web"})));
        assert!(found[0].starts_with("spec.selector is empty"), "{found:?}");
        let bad = json!({"matchExpressions": [{"key": "app", "operator": "In", "values": []}]});
        assert_eq!(
            problems(&spec(bad, json!({"app": "web"}))),
            ["spec.selector.matchExpressions[0]: operator In needs at least one value"]
        );
    }
}
