//! The gRPC face of the broker: `cordon.v1.Broker`, `grpc.health.v1` and
//! server reflection, on Unix sockets (and TCP with TLS when built with the
//! `tls` feature).
//!
//! The service is thin: it checks the caller, converts messages and hands off
//! to [`Broker`]. Internal errors become a gRPC `Status` here and only here.
//!
//! Access control (Unix sockets): the socket is created mode 0660 in a
//! directory owned by the broker's uid and writable by nobody else; every call
//! is checked against its peer ([`crate::peer`]), and long-lived streams check
//! it again as they go.

use std::{
    collections::HashMap,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use cordon_proto::v1::{
    self as pb, AuditRecord as PbRecord, DecideRequest, DecideResponse, DecisionFilter,
    PolicyStatusRequest, PolicyStatusResponse, QueryAuditRequest, ReloadPolicyRequest,
    ReloadPolicyResponse, SessionError, SessionRequest, SessionResponse, VerifyAuditRequest,
    VerifyAuditResponse,
    broker_server::{self, BrokerServer},
    session_request, session_response,
};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming, transport::server::UdsConnectInfo};

pub use crate::peer::AccessPolicy;
use crate::{
    audit::{AuditError, AuditFilter, AuditRecord, Durability},
    decide::{Broker, LifecycleError},
    peer::{self, PeerStream, PeerWatch},
};

/// The largest message the broker accepts (an exec with a full-size argv fits).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The largest message the broker sends, and what a `QueryAudit` reader
/// (`client::connect_for_records`) takes: a `QueryAudit`
/// record carries an exec's argv three times (its `argv` field, and in `json`
/// the record's and its input's), each control byte escaped to six: ~34 MiB
/// for a full-size argv at worst.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// A failure to start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot prepare socket directory {path}: {message}")]
    SocketDir { path: PathBuf, message: String },
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(String),
}

/// The `cordon.v1.Broker` service.
#[derive(Debug, Clone)]
pub struct BrokerService {
    broker: Broker,
    strict: bool,
    /// True once the server shuts down: `Session` streams stop taking
    /// requests and `follow` queries end, so that the graceful shutdown
    /// (which waits for every stream) does not wait for their clients.
    closing: watch::Receiver<bool>,
    /// Open `QueryAudit` streams: each holds a blocking thread while it lasts
    /// (a follow, or a client slow to read), so they are counted against
    /// [`MAX_OPEN_QUERIES`], leaving the pool to decisions.
    queries: Arc<Semaphore>,
    /// `VerifyAudit` (a walk of the whole chain) runs one at a time, the
    /// others waiting: on two CPUs a client asking for many at once would
    /// starve the decisions.
    heavy: Arc<Semaphore>,
    /// Slow sessions' answers on the blocking pool at once, all sessions
    /// together: one per CPU.
    offloaded: Arc<Semaphore>,
    /// Unary `Decide` calls have no session: each sandbox's calls are moved
    /// off the async workers as a slow session's are ([`Offload`]).
    unary_offload: Arc<std::sync::Mutex<SandboxOffloads>>,
    /// `ReloadPolicy` (a compile), one at a time too, but in a queue of its
    /// own: a reload that tightens the policy must not wait behind every
    /// verification queued before it (minutes each on a large store).
    reloads: Arc<Semaphore>,
    /// Who may call over a Unix socket: long-lived streams check their peer
    /// again with it (the interceptor checks each call when it starts).
    access: Arc<AccessPolicy>,
}

/// HTTP/2 streams one connection may have open (a shim's lane holds one
/// `Session`); past it the client waits for one to end.
const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// `QueryAudit` streams open at once; one more is `RESOURCE_EXHAUSTED`.
pub const MAX_OPEN_QUERIES: usize = 64;

/// Strict decisions of one `Session` whose answers are not yet sent; at the
/// limit the stream reads no more requests until the client takes answers.
const STRICT_IN_FLIGHT: usize = 64;

/// A `Session` answer that took this long (a hundred times a usual one) was
/// slow: after two in a row, the session's requests are answered on the
/// blocking pool, off the async workers, which they would hold ([`Offload`]).
const SLOW_ANSWER: Duration = Duration::from_millis(1);
/// How long after a first slow answer; a slow answer less than
/// [`OFFLOAD_AT_MOST`] after the last offload ended doubles it, up to that.
const OFFLOAD_FIRST: Duration = Duration::from_secs(1);
const OFFLOAD_AT_MOST: Duration = Duration::from_secs(60);
/// Sandboxes whose unary calls' slowness is remembered at once.
const MAX_UNARY_OFFLOADS: usize = 4096;

/// Whether a session's requests are answered off the async workers. Time,
/// not a count of requests: a session alternating cheap requests with slow
/// ones would otherwise hold a worker for one slow answer per count. The
/// time doubles while slow answers recur, so one slow answer per window
/// holds a worker for ever shorter shares of time.
#[derive(Debug, Default)]
struct Offload {
    until: Option<Instant>,
    window: Duration,
    slow_in_a_row: u32,
}

