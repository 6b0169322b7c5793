//! Label selector matching, as the apiserver evaluates `metav1.LabelSelector`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `selector`: every matchLabels pair and every
/// expression (In, NotIn, Exists, DoesNotExist). An unknown operator matches
/// nothing. An empty selector matches everything.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    pairs
        && selector.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn pairs_and_every_operator_are_honoured() {
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
