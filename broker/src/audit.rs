//! The audit store: one append-only, hash-chained record per decision and per
//! sandbox lifecycle event, in sled, with indexes for the contract's filters.
//!
//! Invariants:
//! - Records get consecutive sequence numbers from 1, and times that never go
//!   backwards, in the order of the chain.
//! - Each record is framed as `len ‖ sha256(body) ‖ body`, where `body` is the
//!   record's canonical JSON and includes `prev_hash`, the hash of the record
//!   before it; consecutive records share one LZ4-compressed sled value, a
//!   page ([`page`]).
//!   Editing, inserting or removing a record breaks the chain at that record;
//!   the `head` (last sequence number and hash), written before every flush,
//!   catches removal of the newest records.
//! - An append either takes the record or returns an error, which the broker
//!   turns into a denial: a decision is never answered without its record
//!   (strict: sealed into the chain and flushed to disk; batched: queued in
//!   memory, then sealed, stored and flushed by the flusher within the window).
//!   A batched record that cannot be stored stays queued and is retried, while
//!   every new append is refused; readers drain the queue first, so a record
//!   whose seq was handed out is visible to any query that follows.
//! - Index entries are derived data, written in groups by the flusher,
//!   rebuilt from the records past the `indexed` mark when a store is opened to
//!   append after a crash, and checked against the records by `verify`.
//!
//! sled's `flush` uses `sync_file_range`, not `fsync`: a process crash loses
//! nothing that was flushed, a power cut may. See docs/threat-model.md.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

mod first_open;
mod opening;
mod page;
mod sched;
pub use opening::Opening;
pub use page::tamper;
pub use sched::allow_raised_priority;

/// Hash that the first record chains to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A failure of the audit store. Any of them on the decision path is a denial.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open the audit store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: sled::Error,
    },
    /// A store that did not open ([`Opening`]): that error's text.
    #[error("{0}")]
    NotOpen(String),
    #[error("audit store write failed: {0}")]
    Write(#[from] sled::Error),
    #[error("audit store flush failed: {0}")]
    Flush(String),
    /// Strict mode: record `seq` is in the store but its flush failed, so
    /// the caller must not act on it as recorded (see `overrides`).
    #[error("audit record {seq} is stored but its flush failed: {message}")]
    Unflushed { seq: u64, message: String },
    #[error("audit write queue is full ({0} records not yet on disk)")]
    Backlog(u64),
    #[error("audit write queue is full ({} MiB of records not yet on disk)", .0 / (1024 * 1024))]
    BacklogBytes(u64),
    #[error("audit record {seq} cannot be decoded: {message}")]
    Corrupt { seq: u64, message: String },
    #[error("audit store is closed")]
    Closed,
    #[error("audit store is open read-only")]
    ReadOnly,
    #[error(
        "audit store at {path} is damaged: {problem}; run `cordon audit verify` and keep a copy before starting a new store"
    )]
    Damaged { path: String, problem: String },
    #[error(
        "audit store at {path}: its chain is broken at record {seq} ({problem}); reindex mends only the index of an intact chain: keep a copy of the store as evidence"
    )]
    ChainBroken {
        path: String,
        seq: u64,
        problem: String,
    },
    #[error(
        "audit store at {path} was written by an earlier cordon (one record per key); this version stores records in pages and cannot append to or read it: keep it with the cordon that wrote it, and start a new store"
    )]
    OldFormat { path: String },
    #[error(
        "audit store at {path} has format {format:?}, which this cordon does not know (a newer cordon wrote it?): read it with that cordon"
    )]
    UnknownFormat { path: String, format: String },
}

/// What a store is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Queries and verify: nothing is ever written.
    ReadOnly,
    /// Appends (after finishing what a crash or an interrupted reindex left).
    Append,
    /// `reindex`: the chain is checked before anything is written.
    Reindex,
}

impl AuditError {
    /// Another process (or, a moment after a drop, this one) holds the
    /// store's directory lock: sled says so only in its message.
    pub fn is_locked(&self) -> bool {
        matches!(self, AuditError::Open { source, .. } if source.to_string().contains("could not acquire lock"))
    }

    /// Whether the store could not be opened for want of write access (a
    /// read-only mount, or files the caller may only read): sled opens a
    /// store for writing even to read it.
    pub fn is_unwritable(&self) -> bool {
        use std::io::ErrorKind;
        matches!(self, AuditError::Open { source: sled::Error::Io(e), .. }
            if matches!(e.kind(), ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem))
    }

    /// Whether the store's files are damaged (as opposed to missing, in
    /// use, or unreadable for want of permission): a failed verify.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            AuditError::Damaged { .. }
                | AuditError::Corrupt { .. }
                | AuditError::Open {
                    source: sled::Error::Corruption { .. }
                        | sled::Error::Unsupported(_)
                        | sled::Error::ReportableBug(_),
                    ..
                }
        )
    }
}

/// When an append returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// After the record is flushed; concurrent appends share one flush.
    Strict,
    /// After the record is in the store; flushes happen in groups, at most
    /// `window` after the append.
    Batched { window: Duration },
}

impl Default for Durability {
    fn default() -> Self {
        Durability::Batched {
            window: Duration::from_millis(10),
        }
    }
}

/// One audit record. Field order is the canonical order of the hashed JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct AuditRecord {
    pub seq: u64,
    pub id: String,
    /// RFC 3339, nanoseconds, UTC.
    pub time: String,
    /// `decision`, `sandbox_started`, `sandbox_exited` or `override`.
    pub event: String,
    pub sandbox_id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub pid: i32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub exe: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub syscall: String,
    /// `file`, `network`, `exec` or `lifecycle`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    pub allow: bool,
    /// Permissive mode: the call was allowed, but the policy denied it;
    /// `errno` and `reason` are the policy's denial.
    #[serde(default, skip_serializing_if = "is_false")]
    pub would_deny: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub errno: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_revision: String,
    #[serde(default)]
    pub latency_us: u64,
    /// The verdict came from the policy revision's memo of inputs it had
    /// already evaluated (same input, same revision: same answer).
    #[serde(default, skip_serializing_if = "is_false")]
    pub memoized: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// Exit records: the resource limit that stopped the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// Exit records: peak use (`memory_peak_bytes`, `cpu_usec`, `pids_peak`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<BTreeMap<String, u64>>,
    /// `override` records: the decision record that says allow for a call
    /// that was in fact denied, because it was decided after the client's
    /// deadline, or (strict mode) could not be flushed; such a record is in
    /// the store's memory, so it may still reach the disk, or the log at
    /// exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<u64>,
    /// The policy's `input` document for a decision, as the policy saw it, so
    /// that `cordon policy replay` can re-evaluate it under another policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<crate::input::RecordInput>,
    pub prev_hash: String,
    /// Not part of the hashed body: the SHA-256 of the body, filled on read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl AuditRecord {
    /// What the record is about, on one line: `address:port` (`[v6]:port`),
    /// else the path (a file, a unix socket, an executable), else the argv.
    pub fn subject(&self) -> String {
        match (&self.path, &self.address, &self.argv) {
            (_, Some(a), _) if a.contains(':') => format!("[{a}]:{}", self.port.unwrap_or(0)),
            (_, Some(a), _) => format!("{a}:{}", self.port.unwrap_or(0)),
            (Some(p), None, _) => p.clone(),
            (None, None, Some(argv)) => argv.join(" "),
            (None, None, None) => String::new(),
        }
    }

    /// Unix time of the record in nanoseconds (0 if the time does not parse).
    pub fn time_ns(&self) -> i64 {
        humantime::parse_rfc3339(&self.time)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i64)
    }

    /// About what the record takes in memory until it is on disk: its
    /// variable fields, its `input` (which repeats them, with the working
    /// directories) and a fixed part. An estimate, for bounding the queue,
    /// not a size.
    pub fn approx_bytes(&self) -> u64 {
        // Per string: its `String` and an allocation's overhead.
        let strs = |v: &[String]| v.iter().map(|a| a.len() + 32).sum::<usize>();
        let labels: usize = self
            .labels
            .iter()
            .map(|(k, v)| k.len() + v.len() + 64)
            .sum();
        let variable = self.path.as_ref().map_or(0, String::len)
            + self.argv.as_deref().map_or(0, strs)
            + self.exe.len()
            + labels;
        let input = self
            .input
            .as_ref()
            .map_or(0, crate::input::RecordInput::approx_bytes);
        (1024 + variable + input + self.reason.len()) as u64
    }

    /// A decision's answer: allow or deny. An `override` record is the
    /// denial that replaced an allow its record could not make durable.
    pub fn decision(&self) -> Option<bool> {
        matches!(self.event.as_str(), "decision" | "override").then_some(self.allow)
    }
}

/// Which records a query returns. Empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    pub sandbox_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub syscall: Option<String>,
    pub kind: Option<String>,
    /// `Some(true)`: allowed decisions; `Some(false)`: denials.
    pub decision: Option<bool>,
    /// Only decisions a permissive sandbox allowed that the policy would
    /// have denied.
    pub would_deny: bool,
    pub path_prefix: Option<String>,
    pub limit: Option<u64>,
    /// Only records after this sequence number (resume point).
    pub after_seq: u64,
    /// Only records up to this sequence number (a follow's durable bound).
    pub upto_seq: Option<u64>,
}

impl AuditFilter {
    /// Whether a record passes every filter but the sequence and limit bounds.
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let t = || r.time_ns();
        self.since_ns.is_none_or(|s| t() >= s)
            && self.until_ns.is_none_or(|u| t() <= u)
            && self.sandbox_id.as_ref().is_none_or(|s| &r.sandbox_id == s)
            && self.labels.iter().all(|(k, v)| r.labels.get(k) == Some(v))
            && self.syscall.as_ref().is_none_or(|s| &r.syscall == s)
            && self.kind.as_ref().is_none_or(|k| &r.kind == k)
            && self.decision.is_none_or(|d| r.decision() == Some(d))
            && (!self.would_deny || r.would_deny)
            && self
                .path_prefix
                .as_ref()
                .is_none_or(|p| r.path.as_ref().is_some_and(|rp| rp.starts_with(p.as_str())))
    }
}

/// The result of walking the hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub records_checked: u64,
    /// The first record at which the chain fails; 0 when ok.
    pub first_bad_seq: u64,
    pub problem: String,
    /// Hash of the newest record: keep it elsewhere to detect a rewritten tail.
    pub head_hash: String,
}

impl VerifyReport {
    /// Whether the chain is intact and only the index (derived from the
    /// records, rebuilt by `reindex`) disagrees with it.
    pub fn index_only(&self) -> bool {
        !self.ok && self.problem.starts_with("the index ")
    }
}

/// Appended record's place in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
}

/// The store behind the broker. A trait so the broker's logic does not depend
/// on sled; [`SledAudit`] is the implementation.
pub trait AuditLog: Send + Sync + std::fmt::Debug {
    /// Assigns seq, id, time and prev_hash, stores the record, and returns when
    /// the durability mode is satisfied.
    fn append(&self, record: AuditRecord) -> Result<Appended, AuditError>;
    /// Calls `each` for matching records in sequence order until it returns
    /// false or `limit` records were delivered. Returns the highest sequence
    /// number examined (a resume point).
    fn scan(
        &self,
        filter: &AuditFilter,
        each: &mut dyn FnMut(AuditRecord) -> bool,
    ) -> Result<u64, AuditError>;
    /// Walks the whole chain.
    fn verify(&self) -> Result<VerifyReport, AuditError>;
    /// Sequence number of the newest record (0 when empty).
    fn last_seq(&self) -> u64;
    /// Sequence number of the newest record handed out, stored or still
    /// queued (by default, [`AuditLog::last_seq`]).
    fn last_assigned(&self) -> u64 {
        self.last_seq()
    }
    /// Changes whenever a record is appended; carries the newest seq.
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// Changes whenever records are made durable; carries the newest seq on
    /// disk. For followers, which must not be shown a record a crash could
    /// still lose (its number would be given to another). By default, the
    /// same as [`AuditLog::subscribe`], for a store that is durable at once.
    fn subscribe_durable(&self) -> watch::Receiver<u64> {
        self.subscribe()
    }
    /// Flushes everything appended so far.
    fn flush(&self) -> Result<(), AuditError>;
    /// Records that were answered for but are not known to be on disk (the
    /// store failed: still queued, or in memory past the last good flush),
    /// for the caller to keep elsewhere: for a process about to exit after a
    /// failed flush.
    fn take_unstored(&self) -> Vec<AuditRecord> {
        Vec::new()
    }
    /// For a process about to exit: makes everything appended durable or,
    /// failing that, writes it to the log. A store that can refuse later
    /// appends (as `SledAudit` does) must, so that none is answered after the
    /// last flush. Reads still work. Calling it again is harmless.
    fn close(&self) {
        log_if_unflushed(self.flush(), || self.take_unstored());
    }
    /// How many of this process's records the store lost: appends it
    /// refused (not those stored and waiting for a flush), and, once
    /// [`AuditLog::close`] has run, those its final flush could not make
    /// durable (in the log instead). Not zero: the trail is incomplete, which
    /// `cordon run` reports in its exit status.
    fn lost(&self) -> u64 {
        0
    }
    /// Blocks until the store can take records (one still opening, see
    /// [`Opening`]), or says why it never will. By default, at once.
    fn ready(&self) -> Result<(), AuditError> {
        Ok(())
    }
}

/// After a final flush: whatever it could not make durable goes to the log.
/// Returns how many records that was.
fn log_if_unflushed<T>(
    flushed: Result<T, AuditError>,
    unstored: impl FnOnce() -> Vec<AuditRecord>,
) -> u64 {
    match flushed {
        Ok(_) => 0,
        Err(e) => {
            tracing::error!(error = %e, "final audit flush failed");
            let records = unstored();
            let n = records.len() as u64;
            log_unstored(records);
            n
        }
    }
}

/// Writes records the store could not take to the log, one JSON line each,
/// so that an operator can restore them: the last place they can go.
pub fn log_unstored(records: Vec<AuditRecord>) {
    for record in records {
        let json = serde_json::to_string(&record).unwrap_or_else(|e| e.to_string());
        tracing::error!(seq = record.seq, record = %json, "unstored audit record");
    }
}

/// Nice levels the batched flusher runs above the threads it was started
/// with, where allowed ([`allow_raised_priority`]). At the same weight, a
/// tool whose calls kept a CPU busy (the supervisor and the tool taking
/// turns on it) left the flusher a share too small for its work: records
/// reached the disk 16 ms after their decision (median; 35 ms at p99,
/// most past the 10 ms window); ten levels up, 4.6 ms (9.2 ms at p99),
/// and the tool's calls were no slower (BENCHMARKS.md, session 21).
const FLUSHER_RAISED_BY: i32 = 10;

/// Raises the calling thread, the batched flusher, where the program allows
/// it and this process may.
fn raise_flusher() {
    if !sched::raised_priority_allowed() {
        return;
    }
    match sched::raise_this_thread(FLUSHER_RAISED_BY) {
        Some(nice) => tracing::debug!(nice, "audit flusher raised"),
        None => tracing::debug!(
            "audit flusher left at its priority (not permitted, or not the default policy)"
        ),
    }
}

/// Records per sled batch: eight pages. sled writes its log buffer out before
/// and after every batch's manifest (the first write only if the buffer holds
/// something), so a batch per page cost up to two writes, each a
/// `sync_file_range`, per 32 records. Bigger
/// batches hold more memory in flight (sled pins its epoch over a batch: one
/// of 1,000 records, one insert each, took `cordon serve` to 637 MiB peak RSS;
/// 256 small records make eight pages of ~5 KiB, large ones up to 256 pages
/// of one record each; their peak was not measured apart) and hold
/// sled's write lock longer (readers and index inserts wait meanwhile).
const STORE_CHUNK: usize = 8 * page::MAX_RECORDS;

/// Bytes of records not yet on disk (`AuditRecord::approx_bytes` while
/// queued, the sealed body's capacity once stored) past which batched appends are refused: the record count alone lets
/// a tool that repeats huge execs against a slow disk grow the broker by GiBs.
const MAX_BACKLOG_BYTES: u64 = 256 * 1024 * 1024;

/// Queued records past which an append stores the queue itself.
const INLINE_DRAIN_AT: usize = 1024;

/// Index entries gathered before they are written when a whole store is
/// indexed (~100 bytes each in memory).
const REINDEX_CHUNK: usize = 8192;

/// The append side: what the next record gets.
struct Chain {
    next_seq: u64,
    last_time_ns: i64,
    /// Batched: records numbered and timed, in seq order, that the flusher
    /// has not sealed and stored yet.
    queue: Vec<AuditRecord>,
    /// When the oldest of them was queued: the flusher's window counts from
    /// it, not from when the flusher next looks (records queued while it
    /// flushed had waited that long already).
    queued_since: Option<std::time::Instant>,
}

/// The newest record in the store: what the next sealed record chains to.
struct Sealed {
    seq: u64,
    hash: [u8; 32],
}

#[derive(Default)]
struct FlushState {
    durable_seq: u64,
    flushing: bool,
    /// The last flush failed; appends up to this seq could not be made durable.
    failed: Option<(u64, String)>,
}

