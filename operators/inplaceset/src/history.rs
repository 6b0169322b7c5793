//! Which ControllerRevisions to delete: beyond `revisionHistoryLimit`, oldest
//! first, never one a pod still runs or the set is rolling to. Pure.

use std::collections::BTreeSet;

/// Default `revisionHistoryLimit`, as for StatefulSets.
pub const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// `revisions` are (name, revision number); `in_use` the revisions pods run.
pub fn prune(
    revisions: &[(String, i64)],
    in_use: &BTreeSet<String>,
    update_revision: &str,
    limit: Option<i32>,
) -> Vec<String> {
    let limit = limit.unwrap_or(DEFAULT_HISTORY_LIMIT).max(0) as usize;
    let mut history: Vec<_> =
        revisions.iter().filter(|(name, _)| name != update_revision && !in_use.contains(name)).collect();
    history.sort_by_key(|(name, number)| (*number, name.clone()));
    let excess = history.len().saturating_sub(limit);
    history.into_iter().take(excess).map(|(name, _)| name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revs(n: i64) -> Vec<(String, i64)> {
        (1..=n).map(|i| (format!("r{i}"), i)).collect()
    }

    #[test]
    fn keeps_the_newest_unused_revisions_up_to_the_limit() {
        let in_use = BTreeSet::new();
        assert_eq!(prune(&revs(5), &in_use, "r5", Some(2)), ["r1", "r2"]);
        assert!(prune(&revs(5), &in_use, "r5", Some(10)).is_empty());
        assert_eq!(prune(&revs(13), &in_use, "r13", None), ["r1", "r2"], "default limit 10");
        assert_eq!(prune(&revs(3), &in_use, "r3", Some(0)), ["r1", "r2"]);
    }

    #[test]
    fn never_prunes_what_pods_run_or_the_update_revision() {
        let in_use = BTreeSet::from(["r1".to_string()]);
        assert_eq!(prune(&revs(4), &in_use, "r4", Some(0)), ["r2", "r3"]);
        // The update revision may carry any number (a rollback reuses an old one).
        assert_eq!(prune(&[("r9".into(), 1), ("r2".into(), 2)], &BTreeSet::new(), "r9", Some(0)), ["r2"]);
    }
}
