//! The in-place resize state machine on the real cluster: the manager's
//! feasibility step accepts a request that fits the node and rejects one that
//! over-commits it (numbers in the message); the webhook refuses a user who
//! accepts their own request and the node agent of one node acting on a pod
//! of another (the agent's identity is a token bound to a pod on its node).

use std::time::Duration;

use anyhow::Result;
use berth_api::keys;
use berth_e2e::{
    TestNamespace, client, container_status, images,
    node_agent::{self, Agent, MANAGER_NAMESPACE},
    refusal, wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

/// A berth-managed pod on `node` whose app requests 500m and may use 2 CPUs.
fn pod(name: &str, node: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {keys::MANAGED: "true"}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": images().0,
            "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}, "limits": {"cpu": "2", "memory": "64Mi"}}}]}
    }))?)
}

fn submit(request: serde_json::Value) -> serde_json::Value {
    json!({"metadata": {"annotations": {keys::RESIZE: request.to_string(), keys::RESIZE_STATE: "Created"}}})
}

fn state_is(state: &'static str) -> impl Fn(Option<&Pod>) -> bool {
    move |p: Option<&Pod>| p.and_then(|p| p.annotations().get(keys::RESIZE_STATE).cloned()).as_deref() == Some(state)
}

fn message(p: &Pod) -> String {
    p.annotations().get(keys::RESIZE_MESSAGE).cloned().unwrap_or_default()
}

#[tokio::test]
async fn feasibility_accepts_what_fits_rejects_what_overcommits_and_the_webhook_guards_each_actor() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "resize").await?;
    let pods: Api<Pod> = ns.api();
    for (name, node) in [("fits", "hollow-node-0"), ("greedy", "hollow-node-0"), ("eager", "hollow-node-1")] {
        pods.create(&PostParams::default(), &pod(name, node)?).await?;
    }

    // Fits: 500m -> 800m on an 8-CPU node.
    let grow = json!({"containers": {"app": {"requests": {"cpu": "800m"}}}});
    pods.patch("fits", &PatchParams::default(), &Patch::Merge(submit(grow))).await?;
    let p = wait_for(&pods, "fits", Duration::from_secs(60), "Accepted", state_is("Accepted")).await?;
    assert!(message(&p).starts_with("fits node hollow-node-0: cpu "), "{}", message(&p));
    assert!(p.annotations().contains_key(keys::RESIZE_ACCEPTED_AT), "the acceptance time is recorded");

    // Over-commits: 64 CPUs (its limit raised too, staying Burstable) on an 8-CPU node.
    let huge = json!({"containers": {"app": {"requests": {"cpu": "64"}, "limits": {"cpu": "128"}}}});
    pods.patch("greedy", &PatchParams::default(), &Patch::Merge(submit(huge))).await?;
    let p = wait_for(&pods, "greedy", Duration::from_secs(60), "Rejected", state_is("Rejected")).await?;
    assert!(message(&p).contains("does not fit node hollow-node-0: cpu requests would be"), "{}", message(&p));

    // An oversized payload (valid JSON, padded past the limit) is refused before it is parsed.
    let padded = format!("{}{}", json!({"containers": {"app": {"requests": {"cpu": "600m"}}}}), " ".repeat(20_000));
    let oversized = json!({"metadata": {"annotations": {keys::RESIZE: padded, keys::RESIZE_STATE: "Created"}}});
    let (code, text) = refusal(pods.patch("eager", &PatchParams::default(), &Patch::Merge(oversized)).await)?;
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("bytes; at most 16384 bytes are accepted"), "{text}");

    // A user cannot accept their own request: the webhook refuses. The manager
    // may decide first (then the user's write changes nothing and passes):
    // node 1's agent finishes that request and the user tries again.
    let ask = json!({"containers": {"app": {"requests": {"cpu": "600m"}}}});
    let applied = json!({"metadata": {"annotations": {keys::RESIZE_STATE: "Applied"}}});
    let agent_1: Api<Pod> = Api::namespaced(node_agent::client_of(&client, "hollow-node-1").await?, &ns.name);
    let accept = json!({"metadata": {"annotations": {keys::RESIZE_STATE: "Accepted"}}});
    let mut refused = None;
    for _ in 0..5 {
        pods.patch("eager", &PatchParams::default(), &Patch::Merge(submit(ask.clone()))).await?;
        match pods.patch("eager", &PatchParams::default(), &Patch::Merge(&accept)).await {
            Err(kube::Error::Api(s)) => {
                refused = Some((s.code, s.message));
                break;
            }
            Err(e) => return Err(e.into()),
            Ok(_) => {
                wait_for(&pods, "eager", Duration::from_secs(60), "Accepted", state_is("Accepted")).await?;
                agent_1.patch("eager", &PatchParams::default(), &Patch::Merge(&applied)).await?;
            }
        }
    }
    let (code, text) = refused.expect("the manager decided first five times in a row");
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("is made only by the berth manager"), "{text}");
    let p = wait_for(&pods, "eager", Duration::from_secs(60), "Accepted by the manager", state_is("Accepted")).await?;
    assert_eq!(p.annotations().get(keys::RESIZE).map(String::as_str), Some(ask.to_string().as_str()));

    // The agent of node 0 may not finish the resize of a pod on node 1; node 1's agent may.
    let agent_0: Api<Pod> = Api::namespaced(node_agent::client_of(&client, "hollow-node-0").await?, &ns.name);
    let (code, text) = refusal(agent_0.patch("eager", &PatchParams::default(), &Patch::Merge(applied.clone())).await)?;
    assert_eq!(code, 403, "{text}");
    assert!(
        text.contains("node agent of node hollow-node-0 may not finish a resize of a pod on node hollow-node-1"),
        "{text}"
    );
    agent_1.patch("eager", &PatchParams::default(), &Patch::Merge(applied)).await?;
    assert_eq!(pods.get("eager").await?.annotations().get(keys::RESIZE_STATE).map(String::as_str), Some("Applied"));
    // No agent runs for node 0: "fits" expires to Failed (manager.sh gives a 15 s deadline).
    let p = wait_for(&pods, "fits", Duration::from_secs(60), "expired", state_is("Failed")).await?;
    assert!(
        message(&p).contains("not applied within 15s: is the node agent of hollow-node-0 running?"),
        "{}",
        message(&p)
    );
    let agents: Api<Pod> = Api::namespaced(client.clone(), MANAGER_NAMESPACE);
    for node in ["hollow-node-0", "hollow-node-1"] {
        agents.delete(&node_agent::placeholder_name(node), &Default::default()).await?;
    }
    ns.delete().await
}

