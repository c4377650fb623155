//! TLS for the client and the peer ports, and for the connections nodes and clients open.
//!
//! A node accepts TLS itself (rustls, ring) instead of through tonic's static server config, so
//! that certificate, key and CA files renewed on disk are used by the next connection without a
//! restart: each new connection looks at the files' modification times (at most once per
//! [`RELOAD_CHECK`]) and loads them again when they changed. A renewed file that does not load
//! keeps the last good configuration, and the error is logged.
//!
//! On the peer port with client certificates required, a member proves who it is twice: with
//! the cluster secret ([`crate::raft::peer_auth`]) and with a certificate that names it,
//! `node-<id>.<cluster_name>` as a DNS subject alternative name ([`member_name`]).
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{
    self,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};

/// How often, at most, a port looks at its certificate files again.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes one port runs at once; further connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;
/// The largest certificate, key or CA file read (PEM).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The TLS settings of one listening port (etcd's `--cert-file --key-file --trusted-ca-file
/// --client-cert-auth`, and the same with `--peer-` for the peer port).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsFiles {
    /// The port's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// The CA (PEM) that client certificates must chain to.
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse connections without a client certificate signed by `trusted_ca_file`.
    pub client_cert_auth: bool,
}

/// The TLS settings of a connecting side: a client, or a node calling its peers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientTlsFiles {
    /// The CA (PEM) that the server's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM), for ports that require one.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
}

/// The name a member's peer certificate carries (a DNS subject alternative name).
pub fn member_name(id: u64, cluster: &str) -> String {
    format!("node-{id}.{cluster}")
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "the {what} {} is over {MAX_PEM_BYTES} bytes: is it the right file?",
            path.display()
        ));
    }
    Ok(buf)
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(path, what)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the {what} {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the {what} {} holds no certificate (expected PEM `BEGIN CERTIFICATE`)",
            path.display()
        ));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_pem(path, "key file")?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("the key file {} is not PEM: {e}", path.display()))?
        .ok_or_else(|| {
            format!(
                "the key file {} holds no private key (expected PEM `BEGIN PRIVATE KEY`)",
                path.display()
            )
        })
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for c in certs(path, "CA file")? {
        store
            .add(c)
            .map_err(|e| format!("the CA file {}: {e}", path.display()))?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server configuration `files` describe (ALPN h2, as gRPC needs).
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder =
        match (&files.trusted_ca_file, files.client_cert_auth) {
            (Some(ca), true) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                        .build()
                        .map_err(|e| format!("the CA file {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            (None, true) => return Err(
                "client_cert_auth needs trusted_ca_file: the CA client certificates must chain to"
                    .into(),
            ),
            (_, false) => builder.with_no_client_auth(),
        };
    let mut config = builder
        .with_single_cert(
            certs(&files.cert_file, "certificate file")?,
            key(&files.key_file)?,
        )
        .map_err(|e| {
            format!(
                "the certificate {} and key {} do not make a TLS identity: {e}",
                files.cert_file.display(),
                files.key_file.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(paths: &[&Path]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Files that are loaded again when they change on disk; `T` is what they make.
struct Reloading<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<T, String> + Send + Sync>,
    state: Mutex<Loaded<T>>,
}

struct Loaded<T> {
    stamp: Stamp,
    checked: Instant,
    value: Arc<T>,
    /// Bumped whenever a new value was loaded.
    generation: u64,
}

impl<T> Reloading<T> {
    fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let build: Box<dyn Fn() -> Result<T, String> + Send + Sync> = Box::new(build);
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let stamp = stamp(&refs);
        let value = Arc::new(build().map_err(|e| format!("{what}: {e}"))?);
        Ok(Self {
            what,
            paths,
            build,
            state: Mutex::new(Loaded {
                stamp,
                checked: Instant::now(),
                value,
                generation: 0,
            }),
        })
    }

    /// The current value and its generation, loading the files again if they changed.
    fn current(&self) -> (Arc<T>, u64) {
        let (stamp_then, due) = {
            let s = self.state.lock();
            if s.checked.elapsed() < RELOAD_CHECK {
                return (s.value.clone(), s.generation);
            }
            (s.stamp.clone(), true)
        };
        debug_assert!(due);
        let refs: Vec<&Path> = self.paths.iter().map(PathBuf::as_path).collect();
        let now = stamp(&refs);
        // Built outside the lock: it reads files.
        let built = (now != stamp_then).then(|| (self.build)());
        let mut s = self.state.lock();
        s.checked = Instant::now();
        match built {
            Some(Ok(v)) => {
                tracing::info!(
                    what = self.what,
                    "certificate files changed: loaded them again for new connections"
                );
                s.value = Arc::new(v);
                s.stamp = now;
                s.generation += 1;
            }
            Some(Err(e)) => {
                // Kept as seen, so the error is logged once per change, not per connection.
                tracing::error!(what = self.what, error = %e, "certificate files changed but do not load; keeping the last good ones");
                s.stamp = now;
            }
            None => {}
        }
        (s.value.clone(), s.generation)
    }
}

/// A listening port's TLS, reloaded from its files.
pub struct ServerTls(Reloading<ServerConfig>);

impl ServerTls {
    /// Loads `files`; `what` names the port in errors and logs.
    pub fn load(files: &TlsFiles, what: &'static str) -> Result<Arc<Self>, String> {
        let mut paths = vec![files.cert_file.clone(), files.key_file.clone()];
        paths.extend(files.trusted_ca_file.clone());
        let f = files.clone();
        let reloading = Reloading::new(what, paths, move || server_config(&f))?;
        Ok(Arc::new(Self(reloading)))
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.0.current().0
    }
}

/// TLS connections accepted on `listener`: the handshakes run beside the accept loop (a slow
/// or silent client holds up nobody else) and are bounded in time and number. A failed
/// handshake (a plaintext client, an unknown CA, no client certificate where one is required)
/// closes that connection only. The stream ends when its receiver is dropped.
pub fn accept(
    listener: TcpListener,
    tls: Arc<ServerTls>,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("semaphore open"),
                _ = tx.closed() => return,
            };
            let (tcp, from) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: pause instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%from, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%from, "TLS handshake timed out"),
                }
                drop(permit);
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Whether `cert` names `name` (a DNS subject alternative name).
pub fn names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let (Ok(cert), Ok(name)) = (
        webpki::EndEntityCert::try_from(cert),
        ServerName::try_from(name),
    ) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// Whether the first of `certs` (a verified client chain) names member `id` of `cluster`.
pub fn names_member(certs: &[CertificateDer<'_>], id: u64, cluster: &str) -> Result<(), String> {
    let want = member_name(id, cluster);
    let leaf = certs
        .first()
        .ok_or("no client certificate: peers must present their member certificate")?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("the peer certificate does not parse: {e}"))?;
    let name = ServerName::try_from(want.as_str())
        .map_err(|e| format!("{want} is not a DNS name: {e}"))?;
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|_| format!("the peer certificate does not name member {id} ({want})"))
}

/// A connecting side's TLS (tonic's client config), reloaded from its files.
pub struct ClientTls(Reloading<tonic::transport::ClientTlsConfig>);

/// Builds tonic's client TLS config from `files` (read now).
pub fn client_config(files: &ClientTlsFiles) -> Result<tonic::transport::ClientTlsConfig, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut c = ClientTlsConfig::new();
    if let Some(ca) = &files.ca_file {
        // Checked here so that a bad file is an error now, not a failed handshake later.
        roots(ca)?;
        c = c.ca_certificate(Certificate::from_pem(read_pem(ca, "CA file")?));
    }
    match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(k)) => {
            certs(cert, "certificate file")?;
            key(k)?;
            c = c.identity(Identity::from_pem(
                read_pem(cert, "certificate file")?,
                read_pem(k, "key file")?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err("a client certificate needs both a certificate file and a key file".into())
        }
    }
    Ok(c)
}

