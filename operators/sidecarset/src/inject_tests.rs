use berth_api::sidecarset::InjectedRevisions;
use serde_json::{Value, json};

use super::*;
use crate::revision::revision;

fn candidate(name: &str, spec: Value) -> Candidate {
    let mut spec = spec;
    if spec.get("selector").is_none() {
        spec["selector"] = json!({"matchLabels": {"app": "web"}});
    }
    let spec: SidecarSetSpec = serde_json::from_value(spec).unwrap();
    Candidate { name: name.into(), revision: revision(name, &spec, 0), spec }
}

fn pod(v: Value) -> Pod {
    let mut v = v;
    if v["metadata"]["labels"].is_null() {
        v["metadata"]["labels"] = json!({"app": "web"});
    }
    serde_json::from_value(v).unwrap()
}

fn app_pod() -> Pod {
    pod(json!({
        "metadata": {"name": "web-1"},
        "spec": {
            "initContainers": [{"name": "setup", "image": "setup:1"}],
            "containers": [
                {"name": "app", "image": "app:1",
                 "env": [{"name": "REGION", "value": "eu"}, {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                 "volumeMounts": [{"name": "logs", "mountPath": "/var/log/app"}, {"name": "data", "mountPath": "/data"}]},
                {"name": "worker", "image": "worker:1", "volumeMounts": [{"name": "logs", "mountPath": "/other/logs"}]}
            ],
            "volumes": [{"name": "logs", "emptyDir": {}}, {"name": "data", "emptyDir": {}}]
        }
    }))
}

fn ns() -> BTreeMap<String, String> {
    BTreeMap::from([("kubernetes.io/metadata.name".to_string(), "prod".to_string())])
}

fn names(cs: &[Container]) -> Vec<&str> {
    cs.iter().map(|c| c.name.as_str()).collect()
}

fn spec_of(p: &Pod) -> &k8s_openapi::api::core::v1::PodSpec {
    p.spec.as_ref().unwrap()
}

fn container<'a>(p: &'a Pod, name: &str) -> &'a Container {
    let s = spec_of(p);
    s.init_containers.iter().flatten().chain(&s.containers).find(|c| c.name == name).unwrap()
}

fn record(p: &Pod) -> InjectedRevisions {
    injected_revisions(p.metadata.annotations.as_ref()).unwrap()
}

fn injected(p: &Pod, sets: &[Candidate]) -> Pod {
    inject(p, &ns(), sets).unwrap().pod
}

fn conflict(p: &Pod, sets: &[Candidate]) -> String {
    inject(p, &ns(), sets).unwrap_err().to_string()
}

#[test]
fn sidecars_go_after_or_before_the_app_containers_in_set_name_order() {
    let sets = [
        candidate("b-after", json!({"containers": [{"name": "b1", "image": "b"}]})),
        candidate("a-after", json!({"containers": [{"name": "a1", "image": "a"}, {"name": "a2", "image": "a"}]})),
        candidate(
            "d-before",
            json!({"podInjectPolicy": "BeforeAppContainer", "containers": [{"name": "d1", "image": "d"}]}),
        ),
        candidate(
            "c-before",
            json!({"podInjectPolicy": "BeforeAppContainer", "containers": [{"name": "c1", "image": "c"}]}),
        ),
    ];
    let out = inject(&app_pod(), &ns(), &sets).unwrap();
    assert_eq!(out.injected, ["a-after", "b-after", "c-before", "d-before"]);
    assert_eq!(names(&spec_of(&out.pod).containers), ["c1", "d1", "app", "worker", "a1", "a2", "b1"]);
    assert_eq!(names(spec_of(&out.pod).init_containers.as_ref().unwrap()), ["setup"], "init containers untouched");
}

#[test]
fn native_sidecars_go_before_the_pods_init_containers_and_plain_ones_after() {
    let sets = [
        candidate(
            "mesh",
            json!({"initContainers": [
                {"name": "proxy", "image": "proxy:1", "restartPolicy": "Always"},
                {"name": "mesh-init", "image": "mesh-init:1"}
            ]}),
        ),
        candidate("certs", json!({"initContainers": [{"name": "fetch-certs", "image": "certs:1"}]})),
    ];
    let out = injected(&app_pod(), &sets);
    let s = spec_of(&out);
    assert_eq!(names(s.init_containers.as_ref().unwrap()), ["proxy", "setup", "fetch-certs", "mesh-init"]);
    assert_eq!(names(&s.containers), ["app", "worker"]);
    assert_eq!(record(&out)["mesh"].containers, ["proxy", "mesh-init"]);
}

