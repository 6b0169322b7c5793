//! Classifies the change between two pod templates.

use std::collections::BTreeMap;

use berth_api::{
    resize::{ContainerResources, RESIZABLE_RESOURCES, ResizeRequest},
    resize_pod,
};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, ResourceRequirements};
use serde_json::Value;

/// What moving a pod from one template to another takes.
#[derive(Clone, Debug, PartialEq)]
pub enum UpdatePlan {
    /// The templates are the same.
    Unchanged,
    /// The kubelet can apply the change to the running pod.
    InPlace(InPlaceChanges),
    /// Only a new pod can carry the change; each reason names a field.
    Recreate(Vec<String>),
}

/// The parts of a pod an in-place update changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InPlaceChanges {
    /// Container name → new image (app containers and native sidecars).
    pub images: BTreeMap<String, String>,
    /// Label → new value, or `None` to remove it.
    pub labels: BTreeMap<String, Option<String>>,
    /// Annotation → new value, or `None` to remove it.
    pub annotations: BTreeMap<String, Option<String>>,
    /// Container name → new cpu/memory requests and limits: carried out as a
    /// resize request (berth.dev/resize) before the rest of the update.
    pub resources: BTreeMap<String, ContainerResources>,
}

impl InPlaceChanges {
    pub fn is_empty(&self) -> bool {
        self.images.is_empty() && self.labels.is_empty() && self.annotations.is_empty() && self.resources.is_empty()
    }

    /// The resize request carrying [`Self::resources`], if any.
    pub fn resize_request(&self) -> Option<ResizeRequest> {
        (!self.resources.is_empty()).then(|| ResizeRequest { containers: self.resources.clone(), cpuset: None })
    }

    /// The same changes without the resources (what follows the resize).
    pub fn without_resources(&self) -> Self {
        Self { resources: BTreeMap::new(), ..self.clone() }
    }
}

/// Decides how a pod created from `old` moves to `new`.
pub fn plan_update(old: &PodTemplateSpec, new: &PodTemplateSpec) -> UpdatePlan {
    if old == new {
        return UpdatePlan::Unchanged;
    }
    let mut reasons = Vec::new();
    let mut changes = InPlaceChanges::default();

    let (old_meta, new_meta) = (old.metadata.clone().unwrap_or_default(), new.metadata.clone().unwrap_or_default());
    changes.labels = map_changes(old_meta.labels.as_ref(), new_meta.labels.as_ref());
    changes.annotations = map_changes(old_meta.annotations.as_ref(), new_meta.annotations.as_ref());
    let strip = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        let mut m = m.clone();
        m.labels = None;
        m.annotations = None;
        m
    };
    if strip(&old_meta) != strip(&new_meta) {
        reasons.push("template metadata other than labels and annotations changed".to_string());
    }

    let (old_spec, new_spec) = (old.spec.clone().unwrap_or_default(), new.spec.clone().unwrap_or_default());
    compare_containers("containers", &old_spec.containers, &new_spec.containers, true, &mut changes, &mut reasons);
    compare_containers(
        "initContainers",
        old_spec.init_containers.as_deref().unwrap_or_default(),
        new_spec.init_containers.as_deref().unwrap_or_default(),
        false,
        &mut changes,
        &mut reasons,
    );
    let rest = |spec: &k8s_openapi::api::core::v1::PodSpec| {
        let mut v = serde_json::to_value(spec).expect("PodSpec serializes");
        if let Value::Object(map) = &mut v {
            map.remove("containers");
            map.remove("initContainers");
        }
        v
    };
    for field in differing_fields(&rest(&old_spec), &rest(&new_spec)) {
        reasons.push(format!("spec.{field} changed"));
    }

    if let Some(request) = changes.resize_request()
        && let Err(why) = resizable(&old_spec, &new_spec, &request)
    {
        reasons.push(why);
    }

    if !reasons.is_empty() {
        UpdatePlan::Recreate(reasons)
    } else if changes.is_empty() {
        UpdatePlan::Unchanged
    } else {
        UpdatePlan::InPlace(changes)
    }
}

