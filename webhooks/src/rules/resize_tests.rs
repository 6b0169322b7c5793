use serde_json::json;

use super::*;

const MANAGER: &str = "system:serviceaccount:berth-system:berth-manager";
const AGENT: &str = "system:serviceaccount:berth-system:berth-node-agent";

fn rule() -> ResizeRule {
    ResizeRule::new(MANAGER, "berth-system")
}

fn pod(state: Option<&str>, request: Option<&str>) -> DynamicObject {
    let mut annotations = serde_json::Map::new();
    if let Some(s) = state {
        annotations.insert(keys::RESIZE_STATE.into(), json!(s));
    }
    if let Some(r) = request {
        annotations.insert(keys::RESIZE.into(), json!(r));
    }
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "annotations": annotations}}))
    .unwrap()
}

fn spec(node: &str) -> PodSpec {
    serde_json::from_value(json!({"nodeName": node, "containers": [{"name": "app", "image": "a",
        "resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": "1"}}}]}))
    .unwrap()
}

const REQ: &str = r#"{"containers":{"app":{"requests":{"cpu":"800m"}}}}"#;

fn check(
    user: &str,
    node: Option<&str>,
    from: (Option<&str>, Option<&str>),
    to: (Option<&str>, Option<&str>),
) -> Result<(), String> {
    let who = Requester { username: user, node };
    rule().check(&who, Some(&pod(from.0, from.1)), Some(&pod(to.0, to.1)), Some(&spec("node-a")))
}

#[test]
fn each_transition_is_made_only_by_its_actor() {
    let created = (Some("Created"), Some(REQ));
    let accepted = (Some("Accepted"), Some(REQ));
    assert_eq!(check("alice", None, (None, None), created), Ok(()), "a user submits");
    assert_eq!(check(MANAGER, None, created, accepted), Ok(()));
    assert_eq!(check(MANAGER, None, created, (Some("Rejected"), Some(REQ))), Ok(()));
    assert_eq!(check(AGENT, Some("node-a"), accepted, (Some("Applied"), Some(REQ))), Ok(()));
    assert_eq!(check(AGENT, Some("node-a"), accepted, (Some("Failed"), Some(REQ))), Ok(()));
    assert_eq!(check(MANAGER, None, accepted, (Some("Failed"), Some(REQ))), Ok(()), "the manager expires it");

    let err = check("alice", None, created, accepted).unwrap_err();
    assert!(err.contains("is made only by the berth manager") && err.contains("alice may not"), "{err}");
    let err = check(MANAGER, None, accepted, (Some("Applied"), Some(REQ))).unwrap_err();
    assert!(err.contains("only by the node agent"), "{err}");
    let err = check(AGENT, None, created, accepted).unwrap_err();
    assert!(err.contains("only by the berth manager"), "{err}");
}

#[test]
fn the_agent_of_another_node_is_refused() {
    let accepted = (Some("Accepted"), Some(REQ));
    let err = check(AGENT, Some("node-b"), accepted, (Some("Applied"), Some(REQ))).unwrap_err();
    assert!(err.contains("node agent of node node-b may not finish a resize of a pod on node node-a"), "{err}");
    let err = check(AGENT, None, accepted, (Some("Applied"), Some(REQ))).unwrap_err();
    assert!(err.contains("token not bound to a node"), "{err}");
}

