//! Validating rule on pod UPDATE: the in-place resize state machine of
//! DESIGN.md §5 (`berth.dev/resize` + `berth.dev/resize-state`). Every change
//! of the two annotations must be a legal transition ([`transition`]) made by
//! the actor that transition belongs to: anyone for Submit and Cancel, the
//! manager for Accept/Reject/Expire, and for Apply/Fail only the node agent of
//! the node the pod is bound to (from its pod-bound token's node name).
//! `berth.dev/resize-applied` (what that agent verified in the runtime) is set
//! only with its Applied, and removed only with a new request or a finish.

use berth_api::{
    keys,
    resize::{Actor, NODE_AGENT_SERVICE_ACCOUNT, NODE_NAME_EXTRA, ResizeEvent, ResizeRequest, ResizeState, transition},
    resize_pod,
};
use k8s_openapi::{api::core::v1::PodSpec, apimachinery::pkg::apis::meta::v1::LabelSelector};
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, Operation},
};

use crate::rule::{Admission, AdmissionRule, FailurePolicy, WebhookSpec, allow, deny, namespaces_except, operations};

/// Guards the resize annotations of pods berth manages.
pub struct ResizeRule {
    pub manager_username: String,
    /// `system:serviceaccount:<manager namespace>:berth-node-agent`.
    pub node_agent_username: String,
}

/// Who is asking, as the rule sees it.
pub struct Requester<'a> {
    pub username: &'a str,
    /// The node its token is bound to (node agents).
    pub node: Option<&'a str>,
}

struct Annotations<'a> {
    state: Option<&'a str>,
    request: Option<&'a str>,
    applied: Option<&'a str>,
}

fn annotations(obj: Option<&DynamicObject>) -> Annotations<'_> {
    let a = obj.and_then(|o| o.metadata.annotations.as_ref());
    let get = |k: &str| a.and_then(|a| a.get(k)).map(String::as_str);
    Annotations { state: get(keys::RESIZE_STATE), request: get(keys::RESIZE), applied: get(keys::RESIZE_APPLIED) }
}

fn parse_state(raw: Option<&str>) -> Result<Option<ResizeState>, String> {
    raw.map(|s| s.parse::<ResizeState>().map_err(|e| format!("{}: {e}", keys::RESIZE_STATE))).transpose()
}

impl ResizeRule {
    pub fn new(manager_username: &str, manager_namespace: &str) -> Self {
        Self {
            manager_username: manager_username.into(),
            node_agent_username: format!("system:serviceaccount:{manager_namespace}:{NODE_AGENT_SERVICE_ACCOUNT}"),
        }
    }

    fn actor(&self, who: &Requester) -> Actor {
        if who.username == self.manager_username {
            Actor::Manager
        } else if who.username == self.node_agent_username {
            Actor::NodeAgent
        } else {
            Actor::Requester
        }
    }

    /// Why the change is refused, if it is. `spec` is the pod's spec after the update.
    pub fn check(
        &self,
        who: &Requester,
        old: Option<&DynamicObject>,
        new: Option<&DynamicObject>,
        spec: Option<&PodSpec>,
    ) -> Result<(), String> {
        let (before, after) = (annotations(old), annotations(new));
        let event = self.check_transition(who, &before, &after, spec)?;
        if before.applied == after.applied {
            return Ok(());
        }
        // The runtime's values, as the node agent verified them: the auditor trusts them.
        match (after.applied, event) {
            (Some(_), Some(ResizeEvent::Apply)) => Ok(()),
            (None, Some(ResizeEvent::Submit | ResizeEvent::Apply | ResizeEvent::Fail)) => Ok(()),
            (Some(_), _) => Err(format!(
                "{} records what the node agent verified in the runtime: only the node agent of the pod's node sets \
                 it, together with {}: Applied",
                keys::RESIZE_APPLIED,
                keys::RESIZE_STATE
            )),
            (None, _) => Err(format!(
                "{} may be removed only with a new request ({}: Created) or by the node agent finishing one",
                keys::RESIZE_APPLIED,
                keys::RESIZE_STATE
            )),
        }
    }