/// Containers must keep their names and order; only images may change, and
/// for init containers only those of native sidecars (restartPolicy Always),
/// the only init containers the kubelet restarts.
fn compare_containers(
    list: &str,
    old: &[Container],
    new: &[Container],
    all_restartable: bool,
    changes: &mut InPlaceChanges,
    reasons: &mut Vec<String>,
) {
    let names = |cs: &[Container]| cs.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    if names(old) != names(new) {
        reasons.push(format!("spec.{list} added, removed or reordered ({:?} → {:?})", names(old), names(new)));
        return;
    }
    for (o, n) in old.iter().zip(new) {
        let restartable = all_restartable || n.restart_policy.as_deref() == Some("Always");
        if o.image != n.image {
            match (&n.image, restartable) {
                (Some(image), true) => {
                    changes.images.insert(n.name.clone(), image.clone());
                }
                _ => reasons.push(format!("spec.{list}[{}].image changed on a container that runs once", n.name)),
            }
        }
        if o.resources != n.resources {
            match (resource_change(o.resources.as_ref(), n.resources.as_ref()), all_restartable) {
                (Ok(change), true) => {
                    changes.resources.insert(n.name.clone(), change);
                }
                (Ok(_), false) => reasons.push(format!("spec.{list}[{}].resources changed", n.name)),
                (Err(why), _) => reasons.push(format!("spec.{list}[{}].resources: {why}", n.name)),
            }
        }
        let without_image = |c: &Container| {
            let plain = Container { image: None, resources: None, ..c.clone() };
            let mut v = serde_json::to_value(plain).expect("Container serializes");
            if let Value::Object(map) = &mut v {
                map.remove("name");
            }
            v
        };
        for field in differing_fields(&without_image(o), &without_image(n)) {
            reasons.push(format!("spec.{list}[{}].{field} changed", n.name));
        }
    }
}

/// The new cpu/memory values of a container whose resources changed, or why
/// only a recreate can change them.
fn resource_change(
    old: Option<&ResourceRequirements>,
    new: Option<&ResourceRequirements>,
) -> Result<ContainerResources, String> {
    let (old, new) = (old.cloned().unwrap_or_default(), new.cloned().unwrap_or_default());
    if old.claims != new.claims {
        return Err("claims changed".into());
    }
    let mut out = ContainerResources::default();
    for (kind, before, after, into) in [
        ("requests", &old.requests, &new.requests, &mut out.requests),
        ("limits", &old.limits, &new.limits, &mut out.limits),
    ] {
        let (before, after) = (before.clone().unwrap_or_default(), after.clone().unwrap_or_default());
        for name in before.keys().chain(after.keys()) {
            if before.get(name) == after.get(name) {
                continue;
            }
            if !RESIZABLE_RESOURCES.contains(&name.as_str()) {
                return Err(format!("{kind}.{name} changed; only cpu and memory change in place"));
            }
            match after.get(name) {
                Some(q) => {
                    into.insert(name.clone(), q.clone());
                }
                None => return Err(format!("{kind}.{name} removed; a resize can change a value, not remove it")),
            }
        }
    }
    Ok(out)
}

/// Whether the pod can take `request` as a resize (QoS class kept, limits
/// cover requests): else the reason a recreate is needed.
fn resizable(old: &PodSpec, new: &PodSpec, request: &ResizeRequest) -> Result<(), String> {
    resize_pod::check(old, request).map_err(|e| format!("spec.containers resources: {e}"))?;
    // What the request yields must be the new template's values exactly.
    let after = resize_pod::resized(old, request)?;
    for c in &new.containers {
        if request.containers.contains_key(&c.name) && Some(&after[&c.name]) != c.resources.as_ref() {
            return Err(format!("spec.containers[{}].resources cannot be reached by a resize", c.name));
        }
    }
    Ok(())
}