#[test]
fn the_pod_is_marked_managed_gated_and_records_each_revision() {
    let sets = [candidate("logs", json!({"containers": [{"name": "log", "image": "log:1"}]}))];
    let mut p = app_pod();
    p.metadata.annotations = Some(BTreeMap::from([(
        keys::SIDECARSET_REVISIONS.to_string(),
        json!({"older": {"revision": "older-1", "withoutImage": "x", "containers": []}}).to_string(),
    )]));
    let out = injected(&p, &sets);
    assert_eq!(out.metadata.labels.as_ref().unwrap()[keys::MANAGED], "true");
    assert_eq!(out.metadata.labels.as_ref().unwrap()["app"], "web");
    let gates = spec_of(&out).readiness_gates.as_ref().unwrap();
    assert_eq!(gates.len(), 1);
    assert_eq!(gates[0].condition_type, keys::INPLACE_UPDATE_READY);
    let rec = record(&out);
    assert_eq!(rec.keys().collect::<Vec<_>>(), ["logs", "older"], "merged with what was there");
    assert_eq!(rec["logs"], sets[0].revision);
    assert_eq!(rec["logs"].containers, ["log"]);

    // A pod that already has the gate (an InplaceSet pod) keeps one.
    let mut gated = app_pod();
    gated.spec.as_mut().unwrap().readiness_gates =
        Some(vec![PodReadinessGate { condition_type: keys::INPLACE_UPDATE_READY.into() }]);
    assert_eq!(spec_of(&injected(&gated, &sets)).readiness_gates.as_ref().unwrap().len(), 1);
}

#[test]
fn volumes_are_added_and_an_identical_one_is_kept() {
    let sets = [
        candidate(
            "a",
            json!({"containers": [{"name": "a", "image": "a"}], "volumes": [
                {"name": "shared-conf", "configMap": {"name": "conf"}},
                {"name": "a-cache", "emptyDir": {}}
            ]}),
        ),
        candidate(
            "b",
            json!({"containers": [{"name": "b", "image": "b"}], "volumes": [
                {"name": "shared-conf", "configMap": {"name": "conf"}},
                {"name": "logs", "emptyDir": {}}
            ]}),
        ),
    ];
    let out = injected(&app_pod(), &sets);
    let vols: Vec<&str> = spec_of(&out).volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(vols, ["logs", "data", "shared-conf", "a-cache"]);

    // The pod's volume as the apiserver defaulted it (defaultMode) still counts as the same.
    let mut p = app_pod();
    p.spec.as_mut().unwrap().volumes.as_mut().unwrap().push(
        serde_json::from_value(json!({"name": "shared-conf", "configMap": {"name": "conf", "defaultMode": 420}}))
            .unwrap(),
    );
    let out = injected(&p, &sets);
    assert_eq!(spec_of(&out).volumes.as_ref().unwrap().len(), 4);
}

#[test]
fn a_different_volume_of_the_same_name_is_a_conflict_naming_both_sides() {
    let a = candidate(
        "alpha",
        json!({"containers": [{"name": "a", "image": "a"}], "volumes": [{"name": "conf", "configMap": {"name": "x"}}]}),
    );
    let b = candidate(
        "beta",
        json!({"containers": [{"name": "b", "image": "b"}], "volumes": [{"name": "conf", "configMap": {"name": "y"}}]}),
    );
    assert_eq!(
        conflict(&app_pod(), &[b, a]),
        "volume \"conf\" of SidecarSet beta differs from volume \"conf\" of SidecarSet alpha"
    );
    let own = candidate(
        "gamma",
        json!({"containers": [{"name": "g", "image": "g"}], "volumes": [{"name": "data", "hostPath": {"path": "/d"}}]}),
    );
    assert_eq!(
        conflict(&app_pod(), &[own]),
        "volume \"data\" of SidecarSet gamma differs from the pod's own volume \"data\""
    );
}

#[test]
fn container_name_clashes_name_both_sides() {
    let app = candidate("mesh", json!({"containers": [{"name": "app", "image": "proxy"}]}));
    assert_eq!(
        conflict(&app_pod(), &[app]),
        "container \"app\" of SidecarSet mesh clashes with the pod's own container \"app\""
    );
    let init = candidate("mesh", json!({"initContainers": [{"name": "setup", "image": "proxy"}]}));
    assert_eq!(
        conflict(&app_pod(), &[init]),
        "init container \"setup\" of SidecarSet mesh clashes with the pod's own init container \"setup\""
    );
    let a = candidate("a", json!({"containers": [{"name": "proxy", "image": "p:1"}]}));
    let b = candidate("b", json!({"containers": [{"name": "proxy", "image": "p:2"}]}));
    assert_eq!(
        conflict(&app_pod(), &[a.clone(), b]),
        "container \"proxy\" of SidecarSet b clashes with container \"proxy\" of SidecarSet a"
    );
    let twice = candidate("t", json!({"containers": [{"name": "x", "image": "1"}, {"name": "x", "image": "2"}]}));
    assert_eq!(conflict(&app_pod(), &[twice]), "SidecarSet t injects two containers named \"x\"");
    // Every clash is reported, not just the first.
    let c = candidate("c", json!({"containers": [{"name": "worker", "image": "w"}, {"name": "app", "image": "w"}]}));
    let message = conflict(&app_pod(), &[c]);
    assert!(message.contains("\"worker\" of SidecarSet c") && message.contains("\"app\" of SidecarSet c"), "{message}");
    // The same container from two sets is injected once.
    let same = candidate("z", json!({"containers": [{"name": "proxy", "image": "p:1"}]}));
    let out = inject(&app_pod(), &ns(), &[a, same]).unwrap();
    assert_eq!(names(&spec_of(&out.pod).containers), ["app", "worker", "proxy"]);
    assert_eq!(out.injected, ["a", "z"]);
}

