//! Affinity constraints of live, bound pods, evaluated as the scheduler
//! evaluates them at scheduling time. "IgnoredDuringExecution" means the
//! kubelet never re-checks them: a relabelled node or pod, or a pod bound by
//! `spec.nodeName` past the scheduler, breaks them silently. That is what this
//! finds:
//! - nodeSelector and required node affinity against the node's labels;
//! - required pod affinity: some other pod matching the term (in the term's
//!   namespaces) runs in the pod's topology domain (the node's value of
//!   `topologyKey`); the scheduler's exception holds: a pod matching its own
//!   terms with no matching pod anywhere is fine (the first of a group);
//! - required pod anti-affinity: no other matching pod in the domain;
//! - preferred terms (node affinity, pod affinity, anti-affinity): their unmet
//!   weight summed per workload (the pods of one controller); a warning when
//!   it reaches `soft_affinity_threshold` of the workload's preferred weight.

use std::collections::{BTreeMap, BTreeSet};

use berth_api::selector::{self, Requirement};
use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm};

use crate::{Finding, Kind, ObjectRef, Options, Snapshot, bound_node, pod_ref};

type Labels = BTreeMap<String, String>;

/// The cluster as affinity sees it: node labels, namespace labels, and the
/// live bound pods per namespace.
struct Topology<'a> {
    nodes: BTreeMap<&'a str, &'a Labels>,
    namespaces: BTreeMap<&'a str, &'a Labels>,
    pods: BTreeMap<&'a str, Vec<&'a Pod>>,
}

static NO_LABELS: Labels = Labels::new();

fn labels_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &Labels {
    meta.labels.as_ref().unwrap_or(&NO_LABELS)
}

fn namespace_of(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or_default()
}

impl<'a> Topology<'a> {
    fn new(s: &'a Snapshot) -> Self {
        let mut pods: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
        for p in s.pods.iter().filter(|p| bound_node(p).is_some()) {
            pods.entry(namespace_of(p)).or_default().push(p);
        }
        Self {
            nodes: s
                .nodes
                .iter()
                .map(|n| (n.metadata.name.as_deref().unwrap_or_default(), labels_of(&n.metadata)))
                .collect(),
            namespaces: s
                .namespaces
                .iter()
                .map(|n| (n.metadata.name.as_deref().unwrap_or_default(), labels_of(&n.metadata)))
                .collect(),
            pods,
        }
    }

    /// The node's value of `key`, the pod's topology domain.
    fn domain(&self, pod: &Pod, key: &str) -> Option<&'a str> {
        self.nodes.get(bound_node(pod)?)?.get(key).map(String::as_str)
    }

    /// The namespaces a term looks in: its list plus its selector's matches,
    /// or the pod's own namespace when it names neither.
    fn term_namespaces(&self, pod: &Pod, term: &PodAffinityTerm) -> BTreeSet<&'a str> {
        let listed = term.namespaces.iter().flatten();
        let mut out: BTreeSet<&str> =
            listed.filter_map(|n| self.pods.get_key_value(n.as_str()).map(|(k, _)| *k)).collect();
        match &term.namespace_selector {
            Some(sel) => out.extend(self.namespaces.iter().filter(|(_, l)| selector::matches(sel, l)).map(|(n, _)| *n)),
            None if term.namespaces.as_ref().is_none_or(Vec::is_empty) => {
                if let Some((k, _)) = self.pods.get_key_value(namespace_of(pod)) {
                    out.insert(k);
                }
            }
            None => {}
        }
        out
    }

    /// Other live pods matching `term` of `pod`: (pod, its domain for the term's key).
    fn matching(&self, pod: &Pod, term: &PodAffinityTerm) -> Vec<(&'a Pod, Option<&'a str>)> {
        let Some(requirements) = term_requirements(pod, term) else { return vec![] };
        let mut out = Vec::new();
        for ns in self.term_namespaces(pod, term) {
            for other in self.pods.get(ns).into_iter().flatten() {
                if other.metadata.uid != pod.metadata.uid
                    && requirements.iter().all(|r| r.matches(labels_of(&other.metadata)))
                {
                    out.push((*other, self.domain(other, &term.topology_key)));
                }
            }
        }
        out
    }
}

