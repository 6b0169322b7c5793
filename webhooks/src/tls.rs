//! The serving certificate: a resolver whose certificate can be swapped under
//! a running server, fed either by `tls.crt`/`tls.key` files polled for
//! changes (a cert-manager Secret mount rotates with no restart), or by a CA
//! the manager generates for itself at start.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::{
    ServerConfig,
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    version::{TLS12, TLS13},
};

use crate::Error;

/// Hands every handshake the current certificate; [`CertResolver::set`] swaps it.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self { current: RwLock::new(key) })
    }

    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// TLS 1.2 and 1.3 only, named explicitly so a library default cannot widen
/// them; HTTP/1.1, the one protocol the server speaks.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13, &TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A certificate chain and its key from PEM; refuses a key that does not match.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8], origin: &str) -> Result<Arc<CertifiedKey>, Error> {
    let pem = |what: &str, e: rustls::pki_types::pem::Error| Error::Pem(format!("{origin}: {what}: {e}"));
    let chain =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>().map_err(|e| pem("certificate", e))?;
    if chain.is_empty() {
        return Err(Error::Pem(format!("{origin}: no certificate in the PEM")));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem("private key", e))?;
    let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| Error::Pem(format!("{origin}: {e}")))?;
    Ok(Arc::new(key))
}

/// A CA generated in memory and a serving certificate it signed.
pub struct SelfSigned {
    /// The CA certificate (PEM): the webhook configurations' caBundle.
    pub ca_pem: String,
    pub key: Arc<CertifiedKey>,
}

impl SelfSigned {
    /// `names` are the serving certificate's DNS names or IP addresses.
    pub fn generate(names: &[String]) -> Result<Self, Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.distinguished_name.push(DnType::CommonName, "berth-webhooks-ca");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(DnType::CommonName, names.first().map_or("berth-webhooks", String::as_str));
        let cert = params.signed_by(&key, &issuer)?;
        let chain = format!("{}{}", cert.pem(), ca_cert.pem());
        let key = certified_key(chain.as_bytes(), key.serialize_pem().as_bytes(), "generated certificate")?;
        Ok(Self { ca_pem: ca_cert.pem(), key })
    }
}

/// What a certificate directory holds.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// `ca.crt`, if present: the caBundle for the webhook configurations.
    pub ca_bundle: Option<Vec<u8>>,
}

/// `tls.crt`, `tls.key` and optional `ca.crt` in a directory (the layout of a
/// kubernetes.io/tls Secret mount), re-read on each [`CertDir::poll`].
pub struct CertDir {
    dir: PathBuf,
    seen: Option<[Option<Vec<u8>>; 3]>,
}

impl CertDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), seen: None }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The contents if they changed since the last call, `None` if not. A
    /// failure is reported once per content: a half-written rotation is
    /// retried when the files change again, the old certificate serving meanwhile.
    /// Comparing bytes, not mtimes, follows the symlink swap of a Secret mount.
    pub fn poll(&mut self) -> Result<Option<Loaded>, Error> {
        let read = |name: &str| -> Result<Option<Vec<u8>>, Error> {
            let path = self.dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && name == "ca.crt" => Ok(None),
                Err(source) => Err(Error::Read { path, source }),
            }
        };
        let now = [read("tls.crt")?, read("tls.key")?, read("ca.crt")?];
        if self.seen.as_ref() == Some(&now) {
            return Ok(None);
        }
        self.seen = Some(now.clone());
        let [Some(crt), Some(key), ca] = now else { unreachable!("tls.crt and tls.key were read or failed") };
        let key = certified_key(&crt, &key, &self.dir.display().to_string())?;
        Ok(Some(Loaded { key, ca_bundle: ca }))
    }
}

#[cfg(test)]
mod tests {
    use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
    use tokio::net::TcpListener;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-webhooks-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes a fresh CA-signed certificate for `localhost` into `dir`; returns the CA.
    fn write_cert(dir: &Path) -> CertificateDer<'static> {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".into()]).unwrap().signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        ca.der().clone()
    }

    /// The leaf certificate a TLS client is served, trusting `cas`.
    async fn served_cert(port: u16, cas: &[CertificateDer<'static>]) -> CertificateDer<'static> {
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots.add(ca.clone()).unwrap();
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("handshake with a certificate the client trusts");
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    }

    #[tokio::test]
    async fn a_rotated_certificate_is_served_without_restart() {
        let dir = temp_dir("reload");
        let ca_a = write_cert(&dir);
        let mut source = CertDir::new(&dir);
        let first = source.poll().unwrap().expect("first load");
        assert!(first.ca_bundle.is_some());
        let resolver = CertResolver::new(first.key);
        let acceptor = TlsAcceptor::from(server_config(resolver.clone()).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        let served_a = served_cert(port, std::slice::from_ref(&ca_a)).await;
        assert!(source.poll().unwrap().is_none(), "unchanged files are not reloaded");

        let ca_b = write_cert(&dir);
        let loaded = source.poll().unwrap().expect("changed files are reloaded");
        resolver.set(loaded.key);
        let served_b = served_cert(port, &[ca_a, ca_b]).await;
        assert_ne!(served_a, served_b);
        assert_eq!(served_b, resolver.current().cert[0]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_broken_rotation_is_reported_once_and_keeps_the_old_certificate() {
        let dir = temp_dir("broken");
        write_cert(&dir);
        let mut source = CertDir::new(&dir);
        source.poll().unwrap().unwrap();
        // A key that does not belong to the certificate (a rotation half done).
        std::fs::write(dir.join("tls.key"), KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let err = source.poll().err().expect("mismatched key refused").to_string();
        assert!(err.contains(&dir.display().to_string()), "{err}");
        assert!(source.poll().unwrap().is_none(), "the same broken files are not reported again");
        std::fs::remove_file(dir.join("tls.crt")).unwrap();
        assert!(source.poll().err().unwrap().to_string().contains("tls.crt"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_self_signed_certificate_chains_to_its_ca() {
        let generated = SelfSigned::generate(&["127.0.0.1".into(), "berth.berth-system.svc".into()]).unwrap();
        assert!(generated.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(generated.key.cert.len(), 2, "leaf and CA");
        let ca = CertificateDer::from_pem_slice(generated.ca_pem.as_bytes()).unwrap();
        assert_eq!(generated.key.cert[1], ca);
    }
}
