use serde_json::json;

use super::*;

fn node(cpu: &str, memory: &str) -> Node {
    serde_json::from_value(json!({"metadata": {"name": "node-a"},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"}}}))
    .unwrap()
}

/// Pod `name` with one container requesting `cpu`/`memory`, and a resize if given.
fn pod(name: &str, cpu: &str, memory: &str, resize: Option<(&str, serde_json::Value)>) -> Pod {
    let mut annotations = serde_json::Map::new();
    if let Some((state, request)) = resize {
        annotations.insert(keys::RESIZE_STATE.into(), json!(state));
        annotations.insert(keys::RESIZE.into(), json!(request.to_string()));
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "prod", "uid": format!("uid-{name}"), "annotations": annotations},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "a",
            "resources": {"requests": {"cpu": cpu, "memory": memory}}}]},
        "status": {"phase": "Running"}
    }))
    .unwrap()
}

fn cpu(v: &str) -> serde_json::Value {
    json!({"containers": {"app": {"requests": {"cpu": v}}}})
}

fn outcomes(d: &[Decision]) -> Vec<(String, bool)> {
    d.iter().map(|d| (d.name.clone(), d.outcome.is_ok())).collect()
}

#[test]
fn a_request_that_fits_is_accepted_and_one_that_overcommits_is_rejected_with_numbers() {
    let n = node("4", "8Gi");
    let pods = vec![pod("a", "1", "1Gi", None), pod("b", "1", "1Gi", Some(("Created", cpu("3"))))];
    let d = decide_node(&n, &pods);
    assert_eq!(outcomes(&d), [("b".into(), true)], "1 + 3 = 4 CPUs: fits exactly");
    assert_eq!(
        d[0].outcome.as_ref().unwrap(),
        "fits node node-a: cpu 4000m of 4000m, memory 2147483648 of 8589934592 bytes requested"
    );
    let pods = vec![pod("a", "1", "1Gi", None), pod("b", "1", "1Gi", Some(("Created", cpu("3500m"))))];
    let d = decide_node(&n, &pods);
    assert_eq!(d[0].outcome, Err("does not fit node node-a: cpu requests would be 4500m of 4000m allocatable".into()));
}

#[test]
fn two_requests_on_one_node_cannot_both_take_the_last_cpu() {
    let n = node("4", "8Gi");
    let pods = vec![
        pod("a", "1", "1Gi", Some(("Created", cpu("2")))),
        pod("b", "1", "1Gi", Some(("Created", cpu("2")))),
        pod("c", "1", "1Gi", None),
    ];
    // a: 2 + 1 + 1 = 4, fits; then b sees a at 2: 2 + 2 + 1 = 5 > 4.
    assert_eq!(outcomes(&decide_node(&n, &pods)), [("a".into(), true), ("b".into(), false)]);
}

#[test]
fn an_accepted_decrease_counts_at_its_old_value_until_applied() {
    let n = node("4", "8Gi");
    let pods =
        vec![pod("a", "3", "1Gi", Some(("Accepted", cpu("1")))), pod("b", "1", "1Gi", Some(("Created", cpu("2"))))];
    // a still holds 3 until applied: 3 + 2 = 5 > 4.
    assert!(decide_node(&n, &pods)[0].outcome.is_err());
    let pods =
        vec![pod("a", "1", "1Gi", Some(("Applied", cpu("1")))), pod("b", "1", "1Gi", Some(("Created", cpu("2"))))];
    assert!(decide_node(&n, &pods)[0].outcome.is_ok());
}

#[test]
fn memory_and_exclusive_cpus_are_checked_and_finished_pods_do_not_count() {
    let n = node("4", "4Gi");
    let mem = json!({"containers": {"app": {"requests": {"memory": "3Gi"}}}});
    let pods = vec![pod("a", "1", "2Gi", None), pod("b", "1", "1Gi", Some(("Created", mem)))];
    assert_eq!(
        decide_node(&n, &pods)[0].outcome,
        Err("does not fit node node-a: memory requests would be 5368709120 of 4294967296 bytes allocatable".into())
    );
    let mut done = pod("a", "1", "2Gi", None);
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let mem = json!({"containers": {"app": {"requests": {"memory": "3Gi"}}}});
    assert!(decide_node(&n, &[done, pod("b", "1", "1Gi", Some(("Created", mem)))])[0].outcome.is_ok());

    let pinned = json!({"containers": {"app": {"requests": {"cpu": "1"}}}, "cpuset": {"exclusiveCpus": 2}});
    let pods = vec![
        pod("a", "1", "1Gi", Some(("Applied", pinned.clone()))),
        pod("b", "1", "1Gi", Some(("Created", json!({"cpuset": {"exclusiveCpus": 3}})))),
    ];
    assert_eq!(
        decide_node(&n, &pods)[0].outcome,
        Err("does not fit node node-a: 3 exclusive CPUs asked, 1 of 3 free (one of the node's 4 CPUs stays shared)"
            .into())
    );
    let pods = vec![
        pod("a", "1", "1Gi", Some(("Applied", pinned.clone()))),
        pod("b", "1", "1Gi", Some(("Created", json!({"cpuset": {"exclusiveCpus": 1}})))),
    ];
    assert!(decide_node(&n, &pods)[0].outcome.is_ok(), "the last exclusive CPU is free");
}

#[test]
fn an_unreadable_request_is_rejected_with_the_parse_error() {
    let n = node("4", "8Gi");
    let mut p = pod("a", "1", "1Gi", Some(("Created", cpu("1"))));
    p.metadata.annotations.as_mut().unwrap().insert(keys::RESIZE.into(), "not json".into());
    let d = decide_node(&n, &[p]);
    assert!(d[0].outcome.as_ref().unwrap_err().contains("expected JSON like"));
}

#[test]
fn an_accepted_request_past_the_deadline_is_overdue() {
    let mut p = pod("a", "1", "1Gi", Some(("Accepted", cpu("2"))));
    let annotations = p.metadata.annotations.as_mut().unwrap();
    annotations.insert(keys::RESIZE_ACCEPTED_AT.into(), "2026-11-22T10:00:00Z".into());
    let deadline = k8s_openapi::jiff::SignedDuration::from_secs(300);
    let at = |t: &str| t.parse::<k8s_openapi::jiff::Timestamp>().unwrap();
    assert_eq!(overdue(&p, at("2026-11-22T10:05:00Z"), deadline), None);
    let why = overdue(&p, at("2026-11-22T10:05:01Z"), deadline).unwrap();
    assert_eq!(
        why,
        "accepted at 2026-11-22T10:00:00Z but not applied within 300s: is the node agent of node-a running?"
    );
    p.metadata.annotations.as_mut().unwrap().insert(keys::RESIZE_STATE.into(), "Applied".into());
    assert_eq!(overdue(&p, at("2026-11-23T10:00:00Z"), deadline), None, "only Accepted requests expire");
}
