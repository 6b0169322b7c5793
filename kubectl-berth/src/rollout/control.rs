//! `rollout pause|resume|approve`: merge patches of the spec, guarded by the
//! resourceVersion they were computed from. [`change`] is pure.

use berth_api::InplaceSet;
use berth_inplaceset::plan::rollout::PAUSED;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::error::{Error, Exit, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Pause,
    /// Unpause and approve the next batch of a manual pause.
    Resume,
    /// Approve only.
    Approve,
}

/// The patch `verb` needs on `set` and what it does, or `None` with why nothing is to do.
pub fn change(set: &InplaceSet, verb: Verb) -> Result<(Value, String), String> {
    let name = set.name_any();
    let paused = set.spec.update_strategy.paused;
    let mut spec = serde_json::Map::new();
    let mut said = Vec::new();
    match verb {
        Verb::Pause if paused => return Err(format!("InplaceSet {name:?} is already paused")),
        Verb::Pause => {
            spec.insert("updateStrategy".into(), json!({"paused": true}));
            said.push("paused".to_string());
        }
        Verb::Resume | Verb::Approve => {
            if verb == Verb::Resume && paused {
                spec.insert("updateStrategy".into(), json!({"paused": false}));
                said.push("resumed".to_string());
            }
            if let Some((approve, batch)) = approval(set) {
                spec.insert("rolloutPlan".into(), json!({"approvedBatches": approve}));
                said.push(format!("approved the batch after batch {batch} (rolloutPlan.approvedBatches={approve})"));
            }
            if said.is_empty() {
                return Err(format!(
                    "InplaceSet {name:?} is not paused and no batch waits for approval{}",
                    if verb == Verb::Approve {
                        " (a batch needs approval only after a pause with manual: true)"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    let patch = json!({"metadata": {"resourceVersion": set.resource_version()}, "spec": spec});
    Ok((patch, format!("InplaceSet {name:?} {}", said.join(" and "))))
}

/// `(approvedBatches to write, batch index)` when the current batch of the
/// rollout plan ends in a manual pause not yet approved (paused there, or on its way).
fn approval(set: &InplaceSet) -> Option<(i32, i32)> {
    let plan = set.spec.rollout_plan.as_ref()?;
    let status = set.status.as_ref()?;
    let rollout = status.rollout.as_ref().filter(|r| Some(&r.revision) == status.update_revision.as_ref())?;
    let batch = rollout.current_batch;
    let manual = plan.batches.get(batch.max(0) as usize)?.pause.as_ref().is_some_and(|p| p.manual);
    let waiting = rollout.state == PAUSED || rollout.state == berth_inplaceset::plan::rollout::PROGRESSING;
    (manual && waiting && plan.approved_batches <= batch).then_some((batch + 1, batch))
}

/// Applies `verb` to set `name`, deciding again (up to twice) after a conflicting write.
pub async fn run(client: Client, namespace: &str, name: &str, verb: Verb) -> Result<Exit> {
    let api: Api<InplaceSet> = Api::namespaced(client, namespace);
    let mut attempt = 0;
    loop {
        let set = api.get(name).await.map_err(|e| Error::from_get(e, "InplaceSet", name, namespace))?;
        let (patch, said) = match change(&set, verb) {
            Ok(c) => c,
            Err(nothing) => {
                println!("{nothing}");
                return Ok(Exit::Success);
            }
        };
        match api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => {
                println!("{said}");
                return Ok(Exit::Success);
            }
            // Someone else wrote the set since it was read: decide again on the new one.
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 2 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn set(paused: bool, approved: i32, rollout: serde_json::Value) -> InplaceSet {
        serde_json::from_value(json!({"apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet",
            "metadata": {"name": "web", "resourceVersion": "42"},
            "spec": {"selector": {}, "template": {}, "updateStrategy": {"paused": paused},
                "rolloutPlan": {"approvedBatches": approved, "batches": [
                    {"replicas": 1, "pause": {"manual": true}}, {"replicas": 2, "pause": {"seconds": 5}}, {"replicas": "100%"}]}},
            "status": {"updateRevision": "web-b", "rollout": rollout}}))
        .unwrap()
    }

    #[test]
    fn pause_sets_the_flag_guarded_by_the_resource_version() {
        let (patch, said) = change(&set(false, 0, json!(null)), Verb::Pause).unwrap();
        assert_eq!(patch, json!({"metadata": {"resourceVersion": "42"}, "spec": {"updateStrategy": {"paused": true}}}));
        assert_eq!(said, "InplaceSet \"web\" paused");
        assert_eq!(
            change(&set(true, 0, json!(null)), Verb::Pause).unwrap_err(),
            "InplaceSet \"web\" is already paused"
        );
    }

    #[test]
    fn resume_unpauses_and_approves_a_manual_batch_pause() {
        let at_pause = json!({"revision": "web-b", "currentBatch": 0, "state": "Paused"});
        let (patch, said) = change(&set(true, 0, at_pause.clone()), Verb::Resume).unwrap();
        assert_eq!(patch["spec"], json!({"updateStrategy": {"paused": false}, "rolloutPlan": {"approvedBatches": 1}}));
        assert_eq!(
            said,
            "InplaceSet \"web\" resumed and approved the batch after batch 0 (rolloutPlan.approvedBatches=1)"
        );
        // Approve alone leaves the pause flag as it is.
        let (patch, _) = change(&set(true, 0, at_pause.clone()), Verb::Approve).unwrap();
        assert_eq!(patch["spec"], json!({"rolloutPlan": {"approvedBatches": 1}}));
        // Already approved; a timed pause needs no approval; a stale rollout (old revision) is ignored.
        assert!(change(&set(false, 1, at_pause), Verb::Resume).unwrap_err().contains("no batch waits for approval"));
        let timed = json!({"revision": "web-b", "currentBatch": 1, "state": "Paused"});
        assert!(change(&set(false, 1, timed), Verb::Approve).unwrap_err().contains("manual: true"));
        let stale = json!({"revision": "web-a", "currentBatch": 0, "state": "Paused"});
        assert!(change(&set(false, 0, stale), Verb::Approve).is_err());
    }
}
