//! `plan inplaceset`: what a new template would do, changing nothing. The
//! planner's own pieces decide: the update order (priority, then highest
//! ordinal first), the rollout plan's batch targets or the partition, the
//! shared in-place classifier; node headroom comes from the feasibility
//! arithmetic. [`plan`] and [`render`] are pure.

use std::collections::BTreeMap;

use berth_api::{InplaceSet, InplaceSetSpec, inplaceset::UpdateStrategyType};
use berth_inplace::{InPlaceChanges, UpdatePlan, plan_update, revision::revision_name, scaled};
use berth_inplaceset::{
    Observed, PodView,
    plan::{order::update_order, rollout::batch_targets},
};
use berth_resize::feasibility::{self, Amounts};
use k8s_openapi::{
    api::{
        apps::v1::ControllerRevision,
        core::v1::{Node, Pod, PodTemplateSpec},
    },
    jiff::Timestamp,
};
use kube::ResourceExt;
use serde::Serialize;

use crate::{rollout::history::template_of, table};

/// What the plan reads; the caller lists it from the cluster.
pub struct Inputs<'a> {
    pub set: &'a InplaceSet,
    pub new_spec: &'a InplaceSetSpec,
    /// The set's pods.
    pub pods: &'a [Pod],
    pub revisions: &'a [ControllerRevision],
    /// The nodes the set's pods run on, and every pod on them.
    pub nodes: &'a [Node],
    pub node_pods: &'a [Pod],
    pub now: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Update {
    InPlace,
    Recreate,
    /// InPlaceOnly and the change cannot go in place: the controller refuses it.
    Blocked,
    /// OnDelete: only when the user deletes the pod.
    OnDelete,
    /// Already at the new template.
    Unchanged,
    /// Held at its revision by the partition (or the last batch below 100%).
    Kept,
    /// No pod at this ordinal yet: created at the new revision.
    Create,
    /// Beyond the new replicas: deleted.
    Delete,
}