#[test]
fn illegal_moves_and_in_flight_changes_say_what_is_allowed() {
    let err = check("alice", None, (None, None), (Some("Accepted"), Some(REQ))).unwrap_err();
    assert!(err.contains("cannot go from (none) to Accepted") && err.contains("Created (Submit)"), "{err}");
    let other = r#"{"containers":{"app":{"requests":{"cpu":"900m"}}}}"#;
    let err = check("alice", None, (Some("Created"), Some(REQ)), (Some("Created"), Some(other))).unwrap_err();
    assert!(err.contains("cannot change while a request is in flight"), "{err}");
    let err = check(MANAGER, None, (Some("Created"), Some(REQ)), (Some("Accepted"), Some(other))).unwrap_err();
    assert!(err.contains("cannot change with Accept"), "{err}");
    assert_eq!(check("alice", None, (Some("Created"), Some(REQ)), (None, Some(REQ))), Ok(()), "cancel");
    assert_eq!(check("alice", None, (Some("Applied"), Some(REQ)), (Some("Created"), Some(other))), Ok(()), "a new one");
    let err = check("alice", None, (Some("Bogus"), None), (Some("Created"), Some(REQ))).unwrap_err();
    assert!(err.contains("unknown resize state \"Bogus\""), "{err}");
}

#[test]
fn a_submitted_request_must_fit_the_pod() {
    let err = check("alice", None, (None, None), (Some("Created"), Some(r#"{"containers":{}}"#))).unwrap_err();
    assert!(err.contains("nothing to change"), "{err}");
    let over = r#"{"containers":{"app":{"requests":{"cpu":"2"}}}}"#;
    let err = check("alice", None, (None, None), (Some("Created"), Some(over))).unwrap_err();
    assert!(err.contains("exceeds its limit"), "{err}");
    let err = check("alice", None, (None, None), (Some("Created"), Some("not json"))).unwrap_err();
    assert!(err.contains("expected JSON like"), "{err}");
    let err = check("alice", None, (None, None), (Some("Created"), None)).unwrap_err();
    assert!(err.contains("needs a berth.dev/resize annotation"), "{err}");
}

#[test]
fn other_pod_updates_pass() {
    assert_eq!(check("alice", None, (Some("Applied"), Some(REQ)), (Some("Applied"), Some(REQ))), Ok(()));
}

#[test]
fn only_the_pods_node_agent_records_what_it_applied_and_only_with_applied() {
    const APPLIED: &str = r#"{"app":{"cpuQuota":100000,"cpuPeriod":100000}}"#;
    let with = |state: &str, applied: Option<&str>| {
        let mut p = pod(Some(state), Some(REQ));
        if let Some(a) = applied {
            p.metadata.annotations.as_mut().unwrap().insert(keys::RESIZE_APPLIED.into(), a.into());
        }
        p
    };
    let run = |user: &str, node: Option<&str>, from: DynamicObject, to: DynamicObject| {
        rule().check(&Requester { username: user, node }, Some(&from), Some(&to), Some(&spec("node-a")))
    };
    // The agent of the pod's node, finishing the request: allowed.
    assert_eq!(run(AGENT, Some("node-a"), with("Accepted", None), with("Applied", Some(APPLIED))), Ok(()));
    // Another node's agent: refused by the transition's node check.
    assert!(run(AGENT, Some("node-b"), with("Accepted", None), with("Applied", Some(APPLIED))).is_err());
    // A user forging the record later, or with a state that is not Applied: refused, saying who may.
    let err = run("alice", None, with("Applied", None), with("Applied", Some(APPLIED))).unwrap_err();
    assert!(err.contains("only the node agent of the pod's node sets it"), "{err}");
    let err = run(AGENT, Some("node-a"), with("Accepted", None), with("Failed", Some(APPLIED))).unwrap_err();
    assert!(err.contains("together with berth.dev/resize-state: Applied"), "{err}");
    // Removal: with a new request (a user's, or the manager's for an InplaceSet), or by the agent finishing one.
    let resubmitted = pod(Some("Created"), Some(r#"{"containers":{"app":{"requests":{"cpu":"900m"}}}}"#));
    assert_eq!(run(MANAGER, None, with("Applied", Some(APPLIED)), resubmitted.clone()), Ok(()));
    assert_eq!(run("alice", None, with("Applied", Some(APPLIED)), resubmitted), Ok(()));
    let err = run("alice", None, with("Applied", Some(APPLIED)), with("Applied", None)).unwrap_err();
    assert!(err.contains("may be removed only with a new request"), "{err}");
}
