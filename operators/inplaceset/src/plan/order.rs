//! Which pods update first, and where surge pods go.

use std::{cmp::Reverse, collections::BTreeMap};

use berth_api::{InplaceSetSpec, selector};

use crate::{Observed, PodView};

/// The wanted ordinals in update order: by `updateStrategy.priority` (a pod's
/// weight comes from its labels; a missing pod's from the update template's),
/// then from the highest ordinal down.
pub fn update_order(o: &Observed, wanted: &[i32], by_ordinal: &BTreeMap<i32, &PodView>) -> Vec<i32> {
    let mut order = wanted.to_vec();
    order.sort_by_key(|ord| Reverse(*ord));
    let Some(priority) = &o.spec.update_strategy.priority else { return order };
    let template_labels = o
        .templates
        .get(&o.update_revision)
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let weight = |ord: &i32| {
        let labels = by_ordinal.get(ord).map_or(&template_labels, |p| &p.labels);
        priority.weights.iter().filter(|w| selector::matches(&w.match_selector, labels)).map(|w| w.weight).sum::<i32>()
    };
    order.sort_by_key(|ord| (Reverse(weight(ord)), Reverse(*ord)));
    order
}

/// The `n` ordinals after the last wanted one (skipping reserved ones), where
/// surge pods run while pods are recreated.
pub fn surge_ordinals(spec: &InplaceSetSpec, wanted: &[i32], n: i32) -> Vec<i32> {
    let start = spec.ordinals.as_ref().map_or(0, |o| o.start.max(0));
    let after = wanted.last().map_or(start, |last| last + 1);
    (after..).filter(|o| !spec.reserve_ordinals.contains(o)).take(n.max(0) as usize).collect()
}