impl Offload {
    fn active(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// Whether a slow answer now would lengthen the last offload (it ended
    /// less than [`OFFLOAD_AT_MOST`] ago), or one is under way.
    fn recent(&self, now: Instant) -> bool {
        self.until
            .is_some_and(|until| now < until + OFFLOAD_AT_MOST)
    }

    /// After an answer that took `cost`; true when this starts an offload.
    fn answered(&mut self, cost: Duration, now: Instant) -> bool {
        if cost < SLOW_ANSWER {
            self.slow_in_a_row = 0;
            return false;
        }
        self.slow_in_a_row = self.slow_in_a_row.saturating_add(1);
        let starts = !self.active(now);
        let recent = self.recent(now);
        // Timed by wall clock, one slow answer may be a preemption on a busy
        // machine: a first offload takes two in a row, so that a session
        // that was only preempted does not queue behind the slow ones.
        if !recent && self.slow_in_a_row < 2 {
            return false;
        }
        self.window = if recent {
            (self.window * 2).clamp(OFFLOAD_FIRST, OFFLOAD_AT_MOST)
        } else {
            OFFLOAD_FIRST
        };
        self.until = Some(now + self.window);
        starts
    }
}

/// Unary calls' [`Offload`]s, by sandbox id. Only sandboxes that were slow
/// are kept, and at most [`MAX_UNARY_OFFLOADS`]: past that, those not
/// offloaded now or within the last [`OFFLOAD_AT_MOST`] are forgotten (one
/// that is slow again starts over, two slow answers in a row), and while
/// none is, a new one is not kept.
#[derive(Debug, Default)]
struct SandboxOffloads(HashMap<String, Offload>);

impl SandboxOffloads {
    fn active(&self, sandbox: &str, now: Instant) -> bool {
        self.0.get(sandbox).is_some_and(|o| o.active(now))
    }

    /// After a call of `sandbox` that took `cost`: the offload's length
    /// when this starts one.
    fn answered(&mut self, sandbox: &str, cost: Duration, now: Instant) -> Option<Duration> {
        if !self.0.contains_key(sandbox) {
            if cost < SLOW_ANSWER {
                return None;
            }
            if self.0.len() >= MAX_UNARY_OFFLOADS {
                self.0.retain(|_, o| o.recent(now));
                if self.0.len() >= MAX_UNARY_OFFLOADS {
                    return None;
                }
            }
        }
        let offload = self.0.entry(sandbox.to_owned()).or_default();
        offload.answered(cost, now).then_some(offload.window)
    }
}

/// The sandbox a unary call names ("" for none).
fn sandbox_id(req: &DecideRequest) -> &str {
    req.sandbox.as_ref().map_or("", |s| s.id.as_str())
}

/// A store that is damaged loses data; one that is failing, full or closed
/// is unavailable for now.
fn audit_status(e: &AuditError) -> Status {
    match e {
        AuditError::Corrupt { .. }
        | AuditError::Damaged { .. }
        | AuditError::ChainBroken { .. }
        | AuditError::OldFormat { .. }
        | AuditError::UnknownFormat { .. } => Status::data_loss(e.to_string()),
        _ => Status::unavailable(e.to_string()),
    }
}

/// Resolves when `closing` turns true or its sender is gone.
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

impl BrokerService {
    /// Checks the peer of a call whose message has arrived, again if the
    /// interceptor's check (made when the headers came) is old by now.
    fn recheck_peer<T>(&self, req: &Request<T>) -> Result<(), Status> {
        PeerWatch::of(req, self.access.clone()).map_or(Ok(()), |mut w| w.recheck())
    }

    /// `durability` tells whether appends may block for a flush; those run on
    /// the blocking pool so that they do not stall the async workers.
    pub fn new(
        broker: Broker,
        durability: Durability,
        access: Arc<AccessPolicy>,
        closing: watch::Receiver<bool>,
    ) -> Self {
        Self {
            broker,
            strict: durability == Durability::Strict,
            closing,
            queries: Arc::new(Semaphore::new(MAX_OPEN_QUERIES)),
            heavy: Arc::new(Semaphore::new(1)),
            offloaded: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            reloads: Arc::new(Semaphore::new(1)),
            unary_offload: Arc::default(),
            access,
        }
    }

    async fn run_decide(
        &self,
        req: DecideRequest,
        received: Instant,
    ) -> Result<pb::Decision, Status> {
        let broker = self.broker.clone();
        let offloaded = !self.strict
            && self
                .unary_offloads()
                .active(sandbox_id(&req), Instant::now());
        // The request goes to the decision (a memo hit's record keeps it):
        // its sandbox's id, for the offload bookkeeping after (none in
        // strict mode), is copied first, if it can be a valid one.
        let sandbox = match sandbox_id(&req) {
            id if !self.strict && crate::request::valid_sandbox_id(id) => id.to_owned(),
            _ => String::new(),
        };
        let (result, cost) = if self.strict || offloaded {
            let permit = if offloaded {
                // As for sessions: as many at once as there are CPUs.
                let permit = self.offloaded.clone().acquire_owned().await;
                Some(
                    permit
                        .map_err(|e| Status::internal(format!("no place off the workers: {e}")))?,
                )
            } else {
                None
            };
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let before = Instant::now();
                let result = broker.decide_owned(req, received);
                (result, before.elapsed())
            })
            .await
            .map_err(|e| Status::internal(format!("decision task failed: {e}")))?
        } else {
            let before = Instant::now();
            let result = broker.decide_owned(req, received);
            (result, before.elapsed())
        };
        // Valid requests naming a sandbox only: an invalid one's id is
        // unchecked (up to the message size), and calls that name none
        // would share one entry.
        if !self.strict && result.is_ok() && !sandbox.is_empty() {
            let sandbox = sandbox.as_str();
            let mut offloads = self.unary_offloads();
            if let Some(window) = offloads.answered(sandbox, cost, Instant::now()) {
                tracing::debug!(
                    sandbox,
                    took_us = cost.as_micros() as u64,
                    for_ms = window.as_millis() as u64,
                    "a unary decision was slow: its sandbox's next calls are answered off the \
                     async workers"
                );
            }
        }
        result.map_err(|rejected| Status::invalid_argument(rejected.error.to_string()))
    }

    fn unary_offloads(&self) -> std::sync::MutexGuard<'_, SandboxOffloads> {
        self.unary_offload.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// [`handle_session_message`], and the time it took. Wall time: the
