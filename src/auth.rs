//! Authenticated clients with roles: who may call which service, on which queues.
//!
//! Principals and their grants live in an auth file (TOML) that every node reads at start and
//! reloads when it changes (looked at every [`RELOAD_EVERY`]), so a token revoked in the file
//! stops working on every node that sees the file within a second, without a restart. Tokens are
//! stored as SHA-256 hashes only (a token is 32 random bytes: a fast hash is enough to make the
//! file useless for calling the cluster). `leasekeeper auth` writes the file.
//!
//! A call names its principal by `authorization: Bearer <token>`, or, without a token, by its
//! TLS client certificate when that certificate names (DNS subject alternative name) one of a
//! principal's `cert_names`. Roles:
//! - `admin`: everything, including membership changes;
//! - `scheduler`: submit, get, list, cancel, watch (on its queue prefixes);
//! - `worker`: claim (on its queue prefixes), renew, heartbeat, progress, complete, release;
//! - `reader`: get, list, watch (on its queue prefixes), cluster status.
//!
//! Without an auth file every call is allowed (loopback development). Health stays open.
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tonic::Status;

/// How often a node looks at its auth file for changes.
pub const RELOAD_EVERY: Duration = Duration::from_millis(250);
/// The largest auth file read.
const MAX_FILE_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Scheduler,
    Worker,
    Reader,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Scheduler => "scheduler",
            Role::Worker => "worker",
            Role::Reader => "reader",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "scheduler" => Ok(Role::Scheduler),
            "worker" => Ok(Role::Worker),
            "reader" => Ok(Role::Reader),
            _ => Err(format!(
                "unknown role {:?}: use admin, scheduler, worker or reader",
                crate::api::validate::clip(s)
            )),
        }
    }
}

/// One role on some queues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub role: Role,
    /// Queue prefixes the role covers; empty = every queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
}

impl std::str::FromStr for Grant {
    type Err = String;
    /// `role` or `role:prefix1,prefix2` (e.g. `worker:etl/`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (role, queues) = match s.split_once(':') {
            Some((r, q)) => (
                r,
                q.split(',')
                    .filter(|q| !q.is_empty())
                    .map(String::from)
                    .collect(),
            ),
            None => (s, Vec::new()),
        };
        Ok(Grant {
            role: role.parse()?,
            queues,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub name: String,
    pub grants: Vec<Grant>,
    /// SHA-256 (hex) of each token that names this principal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_sha256: Vec<String>,
    /// Client certificates naming one of these (DNS subject alternative name) are this
    /// principal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cert_names: Vec<String>,
}

/// The auth file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthFile {
    #[serde(default, rename = "principal")]
    pub principals: Vec<Principal>,
}

