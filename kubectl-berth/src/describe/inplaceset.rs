//! `describe inplaceset`: the set's revisions, rollout plan batches,
//! conditions, and each pod's revision, lifecycle state and in-place update
//! state. [`view`] and [`render`] are pure.

use berth_api::{InplaceSet, inplaceset::RolloutStatus};
use berth_inplace::scaled;
use berth_inplaceset::plan::rollout::batch_targets;
use k8s_openapi::{
    api::{apps::v1::ControllerRevision, core::v1::Pod},
    apimachinery::pkg::util::intstr::IntOrString,
    jiff::Timestamp,
};
use kube::ResourceExt;
use serde::Serialize;

use super::pod::{PodView, view as pod_view};
use crate::{
    rollout::history::{RevisionRow, rows},
    table,
};

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SetView {
    pub name: String,
    pub namespace: String,
    pub replicas: i32,
    pub status: berth_api::InplaceSetStatus,
    pub strategy: String,
    pub partition: String,
    pub max_unavailable: String,
    pub paused: bool,
    pub batches: Vec<BatchView>,
    pub rollout: Option<RolloutStatus>,
    pub revisions: Vec<RevisionRow>,
    pub pods: Vec<PodView>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchView {
    pub index: usize,
    /// Pods at the new revision once the batch is done.
    pub pods: i32,
    pub pause: String,
    /// done, the rollout's state for the current batch, or pending.
    pub state: String,
}

fn int_or_string(v: Option<&IntOrString>, default: &str) -> String {
    match v {
        Some(IntOrString::Int(n)) => n.to_string(),
        Some(IntOrString::String(s)) => s.clone(),
        None => default.into(),
    }
}

pub fn view(set: &InplaceSet, revisions: &[ControllerRevision], pods: &[Pod]) -> SetView {
    let status = set.status.clone().unwrap_or_default();
    let strategy = &set.spec.update_strategy;
    let rollout = status.rollout.clone().filter(|r| Some(&r.revision) == status.update_revision.as_ref());
    let batches = match &set.spec.rollout_plan {
        Some(plan) => {
            let targets = batch_targets(plan, set.spec.replicas).unwrap_or_default();
            plan.batches
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let current = rollout.as_ref().map_or(0, |r| r.current_batch.max(0) as usize);
                    let state = match &rollout {
                        Some(r) if i < current || (i == current && r.state == "Succeeded") => "done".to_string(),
                        Some(r) if i == current => r.state.clone(),
                        _ => "pending".into(),
                    };
                    let pause = match &b.pause {
                        Some(p) if p.manual => {
                            let approved = if plan.approved_batches > i as i32 { "approved" } else { "not approved" };
                            format!("manual ({approved})")
                        }
                        Some(p) => format!("{}s", p.seconds.unwrap_or(0)),
                        None => "-".into(),
                    };
                    BatchView { index: i, pods: targets.get(i).copied().unwrap_or(0), pause, state }
                })
                .collect()
        }
        None => vec![],
    };
    let mut pods: Vec<PodView> = pods.iter().map(pod_view).collect();
    pods.sort_by_key(|p| {
        let ordinal = p.name.rsplit('-').next().and_then(|o| o.parse::<i64>().ok()).unwrap_or(i64::MAX);
        (ordinal, p.name.clone())
    });
    let partition =
        scaled::resolve(strategy.partition.as_ref(), set.spec.replicas, 0).map_or_else(|e| e, |n| n.to_string());
    SetView {
        name: set.name_any(),
        namespace: set.namespace().unwrap_or_default(),
        replicas: set.spec.replicas,
        strategy: format!("{:?}", strategy.type_),
        partition: if set.spec.rollout_plan.is_some() {
            format!("{partition} (the rollout plan drives it)")
        } else {
            partition
        },
        max_unavailable: int_or_string(strategy.max_unavailable.as_ref(), "1"),
        paused: strategy.paused,
        batches,
        rollout,
        revisions: rows(set, revisions),
        pods,
        status,
    }
}