struct IndexEntry {
    seq: u64,
    /// The first seq of the page that holds it.
    page: u64,
    sandbox_id: String,
    syscall: String,
    decision: Option<bool>,
}

struct Inner {
    db: sled::Db,
    /// The head kept outside sled ([`HEAD_FILE`]), for a writer, and the
    /// newest seq written there: one writer at a time (a flush and a final
    /// one at close can overlap), never a lower seq over a higher.
    head_file: Option<Mutex<(std::fs::File, u64, bool)>>,
    /// For a reader: the head file's seq when it is past the records.
    kept_head: Option<u64>,
    /// For a reader: the head file's seq and hash when the records reach
    /// it (verify compares the hash).
    kept_hash: Option<(u64, String)>,
    records: sled::Tree,
    index: sled::Tree,
    meta: sled::Tree,
    chain: Mutex<Chain>,
    sealed: Mutex<Sealed>,
    /// Held while the queue is taken and stored, so batches chain in order.
    drain_serial: Mutex<()>,
    pending_index: Mutex<Vec<IndexEntry>>,
    /// Newest seq handed out (queued or stored).
    assigned_seq: AtomicU64,
    /// Newest seq in the store.
    inserted_seq: AtomicU64,
    /// Records stored in sled but not known durable, sealed, in seq order,
    /// until a flush succeeds. After a failed write they are what
    /// `take_unstored` logs: sled cannot be trusted to read them back then
    /// (a read may split a tree node, which is a write, and after an I/O
    /// error sled refuses every write).
    unflushed: Mutex<Vec<Unflushed>>,
    flush: Mutex<FlushState>,
    flushed: Condvar,
    dirty: Mutex<bool>,
    wake_flusher: Condvar,
    shutdown: AtomicBool,
    durability: Durability,
    /// Opened for reading: never appends, never moves the head.
    read_only: bool,
    max_backlog: u64,
    /// What the records not yet on disk take (`approx_bytes` while queued,
    /// the sealed body's capacity once stored), and the bound
    /// on it past which batched appends are refused.
    backlog_bytes: AtomicU64,
    max_backlog_bytes: AtomicU64,
    notify: watch::Sender<u64>,
    /// The newest seq known on disk, after each flush.
    durable: watch::Sender<u64>,
    /// Serializes flushes: two concurrent flushes could otherwise write the
    /// `indexed` mark past index entries the other has not applied yet, and a
    /// crash in between would leave those entries missing for good.
    flush_serial: Mutex<()>,
    /// Why flushing stopped for good: a flush panicked, and what it had
    /// taken (index entries, the head) may be half written. Every later
    /// flush fails with it, so every later decision is denied.
    broken: std::sync::OnceLock<String>,
    /// Makes the next flush panic, for the test of what follows.
    #[cfg(test)]
    panic_next_flush: AtomicBool,
    ids: RecordIds,
}

/// A record stored but not known durable: its sealed body (one allocation;
/// the record itself, a tree of them, is freed as soon as it is sealed, in
/// the same run of the flusher rather than after the disk's flush wakes it
/// again), decoded again only if it has to be logged.
struct Unflushed {
    seq: u64,
    body: Vec<u8>,
    hash: [u8; 32],
}

/// Record ids: UUIDv7 (time-ordered), whose random bits are a random start,
/// drawn once per opened store, plus a counter. That keeps them unique (ids
/// need not be unpredictable: the chain, not the id, is the evidence) without
/// a `getrandom` call per record, which was ~1 µs of each decision.
struct RecordIds {
    start: [u8; 10],
    count: AtomicU64,
}

impl RecordIds {
    fn new() -> Self {
        // The 74 random bits of a v7 id (and the 6 version and variant bits
        // between them, which the builder overwrites).
        let mut start = [0u8; 10];
        start.copy_from_slice(&uuid::Uuid::now_v7().as_bytes()[6..]);
        Self {
            start,
            count: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        let mut bits = [0u8; 10];
        let low = u64::from_be_bytes(self.start[..8].try_into().unwrap_or_default());
        bits[..8].copy_from_slice(&low.wrapping_add(n).to_be_bytes());
        bits[8..].copy_from_slice(&self.start[8..10]);
        let millis = u64::try_from(now_ns() / 1_000_000).unwrap_or(0);
        uuid::Builder::from_unix_timestamp_millis(millis, &bits)
            .into_uuid()
            .to_string()
    }
}

/// The sled-backed audit store.
pub struct SledAudit {
    inner: Arc<Inner>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    /// See [`AuditLog::lost`].
    lost: AtomicU64,
}

impl std::fmt::Debug for SledAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledAudit")
            .field("durability", &self.inner.durability)
            .field("last_seq", &self.last_seq())
            .finish()
    }
}

const HEAD_KEY: &[u8] = b"head";

/// The head (`SEQ HASH`, the newest flushed record) kept in a file of its
/// own as well, replaced after each flush: sled's recovery takes damage in
/// its log (one flipped byte) for a torn tail and drops everything after
/// it, the `head` record with it, and the shorter chain then verified
/// intact (found by review). Outside the log, the head says what was there.
const HEAD_FILE: &str = "cordon-head";
const INDEXED_KEY: &[u8] = b"indexed";
/// Present while the index is rebuilt (`rebuild_index`).
const REINDEXING_KEY: &[u8] = b"reindexing";
/// Marks a store whose records are in pages; stores written before pages have
/// no mark and one record per key.
const FORMAT_KEY: &[u8] = b"format";
/// Pages, uncompressed (session 5's cordon): still read, and marked
/// `FORMAT_PAGES_LZ4` once opened to append.
const FORMAT_PAGES: &[u8] = b"pages";
/// Pages, compressed. An older cordon refuses a store so marked instead of
/// taking a compressed page for damage.
const FORMAT_PAGES_LZ4: &[u8] = b"pages-lz4";

fn seq_key(seq: u64) -> [u8; 8] {
    page::key(seq)
}

fn decode(seq: u64, entry: page::Entry<'_>) -> Result<AuditRecord, AuditError> {
    let mut r: AuditRecord =
        serde_json::from_slice(entry.body).map_err(|e| AuditError::Corrupt {
            seq,
            message: e.to_string(),
        })?;
    r.hash = hex::encode(entry.hash);
    Ok(r)
}

/// A stored page: its first seq and its records' frames, in order.
struct Page {
    first: u64,
    frames: Vec<u8>,
}

impl Page {
    fn from_item(item: sled::Result<(sled::IVec, sled::IVec)>) -> Result<Self, AuditError> {
        let (k, value) = item?;
        // Exactly 8 bytes: a longer key would sort among the pages without
        // being where its seq says, hiding it from lookups but not from a walk.
        let first = <[u8; 8]>::try_from(k.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| AuditError::Corrupt {
                seq: 0,
                message: "a page has a malformed key".into(),
            })?;
        let frames = page::open(&value)
            .map_err(|message| AuditError::Corrupt {
                seq: first,
                message: format!("the page starting at record {first}: {message}"),
            })?
            .into_owned();
        Ok(Self { first, frames })
    }

    fn entries(&self) -> Result<Vec<page::Entry<'_>>, AuditError> {
        page::entries(&self.frames).map_err(|message| AuditError::Corrupt {
            seq: self.first,
            message: format!("the page starting at record {}: {message}", self.first),
        })
    }

    /// Its records, each with the seq of its place in the page.
    fn records(&self) -> Result<impl Iterator<Item = (u64, page::Entry<'_>)>, AuditError> {
        // Saturating: a damaged key near u64::MAX must not overflow (verify
        // reports such a page; readers just see wrong seqs).
        let first = self.first;
        Ok(self
            .entries()?
            .into_iter()
            .enumerate()
            .map(move |(i, e)| (first.saturating_add(i as u64), e)))
    }

    /// The seq of its last record, as placed.
    fn last(&self) -> Result<u64, AuditError> {
        let n = self.entries()?.len() as u64;
        Ok(self.first.saturating_add(n.saturating_sub(1)))
    }

    fn record(&self, seq: u64) -> Result<Option<AuditRecord>, AuditError> {
        self.record_in(&self.entries()?, seq)
    }

    /// Record `seq` from this page's already parsed `entries`.
    fn record_in(
        &self,
        entries: &[page::Entry<'_>],
        seq: u64,
    ) -> Result<Option<AuditRecord>, AuditError> {
        seq.checked_sub(self.first)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| entries.get(at))
            .map(|&e| decode(seq, e))
            .transpose()
    }
}

/// Unix time in nanoseconds: the clock records are timed by.
pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// A SHA-256 in lowercase hex, as `hex::encode` writes it, from its table
/// (`hex::encode` collects a char at a time: ~0.5 % of a pinned open's CPU,
/// once per record on the flusher).
fn hash_hex(hash: &[u8; 32]) -> String {
    let mut text = [0u8; 64];
    match hex::encode_to_slice(hash, &mut text) {
        // ASCII: nothing is replaced.
        Ok(()) => String::from_utf8_lossy(&text).into_owned(),
        Err(_) => hex::encode(hash),
    }
}

fn format_time(ns: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_nanos(t).to_string()
}

/// A panic's message, when it has one.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// How every store is opened.
fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        // Ours flushes (`Inner::flush_now`), so sled needs no flusher thread.
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput)
        // An append-only log read by scans: sled's default 1 GiB page cache
        // only grew the broker (506 MiB RSS after the scale benchmark).
        .cache_capacity(64 << 20)
}

/// Makes the store's directory, and any missing above it, readable by its
/// owner alone: the records hold paths, argv and labels of every sandbox, and
/// sled makes its files as the umask allows (0644). One that exists readable
/// by others is kept as it is, with a warning.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => {
            let mode = meta.permissions().mode();
            // Not a directory: the open says so.
            if meta.is_dir() && mode & 0o077 != 0 {
                tracing::warn!(path = %dir.display(), mode = format!("{:o}", mode & 0o7777),
                    "the audit store's directory is open to its group or to everyone, who can copy and read every record: chmod 700 it");
            }
            meta
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            std::fs::metadata(dir)?
        }
        Err(e) => return Err(e),
    };
    // Whoever owns the directory can read and rewrite every record: one
    // another user made, in a shared place, before this store was (or made
    // meanwhile, which a recursive create accepts), is refused (found by
    // review). Root's stores are root's; a user's, that user's.
    let me = nix::unistd::geteuid().as_raw();
    let refused = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            why,
        ))
    };
    if !meta.is_dir() {
        return Ok(());
    }
    if meta.uid() != me {
        return refused(format!(
            "its directory is owned by uid {}, not by this user (uid {me}), who could read and rewrite every record: use a directory of your own",
            meta.uid()
        ));
    }
    // Whoever may write the directory may replace its files, and so every
    // record (the chain with them); a file of another user's in it was put
    // there by one who could (found by review). Root's are not: root can
    // rewrite the store anyway, and sled's recovery leaves a snapshot of
    // root's behind when root reads a user's store.
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return refused(format!(
            "its directory (mode {:o}) is writable by its group or by everyone, who could replace every record: chmod go-w it",
            mode & 0o7777
        ));
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        // One a running broker removed meanwhile (an old snapshot): the
        // open then says the store is in use.
        let owner = match entry.metadata() {
            Ok(meta) => meta.uid(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if owner != me && owner != 0 {
            return refused(format!(
                "{} is owned by uid {owner}, not by this user (uid {me}): whoever put it there could have rewritten the records; keep a copy as evidence and start a new store",
                entry.path().display()
            ));
        }
    }
    Ok(())
}