/// The term's label selector with matchLabelKeys (`key in (pod's value)`)
/// and mismatchLabelKeys (`key notin (pod's value)`) folded in; `None`: a
/// missing or malformed selector, which matches no pod.
fn term_requirements(pod: &Pod, term: &PodAffinityTerm) -> Option<Vec<Requirement>> {
    let mut reqs = selector::requirements(term.label_selector.as_ref()?, "labelSelector").ok()?;
    let own = labels_of(&pod.metadata);
    for key in term.match_label_keys.iter().flatten() {
        if let Some(v) = own.get(key) {
            reqs.push(Requirement::In(key.clone(), vec![v.clone()]));
        }
    }
    for key in term.mismatch_label_keys.iter().flatten() {
        if let Some(v) = own.get(key) {
            reqs.push(Requirement::NotIn(key.clone(), vec![v.clone()]));
        }
    }
    Some(reqs)
}

fn matches_itself(pod: &Pod, term: &PodAffinityTerm) -> bool {
    term_requirements(pod, term).is_some_and(|reqs| reqs.iter().all(|r| r.matches(labels_of(&pod.metadata))))
}

/// A term as one line: `app=web in kubernetes.io/hostname`.
fn describe(term: &PodAffinityTerm) -> String {
    let sel = term.label_selector.as_ref().map(selector::to_kubectl).unwrap_or_default();
    format!("{{{sel}}} per {}", term.topology_key)
}

fn names(pods: &[(&Pod, Option<&str>)]) -> String {
    let shown: Vec<_> = pods.iter().take(3).map(|(p, _)| pod_ref(p).to_string()).collect();
    match pods.len() {
        n if n > 3 => format!("{} and {} more", shown.join(", "), n - 3),
        _ => shown.join(", "),
    }
}

fn node_requirement(r: &NodeSelectorRequirement, labels: &Labels, node_name: &str, field: bool) -> bool {
    let values = r.values.clone().unwrap_or_default();
    let value =
        if field { (r.key == "metadata.name").then_some(node_name) } else { labels.get(&r.key).map(String::as_str) };
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v > x),
        "Lt" => matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v < x),
        _ => false,
    }
}

/// A node selector term: every expression and field holds; an empty term matches nothing.
fn node_term(term: &NodeSelectorTerm, labels: &Labels, node_name: &str) -> bool {
    let exprs = term.match_expressions.iter().flatten().map(|r| (r, false));
    let fields = term.match_fields.iter().flatten().map(|r| (r, true));
    let all: Vec<_> = exprs.chain(fields).collect();
    !all.is_empty() && all.iter().all(|(r, field)| node_requirement(r, labels, node_name, *field))
}

/// Unmet preferred weight of one workload.
#[derive(Default)]
struct Soft {
    pods: usize,
    total: i64,
    unmet: i64,
    example: Option<String>,
}