/// The hash stored for `token`.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random token (printed once; only its hash is kept).
pub fn new_token() -> String {
    format!(
        "lk_{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    )
}

impl AuthFile {
    pub fn read(path: &Path) -> Result<AuthFile, String> {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
            .map_err(|e| format!("cannot read the auth file {}: {e}", path.display()))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(format!(
                "the auth file {} is over {MAX_FILE_BYTES} bytes",
                path.display()
            ));
        }
        let f: AuthFile =
            toml::from_str(&text).map_err(|e| format!("the auth file {}: {e}", path.display()))?;
        f.check()
            .map_err(|e| format!("the auth file {}: {e}", path.display()))?;
        Ok(f)
    }

    fn check(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for p in &self.principals {
            if p.name.is_empty() || !names.insert(p.name.as_str()) {
                return Err(format!(
                    "principal names must be unique and not empty ({:?})",
                    p.name
                ));
            }
            if p.grants.is_empty() {
                return Err(format!("principal {:?} has no grant", p.name));
            }
            if let Some(h) = p
                .token_sha256
                .iter()
                .find(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(format!(
                    "principal {:?}: {h:?} is not a SHA-256 in hex",
                    p.name
                ));
            }
        }
        Ok(())
    }

    /// Writes the file atomically (a temporary file, fsynced, renamed into place), readable by
    /// its owner only.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        self.check()?;
        let text = toml::to_string(self).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("tmp");
        let io = |e: std::io::Error| format!("cannot write {}: {e}", tmp.display());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path)
            .map_err(|e| format!("cannot replace {}: {e}", path.display()))?;
        Ok(())
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy)]
pub enum Need<'a> {
    /// Submit and cancel, on a queue.
    Schedule(&'a str),
    /// Get, list, watch: on a queue (None = every queue; a principal limited to prefixes must
    /// name one).
    Read(Option<&'a str>),
    /// Claim, on a queue.
    Claim(&'a str),
    /// Renew, heartbeat, progress, complete, release (the lease secret proves the lease).
    Lease,
    /// The role for a get by id, before the task (and so its queue) is known.
    GetById,
    /// The role for a cancel by id, before the task's queue is known.
    CancelById,
    /// Cluster and node status.
    Status,
    /// Membership changes.
    Admin,
}

impl Need<'_> {
    /// The roles that cover this need (admin covers every need), and the queue it is on.
    fn roles(&self) -> (&'static [Role], Option<&str>) {
        use Role::*;
        match *self {
            Need::Schedule(q) => (&[Admin, Scheduler], Some(q)),
            Need::Read(q) => (&[Admin, Scheduler, Reader], q),
            Need::Claim(q) => (&[Admin, Worker], Some(q)),
            Need::Lease => (&[Admin, Worker], None),
            Need::GetById => (&[Admin, Scheduler, Reader], None),
            Need::CancelById => (&[Admin, Scheduler], None),
            Need::Status => (&[Admin, Reader, Scheduler, Worker], None),
            Need::Admin => (&[Admin], None),
        }
    }

    /// Whether `queue` is needed for this call (a queue-limited grant does not cover a call
    /// on every queue).
    fn queue_matters(&self) -> bool {
        matches!(self, Need::Schedule(_) | Need::Read(_) | Need::Claim(_))
    }
}

fn covers(g: &Grant, need: &Need) -> bool {
    let (roles, queue) = need.roles();
    if !roles.contains(&g.role) {
        return false;
    }
    if g.queues.is_empty() || !need.queue_matters() {
        return true;
    }
    match queue {
        Some(q) => g.queues.iter().any(|p| q.starts_with(p.as_str())),
        None => false,
    }
}

struct Loaded {
    file: AuthFile,
    stamp: Option<(SystemTime, u64)>,
}

/// The node's view of the auth file.
pub struct Auth {
    path: PathBuf,
    current: RwLock<Loaded>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Auth {
    /// Reads the auth file (an error if it does not load: a node must not start open by
    /// mistake).
    pub fn load(path: &Path) -> Result<Arc<Auth>, String> {
        let stamp = stamp(path);
        let file = AuthFile::read(path)?;
        Ok(Arc::new(Auth {
            path: path.to_path_buf(),
            current: RwLock::new(Loaded { file, stamp }),
        }))
    }

    /// Loads the file again if it changed. A file that no longer loads keeps the last good
    /// grants, and the error is logged once per change.
    pub fn reload(&self) {
        let now = stamp(&self.path);
        if self.current.read().stamp == now {
            return;
        }
        let loaded = AuthFile::read(&self.path);
        let mut c = self.current.write();
        c.stamp = now;
        match loaded {
            Ok(f) => {
                tracing::info!(path = %self.path.display(), principals = f.principals.len(), "auth file loaded again");
                c.file = f;
            }
            Err(e) => {
                tracing::error!(error = %e, "the auth file changed but does not load; keeping the last good grants")
            }
        }
    }

    /// Keeps reloading the file until `stop` says so.
    pub async fn watch(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RELOAD_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.reload()).await;
        }
    }

    /// The principal a call's credentials name, then whether it may do `need`: its name, or
    /// UNAUTHENTICATED / PERMISSION_DENIED with what is missing. Never echoes a token.
    pub fn check(
        &self,
        meta: &tonic::metadata::MetadataMap,
        certs: Option<&[tokio_rustls::rustls::pki_types::CertificateDer<'_>]>,
        need: Need,
    ) -> Result<String, Status> {
        let c = self.current.read();
        let principal = match meta.get("authorization") {
            Some(v) => {
                let token = v
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .ok_or_else(|| {
                        Status::unauthenticated("the authorization header must be `Bearer <token>`")
                    })?;
                let h = hash_token(token.trim());
                c.file
                    .principals
                    .iter()
                    .find(|p| p.token_sha256.contains(&h))
                    .ok_or_else(|| Status::unauthenticated("the token is unknown or revoked: ask an admin for a new one (`leasekeeper auth add`)"))?
            }
            None => {
                let leaf = certs.and_then(|c| c.first()).ok_or_else(|| {
                    Status::unauthenticated("no credentials: this cluster requires a token (--token, LEASEKEEPER_TOKEN; `authorization: Bearer <token>`) or a client certificate of a known principal")
                })?;
                c.file
                    .principals
                    .iter()
                    .find(|p| p.cert_names.iter().any(|n| crate::tls::names(leaf, n)))
                    .ok_or_else(|| Status::unauthenticated("the client certificate names no principal of this cluster: give it a token, or add its name to a principal's cert_names"))?
            }
        };
        if principal.grants.iter().any(|g| covers(g, &need)) {
            return Ok(principal.name.clone());
        }
        let (roles, queue) = need.roles();
        let roles: Vec<&str> = roles
            .iter()
            .filter(|r| **r != Role::Admin)
            .map(|r| r.name())
            .collect();
        let roles = if roles.is_empty() {
            "admin".to_string()
        } else {
            roles.join(" or ")
        };
        let on = match (need.queue_matters(), queue) {
            (true, Some(q)) => format!(" on queue {:?}", crate::api::validate::clip(q)),
            (true, None) => {
                " on every queue (its grants cover some queues only: name a queue)".to_string()
            }
            _ => String::new(),
        };
        Err(Status::permission_denied(format!(
            "principal {:?} may not do this: it needs the {roles} role{on}",
            principal.name
        )))
    }
}

/// Checks `req` against the node's auth, if it has one.
pub fn authorize<T>(
    auth: Option<&Auth>,
    req: &tonic::Request<T>,
    need: Need,
) -> Result<(), Status> {
    match auth {
        None => Ok(()),
        Some(a) => {
            let certs = req.peer_certs();
            a.check(req.metadata(), certs.as_deref().map(|v| v.as_slice()), need)
                .map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(grants: &[&str], token: &str) -> AuthFile {
        AuthFile {
            principals: vec![Principal {
                name: "p".into(),
                grants: grants.iter().map(|g| g.parse().unwrap()).collect(),
                token_sha256: vec![hash_token(token)],
                cert_names: vec![],
            }],
        }
    }

    fn auth(f: &AuthFile) -> (tempfile::TempDir, Arc<Auth>) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("auth.toml");
        f.write(&p).unwrap();
        let a = Auth::load(&p).unwrap();
        (d, a)
    }

    fn bearer(t: &str) -> tonic::metadata::MetadataMap {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("authorization", format!("Bearer {t}").parse().unwrap());
        m
    }

    #[test]
    fn grants_cover_their_roles_and_queue_prefixes_only() {
        let (_d, a) = auth(&file_with(&["worker:etl/", "reader"], "t"));
        let m = bearer("t");
        assert!(a.check(&m, None, Need::Claim("etl/daily")).is_ok());
        let e = a.check(&m, None, Need::Claim("ml/train")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message().contains("worker role on queue \"ml/train\""),
            "{e:?}"
        );
        assert!(
            a.check(&m, None, Need::Read(None)).is_ok(),
            "reader on every queue"
        );
        assert!(a.check(&m, None, Need::Lease).is_ok());
        let e = a.check(&m, None, Need::Schedule("etl/x")).unwrap_err();
        assert!(e.message().contains("scheduler role"), "{e:?}");
        let e = a.check(&m, None, Need::Admin).unwrap_err();
        assert!(e.message().contains("admin role"), "{e:?}");
    }

    #[test]
    fn unknown_missing_or_malformed_credentials_are_unauthenticated_and_never_echoed() {
        let (_d, a) = auth(&file_with(&["admin"], "right"));
        for m in [
            bearer("wrong-secret-token"),
            tonic::metadata::MetadataMap::new(),
        ] {
            let e = a.check(&m, None, Need::Status).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            assert!(!e.message().contains("wrong-secret-token"));
        }
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("authorization", "Basic x".parse().unwrap());
        assert_eq!(
            a.check(&m, None, Need::Status).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(a.check(&bearer("right"), None, Need::Admin).is_ok());
    }

    #[test]
    fn a_limited_reader_must_name_a_queue() {
        let (_d, a) = auth(&file_with(&["reader:etl/"], "t"));
        let e = a.check(&bearer("t"), None, Need::Read(None)).unwrap_err();
        assert!(e.message().contains("name a queue"), "{e:?}");
        assert!(a
            .check(&bearer("t"), None, Need::Read(Some("etl/a")))
            .is_ok());
    }

    #[test]
    fn the_file_keeps_hashes_only_and_a_bad_reload_keeps_the_last_good_grants() {
        let f = file_with(&["admin"], "lk_secret_token");
        let (d, a) = auth(&f);
        let p = d.path().join("auth.toml");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains("lk_secret_token") && text.contains(&hash_token("lk_secret_token")));
        std::fs::write(&p, "principal = 5\n# a longer, broken file").unwrap();
        a.reload();
        assert!(a
            .check(&bearer("lk_secret_token"), None, Need::Admin)
            .is_ok());
        assert!(AuthFile::read(&p).is_err());
    }
}