impl SledAudit {
    /// Opens (or creates) the store in `dir` for appending. Refuses a store
    /// whose newest records were removed, rather than chain onto the gap.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, AuditError> {
        Self::open_with(dir, durability, Access::Append)
    }

    /// Rebuilds the index of the store in `dir` (which no broker may have
    /// open) from its records: for a store whose `verify` names an index
    /// problem. Refused when the chain itself is broken (checked before
    /// anything is written): the store is then evidence, and writing would
    /// move its head. The records and their chain are not touched; the head
    /// is written again as the intact chain's newest record. Interrupted, it
    /// is finished by the next writable open. Returns how many records were
    /// indexed.
    pub fn reindex(dir: &Path) -> Result<u64, AuditError> {
        // One open: the chain is checked before anything is written (and a
        // second open right after a first can find sled's lock still held).
        Self::open_with(dir, Durability::Strict, Access::Reindex)?
            .inner
            .rebuild_index()
    }

    /// Opens an existing store to query and verify it, without ever writing
    /// records or moving its head (so verifying twice gives the same answer).
    pub fn open_read_only(dir: &Path) -> Result<Self, AuditError> {
        Self::open_with(dir, Durability::Strict, Access::ReadOnly)
    }

    fn open_with(dir: &Path, durability: Durability, access: Access) -> Result<Self, AuditError> {
        let read_only = access == Access::ReadOnly;
        let open_err = |source| AuditError::Open {
            path: dir.display().to_string(),
            source,
        };
        if !read_only {
            private_dir(dir).map_err(|e| open_err(sled::Error::Io(e)))?;
        }
        Self::open_made(dir, durability, access)
    }

    /// [`SledAudit::open_with`] once the directory is made (for a writer).
    fn open_made(dir: &Path, durability: Durability, access: Access) -> Result<Self, AuditError> {
        let read_only = access == Access::ReadOnly;
        let open_err = |source| AuditError::Open {
            path: dir.display().to_string(),
            source,
        };
        // sled panics on some damage it meets while recovering (a flipped
        // byte: "tried to serialize Uninitialized"): a damaged store, said
        // so, not a crash of every command that opens it (found by review).
        let db = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            first_open::open(&sled_config(dir))
        }))
        .unwrap_or_else(|panic| {
            Err(sled::Error::Unsupported(format!(
                "sled failed while recovering it, which a damaged file does ({}); keep a copy of the store as evidence",
                panic_text(panic.as_ref())
            )))
        })
        .map_err(open_err)?;
        let records = db.open_tree("records").map_err(open_err)?;
        let index = db.open_tree("index").map_err(open_err)?;
        let meta = db.open_tree("meta").map_err(open_err)?;
        let format = meta.get(FORMAT_KEY).map_err(open_err)?;
        let (next_seq, last_hash, last_time_ns) = match records.last().map_err(open_err)? {
            Some(_) if format.is_none() => {
                return Err(AuditError::OldFormat {
                    path: dir.display().to_string(),
                });
            }
            _ if format
                .as_deref()
                .is_some_and(|f| f != FORMAT_PAGES && f != FORMAT_PAGES_LZ4) =>
            {
                return Err(AuditError::UnknownFormat {
                    path: dir.display().to_string(),
                    format: String::from_utf8_lossy(format.as_deref().unwrap_or_default())
                        .into_owned(),
                });
            }
            Some(item) => {
                let newest = || {
                    let page = Page::from_item(Ok(item))?;
                    let (seq, last) =
                        page.records()?.last().ok_or_else(|| AuditError::Corrupt {
                            seq: page.first,
                            message: "an empty page".into(),
                        })?;
                    let r = decode(seq, last)?;
                    let h: [u8; 32] = last.hash.try_into().unwrap_or([0; 32]);
                    let next = seq.checked_add(1).ok_or_else(|| AuditError::Damaged {
                        path: dir.display().to_string(),
                        problem: "its newest record claims the last possible sequence number"
                            .into(),
                    })?;
                    Ok::<_, AuditError>((next, h, r.time_ns()))
                };
                match newest() {
                    Ok(newest) => newest,
                    // Read-only (verify, queries): the store opens so that
                    // verify can walk to the damage and name it. The newest
                    // seq is left open, so that every query reaches the
                    // damaged item (a page, a record, a key) and fails with
                    // its error rather than stop short of it in silence.
                    Err(e @ (AuditError::Corrupt { .. } | AuditError::Damaged { .. }))
                        if read_only =>
                    {
                        tracing::warn!(error = %e, "the newest page is damaged");
                        (u64::MAX, [0; 32], 0)
                    }
                    Err(e) => return Err(e),
                }
            }
            None => (1, [0u8; 32], 0),
        };
        let last = next_seq - 1;
        // Fewer records than the head kept outside sled names: sled dropped
        // them while recovering (damage to its log) or they were cut. No
        // writer numbers new records over them; verify names them.
        let mut kept_head = None;
        let mut kept_hash = None;
        match std::fs::read_to_string(dir.join(HEAD_FILE)) {
            Ok(text) => {
                let mut words = text.split_whitespace();
                let kept = words.next().and_then(|s| s.parse::<u64>().ok());
                let hash = words
                    .next()
                    .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
                match kept {
                    // Read-only (verify, queries): opened, and verify names
                    // the missing records.
                    Some(kept) if kept > last && read_only => {
                        // A query goes on with what is left, and says so.
                        tracing::warn!(
                            path = %dir.display(),
                            "records {} to {kept} of this audit store are missing: its head file names record {kept} (damage to sled's log, or a cut); `cordon audit verify` reports it",
                            last + 1
                        );
                        kept_head = Some(kept);
                    }
                    Some(kept) if kept > last => {
                        return Err(AuditError::Damaged {
                            path: dir.display().to_string(),
                            problem: format!(
                                "it holds records up to {last}, but its head file ({HEAD_FILE}) names record {kept}: records {} to {kept} were lost (damage to sled's log, which its recovery drops, or a cut)",
                                last + 1
                            ),
                        });
                    }
                    Some(kept) if read_only && kept > 0 => {
                        kept_hash = hash.map(|h| (kept, h.to_ascii_lowercase()));
                    }
                    Some(_) => {}
                    // Made by a writer that stopped before its first flush.
                    None if text.trim().is_empty() => {}
                    None => {
                        tracing::warn!(path = %dir.display(), "the audit store's head file is malformed; ignored")
                    }
                }
            }
            // A store from before it, or one never flushed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "the audit store's head file cannot be read; ignored")
            }
        }
        // Times never go back in the chain: a newest record timed in the
        // future (a clock that was wrong, or a forged record) holds every
        // later one at its time until the clock passes it.
        if !read_only && last_time_ns > now_ns().saturating_add(60_000_000_000) {
            tracing::warn!(
                path = %dir.display(),
                newest = %format_time(last_time_ns),
                "the newest audit record is timed more than a minute in the future: new records get times after it until the clock passes it"
            );
        }
        let head = meta.get(HEAD_KEY).map_err(open_err)?;
        if !read_only && last > 0 {
            match &head {
                // Never written so: altered.
                Some(h) if h.len() != 40 || h[..8] == [0; 8] => {
                    return Err(AuditError::Damaged {
                        path: dir.display().to_string(),
                        problem: format!(
                            "its head is malformed ({} bytes{}): whether newer records were removed cannot be told",
                            h.len(),
                            if h.len() == 40 {
                                ", naming record 0"
                            } else {
                                ", not 40"
                            }
                        ),
                    });
                }
                // A crash during a new store's first flush can leave records
                // without a head, as can a removal: taken, and said.
                None => tracing::warn!(
                    path = %dir.display(),
                    newest = last,
                    "the audit store has records but no head: newer records may have been removed; `cordon audit verify` reports it until the next flush writes one"
                ),
                Some(_) => {}
            }
        }
        if !read_only
            && let Some(head) = head
            && head.len() == 40
        {
            let head_seq = u64::from_be_bytes(head[..8].try_into().unwrap_or([0; 8]));
            if head_seq > last {
                return Err(AuditError::Damaged {
                    path: dir.display().to_string(),
                    problem: format!(
                        "its head is record {head_seq} but the newest record is {last}"
                    ),
                });
            }
            // The record the head names replaced (rehashed): appending would
            // rewrite the head past it, and verify would pass from then on.
            // It is the newest one, or (records stored after the head was,
            // then a crash) an older one, read from its page.
            let head_hash = if head_seq == last {
                Some(last_hash.to_vec())
            } else {
                let page = records
                    .range(..=seq_key(head_seq))
                    .next_back()
                    .map(Page::from_item)
                    .transpose()?;
                page.as_ref()
                    .map(|p| p.records())
                    .transpose()?
                    .and_then(|mut rs| rs.find(|(seq, _)| *seq == head_seq))
                    .map(|(_, e)| e.hash.to_vec())
            };
            if head_seq > 0 && head_hash.as_deref() != Some(&head[8..]) {
                return Err(AuditError::Damaged {
                    path: dir.display().to_string(),
                    problem: if head_seq == last {
                        format!(
                            "its newest record, {last}, does not match its head: it was replaced"
                        )
                    } else {
                        format!("record {head_seq}, its head, was replaced or removed")
                    },
                });
            }
        }
        let (notify, _) = watch::channel(last);
        let (durable, _) = watch::channel(last);
        let inner = Arc::new(Inner {
            db,
            head_file: if read_only {
                None
            } else {
                // Kept open and written in place: a write and a rename per
                // flush cost 150 µs in strict mode (BENCHMARKS.md, session 28).
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .open(dir.join(HEAD_FILE))
                    .map_err(|e| open_err(sled::Error::Io(e)))?;
                Some(Mutex::new((file, last, false)))
            },
            kept_head,
            kept_hash,
            records,
            index,
            meta,
            chain: Mutex::new(Chain {
                next_seq,
                last_time_ns,
                queue: Vec::new(),
                queued_since: None,
            }),
            sealed: Mutex::new(Sealed {
                seq: last,
                hash: last_hash,
            }),
            drain_serial: Mutex::new(()),
            pending_index: Mutex::new(Vec::new()),
            assigned_seq: AtomicU64::new(last),
            inserted_seq: AtomicU64::new(last),
            unflushed: Mutex::new(Vec::new()),
            flush: Mutex::new(FlushState {
                durable_seq: last,
                ..Default::default()
            }),
            flushed: Condvar::new(),
            dirty: Mutex::new(false),
            wake_flusher: Condvar::new(),
            shutdown: AtomicBool::new(false),
            durability,
            read_only,
            max_backlog: 100_000,
            backlog_bytes: AtomicU64::new(0),
            max_backlog_bytes: AtomicU64::new(MAX_BACKLOG_BYTES),
            notify,
            durable,
            flush_serial: Mutex::new(()),
            broken: std::sync::OnceLock::new(),
            #[cfg(test)]
            panic_next_flush: AtomicBool::new(false),
            ids: RecordIds::new(),
        });
        if access == Access::Reindex {
            // Before any key is written: a broken chain is evidence, left as
            // it is (sled itself may rewrite its own snapshot file on open).
            let report = inner.verify(false)?;
            if !report.ok {
                return Err(AuditError::ChainBroken {
                    path: dir.display().to_string(),
                    seq: report.first_bad_seq,
                    problem: report.problem,
                });
            }
        }
        // Only once the store is known good: compressed pages follow, so an
        // older cordon must refuse it from now on (session 5's would take a
        // compressed page for damage); a store refused above keeps its mark.
        if !read_only && format.as_deref() != Some(FORMAT_PAGES_LZ4) {
            inner
                .meta
                .insert(FORMAT_KEY, FORMAT_PAGES_LZ4)
                .map_err(open_err)?;
        }
        let reindexing = inner.meta.get(REINDEXING_KEY)?.is_some();
        match access {
            // A reader leaves the store as it found it: records past the
            // index are read in order by `scan` anyway.
            Access::ReadOnly if reindexing => tracing::warn!(
                path = %dir.display(),
                "a reindex of this store was interrupted: filtered queries read unindexed records one by one until the next writable open or `cordon audit reindex` finishes it"
            ),
            Access::ReadOnly => {}
            Access::Append if reindexing => {
                tracing::warn!(path = %dir.display(), "finishing an interrupted reindex");
                inner.rebuild_index()?;
            }
            Access::Append => inner.reindex_after_crash()?,
            // The caller rebuilds the whole index.
            Access::Reindex => {}
        }
        let flusher = match durability {
            Durability::Batched { window } => {
                let inner = inner.clone();
                Some(
                    std::thread::Builder::new()
                        .name("cordon-audit-flush".into())
                        .spawn(move || {
                            raise_flusher();
                            inner.flusher_loop(window)
                        })
                        .map_err(|e| AuditError::Flush(format!("cannot start the flusher: {e}")))?,
                )
            }
            Durability::Strict => None,
        };
        Ok(Self {
            inner,
            flusher: Mutex::new(flusher),
            lost: AtomicU64::new(0),
        })
    }

    /// The durability mode in force.
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }
}

impl Inner {
    /// `verify`, or with `check_index` false the chain and head alone.
    fn verify(&self, check_index: bool) -> Result<VerifyReport, AuditError> {
        let inner = self;
        inner.drain()?;
        // What was durable before the head is read: a flush writes the head
        // before it counts its records durable, so a head missing then is a
        // problem only if one had been counted (read after the walk, a flush
        // finished meanwhile would blame a head read before it).
        let durable = *inner.durable.borrow();
        // The head first: it only ever names stored records, so on a live
        // store the walk below reaches it even if newer ones arrive meanwhile.
        let raw_head = inner.meta.get(HEAD_KEY)?;
        let head = raw_head.as_ref().filter(|h| h.len() == 40).map(|h| {
            (
                u64::from_be_bytes(h[..8].try_into().unwrap_or([0; 8])),
                hex::encode(&h[8..]),
            )
        });
        // Pages up to here are indexed: the index must say what they say.
        let indexed = inner.indexed_upto()?;
        let mut index_check = IndexCheck::default();
        let mut hash_at_head = None;
        let mut hash_at_kept = None;
        let mut expected = 1u64;
        let mut prev = GENESIS.to_owned();
        let fail = |seq: u64, checked: u64, problem: String, prev: &str| VerifyReport {
            ok: false,
            records_checked: checked,
            first_bad_seq: seq,
            problem,
            head_hash: prev.to_owned(),
        };
        let missing = |expected: u64, seq: u64| {
            if seq == expected + 1 {
                format!("record {expected} is missing")
            } else {
                format!("records {expected} to {} are missing", seq - 1)
            }
        };
        for item in inner.records.iter() {
            let checked = expected - 1;
            let page = match Page::from_item(item) {
                Ok(page) => page,
                Err(AuditError::Corrupt { message, .. }) => {
                    return Ok(fail(expected, checked, message, &prev));
                }
                Err(e) => return Err(e),
            };
            if page.first > expected {
                return Ok(fail(
                    expected,
                    checked,
                    missing(expected, page.first),
                    &prev,
                ));
            }
            let entries = match page.entries() {
                Ok(entries) => entries,
                Err(e) => return Ok(fail(expected, checked, e.to_string(), &prev)),
            };
            let mut page_index = BTreeMap::new();
            for (at, entry) in entries.into_iter().enumerate() {
                // Where a record sits is not evidence; its hashed body is.
                let checked = expected - 1;
                if Sha256::digest(entry.body).as_slice() != entry.hash {
                    return Ok(fail(
                        expected,
                        checked,
                        format!(
                            "record {expected} was altered: its contents do not match its hash"
                        ),
                        &prev,
                    ));
                }
                let record = match decode(expected, entry) {
                    Ok(r) => r,
                    Err(e) => return Ok(fail(expected, checked, e.to_string(), &prev)),
                };
                let seq = record.seq;
                if seq > expected {
                    return Ok(fail(expected, checked, missing(expected, seq), &prev));
                }
                if seq < expected {
                    return Ok(fail(
                        expected,
                        checked,
                        format!("record {expected} was altered: it claims sequence number {seq}"),
                        &prev,
                    ));
                }
                if at == 0 && page.first != seq {
                    return Ok(fail(
                        seq,
                        checked,
                        format!(
                            "the page holding record {seq} is stored under record {}",
                            page.first
                        ),
                        &prev,
                    ));
                }
                if record.prev_hash != prev {
                    // Either was rewritten with its hash recomputed: the
                    // chain cannot tell which, so the earlier is named and
                    // neither counts as intact.
                    let before = seq - 1;
                    if before == 0 {
                        return Ok(fail(
                            seq,
                            0,
                            format!("record {seq} was replaced: it does not start the chain"),
                            &prev,
                        ));
                    }
                    return Ok(fail(
                        before,
                        before - 1,
                        format!(
                            "record {before} or record {seq} was replaced: record {seq} does not chain to record {before}"
                        ),
                        &prev,
                    ));
                }
                if head.as_ref().is_some_and(|(h, _)| *h == seq) {
                    hash_at_head = Some(record.hash.clone());
                }
                if inner.kept_hash.as_ref().is_some_and(|(k, _)| *k == seq) {
                    hash_at_kept = Some(record.hash.clone());
                }
                if check_index && page.first <= indexed {
                    add_index_entries(&mut page_index, &index_entry(&record, page.first));
                }
                prev = record.hash;
                expected += 1;
            }
            if check_index {
                index_check.page(&inner.index, &page_index)?;
            }
        }
        let checked = expected - 1;
        // Records on disk (there when the store was opened, or flushed since,
        // each flush writing a head), and no head that names one: nothing
        // tells whether newer records were removed. Records a live writer
        // stored but has not flushed yet have none until it does.
        if checked > 0 && durable > 0 {
            let problem = match (&raw_head, &head) {
                (None, _) => Some(
                    "the store has records but no head: newer records may have been removed \
                     (a crash during a new store's first flush leaves none either, until its next \
                     flush)"
                        .to_owned(),
                ),
                (Some(raw), None) => Some(format!(
                    "the store's head is malformed ({} bytes, not 40): whether newer records were \
                     removed cannot be told",
                    raw.len()
                )),
                (_, Some((0, _))) => Some(
                    "the store's head names record 0: whether newer records were removed cannot \
                     be told"
                        .to_owned(),
                ),
                _ => None,
            };
            if let Some(problem) = problem {
                return Ok(fail(checked + 1, checked, problem, &prev));
            }
        }
        if let Some((head_seq, head_hash)) = head {
            if head_seq > checked {
                return Ok(fail(
                    checked + 1,
                    checked,
                    if head_seq == checked + 1 {
                        format!("record {head_seq} is missing (the store's head is {head_seq})")
                    } else {
                        format!(
                            "records {} to {head_seq} are missing (the store's head is {head_seq})",
                            checked + 1
                        )
                    },
                    &prev,
                ));
            }
            if head_seq > 0 && hash_at_head.as_deref() != Some(head_hash.as_str()) {
                return Ok(fail(
                    head_seq,
                    head_seq - 1,
                    format!("record {head_seq} was replaced: it does not match the store's head"),
                    &prev,
                ));
            }
        }
        if let Some(kept) = inner.kept_head
            && kept > checked
        {
            return Ok(fail(
                checked + 1,
                checked,
                format!(
                    "records {} to {kept} are missing: the head file ({HEAD_FILE}) names record {kept} (damage to sled's log, which its recovery drops, or a cut)",
                    checked + 1
                ),
                &prev,
            ));
        }
        // The head file is written after sled's flush, so the record it
        // names is stored with the hash it gives (lagging is allowed: an
        // older record's).
        if let Some((kept, kept_hash)) = &inner.kept_hash
            && *kept <= checked
            && hash_at_kept.as_deref() != Some(kept_hash.as_str())
        {
            return Ok(fail(
                *kept,
                kept - 1,
                format!(
                    "record {kept} was replaced: it does not match the head file ({HEAD_FILE})"
                ),
                &prev,
            ));
        }
        if check_index && let Some((seq, problem)) = index_check.finish(inner, indexed)? {
            return Ok(fail(seq, checked, problem, &prev));
        }
        Ok(VerifyReport {
            ok: true,
            records_checked: checked,
            first_bad_seq: 0,
            problem: String::new(),
            head_hash: prev,
        })
    }

    /// Refuses appends from now on and tells the flusher to stop.
    fn shut(&self) {
        // Under the flusher's lock, so the wake-up cannot fall between its
        // check of `shutdown` and its wait.
        let _dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        self.shutdown.store(true, Ordering::SeqCst);
        self.wake_flusher.notify_all();
    }
}

/// The flusher's failed flushes in a row: when to try again (half a window
/// at first, at least [`Failing::FIRST_RETRY`], twice as long each time up to
/// [`Failing::LAST_RETRY`]: a full disk fails at once, every time) and what
/// to log (the first failure, then one line per [`Failing::LOG_EVERY`]).
#[derive(Debug, Default)]
struct Failing {
    count: u64,
    wait: Duration,
    logged: Option<std::time::Instant>,
}

impl Failing {
    const FIRST_RETRY: Duration = Duration::from_millis(5);
    const LAST_RETRY: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(10);

    /// Counts a failure; how long to wait before the next try.
    fn failed(&mut self, e: &AuditError, gather: Duration) -> Duration {
        self.count += 1;
        self.wait = if self.count == 1 {
            gather.max(Self::FIRST_RETRY)
        } else {
            (self.wait * 2).min(Self::LAST_RETRY.max(gather))
        };
        if self.logged.is_none_or(|t| t.elapsed() >= Self::LOG_EVERY) {
            tracing::error!(error = %e, failures = self.count, retry_ms = self.wait.as_millis() as u64,
                "audit flush failed; denying until a flush succeeds");
            self.logged = Some(std::time::Instant::now());
        }
        self.wait
    }

    fn succeeded(&mut self) {
        if self.count > 0 {
            tracing::info!(failures = self.count, "audit flushes succeed again");
        }
        *self = Self::default();
    }
}

impl Drop for SledAudit {
    fn drop(&mut self) {
        self.inner.shut();
        if let Some(h) = self
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = h.join();
        }
        log_if_unflushed(self.inner.flush_now(), || self.take_unstored());
    }
}

impl Inner {
    /// Index entries are written in groups; after a crash the records past the
    /// last indexed sequence number are indexed again.
    fn reindex_after_crash(&self) -> Result<(), AuditError> {
        let indexed = self.indexed_upto()?;
        if indexed >= self.inserted_seq.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.index_after(indexed).map(drop)
    }

    /// Clears the index and indexes every record again. The `reindexing`
    /// flag, set first and cleared last, makes the next writable open start
    /// over if this is interrupted (stale entries would otherwise survive).
    fn rebuild_index(&self) -> Result<u64, AuditError> {
        self.meta.insert(REINDEXING_KEY, b"1")?;
        self.meta.insert(INDEXED_KEY, &seq_key(0))?;
        self.db.flush()?;
        self.index.clear()?;
        let indexed = self.index_after(0)?;
        self.meta.remove(REINDEXING_KEY)?;
        self.db.flush()?;
        Ok(indexed)
    }

