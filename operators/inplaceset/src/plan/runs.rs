//! Which of a plan's actions may be carried out at the same time: actions on
//! distinct pods go out together ([`berth_inplace::runs`]); anything touching
//! the set's spec or claims, and an OrderedReady set's creations and
//! deletions, keep their place in the order.

use std::ops::Range;

use super::Action;

/// The pod an action may run concurrently for, or `None` if it must run alone.
fn concurrent_key(action: &Action, parallel: bool) -> Option<String> {
    match action {
        // Ordinal order is the point of OrderedReady.
        Action::Create { .. } | Action::ScaleDown { .. } if !parallel => None,
        Action::Create { ordinal, .. } => Some(format!("#{ordinal}")),
        // Rewrites scaleStrategy.podsToDelete in the set's spec.
        Action::DeleteRequested { .. } => None,
        other => other.pod_name().map(String::from),
    }
}

/// The runs of `actions` (see [`berth_inplace::runs::concurrent_runs`]);
/// `parallel` for a set with Parallel pod management.
pub fn concurrent_runs(actions: &[Action], parallel: bool) -> Vec<Range<usize>> {
    berth_inplace::runs::concurrent_runs(actions, |a| concurrent_key(a, parallel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(ordinal: i32) -> Action {
        Action::Create { ordinal, revision: "r2".into(), avoid_nodes: vec![] }
    }
    fn finish(name: &str) -> Action {
        Action::FinishInPlace { name: name.into() }
    }
    fn close(name: &str) -> Action {
        Action::CloseGate { name: name.into() }
    }
    fn claim(ordinal: i32) -> Action {
        Action::CreateClaim { name: format!("data-web-{ordinal}"), template: "data".into(), ordinal }
    }

    #[test]
    fn actions_on_distinct_pods_form_one_run() {
        let actions = vec![finish("web-0"), close("web-1"), finish("web-2"), create(3), create(4)];
        assert_eq!(concurrent_runs(&actions, true), vec![0..5]);
    }

    #[test]
    fn a_second_action_on_a_pod_starts_a_new_run() {
        let actions = vec![close("web-0"), finish("web-1"), finish("web-0"), close("web-2")];
        assert_eq!(concurrent_runs(&actions, true), vec![0..2, 2..4]);
    }

    #[test]
    fn claims_run_alone_before_the_creations_that_need_them() {
        let actions = vec![finish("web-0"), claim(1), claim(2), create(1), create(2)];
        assert_eq!(concurrent_runs(&actions, true), vec![0..1, 1..2, 2..3, 3..5]);
    }

    #[test]
    fn ordered_ready_creations_and_deletions_keep_their_order() {
        let actions = vec![create(0), create(1), Action::ScaleDown { name: "web-5".into() }, finish("web-2")];
        assert_eq!(concurrent_runs(&actions, false), vec![0..1, 1..2, 2..3, 3..4]);
        assert_eq!(concurrent_runs(&actions, true), vec![0..4]);
    }

    #[test]
    fn spec_edits_run_alone() {
        let actions = vec![
            finish("web-0"),
            Action::DeleteRequested { name: "web-1".into() },
            Action::ForgetPodToDelete { name: "web-9".into() },
            finish("web-2"),
        ];
        assert_eq!(concurrent_runs(&actions, true), vec![0..1, 1..2, 2..3, 3..4]);
    }
}
