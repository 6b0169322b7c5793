//! Fuzzing the admission path (issue 8, bad input): arbitrary bytes and
//! arbitrary, berth-shaped AdmissionReviews never panic; a parsed review always
//! gets a decision, and every denial carries a message. Case counts are fixed
//! so the figures are reproducible: 20,000 inputs per run.

use std::collections::BTreeMap;

use berth_api::keys;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::{rules, server::parse};

/// Annotation values that hit the parsers: well-formed ones, near misses and junk.
fn annotation_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Created".to_string()),
        Just("Accepted".to_string()),
        Just("Applied".to_string()),
        Just("Normal".to_string()),
        Just("PreparingUpdate".to_string()),
        Just(r#"{"containers":{"app":{"requests":{"cpu":"800m"}}}}"#.to_string()),
        Just(r#"{"containers":{"app":{"limits":{"cpu":"1e400"}}}}"#.to_string()),
        Just(r#"{"cpuset":{"exclusiveCpus":4294967295}}"#.to_string()),
        Just(r#"{"logs":{"revision":"logs-1","withoutImage":"x"}}"#.to_string()),
        ".{0,40}",
        "[{}\\[\\]\":,0-9a-zA-Z]{0,60}",
    ]
}

fn annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
    let key = prop_oneof![
        Just(keys::RESIZE.to_string()),
        Just(keys::RESIZE_STATE.to_string()),
        Just(keys::LIFECYCLE_STATE.to_string()),
        Just(keys::SIDECARSET_REVISIONS.to_string()),
        Just(keys::INPLACE_UPDATE_STATE.to_string()),
        "[a-z./-]{1,20}",
    ];
    prop::collection::btree_map(key, annotation_value(), 0..5)
}

/// A pod (or, sometimes, something that is not one) with berth-shaped parts.
fn object() -> impl Strategy<Value = Value> {
    let resources = prop_oneof![
        Just(json!({})),
        Just(json!({"requests": {"cpu": "500m"}, "limits": {"cpu": "1"}})),
        Just(json!({"requests": {"cpu": "junk"}})),
        Just(json!("not an object")),
    ];
    (annotations(), prop::option::of("[a-z0-9-]{1,12}"), resources, any::<bool>()).prop_map(
        |(annotations, node, resources, managed)| {
            let labels = if managed { json!({keys::MANAGED: "true", "app": "web"}) } else { json!({"app": "web"}) };
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": "ns", "labels": labels, "annotations": annotations},
                "spec": {"nodeName": node, "containers": [{"name": "app", "image": "a", "resources": resources}]}})
        },
    )
}

fn review() -> impl Strategy<Value = Value> {
    let operation = prop_oneof![Just("CREATE"), Just("UPDATE"), Just("DELETE"), Just("CONNECT")];
    let user = prop_oneof![
        Just("system:serviceaccount:berth-system:berth-manager".to_string()),
        Just("system:serviceaccount:berth-system:berth-node-agent".to_string()),
        "[a-z:-]{0,20}",
    ];
    (operation, user, object(), prop::option::of(object()), prop::option::of("[a-z0-9-]{1,12}")).prop_map(
        |(op, user, object, old, node)| {
            let extra = node.map(|n| json!({"authentication.kubernetes.io/node-name": [n]})).unwrap_or(json!({}));
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
                "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": op, "userInfo": {"username": user, "extra": extra},
                "object": object, "oldObject": old, "namespace": "ns", "name": "p"}})
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_rule_decides_every_berth_shaped_review_without_panicking(review in review()) {
        let body = serde_json::to_vec(&review).unwrap();
        let request = parse(&body);
        prop_assert!(request.is_ok(), "a well-formed envelope parses: {:?}", request.err());
        let request = request.unwrap();
        for rule in rules::all(&rules::Context::empty("system:serviceaccount:berth-system:berth-manager")) {
            let response = rule.review(&request);
            if !response.allowed {
                prop_assert!(!response.result.message.is_empty(), "{} denied without a message", rule.name());
            }
        }
    }

    #[test]
    fn arbitrary_bodies_are_refused_with_a_reason_or_parsed(body in prop::collection::vec(any::<u8>(), 0..400)) {
        match parse(&body) {
            Ok(_) => {}
            Err(why) => prop_assert!(!why.is_empty()),
        }
    }
}
