//! Pods that must go: Failed or stuck unschedulable (retried elsewhere, within
//! bounds), and pods named in `scaleStrategy.podsToDelete`.

use std::collections::BTreeMap;

use berth_api::inplaceset::RetryRecord;
use k8s_openapi::jiff::SignedDuration;

use super::{Action, Blocked, Plan};
use crate::{Observed, PodView};

/// Failed pods are recreated (as a StatefulSet does). With
/// `retryOnOtherNodes`, a pod Failed or unschedulable for `afterSeconds` is
/// recreated away from the node it failed on, at most `maxAttempts` times.
pub fn retries(o: &Observed, keep: &dyn Fn(i32) -> bool, out: &mut Plan) {
    let policy = o.spec.retry_on_other_nodes.as_ref();
    for pod in o.pods.iter().filter(|p| !p.terminating && keep(p.ordinal)) {
        let Some(since) = pod.stuck_since else { continue };
        let Some(policy) = policy else {
            if pod.failed {
                out.actions.push(Action::Recreate { name: pod.name.clone(), reasons: vec!["the pod Failed".into()] });
            }
            continue;
        };
        if o.now.duration_since(since) < SignedDuration::from_secs(policy.after_seconds.max(0).into()) {
            continue;
        }
        let attempts = o.previous.retries.iter().find(|r| r.pod == pod.name).map_or(0, |r| r.attempts);
        if attempts >= policy.max_attempts {
            out.blocked.push(Blocked::RetriesExhausted { name: pod.name.clone(), attempts });
            continue;
        }
        let node = pod.node.clone().filter(|_| pod.failed);
        out.actions.push(Action::Retry { name: pod.name.clone(), node, attempt: attempts + 1 });
    }
}

/// The retry records status keeps: the previous ones for ordinals still
/// kept, updated by this pass's retries.
pub fn records(o: &Observed, keep: &dyn Fn(&str) -> bool, actions: &[Action]) -> Vec<RetryRecord> {
    let mut records: Vec<RetryRecord> = o.previous.retries.iter().filter(|r| keep(&r.pod)).cloned().collect();
    for action in actions {
        if let Action::Retry { name, node, attempt } = action {
            let record = match records.iter_mut().find(|r| r.pod == *name) {
                Some(r) => r,
                None => {
                    records.push(RetryRecord { pod: name.clone(), ..Default::default() });
                    records.last_mut().expect("just pushed")
                }
            };
            record.attempts = *attempt;
            if let Some(node) = node.as_ref().filter(|n| !record.avoided_nodes.contains(n)) {
                record.avoided_nodes.push(node.clone());
            }
        }
    }
    records
}

/// Pods named in `scaleStrategy.podsToDelete`: deleted while the unavailability
/// budget allows; names with no pod are dropped from the list.
pub fn pods_to_delete(o: &Observed, by_name: &BTreeMap<&str, &PodView>, budget: &mut i32, out: &mut Plan) {
    let names = o.spec.scale_strategy.iter().flat_map(|s| s.pods_to_delete.iter());
    for name in names {
        match by_name.get(name.as_str()) {
            None => out.actions.push(Action::ForgetPodToDelete { name: name.clone() }),
            Some(pod) if pod.terminating => {}
            Some(pod) if o.available(pod) && *budget <= 0 => {}
            Some(pod) => {
                if o.available(pod) {
                    *budget -= 1;
                }
                out.actions.push(Action::DeleteRequested { name: name.clone() });
            }
        }
    }
}
