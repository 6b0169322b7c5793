//! `resize`: the [`ResizeRequest`] from the flags, submitted on the pod as
//! the API crate's state machine says (Submit: state Created), then followed
//! through a watch until Applied, Rejected or Failed. Pure parts first.

use std::{collections::BTreeMap, time::Duration};

use berth_api::{
    keys, quantity,
    resize::{ContainerResources, CpusetPolicy, ResizeEvent, ResizeRequest, ResizeState, transition},
    resize_pod,
};
use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{Pod, PodSpec},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{watcher, watcher::Event},
};
use serde_json::{Value, json};

use crate::{
    cli::ResizeRequestArgs,
    error::{Error, Exit, Result},
};

/// The request the flags describe for a pod with `spec`, checked as the
/// webhook will check it (the container exists, quantities parse, limits
/// cover requests, the QoS class stays).
pub fn request(args: &ResizeRequestArgs, spec: &PodSpec) -> Result<ResizeRequest, String> {
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    let container = match (&args.container, names.as_slice()) {
        (Some(c), _) => c.clone(),
        (None, [only]) => only.to_string(),
        (None, _) => {
            return Err(format!("the pod has several containers; name one with --container: {}", names.join(", ")));
        }
    };
    let mut resources = ContainerResources::default();
    for (flag, value, limit, resource) in [
        ("--cpu", &args.cpu, false, "cpu"),
        ("--memory", &args.memory, false, "memory"),
        ("--limits-cpu", &args.limits_cpu, true, "cpu"),
        ("--limits-memory", &args.limits_memory, true, "memory"),
    ] {
        if let Some(v) = value {
            let q = Quantity(v.clone());
            quantity::amount(resource, &q).map_err(|e| format!("{flag}: {e}"))?;
            let map = if limit { &mut resources.limits } else { &mut resources.requests };
            map.insert(resource.to_string(), q);
        }
    }
    let mut req = ResizeRequest::default();
    if !resources.requests.is_empty() || !resources.limits.is_empty() {
        req.containers = BTreeMap::from([(container, resources)]);
    }
    req.cpuset = args.exclusive_cpus.map(|n| CpusetPolicy { exclusive_cpus: n });
    if req.containers.is_empty() && req.cpuset.is_none() {
        return Err("nothing to change: give --cpu, --memory, --limits-cpu, --limits-memory or --exclusive-cpus".into());
    }
    // The API crate's own parser is the authority on the payload's shape.
    let checked: ResizeRequest = annotation(&req).parse().map_err(|e: berth_api::resize::ResizeError| e.to_string())?;
    resize_pod::check(spec, &checked)?;
    Ok(checked)
}

/// The annotation value of a request.
pub fn annotation(req: &ResizeRequest) -> String {
    serde_json::to_string(req).expect("a ResizeRequest serializes")
}

/// The pod's resize state, if any.
pub fn state_of(pod: &Pod) -> Result<Option<ResizeState>, String> {
    pod.annotations().get(keys::RESIZE_STATE).map(|s| s.parse::<ResizeState>().map_err(|e| e.to_string())).transpose()
}

/// The merge patch submitting `req` on `pod`: legal only when no request is in
/// flight (the state machine's Submit); the last request's message goes.
pub fn submit_patch(pod: &Pod, req: &ResizeRequest) -> Result<Value, String> {
    let from = state_of(pod)?;
    let to = transition(from, ResizeEvent::Submit).map_err(|e| format!("pod {}: {e}", pod.name_any()))?;
    Ok(json!({"metadata": {"resourceVersion": pod.resource_version(), "annotations": {
        keys::RESIZE: annotation(req),
        keys::RESIZE_STATE: to.map(ResizeState::as_str),
        keys::RESIZE_MESSAGE: null,
    }}}))
}

/// How a request that reached `state` ends the command, if it does.
pub fn outcome(state: ResizeState) -> Option<Exit> {
    match state {
        ResizeState::Applied => Some(Exit::Success),
        ResizeState::Rejected | ResizeState::Failed => Some(Exit::Failed),
        ResizeState::Created | ResizeState::Accepted => None,
    }
}

