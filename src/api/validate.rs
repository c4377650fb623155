//! Checks of request fields against the node's limits, before anything is proposed.
use crate::node::Limits;
use crate::state::TaskState;
use tonic::Status;

pub const MAX_NAME_LEN: usize = 128;
pub const MAX_ID_LEN: usize = 256;
pub const MAX_ERROR_LEN: usize = 64 * 1024;
pub const MAX_TOKENS_PER_HEARTBEAT: usize = 10_000;
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Input echoed in an error message is cut to this many characters.
pub const MAX_ECHO_CHARS: usize = 64;

/// `s` as it may be echoed in a message: at most [`MAX_ECHO_CHARS`] characters, with the full
/// length said when it was cut.
pub fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_ECHO_CHARS) {
        None => s.to_string(),
        Some((end, _)) => format!("{}…({} bytes)", &s[..end], s.len()),
    }
}

pub fn queue(q: &str) -> Result<(), Status> {
    let ok = !q.is_empty()
        && q.len() <= MAX_NAME_LEN
        && q.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:/-".contains(&b));
    if ok {
        Ok(())
    } else if q.is_empty() {
        Err(Status::invalid_argument(
            "queue is empty: name the queue (1-128 characters from A-Z a-z 0-9 _ . : / -)",
        ))
    } else {
        Err(Status::invalid_argument(format!(
            "queue {:?} is invalid: use 1-128 characters from A-Z a-z 0-9 _ . : / -",
            clip(q)
        )))
    }
}

fn printable_id(what: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is empty: set it")));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "{what} is {} bytes, the limit is {MAX_ID_LEN}: shorten it",
            id.len()
        )));
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Status::invalid_argument(format!(
            "{what} {:?} contains whitespace or control characters: remove them",
            clip(id)
        )));
    }
    Ok(())
}

pub fn task_id(id: &str) -> Result<(), Status> {
    printable_id("task id", id)
}

pub fn worker_id(id: &str) -> Result<(), Status> {
    printable_id("worker_id", id)
}

pub fn token(t: u64) -> Result<(), Status> {
    if t == 0 {
        Err(Status::invalid_argument(
            "lease_token is 0: pass the token your claim returned",
        ))
    } else {
        Ok(())
    }
}

/// A TTL request: 0 means `default`.
pub fn ttl(limits: &Limits, ttl_ms: u64, default: u64) -> Result<u64, Status> {
    let t = if ttl_ms == 0 { default } else { ttl_ms };
    if t < limits.min_ttl_ms {
        return Err(Status::invalid_argument(format!(
            "lease_ttl_ms {t} is below the minimum {}: raise it",
            limits.min_ttl_ms
        )));
    }
    if t > limits.max_ttl_ms {
        return Err(Status::invalid_argument(format!(
            "lease_ttl_ms {t} is above the maximum {}: lower it and renew more often",
            limits.max_ttl_ms
        )));
    }
    Ok(t)
}

pub fn bytes(what: &str, len: usize, max: usize) -> Result<(), Status> {
    if len > max {
        Err(Status::invalid_argument(format!("{what} is {len} bytes, the limit is {max}: store large data elsewhere and pass a reference")))
    } else {
        Ok(())
    }
}

/// The event kinds a watch asks for, each once: known kinds only, UNSPECIFIED refused (an empty
/// list means every kind). Deduplicated, so an event is checked against eight kinds at most.
pub fn event_kinds(kinds: &[i32]) -> Result<Vec<crate::proto::v1::EventKind>, Status> {
    use crate::proto::v1::EventKind;
    let mut out = kinds
        .iter()
        .map(|&k| match EventKind::try_from(k) {
            Ok(EventKind::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
                "kinds holds {k}, which is not an event kind: use SUBMITTED ({}) .. LATE_REPORT \
                 ({}), or leave kinds empty for every kind",
                EventKind::Submitted as i32,
                EventKind::LateReport as i32
            ))),
            Ok(kind) => Ok(kind),
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// A per-node count of open streams of one kind, capped: a slot is held for a stream's life.
pub struct StreamSlots {
    what: &'static str,
    open: std::sync::atomic::AtomicUsize,
    max: usize,
}

/// One open stream's slot; freed when dropped.
pub struct StreamSlot(std::sync::Arc<StreamSlots>);

impl StreamSlots {
    pub fn new(what: &'static str, max: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            what,
            open: Default::default(),
            max,
        })
    }

    /// A slot, or RESOURCE_EXHAUSTED when `max` streams are open already.
    pub fn take(self: &std::sync::Arc<Self>) -> Result<StreamSlot, Status> {
        use std::sync::atomic::Ordering::SeqCst;
        let taken = self
            .open
            .fetch_update(SeqCst, SeqCst, |n| (n < self.max).then_some(n + 1));
        match taken {
            Ok(_) => Ok(StreamSlot(self.clone())),
            Err(n) => Err(Status::resource_exhausted(format!(
                "{n} {} streams are open on this node, the limit is {}: close idle ones, share one per process, or use another node",
                self.what, self.max
            ))),
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A page token is the hex of the last (queue, state, id) key of the previous page.
pub fn encode_page(k: &(String, TaskState, String)) -> String {
    crate::raft::codec::encode(k)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The longest page token this service hands out: a queue name and a task id at their
/// limits, their lengths and the state, in hex.
const MAX_PAGE_TOKEN_LEN: usize = 2 * (MAX_NAME_LEN + MAX_ID_LEN + 16);

pub fn decode_page(s: &str) -> Result<(String, TaskState, String), Status> {
    let bad = || {
        Status::invalid_argument("page_token is not one this service returned: pass next_page_token unchanged, or empty for the first page")
    };
    if s.len() % 2 != 0 || s.len() > MAX_PAGE_TOKEN_LEN || !s.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(bad());
    }
    let bytes: Vec<u8> = s
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            let digit = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
            digit(pair[0]) << 4 | digit(pair[1])
        })
        .collect();
    crate::raft::codec::decode(&bytes).map_err(|_| bad())
}