#[test]
fn shared_volumes_mount_the_app_containers_volumes_unless_name_or_path_is_taken() {
    let set = candidate(
        "logs",
        json!({
            "shareVolumePolicy": {"type": "Enabled"},
            "containers": [
                {"name": "agent", "image": "agent:1"},
                {"name": "own-path", "image": "x", "volumeMounts": [{"name": "scratch", "mountPath": "/data"}]},
                {"name": "own-volume", "image": "x", "volumeMounts": [{"name": "logs", "mountPath": "/logs"}]}
            ],
            "volumes": [{"name": "scratch", "emptyDir": {}}]
        }),
    );
    let out = injected(&app_pod(), &[set]);
    let mounts = |name: &str| -> Vec<(String, String)> {
        container(&out, name).volume_mounts.iter().flatten().map(|m| (m.name.clone(), m.mount_path.clone())).collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    };
    // The first app container's path for a volume two app containers mount.
    assert_eq!(mounts("agent"), pairs(&[("logs", "/var/log/app"), ("data", "/data")]));
    assert_eq!(mounts("own-path"), pairs(&[("scratch", "/data"), ("logs", "/var/log/app")]));
    assert_eq!(mounts("own-volume"), pairs(&[("logs", "/logs"), ("data", "/data")]));
    assert_eq!(mounts("app").len(), 2, "app containers untouched");

    let disabled = candidate("plain", json!({"containers": [{"name": "agent", "image": "agent:1"}]}));
    assert_eq!(container(&injected(&app_pod(), &[disabled]), "agent").volume_mounts, None);
}

#[test]
fn env_is_transferred_from_the_app_container_unless_the_sidecar_sets_it() {
    let set = candidate(
        "mesh",
        json!({
            "initContainers": [{"name": "proxy", "image": "p", "restartPolicy": "Always"}],
            "containers": [{"name": "agent", "image": "a", "env": [{"name": "REGION", "value": "own"}]}],
            "transferEnv": [
                {"sourceContainerName": "app", "envName": "REGION"},
                {"sourceContainerName": "app", "envName": "POD_IP"},
                {"sourceContainerName": "app", "envName": "MISSING"},
                {"sourceContainerName": "nonexistent", "envName": "REGION"}
            ]
        }),
    );
    let out = injected(&app_pod(), &[set]);
    let env = |name: &str| json(&container(&out, name).env);
    assert_eq!(
        env("proxy"),
        json!([{"name": "REGION", "value": "eu"}, {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}])
    );
    assert_eq!(
        env("agent"),
        json!([{"name": "REGION", "value": "own"}, {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}])
    );
}

#[test]
fn metadata_patches_retain_or_overwrite() {
    let mut p = app_pod();
    p.metadata.annotations = Some(BTreeMap::from([("team".to_string(), "pod".to_string())]));
    let set = |name: &str, policy: &str, value: &str| {
        candidate(
            name,
            json!({"containers": [{"name": name, "image": "x"}], "patchPodMetadata": [{
                "patchPolicy": policy,
                "annotations": {"team": value, format!("{name}/only"): value},
                "labels": {"app": value, "mesh": value}
            }]}),
        )
    };
    let out = injected(&p, &[set("retain", "Retain", "set")]);
    let (annotations, labels) = (out.metadata.annotations.as_ref().unwrap(), out.metadata.labels.as_ref().unwrap());
    assert_eq!((annotations["team"].as_str(), annotations["retain/only"].as_str()), ("pod", "set"));
    assert_eq!((labels["app"].as_str(), labels["mesh"].as_str()), ("web", "set"));

    let out = injected(&p, &[set("over", "Overwrite", "set")]);
    let (annotations, labels) = (out.metadata.annotations.as_ref().unwrap(), out.metadata.labels.as_ref().unwrap());
    assert_eq!((annotations["team"].as_str(), labels["app"].as_str()), ("set", "set"));
    // berth's own keys are written last, whatever a patch says.
    let sneaky = candidate(
        "sneaky",
        json!({"containers": [{"name": "s", "image": "x"}],
               "patchPodMetadata": [{"patchPolicy": "Overwrite", "labels": {keys::MANAGED: "no"}}]}),
    );
    assert_eq!(injected(&p, &[sneaky]).metadata.labels.unwrap()[keys::MANAGED], "true");
}