impl Update {
    fn text(self) -> &'static str {
        match self {
            Update::InPlace => "in place",
            Update::Recreate => "recreate",
            Update::Blocked => "BLOCKED",
            Update::OnDelete => "on delete",
            Update::Unchanged => "unchanged",
            Update::Kept => "kept",
            Update::Create => "create",
            Update::Delete => "delete",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodChange {
    pub pod: String,
    /// Batch index (0 without a rollout plan); `None`: not updated by this rollout.
    pub batch: Option<usize>,
    /// Position in the update order (1 = first).
    pub order: Option<usize>,
    pub node: Option<String>,
    pub revision: Option<String>,
    pub update: Update,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeHeadroom {
    pub node: String,
    pub cpu_allocatable: i64,
    pub cpu_requested_now: i64,
    pub cpu_requested_after: i64,
    pub memory_allocatable: i64,
    pub memory_requested_now: i64,
    pub memory_requested_after: i64,
}

impl NodeHeadroom {
    pub fn fits(&self) -> bool {
        self.cpu_requested_after <= self.cpu_allocatable && self.memory_requested_after <= self.memory_allocatable
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub inplaceset: String,
    pub from_revision: Option<String>,
    pub to_revision: String,
    pub strategy: String,
    pub max_unavailable: i32,
    /// Target (pods at the new revision) of each batch; one entry without a rollout plan.
    pub batch_targets: Vec<i32>,
    pub pods: Vec<PodChange>,
    pub nodes: Vec<NodeHeadroom>,
    /// Requests (millicores, bytes) of pods still to be created: their node is the scheduler's choice.
    pub unscheduled_cpu: i64,
    pub unscheduled_memory: i64,
}

impl Report {
    /// Nothing blocked and every node within its allocatable.
    pub fn ok(&self) -> bool {
        self.pods.iter().all(|p| p.update != Update::Blocked) && self.nodes.iter().all(NodeHeadroom::fits)
    }
}

fn describe_in_place(c: &InPlaceChanges) -> String {
    let mut parts: Vec<String> = c
        .resources
        .iter()
        .map(|(name, r)| {
            let values = r.requests.iter().map(|(k, v)| format!("{k}={}", v.0));
            let limits = r.limits.iter().map(|(k, v)| format!("limits.{k}={}", v.0));
            format!("resize {name} {}", values.chain(limits).collect::<Vec<_>>().join(","))
        })
        .collect();
    parts.extend(c.images.iter().map(|(name, image)| format!("{name}={image}")));
    if !c.labels.is_empty() {
        parts.push(format!("{} label(s)", c.labels.len()));
    }
    if !c.annotations.is_empty() {
        parts.push(format!("{} annotation(s)", c.annotations.len()));
    }
    parts.join(", ")
}

/// How a pod moves under `kind`, as the controller's update step decides it.
fn classify(kind: UpdateStrategyType, diff: UpdatePlan) -> (Update, String) {
    match (diff, kind) {
        (UpdatePlan::Unchanged, _) => (Update::Unchanged, "same template under another revision: relabel only".into()),
        (_, UpdateStrategyType::OnDelete) => {
            (Update::OnDelete, "updateStrategy OnDelete: when the pod is deleted".into())
        }
        (UpdatePlan::InPlace(_), UpdateStrategyType::Recreate) => {
            (Update::Recreate, "updateStrategy.type is Recreate".into())
        }
        (UpdatePlan::InPlace(c), _) => (Update::InPlace, describe_in_place(&c)),
        (UpdatePlan::Recreate(r), UpdateStrategyType::InPlaceOnly) => {
            (Update::Blocked, format!("InPlaceOnly refuses: {}", r.join(", ")))
        }
        (UpdatePlan::Recreate(r), _) => (Update::Recreate, r.join(", ")),
    }
}

fn container_requests(pod_containers: &[k8s_openapi::api::core::v1::Container]) -> Amounts {
    feasibility::requests(pod_containers.iter().filter_map(|c| c.resources.as_ref()))
}

fn sub(a: Amounts, b: Amounts) -> Amounts {
    Amounts { cpu: a.cpu - b.cpu, memory: a.memory - b.memory }
}

fn add(a: Amounts, b: Amounts) -> Amounts {
    Amounts { cpu: a.cpu + b.cpu, memory: a.memory + b.memory }
}

/// How a pod's requests change when it moves to `template`: its containers
/// the template names take the template's values; others (injected sidecars) stay.
fn delta(pod: &Pod, template: &PodTemplateSpec) -> Amounts {
    let new = template.spec.clone().unwrap_or_default().containers;
    let current = pod.spec.clone().unwrap_or_default().containers;
    let replaced: Vec<_> = current.into_iter().filter(|c| new.iter().any(|n| n.name == c.name)).collect();
    sub(container_requests(&new), container_requests(&replaced))
}

pub fn plan(i: &Inputs) -> Result<Report, String> {
    let set = i.set;
    let name = set.name_any();
    let spec = i.new_spec;
    let status = set.status.clone().unwrap_or_default();
    let replicas = spec.replicas.max(0);
    let to_revision = revision_name(&name, &spec.template, status.collision_count.unwrap_or(0));
    let mut templates = BTreeMap::new();
    for rev in i.revisions {
        templates.insert(rev.name_any(), template_of(rev)?);
    }
    templates.insert(to_revision.clone(), spec.template.clone());
    let views: Vec<PodView> = i.pods.iter().filter_map(|p| PodView::from_pod(&name, p).ok()).collect();
    let observed = Observed {
        name: name.clone(),
        spec: spec.clone(),
        pods: views.clone(),
        update_revision: to_revision.clone(),
        current_revision: status.current_revision.clone(),
        templates: templates.clone(),
        claims: vec![],
        previous: status.clone(),
        now: i.now,
    };
    let by_ordinal: BTreeMap<i32, &PodView> = views.iter().map(|p| (p.ordinal, p)).collect();
    let wanted = spec.ordinals();
    let order = update_order(&observed, &wanted, &by_ordinal);
    let strategy = &spec.update_strategy;
    let targets = match &spec.rollout_plan {
        Some(plan) => batch_targets(plan, replicas).map_err(|e| format!("spec.rolloutPlan.{e}"))?,
        None => {
            let partition = scaled::resolve(strategy.partition.as_ref(), replicas, 0)
                .map_err(|e| format!("spec.updateStrategy.partition: {e}"))?;
            vec![(replicas - partition).max(0)]
        }
    };
    let max_unavailable = scaled::resolve(strategy.max_unavailable.as_ref(), replicas, 1)
        .map_err(|e| format!("spec.updateStrategy.maxUnavailable: {e}"))?
        .max(1);

    let pod_named = |pod: &str| i.pods.iter().find(|p| p.name_any() == pod);
    let mut pods = Vec::new();
    let mut growth: BTreeMap<String, Amounts> = BTreeMap::new();
    let mut unscheduled = Amounts::default();
    for (k, ordinal) in order.iter().enumerate() {
        let batch = targets.iter().position(|t| (k as i32) < *t);
        let Some(view) = by_ordinal.get(ordinal) else {
            let update = if batch.is_some() { Update::Create } else { Update::Kept };
            if batch.is_some() {
                unscheduled =
                    add(unscheduled, container_requests(&spec.template.spec.clone().unwrap_or_default().containers));
            }
            let detail = if batch.is_some() {
                "no pod yet: created at the new revision"
            } else {
                "no pod yet: created at the current revision"
            };
            pods.push(PodChange {
                pod: format!("{name}-{ordinal}"),
                batch,
                order: batch.map(|_| k + 1),
                node: None,
                revision: None,
                update,
                detail: detail.into(),
            });
            continue;
        };
        let (update, detail) = if view.revision.as_deref() == Some(to_revision.as_str()) {
            (Update::Unchanged, "already at the new revision".to_string())
        } else if batch.is_none() {
            (Update::Kept, "held by the partition".to_string())
        } else {
            let diff = match view.revision.as_ref().and_then(|r| templates.get(r)) {
                Some(old) => plan_update(old, &spec.template),
                None => UpdatePlan::Recreate(vec![format!("revision {:?} of the pod is unknown", view.revision)]),
            };
            classify(strategy.type_, diff)
        };
        // A recreate, or an in-place update with a resize first, changes the node's requests.
        if matches!(update, Update::Recreate | Update::InPlace)
            && let (Some(pod), Some(node)) = (pod_named(&view.name), view.node.clone())
        {
            let d = delta(pod, &spec.template);
            let entry = growth.entry(node).or_default();
            *entry = add(*entry, d);
        }
        let in_rollout = batch.filter(|_| !matches!(update, Update::Kept | Update::Unchanged));
        pods.push(PodChange {
            pod: view.name.clone(),
            batch: in_rollout,
            order: in_rollout.map(|_| k + 1),
            node: view.node.clone(),
            revision: view.revision.clone(),
            update,
            detail,
        });
    }
    for view in views.iter().filter(|v| !wanted.contains(&v.ordinal)) {
        pods.push(PodChange {
            pod: view.name.clone(),
            batch: None,
            order: None,
            node: view.node.clone(),
            revision: view.revision.clone(),
            update: Update::Delete,
            detail: "beyond the new replicas (or a reserved ordinal)".into(),
        });
        if let (Some(pod), Some(node)) = (pod_named(&view.name), view.node.clone()) {
            let entry = growth.entry(node).or_default();
            *entry = sub(*entry, feasibility::load(pod));
        }
    }

    let running =
        |p: &&Pod| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    let mut nodes = Vec::new();
    for node in i.nodes {
        let node_name = node.name_any();
        let allocatable = feasibility::allocatable(node).map_err(|e| format!("node {node_name}: {e}"))?;
        let on_node = i
            .node_pods
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name.as_str()));
        let now = on_node.filter(running).fold(Amounts::default(), |sum, p| add(sum, feasibility::load(p)));
        let after = add(now, growth.get(&node_name).copied().unwrap_or_default());
        nodes.push(NodeHeadroom {
            node: node_name,
            cpu_allocatable: allocatable.cpu,
            cpu_requested_now: now.cpu,
            cpu_requested_after: after.cpu,
            memory_allocatable: allocatable.memory,
            memory_requested_now: now.memory,
            memory_requested_after: after.memory,
        });
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(Report {
        inplaceset: name,
        from_revision: status.update_revision.clone(),
        to_revision,
        strategy: format!("{:?}", strategy.type_),
        max_unavailable,
        batch_targets: targets,
        pods,
        nodes,
        unscheduled_cpu: unscheduled.cpu,
        unscheduled_memory: unscheduled.memory,
    })
}

pub fn render(r: &Report) -> String {
    let mut out = format!(
        "InplaceSet {}: {} -> {} ({}, at most {} pod(s) unavailable at a time; pods at the new revision per batch: {})\n",
        r.inplaceset,
        r.from_revision.as_deref().unwrap_or("<none>"),
        r.to_revision,
        r.strategy,
        r.max_unavailable,
        r.batch_targets.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
    );
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = r
        .pods
        .iter()
        .map(|p| {
            vec![
                p.batch.map_or_else(dash, |b| b.to_string()),
                p.order.map_or_else(dash, |o| o.to_string()),
                p.pod.clone(),
                p.node.clone().unwrap_or_else(dash),
                p.revision.clone().unwrap_or_else(dash),
                p.update.text().to_string(),
                p.detail.clone(),
            ]
        })
        .collect();
    out.push_str(&table::table(&["BATCH", "ORDER", "POD", "NODE", "REVISION", "UPDATE", "DETAIL"], &rows));
    out.push_str("\nNode requests after the change (recreated pods counted on their current node; a resize that does not fit is Rejected, and the pod recreated, or blocked under InPlaceOnly):\n");
    let rows: Vec<Vec<String>> = r
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                format!("{} -> {}", table::cpu(n.cpu_requested_now), table::cpu(n.cpu_requested_after)),
                table::cpu(n.cpu_allocatable),
                headroom(n.cpu_allocatable - n.cpu_requested_after, table::cpu),
                format!("{} -> {}", table::memory(n.memory_requested_now), table::memory(n.memory_requested_after)),
                table::memory(n.memory_allocatable),
                headroom(n.memory_allocatable - n.memory_requested_after, table::memory),
            ]
        })
        .collect();
    out.push_str(&table::table(
        &[
            "NODE",
            "CPU REQUESTS",
            "CPU ALLOCATABLE",
            "CPU HEADROOM",
            "MEMORY REQUESTS",
            "MEMORY ALLOCATABLE",
            "MEMORY HEADROOM",
        ],
        &rows,
    ));
    if r.unscheduled_cpu != 0 || r.unscheduled_memory != 0 {
        out.push_str(&format!(
            "New pods still to be placed by the scheduler request cpu {} and memory {}.\n",
            table::cpu(r.unscheduled_cpu),
            table::memory(r.unscheduled_memory)
        ));
    }
    out.push_str(if r.ok() {
        "Nothing was changed (dry run).\n"
    } else {
        "Nothing was changed (dry run); the change would not go through as is: see BLOCKED pods or negative headroom.\n"
    });
    out
}

fn headroom(left: i64, unit: fn(i64) -> String) -> String {
    if left < 0 { format!("OVER by {}", unit(-left)) } else { unit(left) }
}

#[cfg(test)]
#[path = "inplaceset_tests.rs"]
mod tests;