pub fn check(snapshot: &Snapshot, options: &Options) -> Vec<Finding> {
    let topo = Topology::new(snapshot);
    let mut findings = Vec::new();
    let mut soft: BTreeMap<ObjectRef, Soft> = BTreeMap::new();
    for pod in topo.pods.values().flatten() {
        let Some(spec) = pod.spec.as_ref() else { continue };
        let node = bound_node(pod).unwrap_or_default();
        let Some(node_labels) = topo.nodes.get(node) else { continue };
        let me = pod_ref(pod);
        let affinity = spec.affinity.as_ref();

        // nodeSelector and required node affinity.
        for (k, v) in spec.node_selector.iter().flatten() {
            if node_labels.get(k) != Some(v) {
                let has = node_labels.get(k).map_or("no such label".to_string(), |x| format!("{k}={x}"));
                findings.push(Finding::violation(
                    Kind::NodeAffinity,
                    me.clone(),
                    format!("nodeSelector {k}={v} does not hold on its node {node} ({has})"),
                ));
            }
        }
        let node_affinity = affinity.and_then(|a| a.node_affinity.as_ref());
        if let Some(required) =
            node_affinity.and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
            && !required.node_selector_terms.iter().any(|t| node_term(t, node_labels, node))
        {
            findings.push(Finding::violation(
                Kind::NodeAffinity,
                me.clone(),
                format!(
                    "none of its {} required node affinity terms holds on its node {node}",
                    required.node_selector_terms.len()
                ),
            ));
        }

        // Required pod affinity, with the scheduler's first-of-a-group exception.
        let pod_affinity = affinity.and_then(|a| a.pod_affinity.as_ref());
        let required = pod_affinity.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
        let terms: Vec<_> = required.into_iter().flatten().collect();
        let mut unmet = Vec::new();
        let mut any_match_anywhere = false;
        for term in &terms {
            let matching = topo.matching(pod, term);
            any_match_anywhere |= matching.iter().any(|(_, d)| d.is_some());
            let mine = topo.domain(pod, &term.topology_key);
            if mine.is_none() || !matching.iter().any(|(_, d)| *d == mine) {
                unmet.push((*term, mine, matching.len()));
            }
        }
        let first_of_group = !any_match_anywhere && terms.iter().all(|t| matches_itself(pod, t));
        if !first_of_group {
            for (term, mine, elsewhere) in unmet {
                let message = match mine {
                    None => format!(
                        "required pod affinity {}: its node {node} has no label {}",
                        describe(term),
                        term.topology_key
                    ),
                    Some(d) => format!(
                        "required pod affinity {}: no matching pod in its domain {}={d} ({elsewhere} elsewhere)",
                        describe(term),
                        term.topology_key
                    ),
                };
                findings.push(Finding::violation(Kind::PodAffinity, me.clone(), message));
            }
        }

        // Required pod anti-affinity.
        let anti = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        for term in
            anti.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()).into_iter().flatten()
        {
            let Some(mine) = topo.domain(pod, &term.topology_key) else { continue };
            let together: Vec<_> = topo.matching(pod, term).into_iter().filter(|(_, d)| *d == Some(mine)).collect();
            if !together.is_empty() {
                findings.push(Finding::violation(
                    Kind::PodAntiAffinity,
                    me.clone(),
                    format!(
                        "required pod anti-affinity {}: {} matching pod(s) in its domain {}={mine}: {}",
                        describe(term),
                        together.len(),
                        term.topology_key,
                        names(&together)
                    ),
                ));
            }
        }

        // Preferred terms: weight met or unmet.
        let mut outcomes: Vec<(i64, bool, String)> = Vec::new();
        for p in node_affinity
            .and_then(|n| n.preferred_during_scheduling_ignored_during_execution.as_ref())
            .into_iter()
            .flatten()
        {
            outcomes.push((i64::from(p.weight), node_term(&p.preference, node_labels, node), "node affinity".into()));
        }
        for w in pod_affinity
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())
            .into_iter()
            .flatten()
        {
            let t = &w.pod_affinity_term;
            let mine = topo.domain(pod, &t.topology_key);
            let met = mine.is_some() && topo.matching(pod, t).iter().any(|(_, d)| *d == mine);
            outcomes.push((i64::from(w.weight), met, format!("pod affinity {}", describe(t))));
        }
        for w in
            anti.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref()).into_iter().flatten()
        {
            let t = &w.pod_affinity_term;
            let mine = topo.domain(pod, &t.topology_key);
            let met = mine.is_none() || !topo.matching(pod, t).iter().any(|(_, d)| *d == mine);
            outcomes.push((i64::from(w.weight), met, format!("pod anti-affinity {}", describe(t))));
        }
        if !outcomes.is_empty() {
            let entry = soft.entry(workload(pod)).or_default();
            entry.pods += 1;
            for (weight, met, what) in outcomes {
                entry.total += weight;
                if !met {
                    entry.unmet += weight;
                    entry.example.get_or_insert_with(|| format!("{me}: {what}"));
                }
            }
        }
    }
    for (object, s) in soft {
        if s.total > 0 && s.unmet as f64 >= options.soft_affinity_threshold * s.total as f64 {
            findings.push(Finding::warning(
                Kind::PreferredAffinity,
                object,
                format!(
                    "{} of {} preferred affinity weight unmet ({:.0}%) across {} pod(s); e.g. {}",
                    s.unmet,
                    s.total,
                    100.0 * s.unmet as f64 / s.total as f64,
                    s.pods,
                    s.example.unwrap_or_default()
                ),
            ));
        }
    }
    findings
}