    /// Indexes the records after `indexed`, writing the entries (and moving
    /// the `indexed` mark) every [`REINDEX_CHUNK`] records or so, so that
    /// memory stays bounded on a large store. Returns how many it indexed.
    fn index_after(&self, indexed: u64) -> Result<u64, AuditError> {
        let mut pending = Vec::new();
        let mut count = 0;
        let mut write = |pending: Vec<IndexEntry>| -> Result<(), AuditError> {
            count += pending.len() as u64;
            self.pending_index
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(pending);
            self.flush_now().map(drop)
        };
        // Whole pages: a page's index entries are written together, from
        // the page holding the first unindexed record. One that cannot be
        // read refuses the store, as any damaged page does below.
        let start = self.page_key_of(indexed + 1)?;
        for item in self.records.range(start..) {
            // A damaged page refuses the store to a writer, as a damaged head
            // does. Skipped, it would be left out of the index while the mark
            // moved past it: filtered queries would leave its records out in
            // silence, where every other read fails on the damage.
            let page = Page::from_item(item)?;
            for (seq, entry) in page.records()? {
                pending.push(index_entry(&decode(seq, entry)?, page.first));
            }
            if pending.len() >= REINDEX_CHUNK {
                write(std::mem::take(&mut pending))?;
            }
        }
        if !pending.is_empty() {
            write(pending)?;
        }
        Ok(count)
    }

    fn indexed_upto(&self) -> Result<u64, AuditError> {
        Ok(self
            .meta
            .get(INDEXED_KEY)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Stores the queued records, writes pending index entries and the head,
    /// then flushes. Returns the sequence number now known durable. A panic
    /// in it (sled's, say) is a failed flush, and every later one fails too:
    /// a strict append waiting on the flush, or the flusher, would otherwise
    /// wait or stop for good while decisions went on.
    fn flush_now(&self) -> Result<u64, AuditError> {
        if let Some(why) = self.broken.get() {
            return Err(AuditError::Flush(why.clone()));
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.flush_unguarded())) {
            Ok(result) => result,
            Err(panic) => {
                let what = panic_text(panic.as_ref());
                let why = format!("the audit store stopped: a flush panicked ({what})");
                tracing::error!("{why}; denying from now on");
                Err(AuditError::Flush(self.broken.get_or_init(|| why).clone()))
            }
        }
    }

    fn flush_unguarded(&self) -> Result<u64, AuditError> {
        let _serial = self.flush_serial.lock().unwrap_or_else(|p| p.into_inner());
        #[cfg(test)]
        if self.panic_next_flush.swap(false, Ordering::SeqCst) {
            panic!("a flush made to panic");
        }
        self.drain()?;
        let (target, head_hash) = {
            let sealed = self.sealed.lock().unwrap_or_else(|p| p.into_inner());
            (sealed.seq, sealed.hash)
        };
        let pending =
            std::mem::take(&mut *self.pending_index.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(max) = pending.iter().map(|e| e.seq).max() {
            let mut entries = BTreeMap::new();
            for e in &pending {
                add_index_entries(&mut entries, e);
            }
            // One insert per key, not a `sled::Batch` (up to two log writes, see
            // `STORE_CHUNK`): the index needs no atomicity. Each key holds a
            // whole page's entries, written the same again by a retry or a
            // reindex, and the `indexed` mark follows them in sled's log, so
            // what a crash keeps never has the mark ahead of a key it covers.
            let written = entries
                .into_iter()
                .try_for_each(|(k, v)| self.index.insert(k, v).map(drop))
                .and_then(|()| self.meta.insert(INDEXED_KEY, &seq_key(max)).map(drop));
            if let Err(e) = written {
                // Kept for the next flush: the `indexed` mark that a later
                // flush writes would otherwise pass these pages for good.
                let mut queued = self.pending_index.lock().unwrap_or_else(|p| p.into_inner());
                let newer = std::mem::replace(&mut *queued, pending);
                queued.extend(newer);
                return Err(e.into());
            }
        }
        if target > 0 && !self.read_only {
            self.meta
                .insert(HEAD_KEY, [&seq_key(target)[..], &head_hash[..]].concat())?;
        }
        self.db
            .flush()
            .map_err(|e| AuditError::Flush(e.to_string()))?;
        // Flushes are serial and targets only grow.
        self.durable.send_replace(target);
        if target > 0 {
            self.write_head_file(target, &head_hash);
        }
        // With the records' times, how long records waited for the disk
        // (benches/flush_age.py).
        tracing::debug!(durable_seq = target, "audit records on disk");
        let mut unflushed = self.unflushed.lock().unwrap_or_else(|p| p.into_inner());
        let durable = unflushed.partition_point(|u| u.seq <= target);
        let rest = unflushed.split_off(durable);
        let done = std::mem::replace(&mut *unflushed, rest);
        // Freed outside the lock, which `store_chunk` takes holding `sealed`.
        drop(unflushed);
        // What each counts in the backlog: its body's capacity.
        self.uncount_backlog(done.iter().map(|u| u.body.capacity() as u64).sum());
        drop(done);
        Ok(target)
    }

    /// Writes `seq` and its hash over the head file, once sled has flushed
    /// them (so it never names more than is on disk; after a power cut, sled
    /// may keep less, which the next open reports). One write of a fixed
    /// length at offset 0, without `fsync`: a head file that lags only
    /// weakens the check, and one torn by a power cut reads as malformed,
    /// which is ignored with a warning. A failure is logged: the records
    /// themselves are stored.
    fn write_head_file(&self, seq: u64, hash: &[u8]) {
        use std::os::unix::fs::FileExt;
        let Some(head_file) = &self.head_file else {
            return;
        };
        let mut head_file = head_file.lock().unwrap_or_else(|p| p.into_inner());
        let (file, written, sized) = &mut *head_file;
        if seq <= *written {
            return;
        }
        // 20 digits hold any u64: every write is as long as the last, and
        // the file is cut to that length once (a longer one left by hand).
        let text = format!("{seq:020} {}\n", hex::encode(hash));
        let sized_now = *sized;
        match file.write_all_at(text.as_bytes(), 0).and_then(|()| {
            if sized_now {
                Ok(())
            } else {
                file.set_len(text.len() as u64)
            }
        }) {
            Ok(()) => (*written, *sized) = (seq, true),
            Err(e) => tracing::warn!(error = %e, "cannot write the audit store's head file"),
        }
    }

    fn uncount_backlog(&self, bytes: u64) {
        let _ = self
            .backlog_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                Some(b.saturating_sub(bytes))
            });
    }

    /// Group commit: wait until `seq` is durable, flushing as the leader when
    /// no flush is under way.
    fn wait_durable(&self, seq: u64) -> Result<(), AuditError> {
        let mut st = self.flush.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.durable_seq >= seq {
                return Ok(());
            }
            if let Some((upto, msg)) = &st.failed
                && *upto >= seq
            {
                return Err(AuditError::Flush(msg.clone()));
            }
            if !st.flushing {
                st.flushing = true;
                drop(st);
                let result = self.flush_now();
                st = self.flush.lock().unwrap_or_else(|p| p.into_inner());
                st.flushing = false;
                match result {
                    Ok(t) => {
                        st.durable_seq = st.durable_seq.max(t);
                        st.failed = None;
                    }
                    Err(e) => {
                        let attempted = self.inserted_seq.load(Ordering::SeqCst);
                        tracing::error!(error = %e, "audit flush failed");
                        st.failed = Some((attempted, e.to_string()));
                    }
                }
                self.flushed.notify_all();
                continue;
            }
            st = self.flushed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn flusher_loop(&self, window: Duration) {
        // Flush at most `window` after the first unflushed append: wait half the
        // window from it to gather a group, leaving the other half for the
        // flush itself.
        let gather = window / 2;
        // After a failed flush: not before this (a failing disk fails at
        // once, and a retry at once would be a busy loop).
        let mut retry_at: Option<std::time::Instant> = None;
        let mut failing = Failing::default();
        loop {
            {
                let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
                while !*dirty && !self.shutdown.load(Ordering::SeqCst) {
                    dirty = self
                        .wake_flusher
                        .wait(dirty)
                        .unwrap_or_else(|p| p.into_inner());
                }
                *dirty = false;
            }
            if self.shutdown.load(Ordering::SeqCst) {
                return;
            }
            // Gather until half the window after the oldest queued record
            // (at once for records another drain stored meanwhile), but
            // leave at once on shutdown (the store's drop flushes).
            let (since, assigned) = {
                let chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
                (chain.queued_since, chain.next_seq.saturating_sub(1))
            };
            // Woken by a record that the last flush took after all: every
            // record handed out is on disk and no flush failed. (Not the
            // stored seq: a reader's drain may be storing records it took.)
            if since.is_none() && retry_at.is_none() {
                let st = self.flush.lock().unwrap_or_else(|p| p.into_inner());
                if st.failed.is_none() && assigned <= st.durable_seq {
                    continue;
                }
            }
            let now = std::time::Instant::now();
            let deadline = since.map_or(now, |t| t + gather);
            let deadline = retry_at.take().map_or(deadline, |r| r.max(deadline));
            let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                let now = std::time::Instant::now();
                if self.shutdown.load(Ordering::SeqCst) {
                    return;
                }
                if now >= deadline {
                    break;
                }
                dirty = self
                    .wake_flusher
                    .wait_timeout(dirty, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            drop(dirty);
            let result = self.flush_now();
            let mut st = self.flush.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(t) => {
                    failing.succeeded();
                    st.durable_seq = st.durable_seq.max(t);
                    // A drain that failed meanwhile (an append's, a reader's)
                    // put its records back: the failure stands. Checked under
                    // the flush lock, which that drain takes to record it.
                    if self
                        .chain
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .queue
                        .is_empty()
                    {
                        st.failed = None;
                    }
                }
                Err(e) => {
                    let wait = failing.failed(&e, gather);
                    st.failed = Some((u64::MAX, e.to_string()));
                    retry_at = Some(std::time::Instant::now() + wait);
                    *self.dirty.lock().unwrap_or_else(|p| p.into_inner()) = true;
                }
            }
        }
    }

    fn append(&self, mut record: AuditRecord) -> Result<Appended, AuditError> {
        if self.shutdown.load(Ordering::SeqCst) {
            return Err(AuditError::Closed);
        }
        // Stored now, a record would never be flushed: a strict one (and
        // the override after it) would stay in memory for good.
        if let Some(why) = self.broken.get() {
            return Err(AuditError::Flush(why.clone()));
        }
        if self.read_only {
            return Err(AuditError::ReadOnly);
        }
        let batched = matches!(self.durability, Durability::Batched { .. });
        if batched {
            let st = self.flush.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, msg)) = &st.failed {
                return Err(AuditError::Flush(msg.clone()));
            }
            let backlog = self
                .assigned_seq
                .load(Ordering::SeqCst)
                .saturating_sub(st.durable_seq);
            if backlog >= self.max_backlog {
                return Err(AuditError::Backlog(backlog));
            }
            let bytes = self.backlog_bytes.load(Ordering::SeqCst);
            if bytes >= self.max_backlog_bytes.load(Ordering::Relaxed) {
                return Err(AuditError::BacklogBytes(bytes));
            }
        }
        let bytes = record.approx_bytes();
        let mut help_drain = false;
        let mut spent = Vec::new();
        // Outside the chain lock: it reads the clock.
        record.id = self.ids.next();
        let seq = {
            let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
            // Again under the lock: `close` drains the queue after setting
            // `shutdown`, so a record queued here is one that drain takes.
            if self.shutdown.load(Ordering::SeqCst) {
                return Err(AuditError::Closed);
            }
            let seq = chain.next_seq;
            let time_ns = now_ns().max(chain.last_time_ns + 1);
            record.seq = seq;
            record.time = format_time(time_ns);
            // Counted before the record can reach a flush, which uncounts
            // it (under this lock: a flush's drain takes the queue under it,
            // and a strict record is stored under it).
            self.backlog_bytes.fetch_add(bytes, Ordering::SeqCst);
            if batched {
                // Sealing (canonical JSON, SHA-256) and storing are the
                // flusher's, off the caller's path.
                if chain.queue.is_empty() {
                    chain.queued_since = Some(std::time::Instant::now());
                }
                chain.queue.push(record);
                help_drain = chain.queue.len() >= INLINE_DRAIN_AT;
            } else {
                match self.store(vec![record]) {
                    // Freed below, outside the chain lock that other
                    // appenders wait on.
                    Ok(stored) => spent = stored,
                    Err((e, _)) => {
                        self.uncount_backlog(bytes);
                        return Err(e);
                    }
                }
            }
            chain.next_seq = seq + 1;
            chain.last_time_ns = time_ns;
            self.assigned_seq.store(seq, Ordering::SeqCst);
            seq
        };
        drop(spent);
        if help_drain {
            // Appends outrun the flusher: store the queue here, so a fast
            // caller is slowed down to the store's pace instead of growing
            // the queue (memory) or being refused (backlog). This record is
            // queued either way: a failure here (logged, and refusing the
            // appends after it) leaves it queued for the retry, and its
            // answer stands as recorded.
            let _ = self.drain();
        }
        if batched {
            let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
            if !*dirty {
                *dirty = true;
                self.wake_flusher.notify_one();
            }
        } else {
            self.wait_durable(seq).map_err(|e| AuditError::Unflushed {
                seq,
                message: match e {
                    AuditError::Flush(m) => m,
                    other => other.to_string(),
                },
            })?;
        }
        Ok(Appended { seq })
    }

    /// Seals `records` (consecutive, in seq order, after the newest stored
    /// one) into the chain and stores them, one batch per [`STORE_CHUNK`].
    /// On failure the chunks before stay stored and the rest is handed back.
    /// On success the records come back spent (what `unflushed` keeps is
    /// their sealed bodies), for the caller to free outside its locks.
    fn store(
        &self,
        records: Vec<AuditRecord>,
    ) -> Result<Vec<AuditRecord>, (AuditError, Vec<AuditRecord>)> {
        let mut rest = records;
        let mut spent = Vec::new();
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(STORE_CHUNK));
            match self.store_chunk(rest) {
                Ok(stored) => spent.extend(stored),
                Err((e, mut unstored)) => {
                    unstored.extend(tail);
                    return Err((e, unstored));
                }
            }
            rest = tail;
        }
        Ok(spent)
    }

    /// [`Inner::store`] for at most [`STORE_CHUNK`] records.
    fn store_chunk(
        &self,
        mut records: Vec<AuditRecord>,
    ) -> Result<Vec<AuditRecord>, (AuditError, Vec<AuditRecord>)> {
        let Some(last) = records.last().map(|r| r.seq) else {
            return Ok(records);
        };
        let mut sealed = self.sealed.lock().unwrap_or_else(|p| p.into_inner());
        let mut hash = sealed.hash;
        // Hashed and chained in order, then packed into pages that fit
        // `page::MAX_BYTES` once compressed, all inserted in one batch.
        let mut sealed_records = Vec::with_capacity(records.len());
        // What the records counted in the backlog when they were appended.
        let mut counted = 0u64;
        // Written here, then copied to a body of its size: growing each
        // body from serde_json's 128 bytes took three reallocations, and
        // the record's estimate (its memory) is several times its JSON.
        let mut text = Vec::with_capacity(4096);
        for record in &mut records {
            record.prev_hash = if record.seq == 1 {
                GENESIS.to_owned()
            } else {
                hash_hex(&hash)
            };
            record.hash = String::new();
            counted += record.approx_bytes();
            text.clear();
            let body = match serde_json::to_writer(&mut text, &*record) {
                Ok(()) => text.as_slice().to_vec(),
                Err(e) => {
                    let seq = record.seq;
                    let e = AuditError::Corrupt {
                        seq,
                        message: e.to_string(),
                    };
                    return Err((e, records));
                }
            };
            hash = Sha256::digest(&body).into();
            sealed_records.push(page::Hashed {
                seq: record.seq,
                hash,
                body,
            });
        }
        let mut batch = sled::Batch::default();
        // sled applies a batch key by key and keeps the keys it inserted
        // before an error. Records are only ever added past the sealed head,
        // so a key from this group's first record on is such a leftover of a
        // refused batch: removed here, or the retry's pages (packed
        // differently once newer records joined the group) would overlap it.
        // Removals first: in a batch the last operation on a key wins.
        for key in self.records.range(seq_key(records[0].seq)..).keys() {
            match key {
                Ok(key) => batch.remove(key),
                Err(e) => return Err((e.into(), records)),
            }
        }
        let mut first_of = Vec::with_capacity(records.len());
        for (first, value, n) in page::pack(&sealed_records) {
            batch.insert(&seq_key(first), value);
            first_of.extend(std::iter::repeat_n(first, n));
        }
        if let Err(e) = self.records.apply_batch(batch) {
            return Err((e.into(), records));
        }
        *sealed = Sealed { seq: last, hash };
        self.inserted_seq.store(last, Ordering::SeqCst);
        self.pending_index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(
                records
                    .iter()
                    .zip(first_of)
                    .map(|(r, page)| index_entry(r, page)),
            );
        // Until the flush what stays is the sealed body, counted as its
        // capacity (which the flush uncounts) in place of the record's
        // estimate: most often less, but JSON's escaping can make it several
        // times more (a control byte in an argv is six). Added before the
        // estimates go, so a flush cannot see the count short.
        let bodies: u64 = sealed_records
            .iter()
            .map(|s| s.body.capacity() as u64)
            .sum();
        let entries = sealed_records.into_iter().map(|s| Unflushed {
            seq: s.seq,
            body: s.body,
            hash: s.hash,
        });
        self.backlog_bytes.fetch_add(bodies, Ordering::SeqCst);
        self.uncount_backlog(counted);
        // Under the sealed lock, so the list stays in seq order.
        self.unflushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(entries);
        drop(sealed);
        self.notify.send_replace(last);
        Ok(records)
    }

    /// Stores every queued record. On failure they stay queued, in order, to
    /// be retried; the error is what appends are refused with meanwhile.
    fn drain(&self) -> Result<(), AuditError> {
        let serial = self.drain_serial.lock().unwrap_or_else(|p| p.into_inner());
        let (queued, since) = {
            let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
            (std::mem::take(&mut chain.queue), chain.queued_since.take())
        };
        match self.store(queued) {
            Ok(spent) => {
                // Freed after the lock, which readers' drains wait on.
                drop(serial);
                drop(spent);
                Ok(())
            }
            Err((e, records)) => {
                tracing::error!(error = %e, records = records.len(), "cannot store audit records; they stay queued and new decisions are denied");
                let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
                let newer = std::mem::replace(&mut chain.queue, records);
                chain.queue.extend(newer);
                chain.queued_since = since.or(chain.queued_since);
                drop(chain);
                let mut st = self.flush.lock().unwrap_or_else(|p| p.into_inner());
                st.failed = Some((u64::MAX, e.to_string()));
                Err(e)
            }
        }
    }

    /// The page holding `seq`, if any.
    fn page_of(&self, seq: u64) -> Result<Option<Page>, AuditError> {
        self.records
            .range(..=seq_key(seq))
            .next_back()
            .map(Page::from_item)
            .transpose()
    }

    /// Where reading from `seq` on starts: the key of the page holding it, or
    /// its own when no page does (past the newest record, say).
    fn page_key_of(&self, seq: u64) -> Result<[u8; 8], AuditError> {
        Ok(seq_key(match self.page_of(seq)? {
            Some(p) if p.last()? >= seq => p.first,
            _ => seq,
        }))
    }

    fn record(&self, seq: u64) -> Result<Option<AuditRecord>, AuditError> {
        match self.page_of(seq)? {
            Some(page) => page.record(seq),
            None => Ok(None),
        }
    }

    /// The first sequence number whose time is at or after `ns` (times are
    /// monotonic in seq, so this is a binary search over the records).
    fn first_seq_at_or_after(&self, ns: i64) -> Result<u64, AuditError> {
        let last = self.inserted_seq.load(Ordering::SeqCst);
        let (mut lo, mut hi) = (1u64, last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // A missing record (tampering) is skipped over to the next present one.
            let t = match self.record(mid)? {
                Some(r) => r.time_ns(),
                None => match self.records.range(seq_key(mid)..).next() {
                    Some(item) => {
                        let page = Page::from_item(item)?;
                        match page.records()?.next() {
                            Some((seq, entry)) => decode(seq, entry)?.time_ns(),
                            None => i64::MAX,
                        }
                    }
                    None => i64::MAX,
                },
            };
            if t >= ns { hi = mid } else { lo = mid + 1 }
        }
        Ok(lo)
    }
}