/// thread's CPU clock is a system call, two of which cost 3-5 µs more per
/// answer (BENCHMARKS.md, session 20), so an answer preempted on a busy
/// machine counts as slow too (its session's next second costs a thread
/// handoff per request).
fn answer_costed(
    broker: &Broker,
    msg: SessionRequest,
    received: Instant,
) -> (SessionResponse, Duration) {
    let before = Instant::now();
    let answer = handle_session_message(broker, msg, received);
    (answer, before.elapsed())
}

/// Answers one `Session` message, read at `received`.
fn handle_session_message(
    broker: &Broker,
    msg: SessionRequest,
    received: Instant,
) -> SessionResponse {
    let request_id = msg.request_id;
    let error = |code: tonic::Code, message: String| SessionResponse {
        request_id,
        msg: Some(session_response::Msg::Error(SessionError {
            code: code as i32,
            message,
        })),
    };
    match msg.msg {
        Some(session_request::Msg::Decide(req)) => match broker
            .decide_owned(req, received)
            .map_err(|rejected| rejected.error)
        {
            Ok(d) => SessionResponse {
                request_id,
                msg: Some(session_response::Msg::Decision(d)),
            },
            Err(e) => error(tonic::Code::InvalidArgument, e.to_string()),
        },
        Some(session_request::Msg::Lifecycle(ev)) => match broker.record_lifecycle(&ev) {
            Ok(seq) => SessionResponse {
                request_id,
                msg: Some(session_response::Msg::RecordedSeq(seq)),
            },
            Err(LifecycleError::Invalid(e)) => error(tonic::Code::InvalidArgument, e.to_string()),
            Err(LifecycleError::Audit(e)) => error(tonic::Code::Unavailable, e.to_string()),
        },
        Some(session_request::Msg::Backstop(sandbox)) => {
            if let Err(e) = crate::request::validate_sandbox(&sandbox) {
                return error(tonic::Code::InvalidArgument, e.to_string());
            }
            match broker.backstop(&sandbox) {
                Ok(b) => SessionResponse {
                    request_id,
                    msg: Some(session_response::Msg::BackstopJson(
                        b.map(|v| v.to_string()).unwrap_or_default(),
                    )),
                },
                Err(e) => error(tonic::Code::FailedPrecondition, format!("backstop: {e}")),
            }
        }
        None => error(
            tonic::Code::InvalidArgument,
            "invalid request: empty session message".into(),
        ),
    }
}

/// The call's gRPC deadline (`grpc-timeout`: at most 8 digits and a unit,
/// `H`, `M`, `S`, `m`, `u` or `n`), if it has a valid one.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Converts a stored record to its wire form.
pub fn record_to_proto(r: &AuditRecord) -> PbRecord {
    PbRecord {
        seq: r.seq,
        id: r.id.clone(),
        time: r.time.clone(),
        sandbox_id: r.sandbox_id.clone(),
        labels: r.labels.clone().into_iter().collect(),
        pid: r.pid,
        exe: r.exe.clone(),
        syscall: r.syscall.clone(),
        kind: r.kind.clone(),
        path: r.path.clone().unwrap_or_default(),
        address: r.address.clone().unwrap_or_default(),
        port: r.port.unwrap_or_default(),
        argv: r.argv.clone().unwrap_or_default(),
        allow: r.allow,
        errno: r.errno.clone(),
        reason: r.reason.clone(),
        policy_revision: r.policy_revision.clone(),
        latency_us: r.latency_us,
        prev_hash: r.prev_hash.clone(),
        hash: r.hash.clone(),
        json: serde_json::to_string(r).unwrap_or_default(),
        would_deny: r.would_deny,
        overrides: r.overrides.unwrap_or_default(),
    }
}

