//! berth's API: CRD types, annotation and label keys, and the state machines
//! every component shares. Webhooks, controllers, the node agent, the CRD YAML
//! (through `crdgen`) and the docs all derive from this crate; nothing else
//! spells a key or a legal transition.

// kube-derive repeats `printcolumn(type_ = ..)` keys, which this lint misreads.
#![allow(clippy::duplicated_attributes)]

pub mod inplace;
pub mod inplaceset;
pub mod keys;
pub mod lifecycle;
pub mod quantity;
pub mod resize;
pub mod resize_pod;
pub mod selector;
pub mod sidecarset;

pub use inplaceset::{InplaceSet, InplaceSetSpec, InplaceSetStatus};
pub use sidecarset::{SidecarSet, SidecarSetSpec, SidecarSetStatus};

/// API group of every berth custom resource.
pub const GROUP: &str = "apps.berth.dev";
/// The one served (and stored) version.
pub const VERSION: &str = "v1alpha1";

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// Every CRD this crate defines, in install order: what `crdgen` writes.
pub fn crds() -> Vec<CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![
        compact(InplaceSet::crd(), &["spec.template", "spec.volumeClaimTemplates"]),
        compact(SidecarSet::crd(), &["spec.containers", "spec.initContainers", "spec.volumes"]),
    ]
}

/// Drops the descriptions *inside* embedded core types (pod template,
/// containers, volumes): upstream documents them, and with them a CRD exceeds
/// the 256 KiB annotation that `kubectl apply` writes. Field structure, and so
/// validation and pruning, is untouched. Also joins the doc comments' wrapped
/// lines, which `kubectl explain` would otherwise print as hard breaks.
fn compact(crd: CustomResourceDefinition, paths: &[&str]) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes to JSON");
    for version in value["spec"]["versions"].as_array_mut().into_iter().flatten() {
        unwrap_descriptions(&mut version["schema"]["openAPIV3Schema"]);
        for path in paths {
            let mut node = &mut version["schema"]["openAPIV3Schema"];
            for field in path.split('.') {
                node = &mut node["properties"][field];
            }
            assert!(node.is_object(), "compact: {path} is not in the schema");
            for child in node.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
                strip_descriptions(child);
            }
        }
    }
    serde_json::from_value(value).expect("a CRD round-trips through JSON")
}

fn unwrap_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(text) if key == "description" => *text = unwrap_lines(text),
                    _ => unwrap_descriptions(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// Joins the lines of each paragraph; paragraphs stay apart.
fn unwrap_lines(text: &str) -> String {
    text.split("\n\n").map(|p| p.lines().map(str::trim).collect::<Vec<_>>().join(" ")).collect::<Vec<_>>().join("\n\n")
}

fn strip_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("description");
            map.values_mut().for_each(strip_descriptions);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    /// `kubectl apply` (client side) stores the object in a 256 KiB annotation.
    #[test]
    fn every_crd_fits_the_last_applied_annotation() {
        for crd in super::crds() {
            let size = serde_json::to_vec(&crd).unwrap().len();
            assert!(size < 200 * 1024, "{:?} is {size} bytes", crd.metadata.name);
        }
    }

    #[test]
    fn descriptions_are_unwrapped_into_paragraphs() {
        assert_eq!(
            super::unwrap_lines("a count, or a percent\nof replicas.\n\nDefaults to 0."),
            "a count, or a percent of replicas.\n\nDefaults to 0."
        );
        let crd = serde_json::to_string(&super::crds()[0]).unwrap();
        assert!(crd.contains(
            "The first `partition` pods in ordinal order keep the old revision: a count, or a percent of replicas"
        ));
    }

    #[test]
    fn embedded_types_keep_their_structure_and_own_description() {
        let crd = serde_json::to_value(&super::crds()[0]).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let template = &spec["properties"]["template"];
        assert!(template["description"].as_str().unwrap().starts_with("Pod template"));
        let containers = &template["properties"]["spec"]["properties"]["containers"];
        assert_eq!(containers["type"], "array");
        assert!(containers.get("description").is_none());
        assert!(containers["items"]["properties"]["image"].is_object());
        assert!(spec["properties"]["updateStrategy"]["description"].is_string());
    }
}
