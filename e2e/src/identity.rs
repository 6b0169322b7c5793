//! Acting as a service account: tokens from the TokenRequest API (bound to a
//! pod when asked, as a pod's own token is) and clients that use them.

use anyhow::{Context, Result};
use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{Pod, ServiceAccount},
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    config::AuthInfo,
};

use crate::{FIELD_MANAGER, config};

/// A one-hour token of service account `ns/name`, bound to `pod` if given
/// (its node name then rides in the token's user info).
pub async fn token(client: &Client, ns: &str, name: &str, pod: Option<&Pod>) -> Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let account = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
    accounts.patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(account)).await?;
    let bound_object_ref = pod.map(|p| BoundObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(p.name_any()),
        uid: p.uid(),
    });
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { bound_object_ref, expiration_seconds: Some(3600), ..Default::default() }),
        ..Default::default()
    };
    accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await?
        .status
        .and_then(|s| s.token)
        .context("no token in the TokenRequest status")
}

/// A client for the cluster under test that authenticates with `token` only.
pub async fn client_with(token: String) -> Result<Client> {
    let mut config = config().await?;
    config.auth_info = AuthInfo { token: Some(token.into()), ..Default::default() };
    Ok(Client::try_from(config)?)
}
