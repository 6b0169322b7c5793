//! `metav1.LabelSelector` semantics (matchLabels and matchExpressions with
//! In, NotIn, Exists, DoesNotExist), as the apiserver and controllers apply
//! them: every requirement must hold; NotIn and DoesNotExist hold for an
//! absent label.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// One requirement of a selector, checked against a label map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Self::Equals(k, v) => labels.get(k) == Some(v),
            Self::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Self::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Self::Exists(k) => labels.contains_key(k),
            Self::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// The kubectl spelling: `app=web`, `tier in (a,b)`, `tier notin (a)`, `tier`, `!tier`.
impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Equals(k, v) => write!(f, "{k}={v}"),
            Self::In(k, vs) => write!(f, "{k} in ({})", vs.join(",")),
            Self::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(",")),
            Self::Exists(k) => write!(f, "{k}"),
            Self::DoesNotExist(k) => write!(f, "!{k}"),
        }
    }
}

/// Whether `labels` satisfy `selector`. A malformed selector matches nothing;
/// an empty one matches everything.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    requirements(selector, "selector").is_ok_and(|rs| rs.iter().all(|r| r.matches(labels)))
}

/// The selector as `kubectl` writes it (`app=web,tier in (a,b)`), as the
/// scale subresource's `labelSelector` wants; malformed requirements are left out.
pub fn to_kubectl(selector: &LabelSelector) -> String {
    let labels = selector.match_labels.iter().flatten().map(|(k, v)| Requirement::Equals(k.clone(), v.clone()));
    let expressions = selector.match_expressions.iter().flatten().filter_map(|e| requirement(e).ok());
    labels.chain(expressions).map(|r| r.to_string()).collect::<Vec<_>>().join(",")
}

/// The selector's requirements, or what is malformed about it (the message
/// names the field under `field`, e.g. `spec.selector`).
pub fn requirements(selector: &LabelSelector, field: &str) -> Result<Vec<Requirement>, String> {
    let mut out: Vec<Requirement> =
        selector.match_labels.iter().flatten().map(|(k, v)| Requirement::Equals(k.clone(), v.clone())).collect();
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        out.push(requirement(expr).map_err(|why| format!("{field}.matchExpressions[{i}]: {why}"))?);
    }
    Ok(out)
}

fn requirement(expr: &LabelSelectorRequirement) -> Result<Requirement, String> {
    let key = expr.key.clone();
    let values = expr.values.clone().unwrap_or_default();
    let needs_values = |r: Requirement| {
        if values.is_empty() { Err(format!("operator {} needs at least one value", expr.operator)) } else { Ok(r) }
    };
    let no_values = |r: Requirement| {
        if values.is_empty() { Ok(r) } else { Err(format!("operator {} takes no values", expr.operator)) }
    };
    match expr.operator.as_str() {
        "In" => needs_values(Requirement::In(key, values.clone())),
        "NotIn" => needs_values(Requirement::NotIn(key, values.clone())),
        "Exists" => no_values(Requirement::Exists(key)),
        "DoesNotExist" => no_values(Requirement::DoesNotExist(key)),
        other => Err(format!("unknown operator {other:?}; allowed: In, NotIn, Exists, DoesNotExist")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn selector(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).unwrap()
    }

    fn all_hold(sel: serde_json::Value, l: &[(&str, &str)]) -> bool {
        requirements(&selector(sel), "s").unwrap().iter().all(|r| r.matches(&labels(l)))
    }

    #[test]
    fn operators_follow_kubernetes_semantics() {
        let expr = |op: &str, values: &[&str]| json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]});
        assert!(all_hold(json!({"matchLabels": {"app": "web"}}), &[("app", "web"), ("x", "y")]));
        assert!(!all_hold(json!({"matchLabels": {"app": "web"}}), &[("app", "api")]));
        assert!(all_hold(expr("In", &["a", "b"]), &[("tier", "b")]));
        assert!(!all_hold(expr("In", &["a"]), &[]));
        assert!(all_hold(expr("NotIn", &["a"]), &[]), "NotIn holds for an absent label");
        assert!(!all_hold(expr("NotIn", &["a"]), &[("tier", "a")]));
        assert!(all_hold(expr("Exists", &[]), &[("tier", "")]));
        assert!(!all_hold(expr("Exists", &[]), &[]));
        assert!(all_hold(expr("DoesNotExist", &[]), &[]));
        assert!(!all_hold(expr("DoesNotExist", &[]), &[("tier", "a")]));
    }

    #[test]
    fn malformed_expressions_are_named() {
        let bad = |op: &str, values: &[&str]| {
            let sel = json!({"matchExpressions": [{"key": "k", "operator": "Exists"}, {"key": "tier", "operator": op, "values": values}]});
            requirements(&selector(sel), "spec.selector").unwrap_err()
        };
        assert_eq!(bad("In", &[]), "spec.selector.matchExpressions[1]: operator In needs at least one value");
        assert_eq!(bad("Exists", &["a"]), "spec.selector.matchExpressions[1]: operator Exists takes no values");
        assert!(bad("Equals", &["a"]).contains("unknown operator \"Equals\"; allowed: In, NotIn"));
    }

    #[test]
    fn requirements_print_as_kubectl_does() {
        let sel = json!({"matchLabels": {"app": "web"}, "matchExpressions": [
            {"key": "a", "operator": "In", "values": ["x", "y"]}, {"key": "b", "operator": "NotIn", "values": ["z"]},
            {"key": "c", "operator": "Exists"}, {"key": "d", "operator": "DoesNotExist"}]});
        let printed: Vec<_> =
            requirements(&selector(sel.clone()), "s").unwrap().iter().map(|r| r.to_string()).collect();
        assert_eq!(printed, ["app=web", "a in (x,y)", "b notin (z)", "c", "!d"]);
        assert_eq!(to_kubectl(&selector(sel)), "app=web,a in (x,y),b notin (z),c,!d");
    }

    #[test]
    fn matches_honours_pairs_and_every_operator() {
        let s: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "zone", "operator": "NotIn", "values": ["z9"]},
                {"key": "team", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        let base = [("app", "web"), ("tier", "a"), ("team", "x")];
        assert!(matches(&s, &labels(&base)));
        assert!(!matches(&s, &labels(&[("app", "db"), ("tier", "a"), ("team", "x")])));
        assert!(!matches(&s, &labels(&[("app", "web"), ("tier", "c"), ("team", "x")])));
        assert!(!matches(&s, &labels(&[("app", "web"), ("tier", "a"), ("team", "x"), ("zone", "z9")])));
        assert!(!matches(&s, &labels(&[("app", "web"), ("tier", "a")])));
        assert!(!matches(&s, &labels(&[("app", "web"), ("tier", "a"), ("team", "x"), ("legacy", "1")])));
        assert!(matches(&LabelSelector::default(), &labels(&[])));
        let bad: LabelSelector =
            serde_json::from_value(json!({"matchExpressions": [{"key": "a", "operator": "Near"}]})).unwrap();
        assert!(!matches(&bad, &labels(&[("a", "1")])));
    }
}
