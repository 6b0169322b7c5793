//! Standard kubeconfig handling: `--kubeconfig` or KUBECONFIG (else
//! ~/.kube/config), `--context`, and the namespace from `-n` or the context.

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::{
    cli::Global,
    error::{Error, Result},
};

/// A client for the selected context and the namespace to work in.
pub async fn connect(global: &Global) -> Result<(Client, String)> {
    let options = KubeConfigOptions { context: global.context.clone(), ..Default::default() };
    let config = match &global.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig(format!("{path}: {e}")))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await
        }
        None => Config::from_kubeconfig(&options).await,
    }
    .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let namespace = global.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(Error::Kube)?;
    Ok((client, namespace))
}