fn map_changes(
    old: Option<&BTreeMap<String, String>>,
    new: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, Option<String>> {
    let (empty_old, empty_new) = (BTreeMap::new(), BTreeMap::new());
    let (old, new) = (old.unwrap_or(&empty_old), new.unwrap_or(&empty_new));
    let mut out: BTreeMap<_, _> =
        new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
    out.extend(old.keys().filter(|k| !new.contains_key(*k)).map(|k| (k.clone(), None)));
    out
}

/// Top-level keys whose values differ between two JSON objects, sorted.
fn differing_fields(old: &Value, new: &Value) -> Vec<String> {
    let (empty_old, empty_new) = (serde_json::Map::new(), serde_json::Map::new());
    let old = old.as_object().unwrap_or(&empty_old);
    let new = new.as_object().unwrap_or(&empty_new);
    let mut keys: Vec<_> = old.keys().chain(new.keys()).filter(|k| old.get(*k) != new.get(*k)).cloned().collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(v: Value) -> PodTemplateSpec {
        serde_json::from_value(v).unwrap()
    }

    fn base() -> Value {
        json!({
            "metadata": {"labels": {"app": "web", "tier": "front"}, "annotations": {"note": "a"}},
            "spec": {
                "containers": [
                    {"name": "app", "image": "web:1", "resources": {"limits": {"cpu": "1"}}},
                    {"name": "log", "image": "log:1"}
                ],
                "initContainers": [
                    {"name": "init", "image": "init:1"},
                    {"name": "proxy", "image": "proxy:1", "restartPolicy": "Always"}
                ],
                "nodeSelector": {"disk": "ssd"}
            }
        })
    }

    fn plan(change: impl FnOnce(&mut Value)) -> UpdatePlan {
        let mut new = base();
        change(&mut new);
        plan_update(&template(base()), &template(new))
    }

    #[test]
    fn the_same_template_is_unchanged() {
        assert_eq!(plan(|_| {}), UpdatePlan::Unchanged);
    }

    #[test]
    fn image_and_metadata_changes_go_in_place() {
        let got = plan(|t| {
            t["spec"]["containers"][0]["image"] = json!("web:2");
            t["spec"]["initContainers"][1]["image"] = json!("proxy:2");
            t["metadata"]["labels"]["tier"] = json!("edge");
            t["metadata"]["labels"]["new"] = json!("x");
            t["metadata"]["annotations"] = json!({});
        });
        let UpdatePlan::InPlace(changes) = got else { panic!("{got:?}") };
        assert_eq!(
            changes.images,
            BTreeMap::from([("app".into(), "web:2".into()), ("proxy".into(), "proxy:2".into())])
        );
        assert_eq!(
            changes.labels,
            BTreeMap::from([("new".into(), Some("x".into())), ("tier".into(), Some("edge".into()))])
        );
        assert_eq!(changes.annotations, BTreeMap::from([("note".into(), None)]));
    }

    #[test]
    fn a_cpu_or_memory_change_goes_in_place_as_a_resize_with_the_images() {
        let got = plan(|t| {
            t["spec"]["containers"][0]["image"] = json!("web:2");
            t["spec"]["containers"][0]["resources"] = json!({"limits": {"cpu": "2"}, "requests": {"memory": "1Gi"}});
            t["spec"]["containers"][1]["resources"] = json!({"requests": {"cpu": "100m"}});
        });
        let UpdatePlan::InPlace(changes) = got else { panic!("{got:?}") };
        assert_eq!(changes.images, BTreeMap::from([("app".into(), "web:2".into())]));
        let request = changes.resize_request().unwrap();
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"containers": {
                "app": {"limits": {"cpu": "2"}, "requests": {"memory": "1Gi"}},
                "log": {"requests": {"cpu": "100m"}}
            }})
        );
        assert!(changes.without_resources().resize_request().is_none());
        assert_eq!(changes.without_resources().images, changes.images);
    }

    #[test]
    fn every_other_change_recreates_and_names_the_field() {
        type Case = (fn(&mut Value), &'static str);
        let cases: Vec<Case> = vec![
            (
                |t| t["spec"]["containers"][0]["resources"]["limits"]["ephemeral-storage"] = json!("2Gi"),
                "spec.containers[app].resources: limits.ephemeral-storage changed; only cpu and memory change in place",
            ),
            (
                |t| t["spec"]["containers"][0]["resources"] = json!({}),
                "spec.containers[app].resources: limits.cpu removed; a resize can change a value, not remove it",
            ),
            (
                |t| t["spec"]["initContainers"][1]["resources"] = json!({"limits": {"cpu": "1"}}),
                "spec.initContainers[proxy].resources changed",
            ),
            (
                // Every container gets equal requests and limits: Burstable → Guaranteed.
                |t| {
                    t["spec"]["containers"][0]["resources"] = json!({"limits": {"cpu": "1", "memory": "1Gi"}});
                    t["spec"]["containers"][1]["resources"] = json!({"limits": {"cpu": "1", "memory": "1Gi"}});
                },
                "spec.containers resources: the pod's QoS class would change from Burstable to Guaranteed; a resize \
                 must keep it (Guaranteed: requests equal limits for cpu and memory in every container)",
            ),
            (
                |t| t["spec"]["containers"][1]["env"] = json!([{"name": "A", "value": "1"}]),
                "spec.containers[log].env changed",
            ),
            (|t| t["spec"]["nodeSelector"]["disk"] = json!("hdd"), "spec.nodeSelector changed"),
            (
                |t| t["spec"]["initContainers"][0]["image"] = json!("init:2"),
                "spec.initContainers[init].image changed on a container that runs once",
            ),
            (
                |t| t["spec"]["containers"].as_array_mut().unwrap().reverse(),
                "spec.containers added, removed or reordered ([\"app\", \"log\"] → [\"log\", \"app\"])",
            ),
            (
                |t| t["metadata"]["finalizers"] = json!(["x"]),
                "template metadata other than labels and annotations changed",
            ),
        ];
        for (change, reason) in cases {
            assert_eq!(plan(change), UpdatePlan::Recreate(vec![reason.to_string()]), "{reason}");
        }
    }

    #[test]
    fn a_mixed_change_recreates_with_every_reason() {
        let got = plan(|t| {
            t["spec"]["containers"][0]["image"] = json!("web:2");
            t["spec"]["containers"][0]["command"] = json!(["run"]);
            t["spec"]["hostNetwork"] = json!(true);
        });
        assert_eq!(
            got,
            UpdatePlan::Recreate(vec![
                "spec.containers[app].command changed".into(),
                "spec.hostNetwork changed".into()
            ])
        );
    }
}