impl ClientTls {
    pub fn load(files: &ClientTlsFiles, what: &'static str) -> Result<Arc<Self>, String> {
        let paths = [&files.ca_file, &files.cert_file, &files.key_file]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let f = files.clone();
        let reloading = Reloading::new(what, paths, move || client_config(&f))?;
        Ok(Arc::new(Self(reloading)))
    }

    /// The configuration for new connections, and a number that changes when it changed.
    pub fn current(&self) -> (tonic::transport::ClientTlsConfig, u64) {
        let (c, g) = self.0.current();
        ((*c).clone(), g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate naming 127.0.0.1, written to `dir` as `<name>.pem` and
    /// `<name>-key.pem`; returns the paths.
    fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn dialling_tls_reloads_renewed_files_and_keeps_the_last_good_ones() {
        // How members dial each other: a new generation makes `Channels` start over.
        let d = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(d.path(), "member");
        let files = ClientTlsFiles {
            ca_file: Some(cert.clone()),
            cert_file: Some(cert.clone()),
            key_file: Some(key.clone()),
        };
        let tls = ClientTls::load(&files, "test").unwrap();
        assert_eq!(tls.current().1, 0);
        // Renewed in place (a new key and certificate): loaded again once RELOAD_CHECK passed.
        std::thread::sleep(RELOAD_CHECK + Duration::from_millis(50));
        let other = tempfile::tempdir().unwrap();
        let (c2, k2) = self_signed(other.path(), "member");
        std::fs::rename(&k2, &key).unwrap();
        std::fs::rename(&c2, &cert).unwrap();
        assert_eq!(tls.current().1, 1, "the renewed files are a new generation");
        // A renewal that does not load keeps the last good generation.
        std::thread::sleep(RELOAD_CHECK + Duration::from_millis(50));
        std::fs::write(&key, b"-----BEGIN PRIVATE KEY-----\n").unwrap();
        assert_eq!(tls.current().1, 1);
    }

    #[test]
    fn bad_files_are_refused_with_the_path_and_what_is_wrong() {
        let d = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(d.path(), "port");
        let missing = d.path().join("nope.pem");
        let e = server_config(&TlsFiles {
            cert_file: missing.clone(),
            key_file: key.clone(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("nope.pem"), "{e}");
        let e = server_config(&TlsFiles {
            cert_file: key.clone(),
            key_file: key.clone(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("holds no certificate"), "{e}");
        let e = server_config(&TlsFiles {
            cert_file: cert.clone(),
            key_file: key,
            trusted_ca_file: None,
            client_cert_auth: true,
        })
        .unwrap_err();
        assert!(e.contains("trusted_ca_file"), "{e}");
        assert!(names_member(&[], 1, "c").is_err());
    }
}
