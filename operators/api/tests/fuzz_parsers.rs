//! Fuzzing every parser of an annotation payload (issue 8, bad input):
//! arbitrary text never panics, and a refusal always says what is wrong.
//! 4 × 5,000 inputs per run.

use std::collections::BTreeMap;

use berth_api::{
    inplace::InPlaceUpdateState, keys, lifecycle::LifecycleState, quantity, resize::ResizeRequest, resize::ResizeState,
    sidecarset::injected_revisions,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use proptest::prelude::*;

/// Text near the payloads' shapes, and plain junk.
fn payload() -> impl Strategy<Value = String> {
    prop_oneof![
        "[{}\\[\\]\":,.0-9a-zA-Z -]{0,80}",
        ".{0,60}",
        Just(r#"{"containers":{"app":{"requests":{"cpu":"1e308"}}}}"#.to_string()),
        Just(r#"{"logs":{"revision":"r","withoutImage":"w","containers":["a"]}}"#.to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn resize_requests_and_states(text in payload()) {
        if let Err(e) = text.parse::<ResizeRequest>() {
            prop_assert!(e.to_string().contains(keys::RESIZE));
        }
        if let Err(e) = text.parse::<ResizeState>() {
            prop_assert!(e.to_string().contains("allowed: Created"));
        }
    }

    #[test]
    fn lifecycle_states(text in payload()) {
        if let Err(e) = text.parse::<LifecycleState>() {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn sidecar_records_and_in_place_state(text in payload()) {
        let annotations = BTreeMap::from([(keys::SIDECARSET_REVISIONS.to_string(), text.clone())]);
        if let Err(e) = injected_revisions(Some(&annotations)) {
            prop_assert!(e.contains(keys::SIDECARSET_REVISIONS));
        }
        if let Err(e) = InPlaceUpdateState::parse(&text) {
            prop_assert!(!e.is_empty());
        }
    }

    #[test]
    fn quantities(text in "[-+0-9.eEkKmMgGiIT ]{0,16}") {
        for resource in ["cpu", "memory"] {
            match quantity::amount(resource, &Quantity(text.clone())) {
                Ok(n) => prop_assert!(n >= 0),
                Err(e) => prop_assert!(!e.is_empty()),
            }
        }
    }
}