/// One line per state: the state and, from the manager or node agent, why.
pub fn transition_line(pod: &str, state: ResizeState, message: Option<&str>) -> String {
    match message.filter(|m| !m.is_empty() && state != ResizeState::Created) {
        Some(m) => format!("pod/{pod} resize {state}: {m}"),
        None => format!("pod/{pod} resize {state}"),
    }
}

pub async fn run(
    client: Client,
    namespace: &str,
    args: &ResizeRequestArgs,
    wait: bool,
    timeout: Duration,
) -> Result<Exit> {
    let api: Api<Pod> = Api::namespaced(client, namespace);
    // Guarded by the pod's resourceVersion; the kubelet writes pods often, so a
    // conflict is read again (and checked again: no request in flight) a few times.
    let mut attempt = 0;
    let (req, submitted) = loop {
        attempt += 1;
        let pod = api.get(&args.pod).await.map_err(|e| Error::from_get(e, "pod", &args.pod, namespace))?;
        let spec = pod.spec.clone().unwrap_or_default();
        let req = request(args, &spec).map_err(|e| Error::Invalid(format!("pod {}: {e}", args.pod)))?;
        let patch = submit_patch(&pod, &req).map_err(Error::Invalid)?;
        match api.patch(&args.pod, &PatchParams::default(), &Patch::Merge(patch)).await {
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => continue,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Err(Error::Invalid(format!(
                    "pod {} kept changing while submitting ({attempt} attempts); run the command again",
                    args.pod
                )));
            }
            r => break (req, r?),
        }
    };
    let mut last = state_of(&submitted).map_err(Error::Invalid)?;
    println!("pod/{} resize submitted: {}", args.pod, annotation(&req));
    if let Some(s) = last {
        println!("{}", transition_line(&args.pod, s, None));
    }
    if !wait {
        return Ok(Exit::Success);
    }
    follow(&api, &args.pod, &mut last, timeout).await
}

