//! `describe inplaceset|pod`: berth's state machines, as `kubectl describe` lays things out.

pub mod inplaceset;
pub mod pod;

use berth_api::{InplaceSet, keys};
use k8s_openapi::{
    api::{apps::v1::ControllerRevision, core::v1::Pod},
    jiff::Timestamp,
};
use kube::{Api, Client, ResourceExt, api::ListParams};

use crate::{
    cli::{Kind, Output},
    error::{Error, Exit, Result},
};

pub async fn run(client: Client, namespace: &str, kind: Kind, name: &str, output: Output) -> Result<Exit> {
    let text = match kind {
        Kind::Pod => {
            let api: Api<Pod> = Api::namespaced(client, namespace);
            let pod = api.get(name).await.map_err(|e| Error::from_get(e, "pod", name, namespace))?;
            let v = pod::view(&pod);
            match output {
                Output::Json => serde_json::to_string_pretty(&v)? + "\n",
                Output::Table => pod::render(&v, Timestamp::now()),
            }
        }
        Kind::Inplaceset => {
            let sets: Api<InplaceSet> = Api::namespaced(client.clone(), namespace);
            let set = sets.get(name).await.map_err(|e| Error::from_get(e, "InplaceSet", name, namespace))?;
            let by_set = ListParams::default().labels(&format!("{}={name}", keys::INPLACESET_NAME));
            let revisions = Api::<ControllerRevision>::namespaced(client.clone(), namespace).list(&by_set).await?.items;
            let pods: Vec<Pod> = Api::<Pod>::namespaced(client, namespace)
                .list(&by_set)
                .await?
                .items
                .into_iter()
                .filter(|p| p.owner_references().iter().any(|o| Some(&o.uid) == set.uid().as_ref()))
                .collect();
            let v = inplaceset::view(&set, &revisions, &pods);
            match output {
                Output::Json => serde_json::to_string_pretty(&v)? + "\n",
                Output::Table => inplaceset::render(&v, Timestamp::now()),
            }
        }
    };
    print!("{text}");
    Ok(Exit::Success)
}