/// The syscall index covers the calls that are few among the records; the
/// open family is most of them, so a query for it reads the records in order
/// (most of what it reads matches) and its index values would only repeat
/// each page's seqs.
fn indexed_syscall(syscall: &str) -> bool {
    !syscall.is_empty() && !matches!(syscall, "open" | "openat" | "openat2" | "creat")
}

/// Likewise, only denials are indexed: allows are most decisions.
fn indexed_decision(allow: bool) -> bool {
    !allow
}

/// Adds what the index holds for `e`: one entry per page and key (`s`
/// sandbox, `c` syscall where indexed, `d` decision where indexed), whose
/// value lists the page's seqs that have it.
fn add_index_entries(entries: &mut BTreeMap<Vec<u8>, Vec<u8>>, e: &IndexEntry) {
    let page = seq_key(e.page);
    let mut add = |prefix: Vec<u8>| {
        entries
            .entry([&prefix[..], &page].concat())
            .or_default()
            .extend_from_slice(&seq_key(e.seq));
    };
    add([b"s", e.sandbox_id.as_bytes(), &[0]].concat());
    if indexed_syscall(&e.syscall) {
        add([b"c", e.syscall.as_bytes(), &[0]].concat());
    }
    if let Some(d) = e.decision.filter(|&d| indexed_decision(d)) {
        add(vec![b'd', u8::from(d)]);
    }
}

/// What the index tree says against what the records say, page by page as
/// verify walks them (pages up to the `indexed` mark; newer ones are indexed
/// at the next flush, or reindexed at the next open), keeping only the
/// first difference by the lowest record it concerns: memory stays a page's
/// worth however large the store.
#[derive(Default)]
struct IndexCheck {
    /// Expected entries found in the tree.
    present: usize,
    first: Option<(u64, String)>,
}

fn describe_index_key(k: &[u8]) -> String {
    let name = String::from_utf8_lossy(k.get(1..k.len().saturating_sub(9)).unwrap_or_default());
    match k.first() {
        Some(b's') => format!("sandbox {name}"),
        Some(b'c') => format!("syscall {name}"),
        Some(b'd') => "denials".into(),
        _ => format!("key {}", hex::encode(k)),
    }
}

fn index_seqs(v: &[u8]) -> Vec<u64> {
    v.chunks(8).filter_map(page::seq_of).collect()
}

impl IndexCheck {
    fn note(&mut self, seq: u64, problem: String) {
        if self.first.as_ref().is_none_or(|(s, _)| seq < *s) {
            self.first = Some((seq, problem));
        }
    }