/// Prints each state the request goes through until a terminal one.
async fn follow(api: &Api<Pod>, name: &str, last: &mut Option<ResizeState>, timeout: Duration) -> Result<Exit> {
    // A quorum read to start from: a cached, older pod could show the last request's end state.
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .list_semantic(watcher::ListSemantic::MostRecent);
    let mut events = Box::pin(watcher(api.clone(), config));
    let deadline = (!timeout.is_zero()).then(|| tokio::time::Instant::now() + timeout);
    loop {
        let next = match deadline {
            Some(at) => match tokio::time::timeout_at(at, events.next()).await {
                Ok(next) => next,
                Err(_) => {
                    let at = last.map_or("(none)", ResizeState::as_str);
                    eprintln!("error: timed out after {timeout:?}; the resize of pod/{name} is still {at}");
                    return Ok(Exit::Timeout);
                }
            },
            None => events.next().await,
        };
        let pod = match next {
            None => return Err(Error::Invalid("the watch ended".into())),
            Some(Err(e)) => {
                eprintln!("warning: watch: {e} (retrying)");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Some(Ok(Event::Delete(_))) => return Err(Error::Invalid(format!("pod {name} was deleted"))),
            Some(Ok(Event::Apply(p) | Event::InitApply(p))) => p,
            Some(Ok(_)) => continue,
        };
        let state = state_of(&pod).map_err(Error::Invalid)?;
        if state != *last {
            let Some(s) = state else {
                return Err(Error::Invalid(format!("the resize request of pod/{name} was withdrawn")));
            };
            println!("{}", transition_line(name, s, pod.annotations().get(keys::RESIZE_MESSAGE).map(String::as_str)));
            *last = state;
            if let Some(exit) = outcome(s) {
                return Ok(exit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec() -> PodSpec {
        serde_json::from_value(json!({"containers": [
            {"name": "app", "image": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}}},
            {"name": "log", "image": "l", "resources": {"requests": {"cpu": "50m"}}}]}))
        .unwrap()
    }

    fn args(container: Option<&str>) -> ResizeRequestArgs {
        ResizeRequestArgs { pod: "web-0".into(), container: container.map(String::from), ..Default::default() }
    }

    #[test]
    fn flags_become_the_api_crates_payload() {
        let a = ResizeRequestArgs {
            cpu: Some("500m".into()),
            memory: Some("96Mi".into()),
            limits_cpu: Some("2".into()),
            ..args(Some("app"))
        };
        let req = request(&a, &spec()).unwrap();
        assert_eq!(
            annotation(&req),
            r#"{"containers":{"app":{"requests":{"cpu":"500m","memory":"96Mi"},"limits":{"cpu":"2"}}}}"#
        );
        let pinned = ResizeRequestArgs { exclusive_cpus: Some(2), ..args(Some("app")) };
        assert_eq!(annotation(&request(&pinned, &spec()).unwrap()), r#"{"cpuset":{"exclusiveCpus":2}}"#);
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        let cases = [
            (ResizeRequestArgs { cpu: Some("1".into()), ..args(None) }, "name one with --container: app, log"),
            (args(Some("app")), "nothing to change"),
            (ResizeRequestArgs { cpu: Some("lots".into()), ..args(Some("app")) }, "--cpu: \"lots\" is not a quantity"),
            (
                ResizeRequestArgs { cpu: Some("1".into()), ..args(Some("db")) },
                "container \"db\" is not in the pod; its containers: app, log",
            ),
            (ResizeRequestArgs { cpu: Some("2".into()), ..args(Some("app")) }, "cpu request 2 exceeds its limit 1"),
        ];
        for (a, want) in cases {
            let err = request(&a, &spec()).unwrap_err();
            assert!(err.contains(want), "{a:?}: {err}");
        }
    }

    fn pod(state: Option<&str>) -> Pod {
        let mut annotations = json!({});
        if let Some(s) = state {
            annotations = json!({keys::RESIZE_STATE: s, keys::RESIZE_MESSAGE: "old"});
        }
        serde_json::from_value(
            json!({"metadata": {"name": "web-0", "resourceVersion": "9", "annotations": annotations}}),
        )
        .unwrap()
    }

    #[test]
    fn submitting_follows_the_state_machine() {
        let req: ResizeRequest = r#"{"containers":{"app":{"requests":{"cpu":"500m"}}}}"#.parse().unwrap();
        for from in [None, Some("Applied"), Some("Rejected"), Some("Failed")] {
            let patch = submit_patch(&pod(from), &req).unwrap();
            assert_eq!(
                patch,
                json!({"metadata": {"resourceVersion": "9", "annotations": {
                    "berth.dev/resize": r#"{"containers":{"app":{"requests":{"cpu":"500m"}}}}"#,
                    "berth.dev/resize-state": "Created", "berth.dev/resize-message": null}}}),
                "{from:?}"
            );
        }
        let err = submit_patch(&pod(Some("Accepted")), &req).unwrap_err();
        assert!(
            err.starts_with("pod web-0: resize event Submit is not allowed in state Accepted; a request is in flight"),
            "{err}"
        );
        assert!(submit_patch(&pod(Some("done")), &req).unwrap_err().contains("unknown resize state \"done\""));
    }

    #[test]
    fn each_end_state_has_its_exit_code_and_lines_carry_the_message() {
        assert_eq!(outcome(ResizeState::Applied), Some(Exit::Success));
        assert_eq!(outcome(ResizeState::Rejected), Some(Exit::Failed));
        assert_eq!(outcome(ResizeState::Failed), Some(Exit::Failed));
        assert_eq!(outcome(ResizeState::Accepted), None);
        assert_eq!(outcome(ResizeState::Created), None);
        assert_eq!(
            transition_line("web-0", ResizeState::Accepted, Some("fits node n1: cpu 900m of 8000m")),
            "pod/web-0 resize Accepted: fits node n1: cpu 900m of 8000m"
        );
        assert_eq!(transition_line("web-0", ResizeState::Created, Some("stale")), "pod/web-0 resize Created");
    }
}