    /// The state-machine event the change makes (`None`: the request and
    /// its state are unchanged), or why it is refused.
    fn check_transition(
        &self,
        who: &Requester,
        before: &Annotations,
        after: &Annotations,
        spec: Option<&PodSpec>,
    ) -> Result<Option<ResizeEvent>, String> {
        if before.state == after.state && before.request == after.request {
            return Ok(None);
        }
        let (from, to) = (parse_state(before.state)?, parse_state(after.state)?);
        if from == to {
            // The request changed under the same state.
            return match from {
                Some(ResizeState::Created | ResizeState::Accepted) => Err(format!(
                    "{} cannot change while a request is in flight ({}); wait for Applied, Rejected or Failed, or \
                     cancel it while Created by removing {}",
                    keys::RESIZE,
                    from.map_or("(none)", ResizeState::as_str),
                    keys::RESIZE_STATE
                )),
                _ => Err(format!(
                    "a new {} must come with {}: Created (the request is {} now)",
                    keys::RESIZE,
                    keys::RESIZE_STATE,
                    from.map_or("(none)", ResizeState::as_str)
                )),
            };
        }
        let events = ResizeEvent::between(from, to);
        let Some(event) = events.first() else {
            let shown = |s: Option<ResizeState>| s.map_or("(none)", ResizeState::as_str);
            // The transition function's own message says what is allowed.
            let why = ResizeEvent::ALL
                .iter()
                .filter_map(|e| transition(from, *e).ok().map(|to| format!("{} ({e:?})", shown(to))))
                .collect::<Vec<_>>();
            return Err(format!(
                "{} cannot go from {} to {}; from {} it may go to: {}",
                keys::RESIZE_STATE,
                shown(from),
                shown(to),
                shown(from),
                if why.is_empty() { "nothing".into() } else { why.join(", ") }
            ));
        };
        let actor = self.actor(who);
        let allowed = events.iter().any(|e| e.allows(actor));
        if !allowed {
            let owner = match event.actor() {
                Actor::Manager => format!("the berth manager ({})", self.manager_username),
                Actor::NodeAgent => format!("the node agent ({}) of the pod's node", self.node_agent_username),
                Actor::Requester => "a user, a controller or the berth manager (never the node agent)".to_string(),
            };
            return Err(format!(
                "{} {} -> {} ({event:?}) is made only by {owner}; {} may not make it",
                keys::RESIZE_STATE,
                from.map_or("(none)", ResizeState::as_str),
                to.map_or("(none)", ResizeState::as_str),
                who.username
            ));
        }
        if *event != ResizeEvent::Submit && *event != ResizeEvent::Cancel && before.request != after.request {
            return Err(format!("{} cannot change with {event:?}: only a new request (Created) sets it", keys::RESIZE));
        }
        if actor == Actor::NodeAgent {
            let pod_node = spec.and_then(|s| s.node_name.as_deref());
            match (who.node, pod_node) {
                (Some(agent), Some(pod)) if agent == pod => {}
                (agent, pod) => {
                    return Err(format!(
                        "the node agent of node {} may not finish a resize of a pod on node {}: only the agent of the \
                         pod's own node may (its token must be bound to a pod on that node)",
                        agent.unwrap_or("(unknown: token not bound to a node)"),
                        pod.unwrap_or("(none)")
                    ));
                }
            }
        }
        if to == Some(ResizeState::Created) {
            let raw = after
                .request
                .ok_or_else(|| format!("{} Created needs a {} annotation", keys::RESIZE_STATE, keys::RESIZE))?;
            let request: ResizeRequest = raw.parse().map_err(|e: berth_api::resize::ResizeError| e.to_string())?;
            if let Some(spec) = spec {
                resize_pod::check(spec, &request).map_err(|e| format!("{}: {e}", keys::RESIZE))?;
            }
        }
        Ok(Some(*event))
    }
}

impl AdmissionRule for ResizeRule {
    fn name(&self) -> &'static str {
        "pod-resize.berth.dev"
    }

    fn path(&self) -> &'static str {
        "/validate/pod-resize"
    }

    fn webhook(&self) -> WebhookSpec {
        WebhookSpec {
            admission: Admission::Validating,
            // `pods` only: status writes never carry the annotations.
            rules: vec![operations("", "v1", &["pods"], &["UPDATE"])],
            namespace_selector: Some(namespaces_except(["kube-system".to_string()])),
            // Pods berth manages: the feasibility controller and node agent act on no others.
            object_selector: Some(LabelSelector {
                match_labels: Some([(keys::MANAGED.to_string(), "true".to_string())].into()),
                ..Default::default()
            }),
            failure_policy: FailurePolicy::Fail,
            failure_policy_reason: "an unchecked write could accept a resize nobody checked against the node, or \
                let one node's agent change another node's pod; only berth-managed pods are scoped in",
        }
    }

    fn review(&self, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        if req.operation != Operation::Update {
            return allow(req);
        }
        let username = req.user_info.username.as_deref().unwrap_or("(unknown user)");
        let node = req.user_info.extra.as_ref().and_then(|e| e.get(NODE_NAME_EXTRA)).and_then(|v| v.first());
        let who = Requester { username, node: node.map(String::as_str) };
        let spec: Option<PodSpec> =
            req.object.as_ref().and_then(|o| o.data.get("spec")).and_then(|s| serde_json::from_value(s.clone()).ok());
        match self.check(&who, req.old_object.as_ref(), req.object.as_ref(), spec.as_ref()) {
            Ok(()) => allow(req),
            Err(message) => deny(req, message),
        }
    }
}

#[cfg(test)]
#[path = "resize_tests.rs"]
mod tests;