/// Converts a wire query to a store filter, rejecting values that cannot match.
pub fn filter_from_proto(q: &QueryAuditRequest) -> Result<AuditFilter, Status> {
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let (decision, would_deny) = match DecisionFilter::try_from(q.decision) {
        Ok(DecisionFilter::Any) => (None, false),
        Ok(DecisionFilter::Allow) => (Some(true), false),
        Ok(DecisionFilter::Deny) => (Some(false), false),
        Ok(DecisionFilter::WouldDeny) => (None, true),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown decision filter {}",
                q.decision
            )));
        }
    };
    if !q.kind.is_empty() && !matches!(q.kind.as_str(), "file" | "network" | "exec" | "lifecycle") {
        return Err(Status::invalid_argument(format!(
            "kind {:?} is not file, network, exec or lifecycle",
            q.kind
        )));
    }
    Ok(AuditFilter {
        since_ns: (q.since_unix_ns != 0).then_some(q.since_unix_ns),
        until_ns: (q.until_unix_ns != 0).then_some(q.until_unix_ns),
        sandbox_id: nonempty(&q.sandbox_id),
        labels: q.labels.clone().into_iter().collect(),
        syscall: nonempty(&q.syscall),
        kind: nonempty(&q.kind),
        decision,
        would_deny,
        path_prefix: (!q.path_prefix.is_empty())
            .then(|| crate::request::display_bytes(&q.path_prefix)),
        limit: (q.limit != 0).then_some(q.limit),
        after_seq: q.after_seq,
        upto_seq: None,
    })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl broker_server::Broker for BrokerService {
    async fn decide(
        &self,
        request: Request<DecideRequest>,
    ) -> Result<Response<DecideResponse>, Status> {
        let received = Instant::now();
        self.recheck_peer(&request)?;
        let timeout = grpc_timeout(request.metadata());
        let same_machine = peer::of(&request).is_some();
        let mut req = request.into_inner();
        if req.timeout_ns == 0
            && let Some(t) = timeout
        {
            req.timeout_ns = crate::decide::request_timeout_ns(t);
        }
        if !same_machine {
            // Another machine's clock: only the relative wait counts.
            req.deadline_unix_ns = 0;
        }
        let request_id = req.request_id;
        let decision = self.run_decide(req, received).await?;
        Ok(Response::new(DecideResponse {
            request_id,
            decision: Some(decision),
        }))
    }

    type SessionStream = BoxStream<SessionResponse>;

    async fn session(
        &self,
        request: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut watch = PeerWatch::of(&request, self.access.clone());
        // A Unix peer shares our clock (see `DecideRequest.deadline_unix_ns`).
        let same_machine = watch.is_some();
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<SessionResponse, Status>>(1024);
        let broker = self.broker.clone();
        let strict = self.strict;
        let in_flight = Arc::new(Semaphore::new(STRICT_IN_FLIGHT));
        let offloaded = self.offloaded.clone();
        let mut closing = self.closing.clone();
        tokio::spawn(async move {
            let mut offload = Offload::default();
            loop {
                // A request read is answered; after the shutdown began, no
                // more are read, and the stream ends once those answers are
                // out (the client's next call finds it closed: a denial).
                let msg = tokio::select! {
                    biased;
                    _ = closed(&mut closing) => break,
                    m = inbound.message() => m,
                };
                let received = Instant::now();
                // A request that does not decode, or the client gone, ends
                // the stream with that status (INVALID_ARGUMENT for the
                // first), not with OK; so does a peer that no longer passes
                // the check.
                let msg = match msg.and_then(|m| {
                    if let Some(w) = watch.as_mut() {
                        w.recheck()?;
                    }
                    Ok(m)
                }) {
                    Ok(Some(mut m)) => {
                        if !same_machine
                            && let Some(session_request::Msg::Decide(req)) = m.msg.as_mut()
                        {
                            req.deadline_unix_ns = 0;
                        }
                        m
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "session stream ended with an error");
                        // The status ends the stream: first every answer
                        // still being decided (strict mode) is sent.
                        let _ = in_flight.acquire_many(STRICT_IN_FLIGHT as u32).await;
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                if strict {
                    // Each request waits for a flush; run them side by side so
                    // that they share flushes (group commit). A blocking
                    // thread is held for the decision only: the answer is
                    // sent from a task, so a client that does not read holds
                    // no thread, and at most STRICT_IN_FLIGHT answers.
                    let Ok(slot) = in_flight.clone().acquire_owned().await else {
                        break;
                    };
                    let (broker, tx) = (broker.clone(), tx.clone());
                    let decided = tokio::task::spawn_blocking(move || {
                        handle_session_message(&broker, msg, received)
                    });
                    tokio::spawn(async move {
                        if let Ok(answer) = decided.await {
                            let _ = tx.send(Ok(answer)).await;
                        }
                        drop(slot);
                    });
                } else {
                    // Inline: a handoff to another thread costs more than a
                    // decision. But a session that was slow (its tool found a
                    // costly path through the policy) would hold an async
                    // worker, and on a small machine every worker: it goes
                    // to the blocking pool for its next requests.
                    let (answer, cost) = if offload.active(Instant::now()) {
                        // As many at once as there are CPUs: more would only
                        // take CPU from the workers.
                        let Ok(permit) = offloaded.clone().acquire_owned().await else {
                            break;
                        };
                        let broker = broker.clone();
                        let answered = tokio::task::spawn_blocking(move || {
                            let _permit = permit;
                            answer_costed(&broker, msg, received)
                        })
                        .await;
                        match answered {
                            Ok(answered) => answered,
                            Err(e) => {
                                tracing::error!(error = %e, "a session answer failed");
                                let _ = tx
                                    .send(Err(Status::internal(format!("the answer failed: {e}"))))
                                    .await;
                                break;
                            }
                        }
                    } else {
                        answer_costed(&broker, msg, received)
                    };
                    let now = Instant::now();
                    if offload.answered(cost, now) {
                        tracing::debug!(
                            took_us = cost.as_micros() as u64,
                            for_ms = offload.window.as_millis() as u64,
                            "a session answer was slow: its next requests are answered off the \
                             async workers"
                        );
                    }
                    if tx.send(Ok(answer)).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type QueryAuditStream = BoxStream<PbRecord>;

    async fn query_audit(
        &self,
        request: Request<QueryAuditRequest>,
    ) -> Result<Response<Self::QueryAuditStream>, Status> {
        let mut watch = PeerWatch::of(&request, self.access.clone());
        if let Some(w) = watch.as_mut() {
            w.recheck()?;
        }
        let q = request.into_inner();
        let mut filter = filter_from_proto(&q)?;
        let Ok(open_query) = self.queries.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "{MAX_OPEN_QUERIES} audit queries are open, the most this broker serves at once; \
                 try again when one ends"
            )));
        };
        let audit = self.broker.audit().clone();
        let (tx, rx) = mpsc::channel::<Result<PbRecord, Status>>(256);
        let handle = tokio::runtime::Handle::current();
        let mut closing = self.closing.clone();
        let resume = filter.after_seq;
        tokio::task::spawn_blocking(move || {
            let _open_query = open_query;
            // A follower sees only records on disk: one a crash could still
            // lose would have its number given to another, which a follower
            // resuming after it would never see.
            let mut changes = if q.follow {
                audit.subscribe_durable()
            } else {
                audit.subscribe()
            };
            let mut remaining = filter.limit;
            let mut first = true;
            let mut until_target = None;
            loop {
                // A follow lasts: its peer is checked again as it goes.
                if let Some(Err(status)) = watch.as_mut().map(PeerWatch::recheck) {
                    let _ = tx.blocking_send(Err(status));
                    return;
                }
                let durable = *changes.borrow_and_update();
                if q.follow {
                    filter.upto_seq = Some(durable);
                }
                let mut open = true;
                let mut refused = None;
                let result = audit.scan(&filter, &mut |r| {
                    // A long scan too: its peer may have changed meanwhile.
                    if let Some(Err(status)) = watch.as_mut().map(PeerWatch::recheck) {
                        refused = Some(status);
                        return false;
                    }
                    open = tx.blocking_send(Ok(record_to_proto(&r))).is_ok();
                    if let Some(n) = remaining.as_mut() {
                        *n -= 1;
                    }
                    open && remaining != Some(0)
                });
                if let Some(status) = refused {
                    let _ = tx.blocking_send(Err(status));
                    return;
                }
                match result {
                    Ok(last) => filter.after_seq = last,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(audit_status(&e)));
                        return;
                    }
                }
                // Checked after the scan, which stored every record handed
                // out: a resume point past them all names records this store
                // does not have (lost in a crash inside the flush window, or
                // another store), and waiting would skip as many new ones.
                let newest = audit.last_seq();
                if std::mem::take(&mut first) && resume > newest {
                    let _ = tx.blocking_send(Err(Status::out_of_range(format!(
                        "resume point {resume} is past the newest record, {newest}: the records after it were lost (a crash within the flush window) or this is another store; resume from {newest} or below"
                    ))));
                    return;
                }
                // No record appended from now on can be as old as `until`
                // (times only grow, and a record's time is when it was
                // appended): once those appended before are on disk and
                // shown, the follow is done.
                if q.follow && filter.until_ns.is_some_and(|u| crate::audit::now_ns() > u) {
                    // Every record handed out so far, stored or still queued.
                    let target = *until_target.get_or_insert_with(|| audit.last_assigned());
                    if filter.upto_seq.is_some_and(|d| d >= target) {
                        return;
                    }
                }
                filter.limit = remaining;
                if !q.follow || !open || remaining == Some(0) {
                    return;
                }
                // With nothing flushed, the clock passing `until` is what
                // ends the follow: look again then.
                let until_passes = async {
                    match filter.until_ns {
                        Some(u) if until_target.is_none() => {
                            let left = u.saturating_sub(crate::audit::now_ns()).max(0) as u64;
                            tokio::time::sleep(Duration::from_nanos(left + 1_000_000)).await
                        }
                        _ => std::future::pending().await,
                    }
                };
                let next = handle.block_on(async {
                    tokio::select! {
                        r = changes.changed() => r.is_ok(),
                        _ = until_passes => true,
                        _ = tx.closed() => false,
                        _ = closed(&mut closing) => {
                            let status = Status::unavailable("the broker is shutting down");
                            let _ = tx.send(Err(status)).await;
                            false
                        }
                    }
                });
                if !next {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn verify_audit(
        &self,
        request: Request<VerifyAuditRequest>,
    ) -> Result<Response<VerifyAuditResponse>, Status> {
        self.recheck_peer(&request)?;
        // Held by the walk itself: a client that cancels does not free it.
        let turn = self.heavy.clone().acquire_owned().await;
        let audit = self.broker.audit().clone();
        let report = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            audit.verify()
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| audit_status(&e))?;
        Ok(Response::new(VerifyAuditResponse {
            ok: report.ok,
            records_checked: report.records_checked,
            first_bad_seq: report.first_bad_seq,
            problem: report.problem,
            head_hash: report.head_hash,
        }))
    }

    async fn policy_status(
        &self,
        request: Request<PolicyStatusRequest>,
    ) -> Result<Response<PolicyStatusResponse>, Status> {
        self.recheck_peer(&request)?;
        let engine = self.broker.policy();
        let current = engine.current();
        Ok(Response::new(PolicyStatusResponse {
            revision: current.revision().to_string(),
            files: current.files().to_vec(),
            engine: current.engine_name().into(),
            loaded_at: humantime::format_rfc3339_nanos(current.loaded_at()).to_string(),
            last_error: engine.last_error().unwrap_or_default(),
        }))
    }

    async fn reload_policy(
        &self,
        request: Request<ReloadPolicyRequest>,
    ) -> Result<Response<ReloadPolicyResponse>, Status> {
        self.recheck_peer(&request)?;
        let turn = self.reloads.clone().acquire_owned().await;
        let engine = self.broker.policy().clone();
        let result = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            engine.reload().map(|c| (c, engine.current()))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        match result {
            Ok((changed, current)) => Ok(Response::new(ReloadPolicyResponse {
                revision: current.revision().to_string(),
                changed,
            })),
            Err(e) => Err(Status::invalid_argument(e.to_string())),
        }
    }
}

/// Whether only root and the broker's uid can redirect `dir`: every
/// directory and symlink the kernel passes through to reach it, each link
/// read and followed as the kernel does, is theirs, and no directory is
/// writable by others unless sticky (as OpenSSH's StrictModes). Whoever
/// could would re-point a link or rename a directory, and put another
/// socket where clients look for this one.
fn trusted_chain(dir: &Path) -> Result<(), String> {
    use std::ffi::OsString;
    use std::path::Component;
    let me = crate::peer::own_uid();
    let check = |step: &Path| -> Result<std::fs::Metadata, String> {
        let meta =
            std::fs::symlink_metadata(step).map_err(|e| format!("{}: {e}", step.display()))?;
        if meta.uid() != 0 && meta.uid() != me {
            return Err(format!(
                "{} is owned by uid {}, neither root nor the broker (uid {me}): its owner could \
                 put another socket in place of this one",
                step.display(),
                meta.uid()
            ));
        }
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.is_dir() && meta.mode() & 0o022 != 0 && !sticky {
            return Err(format!(
                "{} is writable by its group or by everyone (mode {:o}): who may write it could \
                 put another socket in place of this one",
                step.display(),
                meta.mode() & 0o7777
            ));
        }
        Ok(meta)
    };
    // Names still to walk, the next one last.
    let names = |path: &Path| -> Vec<OsString> {
        path.components()
            .rev()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect()
    };
    let start = std::path::absolute(dir).map_err(|e| e.to_string())?;
    let mut at = PathBuf::from("/");
    check(&at)?;
    let mut todo = names(&start);
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            at.pop();
            continue;
        }
        let next = at.join(&name);
        if check(&next)?.file_type().is_symlink() {
            links += 1;
            if links > 40 {
                return Err(format!(
                    "{}: too many levels of symbolic links",
                    start.display()
                ));
            }
            let target =
                std::fs::read_link(&next).map_err(|e| format!("{}: {e}", next.display()))?;
            if target.is_absolute() {
                at = PathBuf::from("/");
            }
            todo.extend(names(&target));
        } else {
            at = next;
        }
    }
    Ok(())
}

/// Creates the socket's directory if needed and checks that nobody but the
/// broker's uid can replace the socket; removes a stale socket.
fn prepare_socket_path(path: &Path) -> Result<(), ServeError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir_err = |message: String| ServeError::SocketDir {
        path: dir.to_path_buf(),
        message,
    };
    if !dir.exists() {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o750)
            .create(dir)
            .map_err(|e| dir_err(e.to_string()))?;
        // Its mode set through an fd that followed no link, once it is
        // known to be ours: a link planted there meanwhile (in a sticky
        // directory, which `trusted_chain` accepts) had a root broker
        // chmod the directory it named (found by review).
        use std::os::unix::fs::OpenOptionsExt;
        let made = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
            .open(dir)
            .map_err(|e| dir_err(format!("cannot open it without following a link: {e}")))?;
        let owner = made.metadata().map_err(|e| dir_err(e.to_string()))?.uid();
        if owner != crate::peer::own_uid() {
            return Err(dir_err(format!(
                "it is owned by uid {owner}, not by the broker (uid {})",
                crate::peer::own_uid()
            )));
        }
        made.set_permissions(std::fs::Permissions::from_mode(0o750))
            .map_err(|e| dir_err(e.to_string()))?;
    }
    trusted_chain(dir).map_err(dir_err)?;
    let meta = std::fs::metadata(dir).map_err(|e| dir_err(e.to_string()))?;
    if meta.uid() != crate::peer::own_uid() {
        return Err(dir_err(format!(
            "it is owned by uid {}, not by the broker (uid {})",
            meta.uid(),
            crate::peer::own_uid()
        )));
    }
    // As OpenSSH's StrictModes: whoever may write the directory may replace
    // the socket with their own, and answer every client.
    if meta.mode() & 0o022 != 0 {
        return Err(dir_err(format!(
            "it is writable by its group or by everyone (mode {:o}); use a directory only the \
             broker can write (chmod go-w)",
            meta.mode() & 0o7777
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            // A socket left by a broker that is gone is replaced; one a live
            // broker listens on is not taken from it.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::Bind {
                    path: path.into(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "a broker is already listening there",
                    ),
                });
            }
            std::fs::remove_file(path).map_err(|e| ServeError::Bind {
                path: path.into(),
                source: e,
            })?;
        }
        Ok(_) => {
            return Err(ServeError::Bind {
                path: path.into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                ),
            });
        }
        Err(_) => {}
    }
    Ok(())
}