#[test]
fn injection_is_idempotent() {
    let sets = [
        candidate(
            "mesh",
            json!({"podInjectPolicy": "BeforeAppContainer", "shareVolumePolicy": {"type": "Enabled"},
                   "initContainers": [{"name": "proxy", "image": "p", "restartPolicy": "Always"}],
                   "containers": [{"name": "agent", "image": "a"}], "volumes": [{"name": "certs", "emptyDir": {}}],
                   "transferEnv": [{"sourceContainerName": "app", "envName": "REGION"}],
                   "patchPodMetadata": [{"annotations": {"mesh": "on"}}]}),
        ),
        candidate("logs", json!({"containers": [{"name": "log", "image": "l"}]})),
    ];
    let once = inject(&app_pod(), &ns(), &sets).unwrap();
    assert_eq!(once.injected, ["logs", "mesh"]);
    let twice = inject(&once.pod, &ns(), &sets).unwrap();
    assert_eq!(twice.pod, once.pod);
    assert!(twice.injected.is_empty());

    // A recorded set is skipped even if its content changed since.
    let changed = candidate("logs", json!({"containers": [{"name": "log", "image": "l2"}]}));
    assert_eq!(inject(&once.pod, &ns(), &[changed]).unwrap().pod, once.pod);

    // A pod carrying the set's containers (same names and images) without a record is left alone.
    let mut copied = once.pod.clone();
    copied.metadata.annotations = None;
    copied.metadata.labels.as_mut().unwrap().remove(keys::MANAGED);
    let out = inject(&copied, &ns(), &sets).unwrap();
    assert!(out.injected.is_empty());
    assert_eq!(out.pod, copied);
}

#[test]
fn a_set_recorded_earlier_counts_its_containers_as_sidecars() {
    let first = candidate("a", json!({"containers": [{"name": "log", "image": "l"}]}));
    let once = injected(&app_pod(), &[first]);
    // A second set sharing volumes and transferring env ignores the first set's sidecar.
    let second = candidate(
        "b",
        json!({"shareVolumePolicy": {"type": "Enabled"}, "containers": [{"name": "log", "image": "other"}]}),
    );
    assert_eq!(
        conflict(&once, &[second]),
        "container \"log\" of SidecarSet b clashes with container \"log\" of SidecarSet a"
    );
    let third =
        candidate("c", json!({"shareVolumePolicy": {"type": "Enabled"}, "containers": [{"name": "m", "image": "m"}]}));
    let out = injected(&once, &[third]);
    assert_eq!(names(&spec_of(&out).containers), ["app", "worker", "log", "m"]);
    assert_eq!(record(&out).keys().collect::<Vec<_>>(), ["a", "c"]);
}

#[test]
fn selectors_namespace_selectors_and_pause_decide_which_sets_apply() {
    let base = json!({"containers": [{"name": "s", "image": "x"}]});
    let with = |extra: Value| {
        let mut v = base.clone();
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        candidate("set", v)
    };
    let untouched = |c: Candidate| {
        let out = inject(&app_pod(), &ns(), &[c]).unwrap();
        out.injected.is_empty() && out.pod == app_pod()
    };
    assert!(!untouched(with(json!({}))));
    assert!(untouched(with(json!({"selector": {"matchLabels": {"app": "db"}}}))));
    assert!(!untouched(with(json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "prod"}}}))));
    assert!(untouched(with(json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dev"}}}))));
    assert!(untouched(with(
        json!({"namespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}})
    )));
    assert!(untouched(with(json!({"injectionStrategy": {"paused": true}}))));
    assert!(!untouched(with(json!({"injectionStrategy": {"paused": false}}))));
    // A malformed selector matches nothing.
    assert!(untouched(with(json!({"selector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}))));
}

#[test]
fn an_unreadable_record_is_refused_only_when_a_set_applies() {
    let mut p = app_pod();
    p.metadata.annotations = Some(BTreeMap::from([(keys::SIDECARSET_REVISIONS.to_string(), "nope".to_string())]));
    let set = candidate("logs", json!({"containers": [{"name": "log", "image": "l"}]}));
    assert!(conflict(&p, &[set]).contains("is not a sidecar record"));
    let other = candidate(
        "db",
        json!({"selector": {"matchLabels": {"app": "db"}}, "containers": [{"name": "l", "image": "l"}]}),
    );
    assert_eq!(inject(&p, &ns(), &[other]).unwrap().pod, p);
}