/// The workload a pod belongs to: its controller, or the pod itself.
fn workload(pod: &Pod) -> ObjectRef {
    let ns = namespace_of(pod);
    match pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true)) {
        Some(o) => ObjectRef::namespaced(&o.kind, ns, &o.name),
        None => pod_ref(pod),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::{Severity, testing::*};

    const HOST: &str = "kubernetes.io/hostname";

    fn term(app: &str, key: &str) -> Value {
        json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key})
    }

    fn snapshot(pods: Vec<Pod>) -> Snapshot {
        Snapshot {
            nodes: vec![
                node("n0", "8", "8Gi", 110, &[("zone", "a")]),
                node("n1", "8", "8Gi", 110, &[("zone", "a")]),
                node("n2", "8", "8Gi", 110, &[("zone", "b")]),
                node("bare", "8", "8Gi", 110, &[]),
            ],
            pods,
            namespaces: vec![namespace("a", &[("team", "x")]), namespace("b", &[("team", "x")]), namespace("c", &[])],
            inplacesets: vec![],
        }
    }

    fn run(pods: Vec<Pod>) -> Vec<Finding> {
        check(&snapshot(pods), &Options::default())
    }

    fn anti(p: Pod, term: Value) -> Pod {
        with(
            p,
            json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}}}),
        )
    }

    fn affine(p: Pod, term: Value) -> Pod {
        with(
            p,
            json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}}}),
        )
    }

    #[test]
    fn broken_anti_affinity_is_found_per_topology_domain() {
        let web = |name: &str, node: &str| anti(pod("a", name, node, &[("app", "web")], "1", "1Gi"), term("web", HOST));
        assert_eq!(run(vec![web("w0", "n0"), web("w1", "n1"), web("w2", "n2")]), vec![], "one per host");
        let f = run(vec![web("w0", "n0"), web("w1", "n0"), web("w2", "n2")]);
        assert_eq!(f.len(), 2, "each of the two pods sharing n0: {f:#?}");
        assert_eq!((f[0].severity, f[0].kind), (Severity::Violation, Kind::PodAntiAffinity));
        assert_eq!(f[0].object, ObjectRef::namespaced("Pod", "a", "w0"));
        assert_eq!(
            f[0].message,
            "required pod anti-affinity {app=web} per kubernetes.io/hostname: 1 matching pod(s) in its domain \
             kubernetes.io/hostname=n0: Pod a/w1"
        );
        // Per zone: n0 and n1 are one domain; a node without the label is in none.
        let zoned =
            |name: &str, node: &str| anti(pod("a", name, node, &[("app", "web")], "1", "1Gi"), term("web", "zone"));
        assert_eq!(run(vec![zoned("w0", "n0"), zoned("w1", "n1")]).len(), 2);
        assert_eq!(run(vec![zoned("w0", "n0"), zoned("w1", "n2"), zoned("w2", "bare")]), vec![]);
    }

    #[test]
    fn anti_affinity_looks_in_the_terms_namespaces_only() {
        let own = anti(pod("a", "w0", "n0", &[("app", "web")], "1", "1Gi"), term("web", HOST));
        let other_ns = pod("b", "x", "n0", &[("app", "web")], "1", "1Gi");
        assert_eq!(run(vec![own.clone(), other_ns.clone()]), vec![], "the pod's own namespace by default");
        let mut by_selector = term("web", HOST);
        by_selector["namespaceSelector"] = json!({"matchLabels": {"team": "x"}});
        let p = anti(pod("a", "w0", "n0", &[("app", "web")], "1", "1Gi"), by_selector);
        assert_eq!(run(vec![p.clone(), other_ns.clone()]).len(), 1, "namespace b has team=x");
        let mut all = term("web", HOST);
        all["namespaceSelector"] = json!({});
        let in_c = pod("c", "y", "n0", &[("app", "web")], "1", "1Gi");
        assert_eq!(run(vec![anti(own.clone(), all), in_c.clone()]).len(), 1, "{{}}: every namespace");
        let mut listed = term("web", HOST);
        listed["namespaces"] = json!(["c"]);
        assert_eq!(run(vec![anti(own, listed), in_c, other_ns]).len(), 1, "only c");
        // Terminated pods and the pod itself never count.
        let done = with(pod("a", "old", "n0", &[("app", "web")], "1", "1Gi"), json!({"status": {"phase": "Failed"}}));
        assert_eq!(run(vec![p, done]), vec![]);
    }

    #[test]
    fn required_affinity_needs_a_partner_in_the_domain_except_for_the_first() {
        let db = pod("a", "db", "n2", &[("app", "db")], "1", "1Gi");
        let near = |node: &str| affine(pod("a", "web", node, &[("app", "web")], "1", "1Gi"), term("db", "zone"));
        assert_eq!(run(vec![db.clone(), near("n2")]), vec![]);
        let f = run(vec![db.clone(), near("n0")]);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, Kind::PodAffinity);
        assert_eq!(
            f[0].message,
            "required pod affinity {app=db} per zone: no matching pod in its domain zone=a (1 elsewhere)"
        );
        let f = run(vec![db, near("bare")]);
        assert_eq!(f[0].message, "required pod affinity {app=db} per zone: its node bare has no label zone");
        // No db anywhere and the pod is not a db: unmet.
        assert_eq!(run(vec![near("n0")]).len(), 1);
        // A group with affinity to itself: the first pod is fine alone, two apart are not.
        let group =
            |name: &str, node: &str| affine(pod("a", name, node, &[("app", "g")], "1", "1Gi"), term("g", "zone"));
        assert_eq!(run(vec![group("g0", "n0")]), vec![]);
        assert_eq!(run(vec![group("g0", "n0"), group("g1", "n1")]), vec![], "same zone a");
        assert_eq!(run(vec![group("g0", "n0"), group("g1", "n2")]).len(), 2, "zones a and b");
    }

    #[test]
    fn match_label_keys_narrow_the_selector_to_the_pods_own_value() {
        let mut t = term("web", HOST);
        t["matchLabelKeys"] = json!(["rev"]);
        let p =
            |name: &str, rev: &str| anti(pod("a", name, "n0", &[("app", "web"), ("rev", rev)], "1", "1Gi"), t.clone());
        assert_eq!(run(vec![p("w0", "1"), p("w1", "2")]), vec![], "different revisions may share a host");
        assert_eq!(run(vec![p("w0", "1"), p("w1", "1")]).len(), 2);
    }

    #[test]
    fn node_selector_and_required_node_affinity_are_checked_against_node_labels() {
        let sel = with(pod("a", "p", "n2", &[], "1", "1Gi"), json!({"spec": {"nodeSelector": {"zone": "a"}}}));
        let f = run(vec![sel]);
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].kind, f[0].message.as_str()),
            (Kind::NodeAffinity, "nodeSelector zone=a does not hold on its node n2 (zone=b)")
        );
        let required = |node: &str| {
            with(
                pod("a", "p", node, &[], "1", "1Gi"),
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                                          {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["bare"]}]}]}}}}}),
            )
        };
        assert_eq!(run(vec![required("n2")]), vec![]);
        assert_eq!(run(vec![required("bare")]), vec![], "the second term, by field");
        assert_eq!(
            run(vec![required("n0")])[0].message,
            "none of its 2 required node affinity terms holds on its node n0"
        );
    }

    #[test]
    fn many_unmet_preferred_terms_warn_per_workload() {
        let owned = |name: &str, node: &str| {
            with(
                pod("a", name, node, &[("app", "web")], "1", "1Gi"),
                json!({"metadata": {"ownerReferences": [{"apiVersion": "apps.berth.dev/v1alpha1", "kind": "InplaceSet",
                        "name": "web", "uid": "s", "controller": true}]},
                       "spec": {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 100, "podAffinityTerm": term("web", HOST)}]}}}}),
            )
        };
        assert_eq!(run(vec![owned("w0", "n0"), owned("w1", "n1"), owned("w2", "n2")]), vec![]);
        // Two of four share a host: 200 of 400 unmet, at the 50% threshold.
        let f = run(vec![owned("w0", "n0"), owned("w1", "n0"), owned("w2", "n1"), owned("w3", "n2")]);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!((f[0].severity, f[0].kind), (Severity::Warning, Kind::PreferredAffinity));
        assert_eq!(f[0].object, ObjectRef::namespaced("InplaceSet", "a", "web"));
        assert!(
            f[0].message.starts_with(
                "200 of 400 preferred affinity weight unmet (50%) across 4 pod(s); e.g. Pod a/w0: pod anti-affinity"
            ),
            "{}",
            f[0].message
        );
        let strict = Options { soft_affinity_threshold: 0.6 };
        let four = snapshot(vec![owned("w0", "n0"), owned("w1", "n0"), owned("w2", "n1"), owned("w3", "n2")]);
        assert_eq!(check(&four, &strict), vec![]);
    }
}