pub fn render(v: &SetView, now: Timestamp) -> String {
    let s = &v.status;
    let mut out = String::new();
    let mut field = |k: &str, val: String| out.push_str(&format!("{:<18}{val}\n", format!("{k}:")));
    field("Name", v.name.clone());
    field("Namespace", v.namespace.clone());
    field(
        "Replicas",
        format!(
            "{} desired | {} current | {} updated ({} ready) | {} ready | {} available",
            v.replicas,
            s.replicas,
            s.updated_replicas,
            s.updated_ready_replicas,
            s.ready_replicas,
            s.available_replicas
        ),
    );
    field(
        "Update strategy",
        format!("{}, partition {}, maxUnavailable {}, paused {}", v.strategy, v.partition, v.max_unavailable, v.paused),
    );
    field(
        "Revisions",
        format!(
            "current {}, update {}",
            s.current_revision.as_deref().unwrap_or("<none>"),
            s.update_revision.as_deref().unwrap_or("<none>")
        ),
    );
    if let Some(r) = &v.rollout {
        let mut line = format!("batch {} {}", r.current_batch, r.state);
        if let Some(m) = &r.message {
            line.push_str(&format!(": {m}"));
        }
        if let Some(back) = &r.rolled_back_to {
            line.push_str(&format!(" (rolled back to {back})"));
        }
        field("Rollout", line);
    }
    let indent = |t: String| t.lines().map(|l| format!("  {l}\n")).collect::<String>();
    if !v.batches.is_empty() {
        out.push_str("Rollout plan:\n");
        let rows: Vec<Vec<String>> = v
            .batches
            .iter()
            .map(|b| vec![b.index.to_string(), b.pods.to_string(), b.pause.clone(), b.state.clone()])
            .collect();
        out.push_str(&indent(table::table(&["BATCH", "UPDATED PODS", "PAUSE AFTER", "STATE"], &rows)));
    }
    out.push_str("Conditions:\n");
    let rows: Vec<Vec<String>> = s
        .conditions
        .iter()
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                table::age(c.last_transition_time.0, now),
                c.message.clone(),
            ]
        })
        .collect();
    out.push_str(&indent(table::table(&["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], &rows)));
    out.push_str("Revisions:\n");
    out.push_str(&indent(crate::rollout::history::render(&v.revisions, now)));
    out.push_str("Pods:\n");
    let rows: Vec<Vec<String>> = v
        .pods
        .iter()
        .map(|p| {
            let update = match &p.in_place_update {
                None => "-".to_string(),
                Some(u) if u.waiting.is_empty() => format!("to {}: {}", u.revision, u.phase),
                Some(u) => format!(
                    "to {}: {}",
                    u.revision,
                    u.waiting.iter().map(|(c, w)| format!("{c} {w}")).collect::<Vec<_>>().join("; ")
                ),
            };
            let resize = p.resize.as_ref().and_then(|r| r.state.clone()).unwrap_or_else(|| "-".into());
            vec![
                p.name.clone(),
                p.node.clone().unwrap_or_else(|| "-".into()),
                p.revision.clone().unwrap_or_else(|| "-".into()),
                p.ready.clone(),
                p.readiness_gate.as_ref().map_or("-".into(), |g| g.status.clone()),
                p.lifecycle_state.clone().unwrap_or_else(|| "-".into()),
                update,
                resize,
            ]
        })
        .collect();
    out.push_str(&indent(table::table(
        &["NAME", "NODE", "REVISION", "READY", "GATE", "LIFECYCLE", "IN-PLACE UPDATE", "RESIZE"],
        &rows,
    )));
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn batches_conditions_and_pods_are_laid_out() {
        let set: InplaceSet = serde_json::from_value(json!({"apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet",
            "metadata": {"name": "web", "namespace": "prod", "uid": "u1"},
            "spec": {"replicas": 4, "selector": {}, "template": {}, "updateStrategy": {"maxUnavailable": "50%"},
                "rolloutPlan": {"approvedBatches": 0, "batches": [{"replicas": 1, "pause": {"manual": true}}, {"replicas": "100%"}]}},
            "status": {"replicas": 4, "updatedReplicas": 1, "updatedReadyReplicas": 1, "readyReplicas": 4, "availableReplicas": 4,
                "updateRevision": "web-b", "currentRevision": "web-a",
                "rollout": {"revision": "web-b", "currentBatch": 0, "state": "Paused"},
                "conditions": [{"type": "Progressing", "status": "False", "reason": "BatchPaused", "message": "1 of 1",
                    "lastTransitionTime": "2026-11-23T10:00:00Z"}]}}))
        .unwrap();
        let pods: Vec<Pod> = (0..2)
            .rev()
            .map(|i| {
                serde_json::from_value(json!({"metadata": {"name": format!("web-{i}"),
                    "labels": {"controller-revision-hash": if i == 1 { "web-b" } else { "web-a" }},
                    "annotations": {"berth.dev/lifecycle-state": "Normal"}},
                    "spec": {"nodeName": format!("n{i}"), "containers": []},
                    "status": {"conditions": [{"type": "Ready", "status": "True"},
                        {"type": "berth.dev/InPlaceUpdateReady", "status": "True"}]}}))
                .unwrap()
            })
            .collect();
        let v = view(&set, &[], &pods);
        assert_eq!(
            v.batches[0],
            BatchView { index: 0, pods: 1, pause: "manual (not approved)".into(), state: "Paused".into() }
        );
        assert_eq!(v.batches[1].state, "pending");
        assert_eq!(v.batches[1].pods, 4);
        let text = render(&v, "2026-11-23T10:01:00Z".parse().unwrap());
        for want in [
            "Replicas:         4 desired | 4 current | 1 updated (1 ready) | 4 ready | 4 available\n",
            "Update strategy:  InPlaceIfPossible, partition 0 (the rollout plan drives it), maxUnavailable 50%, paused false\n",
            "Rollout:          batch 0 Paused\n",
            "  0       1              manual (not approved)   Paused\n",
            "  Progressing   False    BatchPaused   60s   1 of 1\n",
            "  web-0   n0     web-a      True    True   Normal      -                 -\n",
            "  web-1   n1     web-b      True    True   Normal      -                 -\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(text.find("web-0").unwrap() < text.find("web-1").unwrap(), "pods by ordinal");
    }
}
