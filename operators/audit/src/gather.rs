//! Reads a [`Snapshot`] from the cluster: paginated list calls (500 objects a
//! page), so a large cluster is read in bounded responses. Needs `list` on
//! nodes, pods, namespaces and inplacesets.apps.berth.dev cluster-wide; a
//! cluster without the InplaceSet CRD has no InplaceSets to check.

use berth_api::InplaceSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::{Api, Client, Resource, api::ListParams};
use serde::de::DeserializeOwned;

use crate::{Error, Snapshot};

const PAGE: u32 = 500;

pub async fn gather(client: &Client) -> Result<Snapshot, Error> {
    // Pods last: the nodes and sets they are checked against are at most as old.
    let nodes = list_all(Api::<Node>::all(client.clone()), "nodes").await?;
    let namespaces = list_all(Api::<Namespace>::all(client.clone()), "namespaces").await?;
    let inplacesets = match list_all(Api::<InplaceSet>::all(client.clone()), "inplacesets").await {
        Err(Error::List { source: kube::Error::Api(status), .. }) if status.code == 404 => Vec::new(),
        other => other?,
    };
    let pods = list_all(Api::<Pod>::all(client.clone()), "pods").await?;
    Ok(Snapshot { nodes, pods, namespaces, inplacesets })
}

async fn list_all<K>(api: Api<K>, what: &'static str) -> Result<Vec<K>, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await.map_err(|source| Error::List { what, source })?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(out),
        }
    }
}