/// Binds a Unix listener with mode 0660.
pub fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    prepare_socket_path(path)?;
    // Made 0600 (no one else may connect before the mode below is set),
    // whatever the process's umask: with 0 or 002 others could connect in
    // between and keep the connection (found by review). The umask is the
    // process's: a file another thread makes meanwhile is only more private.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(umask);
    let listener = bound.map_err(|e| ServeError::Bind {
        path: path.into(),
        source: e,
    })?;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)) {
        // Bound but not served: the file goes with the listener.
        let _ = std::fs::remove_file(path);
        return Err(ServeError::Bind {
            path: path.into(),
            source: e,
        });
    }
    Ok(listener)
}

/// The broker service behind its peer check, plus health and reflection.
async fn routes(
    broker: Broker,
    durability: Durability,
    access: AccessPolicy,
    closing: watch::Receiver<bool>,
) -> Result<tonic::service::Routes, ServeError> {
    let access = Arc::new(access);
    let svc = BrokerService::new(broker, durability, access.clone(), closing);
    let server = BrokerServer::new(svc)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_ANSWER_BYTES);
    // Every service behind the peer check: health and reflection answered
    // callers the broker refuses (found by review), and a health `Watch`
    // held a refused caller's stream open.
    let check = move |req: Request<()>| check_peer(req, &access);
    let guarded = tonic::service::interceptor::InterceptedService::new(server, check.clone());
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("cordon.v1.Broker", tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cordon_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    use tonic::service::interceptor::InterceptedService;
    Ok(tonic::service::Routes::new(guarded)
        .add_service(InterceptedService::new(health, check.clone()))
        .add_service(InterceptedService::new(reflection, check)))
}

