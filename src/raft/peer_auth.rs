//! Who may speak Raft to a node: members of the same cluster that know its secret.
//!
//! Every node-to-node call carries three metadata entries: the cluster's name, the sending
//! member's id, and a proof, HMAC-SHA256(cluster secret, cluster name ‖ member id). A node
//! answers a peer call only when the proof verifies and the sender is a current member (or
//! when the receiving node has no membership yet: it is waiting to be added, and only a member
//! that knows the secret can add it).
//!
//! The proof binds the sender's id, so an expiry vote forwarded by a peer is accepted only for
//! the member that sent it. Members are trusted with each other's names (they share one
//! secret); what the proof keeps out is everyone else. On a network an attacker can read, the
//! proof can be replayed like any bearer credential: TLS on the peer port is what protects it
//! there.
use super::NodeId;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tonic::metadata::{MetadataMap, MetadataValue};

pub const CLUSTER_HEADER: &str = "lk-cluster";
pub const FROM_HEADER: &str = "lk-from";
pub const PROOF_HEADER: &str = "lk-proof-bin";

/// The shortest cluster secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// A cluster's peer credentials, as one member holds them.
#[derive(Clone)]
pub struct PeerKey {
    cluster: String,
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PeerKey {{ cluster: {:?}, secret: <redacted> }}",
            self.cluster
        )
    }
}

/// Why a peer call was refused. Said to the caller and logged; never includes the proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    #[error("no peer credentials: this is a leasekeeper peer port, only members of the cluster may call it (clients use the client port)")]
    Missing,
    #[error("cluster {got:?} is not this node's cluster {want:?}")]
    WrongCluster { got: String, want: String },
    #[error(
        "the proof of member {from} does not verify: its cluster secret differs from this node's"
    )]
    BadProof { from: NodeId },
    #[error("node {from} is not a member of this cluster")]
    NotMember { from: NodeId },
    /// Peer mTLS: the certificate presented does not name the member the call claims.
    #[error("{0}")]
    Certificate(String),
}

impl PeerKey {
    pub fn new(cluster: &str, secret: &[u8]) -> Self {
        let mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
        Self {
            cluster: cluster.to_string(),
            mac,
        }
    }

    fn mac_of(&self, from: NodeId) -> Hmac<Sha256> {
        let mut m = self.mac.clone();
        m.update(b"leasekeeper-peer-v1\0");
        m.update(self.cluster.as_bytes());
        m.update(b"\0");
        m.update(&from.to_be_bytes());
        m
    }

    /// Adds member `from`'s credentials to an outgoing call.
    pub fn sign(&self, from: NodeId, md: &mut MetadataMap) {
        let proof = self.mac_of(from).finalize().into_bytes();
        if let Ok(v) = MetadataValue::try_from(self.cluster.as_str()) {
            md.insert(CLUSTER_HEADER, v);
        }
        md.insert(FROM_HEADER, MetadataValue::from(from));
        md.insert_bin(PROOF_HEADER, MetadataValue::from_bytes(&proof));
    }

    /// The member an incoming call proves it comes from. Whether that id is a current member
    /// is for the caller to check against its membership.
    pub fn verify(&self, md: &MetadataMap) -> Result<NodeId, PeerRefusal> {
        let (Some(cluster), Some(from), Some(proof)) = (
            md.get(CLUSTER_HEADER),
            md.get(FROM_HEADER),
            md.get_bin(PROOF_HEADER),
        ) else {
            return Err(PeerRefusal::Missing);
        };
        let cluster = cluster.to_str().map_err(|_| PeerRefusal::Missing)?;
        if cluster != self.cluster {
            return Err(PeerRefusal::WrongCluster {
                got: crate::api::validate::clip(cluster),
                want: self.cluster.clone(),
            });
        }
        let from: NodeId = from
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(PeerRefusal::Missing)?;
        let proof = proof
            .to_bytes()
            .map_err(|_| PeerRefusal::BadProof { from })?;
        self.mac_of(from)
            .verify_slice(&proof)
            .map_err(|_| PeerRefusal::BadProof { from })?;
        Ok(from)
    }
}

/// Sources logged by [`Refusals`] at most; past it, refusals are only counted.
const MAX_LOGGED_SOURCES: usize = 1024;

/// Refused peer calls: counted, and logged once per source address.
#[derive(Default)]
pub struct Refusals {
    total: std::sync::atomic::AtomicU64,
    logged: parking_lot::Mutex<std::collections::HashSet<String>>,
}

impl Refusals {
    pub fn note(&self, source: &str, why: &PeerRefusal) {
        self.total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut logged = self.logged.lock();
        if logged.len() < MAX_LOGGED_SOURCES && logged.insert(source.to_string()) {
            tracing::warn!(%source, reason = %why, "refused a peer call (logged once per source)");
        }
    }

    /// Peer calls refused since start.
    pub fn total(&self) -> u64 {
        self.total.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_only_for_its_member_cluster_and_secret() {
        let k = PeerKey::new("prod", b"0123456789abcdef0123");
        let mut md = MetadataMap::new();
        k.sign(2, &mut md);
        assert_eq!(k.verify(&md), Ok(2));

        // Another member's id with member 2's proof.
        let mut forged = md.clone();
        forged.insert(FROM_HEADER, MetadataValue::from(1u64));
        assert_eq!(k.verify(&forged), Err(PeerRefusal::BadProof { from: 1 }));

        let other_secret = PeerKey::new("prod", b"another secret, 20b");
        assert_eq!(
            other_secret.verify(&md),
            Err(PeerRefusal::BadProof { from: 2 })
        );

        let other_cluster = PeerKey::new("staging", b"0123456789abcdef0123");
        assert!(matches!(
            other_cluster.verify(&md),
            Err(PeerRefusal::WrongCluster { .. })
        ));

        assert_eq!(k.verify(&MetadataMap::new()), Err(PeerRefusal::Missing));
        let mut garbage = MetadataMap::new();
        garbage.insert(CLUSTER_HEADER, "prod".parse().unwrap());
        garbage.insert(FROM_HEADER, "not-a-number".parse().unwrap());
        garbage.insert_bin(PROOF_HEADER, MetadataValue::from_bytes(b"x"));
        assert_eq!(k.verify(&garbage), Err(PeerRefusal::Missing));
    }
}
