//! Splitting a workload's planned actions into runs that may execute
//! concurrently: a rollout step of 50 pods is 50 independent patches, and made
//! one after the other the step's first pod is back before its last started.

use std::{collections::HashSet, ops::Range};

/// Splits `actions` into consecutive runs, in order. `key` names the pod an
/// action concerns, or `None` for one that must run alone (it touches the
/// workload itself, or its place in the order matters). The actions of a run
/// touch distinct pods; a run ends before an action that must run alone or
/// meets a pod already in the run.
pub fn concurrent_runs<A>(actions: &[A], key: impl Fn(&A) -> Option<String>) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut pods = HashSet::new();
    for (i, action) in actions.iter().enumerate() {
        match key(action) {
            Some(pod) if pods.insert(pod.clone()) => {}
            Some(pod) => {
                runs.push(start..i);
                start = i;
                pods = [pod].into();
            }
            None => {
                if start < i {
                    runs.push(start..i);
                }
                runs.push(i..i + 1);
                start = i + 1;
                pods.clear();
            }
        }
    }
    if start < actions.len() {
        runs.push(start..actions.len());
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(a: &&str) -> Option<String> {
        (!a.starts_with('!')).then(|| a.to_string())
    }

    #[test]
    fn distinct_pods_share_a_run_until_one_repeats_or_must_run_alone() {
        assert_eq!(concurrent_runs(&["a", "b", "c"], key), vec![0..3]);
        assert_eq!(concurrent_runs(&["a", "b", "a", "c"], key), vec![0..2, 2..4]);
        assert_eq!(concurrent_runs(&["a", "!x", "!y", "a", "b"], key), vec![0..1, 1..2, 2..3, 3..5]);
        assert_eq!(concurrent_runs(&["!x", "a"], key), vec![0..1, 1..2]);
        assert!(concurrent_runs::<&str>(&[], key).is_empty());
    }
}