/// A call's peer, checked against `access`; the request marked as checked.
fn check_peer(mut req: Request<()>, access: &AccessPolicy) -> Result<Request<()>, Status> {
    match peer::of(&req) {
        Some(peer) => {
            peer.check(access)?;
            req.extensions_mut()
                .insert(peer::Checked(std::time::Instant::now()));
        }
        // A Unix connection that did not come through `PeerStream`
        // cannot be checked: refused, not let through.
        None if req.extensions().get::<UdsConnectInfo>().is_some() => {
            return Err(Status::permission_denied(
                "peer credentials are unavailable",
            ));
        }
        // TCP, which exists only with mutual TLS.
        None => {}
    }
    Ok(req)
}

/// How long the accept loop waits after running out of fds or memory.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

pub async fn serve_unix(
    broker: Broker,
    durability: Durability,
    access: AccessPolicy,
    listener: tokio::net::UnixListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (closing, shutdown) = closing_on(shutdown);
    let routes = routes(broker, durability, access, closing).await?;
    let incoming = tokio_stream::StreamExt::map(
        patient(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        |accepted| accepted.map(PeerStream::new),
    );
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// `incoming` with a pause after each error. Out of fds: tonic accepts
/// again at once, and the listener stays readable, so a worker would spin
/// until one is freed. Any other error waits a little too: a burst of
/// errors answered at once (a test's, with a unix stream) left the listener
/// never polled again.
fn patient<T>(
    incoming: impl tokio_stream::Stream<Item = std::io::Result<T>>,
) -> impl tokio_stream::Stream<Item = std::io::Result<T>> {
    tokio_stream::StreamExt::then(incoming, |accepted| async move {
        if let Err(e) = &accepted {
            let resources = matches!(
                e.raw_os_error(),
                Some(
                    nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM
                )
            );
            let wait = if resources {
                ACCEPT_RETRY
            } else {
                Duration::from_millis(1)
            };
            tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "cannot accept a connection");
            tokio::time::sleep(wait).await;
        }
        accepted
    })
}

/// The service's closing signal, and the shutdown future for tonic that
/// raises it when `shutdown` resolves.
fn closing_on(
    shutdown: impl Future<Output = ()> + Send,
) -> (watch::Receiver<bool>, impl Future<Output = ()> + Send) {
    let (tx, rx) = watch::channel(false);
    (rx, async move {
        shutdown.await;
        // Receivers see `true` even after the sender is dropped with this
        // future (and a sender dropped without sending also reads as closing).
        let _ = tx.send(true);
    })
}

/// PEM files for a TCP listener with mutual TLS: the broker's certificate
/// and key, and the CA whose client certificates it accepts. There is no
/// uid to check on TCP, so a client certificate is required.
#[cfg(feature = "tls")]
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Vec<u8>,
}