#[tokio::test]
async fn the_node_agent_applies_an_accepted_resize_through_the_kubelet() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "resize-apply").await?;
    let pods: Api<Pod> = ns.api();
    pods.create(&PostParams::default(), &pod("grow", "hollow-node-2")?).await?;
    let ready = |p: Option<&Pod>| p.is_some_and(berth_e2e::pod_ready);
    let before = wait_for(&pods, "grow", Duration::from_secs(60), "Ready", ready).await?;
    let _agent = Agent::start(&client, "hollow-node-2").await?;

    let grow = json!({"containers": {"app": {"requests": {"cpu": "800m"}, "limits": {"cpu": "1500m"}}}});
    pods.patch("grow", &PatchParams::default(), &Patch::Merge(submit(grow))).await?;
    let after = wait_for(&pods, "grow", Duration::from_secs(90), "Applied", state_is("Applied")).await?;
    assert!(message(&after).starts_with("applied by the kubelet"), "{}", message(&after));
    let app = after.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.resources.clone()).unwrap();
    assert_eq!(app.requests.unwrap()["cpu"].0, "800m", "the pod's API resources are the request");
    assert_eq!(app.limits.unwrap()["cpu"].0, "1500m");
    let running = container_status(&after, "app").expect("app status");
    let reported = running.resources.clone().unwrap_or_default();
    assert_eq!(reported.requests.unwrap()["cpu"].0, "800m", "the running state is the request");
    assert_eq!(running.restart_count, 0, "no restart");
    assert_eq!(after.uid(), before.uid(), "the same pod");
    ns.delete().await
}
