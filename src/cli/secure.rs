//! `leasekeeper dev --secure`: a throwaway CA, a certificate per node for both ports, and an
//! auth file with one admin, so the secure path can be tried with one command. Everything is
//! made anew at each start, under `<dir>/secure/`.
use crate::auth::{hash_token, new_token, AuthFile, Grant, Principal, Role};
use crate::server::BoxError;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use std::path::{Path, PathBuf};

/// What a secure dev cluster was given.
pub struct DevSecurity {
    pub ca: PathBuf,
    /// Per node id: certificate and key (both ports).
    pub nodes: Vec<(u64, PathBuf, PathBuf)>,
    pub auth_file: PathBuf,
    /// The admin's token, printed once.
    pub admin_token: String,
}

fn write_private(path: &Path, text: &str) -> Result<(), BoxError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Makes the CA, the node certificates (naming `host`, localhost and `node-<id>.<cluster>`) and
/// the auth file in `dir`.
pub fn make(dir: &Path, ids: &[u64], host: &str, cluster: &str) -> Result<DevSecurity, BoxError> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "leasekeeper dev CA (throwaway)");
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_cert.pem())?;
    let mut nodes = Vec::new();
    for &id in ids {
        let member = crate::tls::member_name(id, cluster);
        let mut names = vec![host.to_string(), "localhost".to_string(), member];
        names.dedup();
        let mut p = CertificateParams::new(names)?;
        p.distinguished_name
            .push(DnType::CommonName, format!("node-{id}"));
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &ca_cert, &ca_key)?;
        let (c, k) = (
            dir.join(format!("node-{id}.pem")),
            dir.join(format!("node-{id}-key.pem")),
        );
        std::fs::write(&c, cert.pem())?;
        write_private(&k, &key.serialize_pem())?;
        nodes.push((id, c, k));
    }
    let admin_token = new_token();
    let auth_file = dir.join("auth.toml");
    AuthFile {
        principals: vec![Principal {
            name: "admin".into(),
            grants: vec![Grant {
                role: Role::Admin,
                queues: vec![],
            }],
            token_sha256: vec![hash_token(&admin_token)],
            cert_names: vec![],
        }],
    }
    .write(&auth_file)?;
    Ok(DevSecurity {
        ca,
        nodes,
        auth_file,
        admin_token,
    })
}