    /// One walked page's expected entries against the tree.
    fn page(
        &mut self,
        index: &sled::Tree,
        expected: &BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> Result<(), AuditError> {
        for (k, want) in expected {
            let Some(page) = page::seq_of(k) else {
                continue;
            };
            match index.get(k)? {
                Some(have) if have.as_ref() == want.as_slice() => self.present += 1,
                Some(have) => {
                    self.present += 1;
                    let (want, have) = (index_seqs(want), index_seqs(&have));
                    let seq = want
                        .iter()
                        .chain(&have)
                        .filter(|s| want.contains(s) != have.contains(s))
                        .min()
                        .copied()
                        .unwrap_or(page);
                    self.note(
                        seq,
                        format!(
                            "the index for {} lists records {have:?} of the page starting at record {page}, but the records say {want:?}: queries by it would miss or invent records",
                            describe_index_key(k)
                        ),
                    );
                }
                None => {
                    let seq = index_seqs(want).into_iter().min().unwrap_or(page);
                    self.note(
                        seq,
                        format!(
                            "the index has no entry for {} in the page holding record {seq}: queries by it would miss records",
                            describe_index_key(k)
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// After the walk: entries the records do not account for. Counted
    /// first; only when some are, each is checked against its page.
    fn finish(mut self, inner: &Inner, indexed: u64) -> Result<Option<(u64, String)>, AuditError> {
        let mut in_tree = 0usize;
        for item in inner.index.iter() {
            let (k, _) = item?;
            match page::seq_of(&k).filter(|_| k.len() > 8) {
                Some(page) if page <= indexed => in_tree += 1,
                Some(_) => {}
                None => self.note(
                    // Not tied to a record: named at the first, so the
                    // report never says 0 (which means "no problem").
                    1,
                    format!("the index has a malformed key {}", hex::encode(&k)),
                ),
            }
        }
        if in_tree > self.present {
            for item in inner.index.iter() {
                let (k, v) = item?;
                let Some(page) = page::seq_of(&k).filter(|&p| k.len() > 8 && p <= indexed) else {
                    continue;
                };
                let mut expected = BTreeMap::new();
                if let Some(value) = inner.records.get(seq_key(page))? {
                    let stored = Page::from_item(Ok((seq_key(page).to_vec().into(), value)))?;
                    for (seq, entry) in stored.records()? {
                        add_index_entries(&mut expected, &index_entry(&decode(seq, entry)?, page));
                    }
                }
                if !expected.contains_key(k.as_ref()) {
                    self.note(
                        index_seqs(&v).into_iter().min().unwrap_or(page),
                        format!(
                            "the index has an entry for {} in the page starting at record {page} that no record there matches",
                            describe_index_key(&k)
                        ),
                    );
                }
            }
        }
        Ok(self.first)
    }
}

fn index_entry(r: &AuditRecord, page: u64) -> IndexEntry {
    IndexEntry {
        seq: r.seq,
        page,
        sandbox_id: r.sandbox_id.clone(),
        syscall: r.syscall.clone(),
        decision: r.decision(),
    }
}

impl AuditLog for SledAudit {
    fn append(&self, record: AuditRecord) -> Result<Appended, AuditError> {
        let appended = self.inner.append(record);
        // A record stored but not yet flushed is kept, or logged at close.
        if appended
            .as_ref()
            .is_err_and(|e| !matches!(e, AuditError::Unflushed { .. }))
        {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
        appended
    }

    fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Open, so ready at once, unless a flush panicked: then it never is.
    fn ready(&self) -> Result<(), AuditError> {
        match self.inner.broken.get() {
            Some(why) => Err(AuditError::Flush(why.clone())),
            None => Ok(()),
        }
    }

    fn scan(
        &self,
        filter: &AuditFilter,
        each: &mut dyn FnMut(AuditRecord) -> bool,
    ) -> Result<u64, AuditError> {
        let inner = &self.inner;
        // Every seq handed out before this scan is visible to it, or the scan
        // fails: a partial answer would hide decisions that were answered.
        inner.drain()?;
        let last = inner
            .inserted_seq
            .load(Ordering::SeqCst)
            .min(filter.upto_seq.unwrap_or(u64::MAX));
        // A resume point past every seq (from the wire, any u64) reads nothing.
        let Some(mut start) = filter.after_seq.checked_add(1) else {
            return Ok(filter.after_seq);
        };
        if let Some(since) = filter.since_ns {
            start = start.max(inner.first_seq_at_or_after(since)?);
        }
        let limit = filter.limit.unwrap_or(u64::MAX);
        let mut delivered = 0u64;
        let mut examined = filter.after_seq;
        // Returns false to stop.
        let mut visit = |seq: u64, record: AuditRecord| -> bool {
            examined = seq;
            if filter.until_ns.is_some_and(|u| record.time_ns() > u) {
                return false;
            }
            if filter.matches(&record) {
                delivered += 1;
                if !each(record) || delivered >= limit {
                    return false;
                }
            }
            true
        };
        // Pick the most selective index; records past the indexed range are
        // read directly.
        let prefix: Option<Vec<u8>> = if let Some(s) = &filter.sandbox_id {
            Some([b"s", s.as_bytes(), &[0]].concat())
        } else if let Some(c) = filter.syscall.as_ref().filter(|c| indexed_syscall(c)) {
            Some([b"c", c.as_bytes(), &[0]].concat())
        } else {
            filter
                .decision
                .filter(|&d| indexed_decision(d))
                .map(|d| vec![b'd', u8::from(d)])
        };
        let mut tail_from = start;
        if let Some(prefix) = prefix {
            let indexed = inner.indexed_upto()?.min(last);
            if start <= indexed {
                // Index keys end in the page's first seq; values list the
                // page's seqs that have the key.
                let lo = [&prefix[..], &inner.page_key_of(start)?].concat();
                let hi = [&prefix[..], &seq_key(indexed)].concat();
                for item in inner.index.range(lo..=hi) {
                    let (k, v) = item?;
                    let Some(page) = page::seq_of(&k).and_then(|s| inner.page_of(s).transpose())
                    else {
                        continue;
                    };
                    let page = page?;
                    // Parsed once for all of the page's seqs in this entry.
                    let entries = page.entries()?;
                    for seq in v.chunks_exact(8).filter_map(page::seq_of) {
                        if seq < start || seq > indexed {
                            continue;
                        }
                        let Some(record) = page.record_in(&entries, seq)? else {
                            continue;
                        };
                        if !visit(seq, record) {
                            return Ok(examined);
                        }
                    }
                }
                tail_from = indexed + 1;
            }
        }
        for item in inner
            .records
            .range(inner.page_key_of(tail_from)?..=seq_key(last))
        {
            let page = Page::from_item(item)?;
            for (seq, entry) in page.records()? {
                if seq < tail_from || seq > last {
                    continue;
                }
                if !visit(seq, decode(seq, entry)?) {
                    return Ok(examined);
                }
            }
        }
        Ok(examined.max(last))
    }

    fn verify(&self) -> Result<VerifyReport, AuditError> {
        // A writer's records are flushed first, so that the head names the
        // newest (a new store's first records have none until then). Not
        // before reindex's check (`open_with`), which must write nothing; and
        // a failing flush leaves the report on what is stored.
        if !self.inner.read_only
            && let Err(e) = self.inner.flush_now()
        {
            tracing::warn!(error = %e, "cannot flush before verifying; verifying what is stored");
        }
        self.inner.verify(true)
    }

    fn last_seq(&self) -> u64 {
        self.inner.inserted_seq.load(Ordering::SeqCst)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.notify.subscribe()
    }

    fn subscribe_durable(&self) -> watch::Receiver<u64> {
        self.inner.durable.subscribe()
    }

    fn last_assigned(&self) -> u64 {
        // Under the chain lock, where records get their time and number: a
        // record timed before this call has its number by then (in strict
        // mode `assigned_seq` is set only after the record is stored, so a
        // follow reading it could end before a record of its range).
        let chain = self.inner.chain.lock().unwrap_or_else(|p| p.into_inner());
        chain.next_seq - 1
    }

    fn flush(&self) -> Result<(), AuditError> {
        let t = self.inner.flush_now()?;
        let mut st = self.inner.flush.lock().unwrap_or_else(|p| p.into_inner());
        st.durable_seq = st.durable_seq.max(t);
        Ok(())
    }

    fn close(&self) {
        self.inner.shut();
        let logged = log_if_unflushed(self.flush(), || self.take_unstored());
        self.lost.fetch_add(logged, Ordering::Relaxed);
    }

    fn take_unstored(&self) -> Vec<AuditRecord> {
        let inner = &self.inner;
        let _serial = inner.drain_serial.lock().unwrap_or_else(|p| p.into_inner());
        // Stored but not known flushed (the disk refused them), as sealed,
        // handed out once (a second call, say from the destructor, does not
        // log them again)…
        let durable = inner
            .flush
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .durable_seq;
        // Both under the chain lock: a strict append stores under it, so none
        // falls between the two takes.
        let mut chain = inner.chain.lock().unwrap_or_else(|p| p.into_inner());
        let unflushed =
            std::mem::take(&mut *inner.unflushed.lock().unwrap_or_else(|p| p.into_inner()));
        let queued = std::mem::take(&mut chain.queue);
        chain.queued_since = None;
        drop(chain);
        // No longer held here: uncounted as they were counted (a stored
        // record as its body, a queued one as its estimate).
        inner.uncount_backlog(
            unflushed
                .iter()
                .map(|u| u.body.capacity() as u64)
                .sum::<u64>()
                + queued.iter().map(AuditRecord::approx_bytes).sum::<u64>(),
        );
        let mut out: Vec<AuditRecord> = unflushed
            .into_iter()
            .filter(|u| u.seq > durable)
            .filter_map(|u| {
                let sealed = page::Entry {
                    hash: &u.hash,
                    body: &u.body,
                };
                match decode(u.seq, sealed) {
                    Ok(r) => Some(r),
                    // Bytes this process wrote from a record: not expected,
                    // and still not dropped in silence.
                    Err(e) => {
                        tracing::error!(seq = u.seq, record = %String::from_utf8_lossy(&u.body), error = %e,
                            "unstored audit record");
                        None
                    }
                }
            })
            .collect();
        // …and still queued.
        out.extend(queued);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sled lets go of its directory lock when its background threads drop
    /// their last reference, a moment after the store is dropped: a test that
    /// reopens in the same process waits for that.
    fn reopen<T>(open: impl Fn() -> Result<T, AuditError>) -> T {
        try_reopen(open).unwrap()
    }

    /// What opening gives once the store is no longer locked (by a store
    /// just dropped, whose sled threads may still hold it).
    fn try_reopen<T>(open: impl Fn() -> Result<T, AuditError>) -> Result<T, AuditError> {
        for _ in 0..3000 {
            match open() {
                Err(e) if e.is_locked() => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return other,
            }
        }
        panic!("the store stayed locked for 30 s after it was dropped");
    }

    /// The seqs a scan of every record returns, in order.
    fn all_seqs(store: &SledAudit) -> Vec<u64> {
        let mut seqs = Vec::new();
        store
            .scan(&AuditFilter::default(), &mut |r| {
                seqs.push(r.seq);
                true
            })
            .unwrap();
        seqs
    }

    /// A closed strict store of `n` decisions: each record its own page.
    fn strict_store(dir: &Path, n: u64) {
        let audit = SledAudit::open(dir, Durability::Strict).unwrap();
        for i in 0..n {
            audit.append(decision(i)).unwrap();
        }
    }

    /// Runs `f` on the `records` tree of the closed store in `dir`, then
    /// flushes: an edit by someone with write access to the directory.
    fn with_records_tree<T>(dir: &Path, f: impl Fn(&sled::Tree) -> Result<T, AuditError>) -> T {
        with_tree(dir, "records", f)
    }

    /// The same for any tree of the store.
    fn with_tree<T>(dir: &Path, tree: &str, f: impl Fn(&sled::Tree) -> Result<T, AuditError>) -> T {
        reopen(|| {
            let db = sled::open(dir).map_err(|e| AuditError::Open {
                path: String::new(),
                source: e,
            })?;
            let out = f(&db.open_tree(tree)?)?;
            db.flush()?;
            Ok(out)
        })
    }

    fn decision(n: u64) -> AuditRecord {
        AuditRecord {
            event: "decision".into(),
            sandbox_id: "sb".into(),
            syscall: "openat".into(),
            kind: "file".into(),
            path: Some(format!("/f{n}")),
            allow: true,
            reason: "allowed".into(),
            ..Default::default()
        }
    }

    #[test]
    fn chain_links_are_written_as_hex_encode_writes_them() {
        for text in [&b""[..], b"a", b"cordon", &[0xff; 100]] {
            let hash: [u8; 32] = Sha256::digest(text).into();
            assert_eq!(hash_hex(&hash), hex::encode(hash));
        }
        assert_eq!(hash_hex(&[0xab; 32]), "ab".repeat(32));
    }

    /// Runs `records_a_failed_flush_left_in_sleds_memory_child` in a process
    /// of its own: it lowers the file size limit, which holds for the whole
    /// process.
    #[test]
    fn records_a_failed_flush_left_in_sleds_memory_are_handed_back_as_sealed() {
        for durability in ["strict", "batched"] {
            in_a_process_of_its_own(
                "audit::tests::records_a_failed_flush_left_in_sleds_memory_child",
                durability,
            );
        }
    }

    /// Runs the ignored test `child` in a new process of this test binary,
    /// on a new store, with `CORDON_TEST_DURABILITY` set to `durability`.
    fn in_a_process_of_its_own(child: &str, durability: &str) {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                child,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CORDON_TEST_STORE", dir.path())
            .env("CORDON_TEST_DURABILITY", durability)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{durability}: {stdout}\n{stderr}");
        assert!(stdout.contains("1 passed"), "{stdout}\n{stderr}");
    }

    /// A flush that panics (sled's code, say) leaves neither a strict append
    /// waiting for a flush that never ends nor a batched store answering
    /// with nothing flushing: every decision after it is denied, with why.
    #[test]
    fn a_flush_that_panics_stops_the_store_for_good() {
        for strict in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let durability = if strict {
                Durability::Strict
            } else {
                Durability::Batched {
                    window: Duration::from_millis(10),
                }
            };
            let audit = SledAudit::open(dir.path(), durability).unwrap();
            audit.append(decision(1)).unwrap();
            audit.flush().unwrap();
            audit.inner.panic_next_flush.store(true, Ordering::SeqCst);
            let panicked = |e: &AuditError| e.to_string().contains("a flush panicked");
            if strict {
                let e = audit.append(decision(2)).unwrap_err();
                assert!(panicked(&e), "{e}");
            } else {
                audit.append(decision(2)).unwrap();
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while audit.inner.flush.lock().unwrap().failed.is_none() {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the flusher did not fail"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            // Refused from now on, before anything is stored (a stored
            // record would stay in memory, never flushed), and an explicit
            // flush fails the same way.
            let held = audit.inner.unflushed.lock().unwrap().len();
            for i in 3..6 {
                let e = audit.append(decision(i)).unwrap_err();
                assert!(panicked(&e), "strict {strict}: {e}");
            }
            assert_eq!(audit.inner.unflushed.lock().unwrap().len(), held);
            assert!(panicked(&audit.flush().unwrap_err()));
            // And it says it will not take records (`spawn` names a
            // store's failure by it).
            assert!(panicked(&audit.ready().unwrap_err()));
        }
    }

    /// A full disk fails every flush at once. The flusher tries again later
    /// and later (it used to try every half window, and with a window of 0,
    /// at once: a busy loop at a raised priority).
    #[test]
    fn a_flusher_facing_a_full_disk_backs_off() {
        in_a_process_of_its_own(
            "audit::tests::a_flusher_facing_a_full_disk_child",
            "batched",
        );
    }

    #[test]
    #[ignore = "run in a process of its own by a_flusher_facing_a_full_disk_backs_off"]
    fn a_flusher_facing_a_full_disk_child() {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        use nix::sys::signal::{SigSet, Signal};
        let Some(dir) = std::env::var_os("CORDON_TEST_STORE").map(std::path::PathBuf::from) else {
            return;
        };
        let mut xfsz = SigSet::empty();
        xfsz.add(Signal::SIGXFSZ);
        xfsz.thread_block().unwrap();
        let window = Duration::ZERO;
        let audit = SledAudit::open(&dir, Durability::Batched { window }).unwrap();
        for i in 1..=20 {
            audit.append(decision(i)).unwrap();
        }
        audit.flush().unwrap();
        let (_, hard) = getrlimit(Resource::RLIMIT_FSIZE).unwrap();
        let size = std::fs::metadata(dir.join("db")).unwrap().len();
        setrlimit(Resource::RLIMIT_FSIZE, size, hard).unwrap();
        audit.append(decision(21)).unwrap();
        let failed = || audit.inner.flush.lock().unwrap().failed.clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while failed().is_none() {
            assert!(std::time::Instant::now() < deadline, "no flush failed");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The flusher's CPU time, in clock ticks.
        let flusher_cpu = || -> u64 {
            for task in std::fs::read_dir("/proc/thread-self/..").unwrap() {
                let task = task.unwrap().path();
                let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
                if comm.trim_end() == "cordon-audit-fl" {
                    let stat = std::fs::read_to_string(task.join("stat")).unwrap();
                    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
                    // utime and stime, fields 14 and 15 of stat(5).
                    return fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
                }
            }
            panic!("no flusher thread");
        };
        let before = flusher_cpu();
        std::thread::sleep(Duration::from_secs(1));
        let spent = flusher_cpu() - before;
        // A busy loop spends most of the second (100 ticks); backing off,
        // a few tries in all.
        assert!(
            spent < 20,
            "the failing flusher took {spent} ticks of a second"
        );
        // Still failing, and refusing.
        assert!(failed().is_some());
        assert!(matches!(
            audit.append(decision(22)),
            Err(AuditError::Flush(_))
        ));
    }

    #[test]
    #[ignore = "run in a process of its own by records_a_failed_flush_left_in_sleds_memory_are_handed_back_as_sealed"]
    fn records_a_failed_flush_left_in_sleds_memory_child() {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        use nix::sys::signal::{SigSet, Signal};
        // Run directly (`--include-ignored`), it has nothing to do.
        let Some(dir) = std::env::var_os("CORDON_TEST_STORE").map(std::path::PathBuf::from) else {
            return;
        };
        // Blocked, SIGXFSZ does not kill: a write past the limit fails with
        // EFBIG. sled's threads, started from here, inherit the mask.
        let mut xfsz = SigSet::empty();
        xfsz.add(Signal::SIGXFSZ);
        xfsz.thread_block().unwrap();
        let strict = std::env::var("CORDON_TEST_DURABILITY").as_deref() == Ok("strict");
        let durability = if strict {
            Durability::Strict
        } else {
            Durability::Batched {
                window: Duration::from_millis(10),
            }
        };
        let audit = SledAudit::open(&dir, durability).unwrap();
        // One page, so one key, per record: each is flushed before the next.
        // sled splits a leaf of more than 16 keys when a traversal next meets
        // it, and a split is a write: after the 17th insert, a read of the
        // tree writes.
        for n in 1..=16 {
            audit.append(decision(n)).unwrap();
            audit.flush().unwrap();
        }
        // Flushed: none kept.
        assert!(audit.inner.unflushed.lock().unwrap().is_empty());
        let head = audit.inner.record(16).unwrap().unwrap().hash;
        let (_, hard) = getrlimit(Resource::RLIMIT_FSIZE).unwrap();
        let size = std::fs::metadata(dir.join("db")).unwrap().len();
        setrlimit(Resource::RLIMIT_FSIZE, size, hard).unwrap();
        // Inserted in sled's memory; its flush fails (strict: the append's
        // own; batched: the answer is given, the flush that follows fails,
        // whichever thread makes it).
        let mut expected = vec![17];
        if strict {
            let refused = audit.append(decision(17)).unwrap_err();
            assert!(
                matches!(refused, AuditError::Unflushed { seq: 17, .. }),
                "{refused}"
            );
        } else {
            audit.append(decision(17)).unwrap();
            assert!(audit.flush().is_err());
            // Accepted only if the flusher has not failed yet: then queued,
            // as sled refuses every insert now.
            if audit.append(decision(18)).is_ok() {
                expected.push(18);
            }
        }
        // Handed back, the stored one as sealed, without reading sled (which
        // now fails).
        let unstored = audit.take_unstored();
        assert_eq!(unstored.iter().map(|r| r.seq).collect::<Vec<_>>(), expected);
        // The premise: reading it back from sled fails now.
        assert!(audit.inner.record(17).is_err());
        let mut record = unstored[0].clone();
        assert_eq!(record.prev_hash, head);
        let hash = std::mem::take(&mut record.hash);
        let body = serde_json::to_vec(&record).unwrap();
        assert_eq!(hash, hex::encode(Sha256::digest(&body)));
        // Handed out once, and no longer counted as held.
        assert!(audit.take_unstored().is_empty());
        assert_eq!(audit.inner.backlog_bytes.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn reindex_rebuilds_the_index_of_a_store_larger_than_a_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let n = 2 * REINDEX_CHUNK as u64 + 100;
        {
            let window = Duration::from_millis(10);
            let audit = SledAudit::open(dir.path(), Durability::Batched { window }).unwrap();
            for i in 0..n {
                audit.append(decision(i)).unwrap();
            }
            audit.close();
        }
        with_tree(dir.path(), "index", |t| Ok(t.clear()?));
        // Each open waits for the last one's lock to go (`reopen`).
        let report = reopen(|| SledAudit::open_read_only(dir.path()))
            .verify()
            .unwrap();
        assert!(!report.ok, "an empty index is reported");
        assert_eq!(reopen(|| SledAudit::reindex(dir.path())), n);
        let audit = reopen(|| SledAudit::open_read_only(dir.path()));
        let report = audit.verify().unwrap();
        assert!(report.ok, "{}", report.problem);
        assert_eq!(report.records_checked, n);
        assert_eq!(audit.inner.indexed_upto().unwrap(), n);
    }

    /// A damaged newest page used to refuse the store at open, so `verify`
    /// could not name it; a read-only open now lets verify walk to it, and
    /// a query ends with the damage's error instead of stopping before it.
    /// Three kinds: the page's format byte, its last record's body, and a
    /// malformed key that sorts after every page.
    #[test]
    fn verify_names_damage_at_the_end_of_the_store_and_queries_reach_it() {
        type Damage = fn(&sled::Tree) -> Result<u64, AuditError>;
        let cases: [(&str, Damage); 3] = [
            ("unknown byte", |records| {
                let (k, v) = records.iter().next_back().unwrap()?;
                let mut v = v.to_vec();
                v[0] = 0x7f;
                records.insert(&k, v)?;
                Ok(page::seq_of(&k).unwrap())
            }),
            ("was altered", |records| {
                let (k, v) = records.iter().next_back().unwrap()?;
                let mut frames = page::open(&v).unwrap().into_owned();
                *frames.last_mut().unwrap() = b'x';
                records.insert(&k, page::seal(&frames))?;
                Ok(40)
            }),
            ("malformed key", |records| {
                let (_, v) = records.iter().next_back().unwrap()?;
                records.insert([0xff, 0, 0, 0, 0, 0, 0, 0, 5], v)?;
                Ok(41)
            }),
        ];
        for (needle, damage) in cases {
            let dir = tempfile::tempdir().unwrap();
            strict_store(dir.path(), 40);
            let bad = with_records_tree(dir.path(), damage);
            let audit = reopen(|| SledAudit::open_read_only(dir.path()));
            let report = audit.verify().unwrap();
            assert!(!report.ok, "{needle}");
            assert_eq!(report.first_bad_seq, bad, "{needle}: {}", report.problem);
            assert!(report.problem.contains(needle), "{}", report.problem);
            let mut seen = 0;
            let scanned = audit.scan(&AuditFilter::default(), &mut |_| {
                seen += 1;
                true
            });
            assert!(scanned.is_err(), "{needle}: a query reaches the damage");
            assert_eq!(seen, bad - 1, "{needle}: every record before the damage");
            drop(audit);
            // A writable open still refuses it.
            assert!(
                reopen(|| match SledAudit::open(dir.path(), Durability::Strict) {
                    Err(e) if e.is_locked() => Err(e),
                    other => Ok(other.err()),
                })
                .is_some(),
                "{needle}"
            );
        }
    }

    #[test]
    fn a_refused_reindex_changes_no_key() {
        let dir = tempfile::tempdir().unwrap();
        strict_store(dir.path(), 40);
        with_records_tree(dir.path(), |records| {
            let (k, v) = records.iter().next().unwrap()?;
            let mut frames = page::open(&v).unwrap().into_owned();
            let at = frames.iter().position(|&b| b == b'/').unwrap();
            frames[at + 1] ^= 1;
            records.insert(k, page::seal(&frames))?;
            Ok(())
        });
        let keys = |dir: &Path| {
            with_tree(dir, "meta", |meta| {
                let mut all = Vec::new();
                for item in meta.iter() {
                    let (k, v) = item?;
                    all.push((k.to_vec(), v.to_vec()));
                }
                Ok(all)
            })
        };
        let index = |dir: &Path| with_tree(dir, "index", |t| Ok(t.len()));
        let (meta_before, index_before) = (keys(dir.path()), index(dir.path()));
        match SledAudit::reindex(dir.path()) {
            Err(AuditError::ChainBroken { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(keys(dir.path()), meta_before);
        assert_eq!(index(dir.path()), index_before);
    }

    #[test]
    fn an_interrupted_reindex_is_finished_by_the_next_writable_open() {
        let dir = tempfile::tempdir().unwrap();
        strict_store(dir.path(), 40);
        // As if reindex stopped after setting its flag: a stale entry is
        // still in the index, which the crash path alone would keep.
        with_tree(dir.path(), "index", |t| {
            t.insert([&b"sno-such\0"[..], &seq_key(1)].concat(), &seq_key(1))?;
            Ok(())
        });
        with_tree(dir.path(), "meta", |t| {
            t.insert(REINDEXING_KEY, b"1")?;
            Ok(())
        });
        let report = reopen(|| SledAudit::open_read_only(dir.path()))
            .verify()
            .unwrap();
        assert!(!report.ok, "the stale entry is reported");
        drop(reopen(|| SledAudit::open(dir.path(), Durability::Strict)));
        let audit = reopen(|| SledAudit::open_read_only(dir.path()));
        let report = audit.verify().unwrap();
        assert!(report.ok, "{}", report.problem);
        assert_eq!(audit.inner.meta.get(REINDEXING_KEY).unwrap(), None);
    }

    #[test]
    fn appends_that_outrun_the_flusher_store_the_queue_themselves() {
        let dir = tempfile::tempdir().unwrap();
        // A window the test never reaches: only appends can store the queue.
        let window = Duration::from_secs(3600);
        let audit = SledAudit::open(dir.path(), Durability::Batched { window }).unwrap();
        let n = 3 * INLINE_DRAIN_AT as u64;
        for i in 0..n {
            audit.append(decision(i)).unwrap();
            let queued = audit.inner.chain.lock().unwrap().queue.len();
            assert!(queued < INLINE_DRAIN_AT, "queue grew to {queued}");
        }
        assert!(audit.inner.inserted_seq.load(Ordering::SeqCst) >= n - INLINE_DRAIN_AT as u64);
        // A reader sees every record handed out, in order, chained.
        let seqs = all_seqs(&audit);
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
        let report = audit.verify().unwrap();
        assert!(report.ok, "{report:?}");
    }

    /// A stored record waits for the flush as its JSON, which escaping can
    /// make several times its estimate: the backlog counts the body.
    #[test]
    fn a_stored_record_is_counted_as_its_sealed_body() {
        let dir = tempfile::tempdir().unwrap();
        let window = Duration::from_secs(3600);
        let audit = SledAudit::open(dir.path(), Durability::Batched { window }).unwrap();
        // Each control byte is six in JSON (`\u0001`).
        let record = AuditRecord {
            seq: 1,
            argv: Some(vec!["\u{1}".repeat(64 * 1024); 4]),
            ..decision(1)
        };
        let estimate = record.approx_bytes();
        // Stored as a drain stores it, without an append: nothing wakes the
        // flusher (after a drain it flushes at once), so the record stays
        // unflushed to be looked at. An append would have counted the
        // estimate; the store counts the rest.
        audit.inner.store(vec![record]).unwrap();
        let unflushed = audit.inner.unflushed.lock().unwrap();
        let body = unflushed[0].body.capacity() as u64;
        assert!(body > 5 * estimate, "{body} against {estimate}");
        assert_eq!(
            audit.inner.backlog_bytes.load(Ordering::SeqCst),
            body - estimate
        );
    }

    /// A record whose JSON is smaller than its estimate (most: a decision's
    /// input tree takes several times its text) counts as its body once
    /// sealed, and nothing once flushed: the count does not creep up.
    #[test]
    fn records_smaller_than_their_estimate_leave_nothing_counted_once_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let window = Duration::from_secs(3600);
        let audit = SledAudit::open(dir.path(), Durability::Batched { window }).unwrap();
        let request = cordon_proto::v1::DecideRequest {
            syscall: "openat".into(),
            subject: Some(cordon_proto::v1::decide_request::Subject::File(
                cordon_proto::v1::FileAccess {
                    path: b"/usr/lib/libc.so.6".to_vec(),
                    access: vec!["read".into()],
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let tree = crate::input::Input::of(&request).to_json();
        let record = |i: u64| AuditRecord {
            input: Some(crate::input::RecordInput::Json(tree.clone())),
            ..decision(i)
        };
        // The premise: its JSON, sealed, is well under its estimate.
        let estimate = record(0).approx_bytes();
        let text = serde_json::to_vec(&record(100)).unwrap().len() as u64;
        assert!(2 * (text + 200) < estimate, "{text} against {estimate}");
        let mut counted = 0;
        for i in 1..=100 {
            counted += record(i).approx_bytes();
            audit.append(record(i)).unwrap();
        }
        assert_eq!(audit.inner.backlog_bytes.load(Ordering::SeqCst), counted);
        audit.flush().unwrap();
        assert_eq!(audit.inner.backlog_bytes.load(Ordering::SeqCst), 0);
        // Sealed and not yet flushed, they count as their bodies, their
        // JSON's length: stored as a drain stores them, after a count as
        // their appends made it, so that nothing wakes the flusher.
        let records: Vec<_> = (101..=200)
            .map(|i| AuditRecord {
                seq: i,
                ..record(i)
            })
            .collect();
        let estimates: u64 = records.iter().map(AuditRecord::approx_bytes).sum();
        audit.inner.backlog_bytes.store(estimates, Ordering::SeqCst);
        audit.inner.store(records).unwrap();
        let bodies: u64 = audit
            .inner
            .unflushed
            .lock()
            .unwrap()
            .iter()
            .map(|u| u.body.capacity() as u64)
            .sum();
        assert!(bodies < estimates / 2, "{bodies} against {estimates}");
        assert_eq!(audit.inner.backlog_bytes.load(Ordering::SeqCst), bodies);
    }

    /// Records not yet on disk are bounded by what they take, not only by
    /// their number: past the bound appends are refused until a flush.
    #[test]
    fn a_backlog_of_large_records_is_refused_until_it_is_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let window = Duration::from_secs(3600);
        let audit = SledAudit::open(dir.path(), Durability::Batched { window }).unwrap();
        let argv = vec!["x".repeat(64 * 1024); 4];
        // As a decision's record holds it: the argv, and the request's
        // copy of it in `input`.
        let request = cordon_proto::v1::DecideRequest {
            subject: Some(cordon_proto::v1::decide_request::Subject::Exec(
                cordon_proto::v1::ExecAccess {
                    path: b"/bin/x".to_vec(),
                    argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
                },
            )),
            ..Default::default()
        };
        let big = |i: u64| AuditRecord {
            argv: Some(argv.clone()),
            input: Some(crate::input::RecordInput::Request(std::sync::Arc::new(
                request.clone(),
            ))),
            ..decision(i)
        };
        let size = big(0).approx_bytes();
        assert!(size > 2 * 4 * 64 * 1024, "{size}");
        audit
            .inner
            .max_backlog_bytes
            .store(10 * size, Ordering::Relaxed);
        let mut taken = 0u64;
        let refused = loop {
            match audit.append(big(taken)) {
                Ok(_) => taken += 1,
                Err(e) => break e,
            }
            assert!(taken <= 10, "no bound");
        };
        assert_eq!(taken, 10);
        assert!(matches!(refused, AuditError::BacklogBytes(_)), "{refused}");
        assert!(
            refused
                .to_string()
                .contains("MiB of records not yet on disk")
        );
        // A flush frees the room; the count goes back to nothing.
        audit.flush().unwrap();
        assert_eq!(audit.inner.backlog_bytes.load(Ordering::SeqCst), 0);
        audit.append(big(taken)).unwrap();
        audit.flush().unwrap();
        assert_eq!(audit.inner.backlog_bytes.load(Ordering::SeqCst), 0);
        // Strict appends are counted and uncounted alike.
        drop(audit);
        let audit = reopen(|| SledAudit::open(dir.path(), Durability::Strict));
        audit.append(big(99)).unwrap();
        assert_eq!(audit.inner.backlog_bytes.load(Ordering::SeqCst), 0);
    }

    /// A refused sled batch may have inserted some of its pages; the retry
    /// packs its group again, differently once newer records joined it, and
    /// must not leave the leftover page beside its own.
    #[test]
    fn a_leftover_page_of_a_refused_batch_is_replaced_by_the_retry() {
        let dir = tempfile::tempdir().unwrap();
        let window = Duration::from_secs(3600);
        let audit = SledAudit::open(dir.path(), Durability::Batched { window }).unwrap();
        for i in 1..=3 {
            audit.append(decision(i)).unwrap();
        }
        audit.flush().unwrap();
        // What a refused batch of records 4 to 8 could leave: its second
        // page, under record 6's key, past the head.
        audit
            .inner
            .records
            .insert(seq_key(6), b"a page of records 6 to 8".to_vec())
            .unwrap();
        // The retry's group has grown to 4..=40: pages under 4 and 36.
        for i in 4..=40 {
            audit.append(decision(i)).unwrap();
        }
        audit.flush().unwrap();
        assert_eq!(all_seqs(&audit), (1..=40).collect::<Vec<_>>());
        let report = audit.verify().unwrap();
        assert!(report.ok, "{report:?}");
    }

    type Edit = Box<dyn Fn(&mut Vec<u8>, &mut Vec<u8>) -> bool>;

    /// Every record of a store in pages of 3, 4 and 3 (so first, middle and
    /// last places in a page, and the newest record), edited each way someone
    /// with write access to the directory could: verify names that record.
    #[test]
    fn tampering_anywhere_in_a_page_is_caught_and_named() {
        let build = |dir: &Path| {
            let audit = SledAudit::open(dir, Durability::Strict).unwrap();
            for size in [3, 4, 3] {
                let mut records: Vec<AuditRecord> = Vec::new();
                for _ in 0..size {
                    let n = audit.inner.chain.lock().unwrap().next_seq;
                    let mut r = decision(n);
                    r.seq = n;
                    audit.inner.chain.lock().unwrap().next_seq += 1;
                    records.push(r);
                }
                // One page per group, as a flush of a queue of that size makes.
                audit.inner.store(records).map_err(|(e, _)| e).unwrap();
                audit.flush().unwrap();
            }
        };
        let forge = |rehash: bool| {
            move |hash: &mut Vec<u8>, body: &mut Vec<u8>| {
                let text = String::from_utf8(body.clone()).unwrap();
                let forged = text.replace("\"allow\":true", "\"allow\":false");
                assert_ne!(text, forged);
                if rehash {
                    *hash = Sha256::digest(forged.as_bytes()).to_vec();
                }
                *body = forged.into_bytes();
                true
            }
        };
        for seq in 1..=10u64 {
            let cases: [(&str, Edit, String); 3] = [
                (
                    "altered",
                    Box::new(forge(false)),
                    format!("record {seq} was altered"),
                ),
                (
                    "rehashed",
                    Box::new(forge(true)),
                    if seq < 10 {
                        format!("record {seq} or record {} was replaced", seq + 1)
                    } else {
                        "record 10 was replaced".into()
                    },
                ),
                (
                    "removed",
                    Box::new(|_: &mut Vec<u8>, _: &mut Vec<u8>| false),
                    format!("record {seq} is missing"),
                ),
            ];
            for (what, edit, want) in cases {
                let dir = tempfile::tempdir().unwrap();
                build(dir.path());
                let before = reopen(|| SledAudit::open_read_only(dir.path()))
                    .verify()
                    .unwrap();
                assert!(before.ok && before.records_checked == 10, "{before:?}");
                reopen(|| {
                    tamper::edit_record(dir.path(), seq, |h, b| edit(h, b))
                        .map_err(AuditError::Flush)
                });
                let report = reopen(|| SledAudit::open_read_only(dir.path()))
                    .verify()
                    .unwrap();
                assert!(!report.ok, "{what} record {seq} passed verify");
                assert!(
                    report.problem.contains(&want),
                    "{what} record {seq}: {:?}, wanted {want:?}",
                    report.problem
                );
                // The record edited is named, and none from it on is
                // counted as intact.
                assert_eq!(
                    (report.first_bad_seq, report.records_checked),
                    (seq, seq - 1),
                    "{what} record {seq}: {report:?}"
                );
            }
        }
    }

    /// A first record that does not chain to the genesis hash is named
    /// itself (there is no record 0 to share the blame).
    #[test]
    fn a_first_record_off_the_genesis_is_named() {
        let dir = tempfile::tempdir().unwrap();
        strict_store(dir.path(), 3);
        tamper::edit_record(dir.path(), 1, |hash, body| {
            let text = String::from_utf8(body.clone()).unwrap();
            let forged = text.replace(GENESIS, &"1".repeat(64));
            assert_ne!(text, forged);
            *hash = Sha256::digest(forged.as_bytes()).to_vec();
            *body = forged.into_bytes();
            true
        })
        .unwrap();
        let report = reopen(|| SledAudit::open_read_only(dir.path()))
            .verify()
            .unwrap();
        assert_eq!(
            (report.ok, report.first_bad_seq, report.records_checked),
            (false, 1, 0),
            "{report:?}"
        );
        assert!(
            report.problem.contains("record 1 was replaced"),
            "{report:?}"
        );
    }

    /// Reading a store (verify, scans) writes nothing to it: auditors query
    /// evidence copies. Every file's bytes are compared.
    #[test]
    fn opening_a_store_to_read_it_leaves_its_files_untouched() {
        let dir = tempfile::tempdir().unwrap();
        strict_store(dir.path(), 40);
        let snapshot = || {
            let mut files = BTreeMap::new();
            let mut dirs = vec![dir.path().to_path_buf()];
            while let Some(d) = dirs.pop() {
                for e in std::fs::read_dir(d).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        dirs.push(p);
                    } else {
                        files.insert(p.clone(), std::fs::read(&p).unwrap());
                    }
                }
            }
            files
        };
        // Let go of the writer's lock, then take the picture.
        drop(reopen(|| SledAudit::open_read_only(dir.path())));
        std::thread::sleep(Duration::from_millis(200));
        let before = snapshot();
        for _ in 0..2 {
            let reader = reopen(|| SledAudit::open_read_only(dir.path()));
            assert!(reader.verify().unwrap().ok);
            let mut n = 0;
            reader
                .scan(
                    &AuditFilter {
                        sandbox_id: Some("sb".into()),
                        ..Default::default()
                    },
                    &mut |_| {
                        n += 1;
                        true
                    },
                )
                .unwrap();
            assert_eq!(n, 40);
        }
        std::thread::sleep(Duration::from_millis(200));
        let after = snapshot();
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>()
        );
        for (path, bytes) in &before {
            assert!(after[path] == *bytes, "{} changed", path.display());
        }
    }

    /// Someone who edits the index (to hide records from queries by sandbox,
    /// syscall or denial) is named by verify, like an edited record.
    #[test]
    fn an_edited_index_is_named_by_verify() {
        let build = |dir: &Path| {
            let window = Duration::from_secs(3600);
            let audit = SledAudit::open(dir, Durability::Batched { window }).unwrap();
            for i in 0..10u64 {
                let mut r = decision(i);
                r.sandbox_id = if i % 2 == 0 { "a" } else { "b" }.into();
                r.allow = i % 3 != 0;
                audit.append(r).unwrap();
            }
            audit.close();
        };
        let verify = |dir: &Path| reopen(|| SledAudit::open_read_only(dir)).verify().unwrap();
        let fresh = tempfile::tempdir().unwrap();
        build(fresh.path());
        let report = verify(fresh.path());
        assert!(report.ok, "{report:?}");
        // Records 1..=10 in one page; sandbox "b" holds 2, 4, .., 10 and the
        // denials are 1, 4, 7, 10.
        let key = |prefix: &[u8]| [prefix, &seq_key(1)[..]].concat();
        type IndexEdit = Box<dyn Fn(&sled::Tree) -> Result<(), AuditError>>;
        let cases: Vec<(&str, IndexEdit, u64, &str)> = vec![
            (
                "a record dropped from its sandbox's entry",
                Box::new(move |index| {
                    let v = index.get(key(b"sb\0"))?.expect("the entry").to_vec();
                    let kept: Vec<u8> = v
                        .chunks(8)
                        .filter(|s| *s != seq_key(4))
                        .flatten()
                        .copied()
                        .collect();
                    index.insert(key(b"sb\0"), kept)?;
                    Ok(())
                }),
                4,
                "index for sandbox b",
            ),
            (
                "the denials entry removed",
                Box::new(move |index| {
                    index.remove(key(&[b'd', 0]))?.expect("the entry");
                    Ok(())
                }),
                1,
                "no entry for denials",
            ),
            (
                "one entry removed and one invented (the counts match)",
                Box::new(move |index| {
                    index.remove(key(b"sa\0"))?.expect("the entry");
                    index.insert(key(b"sghost\0"), &seq_key(3))?;
                    Ok(())
                }),
                1,
                "no entry for sandbox a",
            ),
            (
                "a malformed key (no record to name: the first)",
                Box::new(move |index| {
                    index.insert(b"x", &seq_key(3))?;
                    Ok(())
                }),
                1,
                "malformed key",
            ),
            (
                "an entry for a sandbox no record has",
                Box::new(move |index| {
                    index.insert(key(b"sghost\0"), &seq_key(3))?;
                    Ok(())
                }),
                3,
                "no record there matches",
            ),
        ];
        for (what, edit, seq, says) in cases {
            let dir = tempfile::tempdir().unwrap();
            build(dir.path());
            with_tree(dir.path(), "index", |index| edit(index));
            let report = verify(dir.path());
            assert!(!report.ok, "{what}: {report:?}");
            assert_eq!(report.first_bad_seq, seq, "{what}: {report:?}");
            assert!(report.problem.contains(says), "{what}: {report:?}");
        }
    }

    /// A page written before compression reads and verifies beside
    /// compressed ones; a byte flipped in a compressed page is named.
    #[test]
    fn uncompressed_pages_still_read_and_damaged_compressed_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        strict_store(dir.path(), 4);
        let rewrite = |seq: u64, f: &dyn Fn(Vec<u8>) -> Vec<u8>| {
            with_records_tree(dir.path(), |records| {
                let value = records.get(seq_key(seq))?.expect("the page").to_vec();
                assert_eq!(value[0], b'Z', "stored compressed");
                records.insert(seq_key(seq), f(value))?;
                Ok(())
            })
        };
        rewrite(2, &|v| page::open(&v).unwrap().into_owned());
        let store = reopen(|| SledAudit::open_read_only(dir.path()));
        let seqs = all_seqs(&store);
        assert_eq!(seqs, [1, 2, 3, 4]);
        let report = store.verify().unwrap();
        assert!(report.ok, "{report:?}");
        drop(store);
        rewrite(3, &|mut v| {
            let at = v.len() / 2;
            v[at] ^= 0x5a;
            v
        });
        let report = reopen(|| SledAudit::open_read_only(dir.path()))
            .verify()
            .unwrap();
        assert!(!report.ok, "{report:?}");
        assert_eq!(report.first_bad_seq, 3, "{report:?}");
    }

    /// A page moved under a longer key sorts among the pages where its seq
    /// does not belong: lookups would miss it while a walk still chains.
    #[test]
    fn a_page_under_a_key_of_the_wrong_length_is_reported() {
        for moved in [2u64, 3] {
            let dir = tempfile::tempdir().unwrap();
            strict_store(dir.path(), 3);
            // The moved page goes under key(moved - 1) ‖ key(moved).
            with_records_tree(dir.path(), |records| {
                let page = records.remove(seq_key(moved))?.expect("the page");
                records.insert([seq_key(moved - 1), seq_key(moved)].concat(), page)?;
                Ok(())
            });
            let opened = loop {
                match SledAudit::open_read_only(dir.path()) {
                    Err(e) if e.is_locked() => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    other => break other,
                }
            };
            // The newest page is read at open, which refuses the store; an
            // older one is found by verify.
            let problem = match opened {
                Err(e) => {
                    assert_eq!(moved, 3, "only the newest page is read at open: {e}");
                    e.to_string()
                }
                Ok(store) => {
                    let report = store.verify().unwrap();
                    assert!(!report.ok, "{report:?}");
                    report.problem
                }
            };
            assert!(problem.contains("malformed key"), "page {moved}: {problem}");
        }
    }

    #[test]
    fn a_store_written_one_record_per_key_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let records = db.open_tree("records").unwrap();
            let body = serde_json::to_vec(&decision(1)).unwrap();
            let hash: [u8; 32] = Sha256::digest(&body).into();
            records
                .insert(seq_key(1), [&hash[..], &body].concat())
                .unwrap();
            db.flush().unwrap();
        }
        let refusal = |opened: Result<SledAudit, AuditError>| match opened {
            Err(e @ AuditError::OldFormat { .. }) => Ok(e),
            Err(e) => Err(e),
            Ok(_) => panic!("an old-format store was opened"),
        };
        for err in [
            reopen(|| refusal(SledAudit::open(dir.path(), Durability::default()))),
            reopen(|| refusal(SledAudit::open_read_only(dir.path()))),
        ] {
            assert!(err.to_string().contains("earlier cordon"), "{err}");
        }
        // A new store is marked, and reopens.
        let fresh = tempfile::tempdir().unwrap();
        let audit = SledAudit::open(fresh.path(), Durability::Strict).unwrap();
        audit.append(decision(1)).unwrap();
        drop(audit);
        let audit = reopen(|| SledAudit::open(fresh.path(), Durability::Strict));
        assert_eq!(audit.last_seq(), 1);
    }

    /// A store of uncompressed pages (session 5) is read as it is, marked
    /// compressed only when opened to append (so an older cordon then
    /// refuses it rather than misreading it), and an unknown mark is refused.
    #[test]
    fn format_marks_follow_what_the_store_holds() {
        let dir = tempfile::tempdir().unwrap();
        strict_store(dir.path(), 2);
        // Sets (or only reads) the store's mark, the store closed.
        let mark = |value: Option<&[u8]>| {
            with_tree(dir.path(), "meta", |meta| {
                if let Some(v) = value {
                    meta.insert(FORMAT_KEY, v)?;
                }
                Ok(meta.get(FORMAT_KEY)?.map(|v| v.to_vec()))
            })
        };
        assert_eq!(mark(None).as_deref(), Some(FORMAT_PAGES_LZ4));
        mark(Some(FORMAT_PAGES));
        let report = reopen(|| SledAudit::open_read_only(dir.path()))
            .verify()
            .unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(mark(None).as_deref(), Some(FORMAT_PAGES), "read-only");
        let audit = reopen(|| SledAudit::open(dir.path(), Durability::Strict));
        audit.append(decision(3)).unwrap();
        drop(audit);
        assert_eq!(mark(None).as_deref(), Some(FORMAT_PAGES_LZ4));
        mark(Some(b"pages-zstd"));
        let refused = reopen(|| match SledAudit::open_read_only(dir.path()) {
            Err(e @ AuditError::UnknownFormat { .. }) => Ok(e),
            Err(e) => Err(e),
            Ok(_) => panic!("a store of an unknown format was opened"),
        });
        assert!(refused.to_string().contains("\"pages-zstd\""), "{refused}");
        // Empty, it is still not ours to re-mark.
        let empty = tempfile::tempdir().unwrap();
        with_tree(empty.path(), "meta", |meta| {
            meta.insert(FORMAT_KEY, b"pages-zstd")?;
            Ok(())
        });
        assert!(matches!(
            reopen(|| match SledAudit::open(empty.path(), Durability::Strict) {
                Err(e @ AuditError::UnknownFormat { .. }) => Ok(Err(e)),
                other => other.map(Ok),
            }),
            Err(AuditError::UnknownFormat { .. })
        ));
    }

    /// After a crash the records past the `indexed` mark are indexed again
    /// when the store is opened to append; a damaged page there refuses the
    /// store (indexing past it would hide its records from filtered queries),
    /// and verify still opens it to name the damage.
    #[test]
    fn a_damaged_page_past_the_index_refuses_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        strict_store(dir.path(), 3);
        with_tree(dir.path(), "meta", |meta| {
            meta.insert(INDEXED_KEY, &seq_key(1))?;
            Ok(())
        });
        with_records_tree(dir.path(), |records| {
            // Cut short: it no longer decompresses.
            let mut v = records.get(seq_key(2))?.expect("page 2").to_vec();
            v.truncate(v.len() / 2);
            records.insert(seq_key(2), v)?;
            Ok(())
        });
        let writer = try_reopen(|| SledAudit::open(dir.path(), Durability::Strict));
        assert!(
            matches!(writer, Err(AuditError::Corrupt { seq: 2, .. })),
            "{writer:?}"
        );
        let audit = reopen(|| SledAudit::open_read_only(dir.path()));
        let report = audit.verify().unwrap();
        assert!(!report.ok, "{report:?}");
        assert_eq!(report.first_bad_seq, 2, "{report:?}");
    }

    /// Records stored after the head (a crash between the two) are normal;
    /// a head that names an older record which no longer matches it is not:
    /// the records from there on were rewritten, and appending would write
    /// a new head over the evidence.
    #[test]
    fn a_head_older_than_the_newest_record_is_checked_against_its_record() {
        let dir = tempfile::tempdir().unwrap();
        strict_store(dir.path(), 3);
        let hash_of_1 = with_records_tree(dir.path(), |records| {
            let page = Page::from_item(records.range(..=seq_key(1)).next_back().unwrap())?;
            let (_, entry) = page.records()?.find(|(seq, _)| *seq == 1).unwrap();
            Ok(entry.hash.to_vec())
        });
        let set_head = |hash: Vec<u8>| {
            with_tree(dir.path(), "meta", |meta| {
                meta.insert(HEAD_KEY, [&seq_key(1)[..], &hash[..]].concat())?;
                Ok(())
            })
        };
        set_head(hash_of_1.clone());
        let audit = reopen(|| SledAudit::open(dir.path(), Durability::Strict));
        audit.append(decision(3)).unwrap();
        drop(audit);
        // Head back at record 1, now with a hash record 1 does not have.
        let mut other = hash_of_1;
        other[0] ^= 1;
        set_head(other);
        let refused = try_reopen(|| SledAudit::open(dir.path(), Durability::Strict));
        let Err(AuditError::Damaged { problem, .. }) = refused else {
            panic!("a head that its record does not match was accepted");
        };
        assert_eq!(problem, "record 1, its head, was replaced or removed");
    }

    /// A new store's directory (and any made above it) is its owner's
    /// alone: sled's files are 0644 under the usual umask.
    #[test]
    fn a_new_store_is_readable_by_its_owner_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("state/cordon/audit");
        let audit = SledAudit::open(&store, Durability::Strict).unwrap();
        audit.append(decision(1)).unwrap();
        for d in [dir.path().join("state"), store.clone()] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
    }

    /// A head removed with the newest records, or malformed, hides that they
    /// were removed: verify names it rather than passing, and a writer
    /// refuses a malformed head (never written so). A store without one is
    /// opened (a crash in a new store's first flush leaves none), with a
    /// warning.
    #[test]
    fn a_missing_or_malformed_head_is_reported() {
        for (case, head) in [
            ("removed", None),
            ("short", Some(vec![0u8; 12])),
            ("record 0", Some([&seq_key(0)[..], &[7u8; 32][..]].concat())),
        ] {
            let dir = tempfile::tempdir().unwrap();
            strict_store(dir.path(), 3);
            with_records_tree(dir.path(), |records| {
                let (key, _) = records.last()?.expect("a page");
                records.remove(key)?;
                Ok(())
            });
            with_tree(dir.path(), "meta", |meta| {
                match &head {
                    None => meta.remove(HEAD_KEY)?,
                    Some(h) => meta.insert(HEAD_KEY, h.clone())?,
                };
                Ok(())
            });
            let reader = reopen(|| SledAudit::open_read_only(dir.path()));
            let report = reader.verify().unwrap();
            drop(reader);
            assert!(!report.ok, "{case}: {report:?}");
            assert!(report.problem.contains("head"), "{case}: {report:?}");
            if head.is_none() {
                // Reindex, which writes nothing before its check, refuses
                // the store (the head file names the removed record) and
                // leaves it without a head.
                let refused = try_reopen(|| SledAudit::reindex(dir.path()));
                assert!(
                    matches!(&refused, Err(AuditError::Damaged { problem, .. }) if problem.contains("head file")),
                    "{refused:?}"
                );
                let head_now = with_tree(dir.path(), "meta", |meta| Ok(meta.get(HEAD_KEY)?));
                assert!(head_now.is_none(), "reindex wrote a head");
            }
            let writer = try_reopen(|| SledAudit::open(dir.path(), Durability::Strict));
            // The head file outside sled still names the removed record: a
            // writer refuses to number new records over it.
            assert!(
                matches!(&writer, Err(AuditError::Damaged { problem, .. }) if problem.contains("head file")),
                "{case}: {writer:?}"
            );
            std::fs::remove_file(dir.path().join(HEAD_FILE)).unwrap();
            let writer = try_reopen(|| SledAudit::open(dir.path(), Durability::Strict));
            match head {
                None => assert!(writer.is_ok(), "{case}: {writer:?}"),
                Some(_) => assert!(
                    matches!(&writer, Err(AuditError::Damaged { problem, .. }) if problem.contains("head is malformed")),
                    "{case}: {writer:?}"
                ),
            }
        }
    }

    /// The head file's hash is compared with the record it names: a newest
    /// record replaced along with sled's own head is named, and a head file
    /// that lags (written without fsync) names an older record correctly.
    #[test]
    fn verify_compares_the_head_files_hash() {
        let dir = tempfile::tempdir().unwrap();
        strict_store(dir.path(), 5);
        let hash_of = |seq: u64| {
            let reader = reopen(|| SledAudit::open_read_only(dir.path()));
            let mut hash = String::new();
            reader
                .scan(&AuditFilter::default(), &mut |r| {
                    if r.seq == seq {
                        hash = r.hash.clone();
                    }
                    true
                })
                .unwrap();
            hash
        };
        let write_head = |seq: u64, hash: &str| {
            std::fs::write(dir.path().join(HEAD_FILE), format!("{seq:020} {hash}\n")).unwrap();
        };
        let verify = || {
            reopen(|| SledAudit::open_read_only(dir.path()))
                .verify()
                .unwrap()
        };
        assert_eq!(
            std::fs::read_to_string(dir.path().join(HEAD_FILE)).unwrap(),
            format!("{:020} {}\n", 5, hash_of(5))
        );
        assert!(verify().ok);
        write_head(3, &hash_of(3));
        assert!(verify().ok, "a lagging head file");
        write_head(5, &hash_of(4));
        let report = verify();
        assert!(!report.ok, "{report:?}");
        assert_eq!(report.first_bad_seq, 5, "{report:?}");
        assert!(report.problem.contains("head file"), "{report:?}");
        write_head(2, &"0".repeat(64));
        assert_eq!(verify().first_bad_seq, 2);
    }

    /// A newest page moved to the last possible key: a writer refuses the
    /// store, and verify still opens it to name the damage.
    #[test]
    fn verify_opens_a_store_whose_newest_record_claims_the_last_seq() {
        let dir = tempfile::tempdir().unwrap();
        strict_store(dir.path(), 2);
        with_records_tree(dir.path(), |records| {
            let (key, page) = records.last()?.expect("a page");
            records.remove(key)?;
            records.insert(seq_key(u64::MAX), page)?;
            Ok(())
        });
        let writer = try_reopen(|| SledAudit::open(dir.path(), Durability::Strict));
        assert!(
            matches!(writer, Err(AuditError::Damaged { .. })),
            "{writer:?}"
        );
        let reader = reopen(|| SledAudit::open_read_only(dir.path()));
        let report = reader.verify().unwrap();
        assert!(!report.ok, "{report:?}");
    }

    #[test]
    fn close_refuses_later_appends_and_keeps_every_earlier_one() {
        let dir = tempfile::tempdir().unwrap();
        let window = Duration::from_secs(3600);
        let audit = SledAudit::open(dir.path(), Durability::Batched { window }).unwrap();
        for i in 0..50 {
            audit.append(decision(i)).unwrap();
        }
        audit.close();
        assert!(matches!(
            audit.append(decision(50)),
            Err(AuditError::Closed)
        ));
        audit.close();
        drop(audit);
        let reader = reopen(|| SledAudit::open_read_only(dir.path()));
        let report = reader.verify().unwrap();
        assert!(report.ok && report.records_checked == 50, "{report:?}");
    }

    #[test]
    fn record_ids_are_distinct_version_7_uuids_and_never_go_back_in_time() {
        let ids = RecordIds::new();
        let other = RecordIds::new();
        let mut seen = std::collections::HashSet::new();
        let mut last_time = [0u64; 2];
        for _ in 0..10_000 {
            for (i, id) in [ids.next(), other.next()].into_iter().enumerate() {
                let u = uuid::Uuid::parse_str(&id).unwrap();
                assert_eq!(u.get_version_num(), 7, "{id}");
                let (secs, nanos) = u.get_timestamp().unwrap().to_unix();
                let t = secs * 1_000 + u64::from(nanos) / 1_000_000;
                assert!(t >= last_time[i], "{id} is older than the id before it");
                last_time[i] = t;
                assert!(seen.insert(id.clone()), "{id} twice");
            }
        }
    }

    /// A varied store in pages of every size (1 to a full page, flushed at
    /// uneven points, reopened once): every indexed and unindexed filter,
    /// from every resume point and with limits, selects exactly what a plain
    /// filter over all records selects.
    #[test]
    fn scans_across_pages_select_exactly_what_the_filter_matches() {
        let dir = tempfile::tempdir().unwrap();
        let window = Duration::from_secs(3600);
        let syscalls = ["openat", "connect", "execve", "openat", "sendto"];
        let make = |i: u64| AuditRecord {
            sandbox_id: format!("sb-{}", i % 3),
            syscall: syscalls[(i % 5) as usize].into(),
            allow: i % 4 != 1,
            ..decision(i)
        };
        let mut all = Vec::new();
        let mut i = 0u64;
        for round in 0..2 {
            let audit = reopen(|| SledAudit::open(dir.path(), Durability::Batched { window }));
            for size in [1u64, 5, 32, 33, 2, 70, 7] {
                for _ in 0..size + round {
                    let seq = audit.append(make(i)).unwrap().seq;
                    all.push((seq, make(i)));
                    i += 1;
                }
                audit.flush().unwrap();
            }
        }
        let audit = reopen(|| SledAudit::open_read_only(dir.path()));
        assert!(audit.verify().unwrap().ok);
        let n = all.len() as u64;
        let mut filters = vec![AuditFilter::default()];
        for sb in ["sb-0", "sb-2", "sb-9"] {
            filters.push(AuditFilter {
                sandbox_id: Some(sb.into()),
                ..Default::default()
            });
        }
        for c in ["openat", "execve", "sendto"] {
            for decision in [None, Some(true), Some(false)] {
                filters.push(AuditFilter {
                    syscall: Some(c.into()),
                    decision,
                    ..Default::default()
                });
            }
        }
        for decision in [Some(true), Some(false)] {
            filters.push(AuditFilter {
                decision,
                sandbox_id: Some("sb-1".into()),
                ..Default::default()
            });
            filters.push(AuditFilter {
                decision,
                ..Default::default()
            });
        }
        let mut cases = 0;
        for base in &filters {
            for after_seq in [0, 1, 5, 31, 32, 33, 40, 100, n - 1, n, u64::MAX] {
                for limit in [None, Some(1), Some(7)] {
                    let filter = AuditFilter {
                        after_seq,
                        limit,
                        ..base.clone()
                    };
                    let want: Vec<u64> = all
                        .iter()
                        .filter(|(seq, r)| *seq > after_seq && filter.matches(r))
                        .map(|(seq, _)| *seq)
                        .take(limit.unwrap_or(u64::MAX) as usize)
                        .collect();
                    let mut got = Vec::new();
                    audit
                        .scan(&filter, &mut |r| {
                            got.push(r.seq);
                            true
                        })
                        .unwrap();
                    assert_eq!(got, want, "{filter:?}");
                    cases += 1;
                }
            }
        }
        assert!(cases > 500);
    }

    #[test]
    fn verify_on_a_live_store_passes_while_records_keep_arriving() {
        let dir = tempfile::tempdir().unwrap();
        let window = Duration::from_millis(1);
        let audit = Arc::new(SledAudit::open(dir.path(), Durability::Batched { window }).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (audit, stop) = (audit.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    audit.append(decision(n)).unwrap();
                    n += 1;
                    if n % 64 == 0 {
                        // Flushes keep landing; the store stays small.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                n
            })
        };
        let mut checks = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            let report = audit.verify().unwrap();
            assert!(report.ok, "verify #{checks} on a live store: {report:?}");
            checks += 1;
        }
        stop.store(true, Ordering::SeqCst);
        let appended = writer.join().unwrap();
        assert!(
            appended > 0 && checks > 1,
            "{appended} appends, {checks} checks"
        );
    }
}