/// How long a TCP peer has to complete its TLS handshake.
#[cfg(feature = "tls")]
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Serves on TCP with mutual TLS.
#[cfg(feature = "tls")]
pub async fn serve_tcp_tls(
    broker: Broker,
    durability: Durability,
    addr: std::net::SocketAddr,
    tls: TlsFiles,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (closing, shutdown) = closing_on(shutdown);
    let routes = routes(broker, durability, AccessPolicy::default(), closing).await?;
    // A peer that never finishes its handshake would hold an fd for ever
    // (TCP has no peer check before it).
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(tls.cert_pem, tls.key_pem))
        .client_ca_root(Certificate::from_pem(tls.client_ca_pem))
        .timeout(TLS_HANDSHAKE);
    // Bound here rather than by tonic, whose accept loop retries an error
    // at once (out of fds, it would spin): `patient` paces it.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            path: addr.to_string().into(),
            source,
        })?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .tls_config(config)?
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_routes(routes)
        .serve_with_incoming_shutdown(patient(incoming), shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_spells_them() {
        let parse = |v: &str| {
            let mut m = tonic::metadata::MetadataMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&m)
        };
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse("99999999m"), Some(Duration::from_millis(99_999_999)));
        assert_eq!(parse("250u"), Some(Duration::from_micros(250)));
        assert_eq!(parse("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S", "10"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&tonic::metadata::MetadataMap::new()), None);
    }

    #[test]
    fn unary_calls_are_offloaded_by_sandbox_and_lapsed_sandboxes_make_room() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut o = SandboxOffloads::default();
        // Fast calls leave nothing behind; two slow ones in a row offload
        // their sandbox, and only it.
        assert_eq!(o.answered("fast", Duration::from_micros(50), at(0)), None);
        assert!(o.0.is_empty());
        assert_eq!(o.answered("a", SLOW_ANSWER, at(0)), None);
        assert_eq!(o.answered("a", SLOW_ANSWER, at(0)), Some(OFFLOAD_FIRST));
        assert!(o.active("a", at(0)));
        assert!(!o.active("b", at(0)));
        assert!(!o.active("a", at(2)));
        // Full: a new slow sandbox is not kept while every kept one is
        // offloaded or was within the last minute…
        for i in o.0.len()..MAX_UNARY_OFFLOADS {
            o.answered(&format!("s{i}"), SLOW_ANSWER, at(0));
            o.answered(&format!("s{i}"), SLOW_ANSWER, at(0));
        }
        assert_eq!(o.0.len(), MAX_UNARY_OFFLOADS);
        assert_eq!(o.answered("new", SLOW_ANSWER, at(30)), None);
        assert!(!o.0.contains_key("new"));
        // …and takes the place of lapsed ones once there are (the offloads
        // ended at 1 s; a minute later a slow answer would not lengthen them).
        assert_eq!(o.answered("new", SLOW_ANSWER, at(62)), None);
        assert!(o.0.contains_key("new"));
        assert!(!o.0.contains_key("a"));
        assert_eq!(o.0.len(), 1);
        // One slow call of a sandbox is remembered while there is room.
        o.answered("once", SLOW_ANSWER, at(62));
        assert!(o.0.contains_key("once"));
        assert_eq!(o.answered("new", SLOW_ANSWER, at(62)), Some(OFFLOAD_FIRST));
        assert!(o.active("new", at(62)));
    }

    #[test]
    fn a_slow_session_stays_off_the_workers_longer_each_time_it_is_slow_again() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut o = Offload::default();
        assert!(!o.answered(Duration::from_micros(900), at(0)));
        assert!(!o.active(at(0)));
        // One slow answer between fast ones (a preemption, maybe): nothing.
        assert!(!o.answered(SLOW_ANSWER, at(0)));
        assert!(!o.answered(Duration::ZERO, at(0)));
        assert!(!o.answered(SLOW_ANSWER, at(0)));
        assert!(!o.active(at(0)));
        // A second in a row: one second.
        assert!(o.answered(SLOW_ANSWER, at(0)));
        assert!(o.active(at(0)) && !o.active(at(1)));
        // Slow again just after each window: 2, 4, 8 … seconds, at most 60.
        let mut now = 1;
        for window in [2, 4, 8, 16, 32, 60, 60] {
            assert!(o.answered(SLOW_ANSWER, at(now)), "a new offload at {now}");
            assert!(o.active(at(now + window - 1)) && !o.active(at(now + window)));
            now += window;
        }
        // A slow answer while offloaded extends it, and starts nothing.
        assert!(!o.answered(SLOW_ANSWER, at(now - 1)));
        assert!(o.active(at(now + 58)));
        // Quiet for a minute after it ends: two slow answers, then one
        // second again.
        let later = now + 59 + 60;
        assert!(!o.answered(Duration::ZERO, at(later)));
        assert!(!o.answered(SLOW_ANSWER, at(later)));
        assert!(o.answered(SLOW_ANSWER, at(later)));
        assert!(!o.active(at(later + 1)));
    }
}
