//! `plan`: dry runs that read the cluster and change nothing.

pub mod inplaceset;
pub mod resize;

use std::collections::BTreeSet;

use berth_api::{InplaceSet, InplaceSetSpec, keys};
use k8s_openapi::{
    api::{
        apps::v1::ControllerRevision,
        core::v1::{Node, Pod},
    },
    jiff::Timestamp,
};
use kube::{Api, Client, ResourceExt, api::ListParams};

use crate::{
    cli::{Output, ResizeRequestArgs},
    error::{Error, Exit, Result},
};

/// The set's spec with these `container=image` changes (containers or init containers).
pub fn with_images(spec: &InplaceSetSpec, images: &[(String, String)]) -> Result<InplaceSetSpec, String> {
    let mut spec = spec.clone();
    let pod = spec.template.spec.get_or_insert_with(Default::default);
    for (name, image) in images {
        let names: Vec<String> =
            pod.init_containers.iter().flatten().chain(&pod.containers).map(|c| c.name.clone()).collect();
        let found = pod.containers.iter_mut().chain(pod.init_containers.iter_mut().flatten()).find(|c| &c.name == name);
        match found {
            Some(c) => c.image = Some(image.clone()),
            None => {
                return Err(format!("--image {name}={image}: no container {name:?}; containers: {}", names.join(", ")));
            }
        }
    }
    Ok(spec)
}

/// The spec of the InplaceSet in `text` (YAML or JSON), which must be set `name`.
pub fn spec_from_file(text: &str, name: &str) -> Result<InplaceSetSpec, String> {
    let set: InplaceSet = serde_yaml::from_str(text).map_err(|e| format!("not an InplaceSet: {e}"))?;
    match set.metadata.name.as_deref() {
        Some(n) if n != name => Err(format!("the file describes InplaceSet {n:?}, not {name:?}")),
        _ => Ok(set.spec),
    }
}

fn read(path: &str) -> Result<String> {
    let text = if path == "-" { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(path) };
    text.map_err(|e| Error::File { path: path.into(), reason: e.to_string() })
}

pub async fn inplaceset(
    client: Client,
    namespace: &str,
    name: &str,
    file: Option<&str>,
    images: &[(String, String)],
    output: Output,
) -> Result<Exit> {
    let sets: Api<InplaceSet> = Api::namespaced(client.clone(), namespace);
    let set = sets.get(name).await.map_err(|e| Error::from_get(e, "InplaceSet", name, namespace))?;
    let new_spec = match (file, images.is_empty()) {
        (Some(path), _) => spec_from_file(&read(path)?, name).map_err(|e| Error::Invalid(format!("{path}: {e}")))?,
        (None, false) => with_images(&set.spec, images).map_err(Error::Invalid)?,
        (None, true) => {
            return Err(Error::Usage("give the new InplaceSet with -f FILE, or --image CONTAINER=IMAGE".into()));
        }
    };
    let by_set = ListParams::default().labels(&format!("{}={name}", keys::INPLACESET_NAME));
    let revisions = Api::<ControllerRevision>::namespaced(client.clone(), namespace).list(&by_set).await?.items;
    let revisions: Vec<_> = revisions
        .into_iter()
        .filter(|r| r.owner_references().iter().any(|o| Some(&o.uid) == set.uid().as_ref()))
        .collect();
    let pods: Vec<Pod> = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&by_set)
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.owner_references().iter().any(|o| Some(&o.uid) == set.uid().as_ref() && o.controller == Some(true))
        })
        .collect();
    let node_names: BTreeSet<String> = pods.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
    let (mut nodes, mut node_pods) = (Vec::new(), Vec::new());
    for node in &node_names {
        let (n, p) = node_and_pods(&client, node).await?;
        nodes.push(n);
        node_pods.extend(p);
    }
    let inputs = inplaceset::Inputs {
        set: &set,
        new_spec: &new_spec,
        pods: &pods,
        revisions: &revisions,
        nodes: &nodes,
        node_pods: &node_pods,
        now: Timestamp::now(),
    };
    let report = inplaceset::plan(&inputs).map_err(|e| Error::Invalid(format!("InplaceSet {name:?}: {e}")))?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print!("{}", inplaceset::render(&report)),
    }
    Ok(if report.ok() { Exit::Success } else { Exit::Failed })
}

async fn node_and_pods(client: &Client, node: &str) -> Result<(Node, Vec<Pod>)> {
    let n = Api::<Node>::all(client.clone()).get(node).await.map_err(|e| Error::from_get(e, "node", node, ""))?;
    let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let pods = Api::<Pod>::all(client.clone()).list(&on_node).await?.items;
    Ok((n, pods))
}

pub async fn resize(client: Client, namespace: &str, args: &ResizeRequestArgs, output: Output) -> Result<Exit> {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(&args.pod)
        .await
        .map_err(|e| Error::from_get(e, "pod", &args.pod, namespace))?;
    let spec = pod.spec.clone().unwrap_or_default();
    let request = crate::resize::request(args, &spec).map_err(|e| Error::Invalid(format!("pod {}: {e}", args.pod)))?;
    let node =
        spec.node_name.clone().ok_or_else(|| Error::Invalid(format!("pod {} is not bound to a node yet", args.pod)))?;
    let (node, node_pods) = node_and_pods(&client, &node).await?;
    let plan = resize::plan(&node, &node_pods, &pod, &request)
        .map_err(|e| Error::Invalid(format!("pod {}: {e}", args.pod)))?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
        Output::Table => print!("{}", resize::render(&plan)),
    }
    Ok(if plan.fits { Exit::Success } else { Exit::Failed })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec() -> InplaceSetSpec {
        serde_json::from_value(json!({"selector": {}, "template": {"spec": {
            "initContainers": [{"name": "proxy", "image": "proxy:1", "restartPolicy": "Always"}],
            "containers": [{"name": "app", "image": "web:1"}]}}}))
        .unwrap()
    }

    #[test]
    fn images_change_named_containers_and_unknown_names_are_refused() {
        let s = with_images(&spec(), &[("app".into(), "web:2".into()), ("proxy".into(), "proxy:2".into())]).unwrap();
        let pod = s.template.spec.unwrap();
        assert_eq!(pod.containers[0].image.as_deref(), Some("web:2"));
        assert_eq!(pod.init_containers.unwrap()[0].image.as_deref(), Some("proxy:2"));
        let err = with_images(&spec(), &[("db".into(), "x".into())]).unwrap_err();
        assert_eq!(err, "--image db=x: no container \"db\"; containers: proxy, app");
    }

    #[test]
    fn a_file_must_be_the_same_set() {
        let yaml = "apiVersion: apps.berth.dev/v1alpha1\nkind: InplaceSet\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {}\n  template: {}\n";
        assert_eq!(spec_from_file(yaml, "web").unwrap().replicas, 2);
        assert_eq!(spec_from_file(yaml, "api").unwrap_err(), "the file describes InplaceSet \"web\", not \"api\"");
        assert!(spec_from_file("kind: [", "web").unwrap_err().starts_with("not an InplaceSet"));
    }
}
