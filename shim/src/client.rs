//! Getting decisions: from a broker embedded in this process, or from a
//! `cordon serve` over long-lived `Session` streams (two, so that two calls
//! need not wait for each other).
//!
//! Fail-closed lives in the caller (`notify::Supervisor::ask`): every
//! [`ClientError`] becomes a denial. The remote client bounds each call by
//! the deadline (the wait for a lane, a spare lane's connect tried first, a
//! reconnect and the exchange share it), never applies a late answer, and
//! reconnects with backoff while calls are denied.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use cordon_broker::{
    Broker,
    client::{BrokerUri, ConnectError, connect},
    proto::{
        DecideRequest, Decision, Lifecycle, Sandbox as SandboxInfo, SessionRequest,
        session_request, session_response,
    },
};
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Why no decision came back. The caller denies.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("the broker is not connected")]
    Disconnected,
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the broker refused the request: {0}")]
    Refused(String),
    /// Called from inside an async runtime, where the wait needs a thread
    /// of its own, and none could be started.
    #[error("no thread to wait for the broker on: {0}")]
    NoThread(String),
}

/// Something that decides requests and records sandbox lifecycle events.
pub trait Decider: Send + Sync + std::fmt::Debug {
    fn decide(&self, req: &DecideRequest) -> Result<Decision, ClientError>;
    /// [`Decider::decide`] for a request its caller is done with, so that a
    /// decider that keeps it (the embedded broker, in the audit record of a
    /// memo hit) need not copy it. An error hands it back, for the caller's
    /// log of the denial.
    fn decide_owned(
        &self,
        req: DecideRequest,
    ) -> Result<Decision, (ClientError, Box<DecideRequest>)> {
        self.decide(&req).map_err(|e| (e, Box::new(req)))
    }
    fn lifecycle(&self, event: Lifecycle) -> Result<u64, ClientError>;
    /// The policy's kernel backstop for this sandbox, if it defines one.
    fn backstop(&self, sandbox: &SandboxInfo) -> Result<Option<serde_json::Value>, ClientError>;
    /// Makes everything recorded so far durable (the embedded store's
    /// batched tail); a remote broker owns its own durability.
    fn flush(&self) -> Result<(), ClientError> {
        Ok(())
    }
    /// Blocks until decisions can be recorded (an embedded store still
    /// opening), or says why they never will. By default, at once.
    fn ready(&self) -> Result<(), ClientError> {
        Ok(())
    }
    /// How many records of this decider's sandboxes were lost: the
    /// embedded store's (see `AuditLog::lost`), or the lifecycle records a
    /// remote broker never acknowledged. Not zero: the trail is incomplete,
    /// which `cordon run` reports in its exit status.
    fn lost(&self) -> u64 {
        0
    }
}

/// The broker core in this process: no gRPC hop.
#[derive(Debug, Clone)]
pub struct Embedded(pub Broker);

impl Decider for Embedded {
    fn decide(&self, req: &DecideRequest) -> Result<Decision, ClientError> {
        self.0
            .decide(req)
            .map_err(|e| ClientError::Refused(e.to_string()))
    }

    fn decide_owned(
        &self,
        req: DecideRequest,
    ) -> Result<Decision, (ClientError, Box<DecideRequest>)> {
        self.0
            .decide_owned(req, std::time::Instant::now())
            .map_err(|r| (ClientError::Refused(r.error.to_string()), r.request))
    }

    fn lifecycle(&self, event: Lifecycle) -> Result<u64, ClientError> {
        self.0
            .record_lifecycle(&event)
            .map_err(|e| ClientError::Refused(e.to_string()))
    }

    fn backstop(&self, sandbox: &SandboxInfo) -> Result<Option<serde_json::Value>, ClientError> {
        self.0.backstop(sandbox).map_err(ClientError::Refused)
    }

    fn flush(&self) -> Result<(), ClientError> {
        self.0
            .audit()
            .flush()
            .map_err(|e| ClientError::Refused(e.to_string()))
    }

    fn ready(&self) -> Result<(), ClientError> {
        self.0
            .audit()
            .ready()
            .map_err(|e| ClientError::Refused(e.to_string()))
    }

    fn lost(&self) -> u64 {
        self.0.audit().lost()
    }
}

/// An open `Session` stream.
#[derive(Debug)]
struct Stream {
    outbound: mpsc::Sender<SessionRequest>,
    inbound: tonic::Streaming<cordon_broker::proto::SessionResponse>,
}

#[derive(Debug)]
struct Connection {
    stream: Option<Stream>,
    /// When the stream last carried a call.
    used_at: Instant,
    /// When the next reconnect may be tried, and the backoff after that.
    retry_at: Instant,
    backoff: Duration,
    /// Whether the stream has carried an answer: one that breaks before any
    /// is a failed connect (backed off), one that breaks after is reopened at
    /// once.
    answered: bool,
}

/// A `cordon serve` reached over `Session` streams, one per lane.
///
/// The calling thread drives its lane's stream itself (a current-thread tokio
/// runtime per lane, entered per call): no hand-off to another thread and
/// back, which on a small machine costs more than the call. A call takes the
/// first free lane, so the supervisor's serving threads do not wait for each
/// other's round trips, and the broker serves their streams side by side; a
/// single-threaded tool only ever uses the first lane, and a second is
/// connected the first time two calls overlap. While the first lane is down,
/// a call goes to a spare lane whose stream is up, if there is one. A call that misses its
/// deadline drops its lane's stream (a late answer is never applied) and
/// that lane's next call reconnects, with exponential backoff while the
/// broker stays unreachable. A stream unused for longer than
/// [`Remote::max_idle`] is reopened before a call uses it.
#[derive(Debug)]
pub struct Remote {
    uri: BrokerUri,
    lanes: Vec<Lane>,
    next_id: AtomicU64,
    deadline: Duration,
    max_idle: Duration,
    /// Lifecycle records the broker never acknowledged ([`Decider::lost`]).
    lost: AtomicU64,
}

/// One stream and the runtime that drives it; one call at a time.
#[derive(Debug)]
struct Lane {
    runtime: LaneRuntime,
    conn: Mutex<Connection>,
}

/// As many as the supervisor has serving threads: a third caller (the main
/// thread's lifecycle records) waits for the first lane.
const LANES: usize = 2;

/// How long a lane's stream may sit unused before it is reopened rather than
/// used: `cordon serve` pings an idle connection every 30 s and closes it when
/// no answer comes within 20 s, and between calls nothing answers.
pub const DEFAULT_MAX_IDLE: Duration = Duration::from_secs(20);

/// The longest deadline a call keeps ([`Remote::connect`]).
pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);

const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// The least time a reconnect must have had to fail before the broker is
/// taken to be down (and the lane backs off).
const FAIR_CONNECT_WAIT: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A lane's current-thread runtime, which runs only inside a call.
#[derive(Debug)]
struct LaneRuntime(Option<tokio::runtime::Runtime>);

impl LaneRuntime {
    /// Runs `f` to its end. A thread already in a tokio runtime (an async
    /// library host calling `Remote::connect`, `Sandbox::spawn` or
    /// `Sandboxed::wait`, which ask the broker for the backstop and record
    /// lifecycle events) may not block on another, so there `f` runs on a
    /// thread started for it.
    fn block_on<F>(&self, f: F) -> std::io::Result<F::Output>
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        // Some from `current_thread_runtime` until dropped.
        let Some(runtime) = &self.0 else {
            return Err(std::io::Error::other("the lane's runtime is shut down"));
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Ok(runtime.block_on(f));
        }
        std::thread::scope(|scope| {
            let waiter = std::thread::Builder::new()
                .name("cordon-broker-wait".into())
                .spawn_scoped(scope, || runtime.block_on(f))?;
            Ok(waiter
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        })
    }
}

impl Drop for LaneRuntime {
    /// In the background: inside another runtime (an async host dropping
    /// its sandbox) a runtime may not block to shut down, and nothing of
    /// this one runs between calls to wait for.
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

fn current_thread_runtime(uri: &BrokerUri) -> Result<LaneRuntime, ConnectError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|runtime| LaneRuntime(Some(runtime)))
        .map_err(|e| ConnectError::Connect {
            uri: uri.to_string(),
            message: e.to_string(),
        })
}

impl Remote {
    /// Connects and opens the first lane's stream. Fails if the broker cannot
    /// be reached now: a sandbox must not start without its broker. A unix
    /// broker must run as root, as this process's user, or as a uid named
    /// in `CORDON_BROKER_UID` (read once per process), at every connect.
    pub fn connect(uri: &BrokerUri, deadline: Duration) -> Result<Remote, ConnectError> {
        // Every call adds it to the clock: a day at most (Duration::MAX,
        // "no limit" to a library caller, would overflow the Instant).
        let deadline = deadline.min(MAX_DEADLINE);
        let mut lanes = Vec::with_capacity(LANES);
        for i in 0..LANES {
            let runtime = current_thread_runtime(uri)?;
            // Within the deadline: a broker that accepts the connection but
            // never answers (stopped, deadlocked) must not hang the start.
            let stream = if i == 0 {
                let opened = runtime
                    .block_on(async { tokio::time::timeout(deadline, open_stream(uri)).await })
                    .map_err(|e| ConnectError::Connect {
                        uri: uri.to_string(),
                        message: format!("no thread to wait for the broker on: {e}"),
                    })?;
                Some(opened.map_err(|_| ConnectError::Connect {
                    uri: uri.to_string(),
                    message: format!("no answer within {deadline:?}"),
                })??)
            } else {
                None
            };
            lanes.push(Lane {
                runtime,
                conn: Mutex::new(Connection {
                    stream,
                    used_at: Instant::now(),
                    retry_at: Instant::now(),
                    backoff: FIRST_BACKOFF,
                    answered: false,
                }),
            });
        }
        Ok(Remote {
            uri: uri.clone(),
            lanes,
            next_id: AtomicU64::new(1),
            deadline,
            max_idle: DEFAULT_MAX_IDLE,
            lost: AtomicU64::new(0),
        })
    }

    /// A lifecycle record is not a call the tool waits on, so rather than be
    /// lost to a stream that is down it is tried again, each time one backoff
    /// step later, for up to the deadline in all. A stream that broke after
    /// the record was sent may so record it twice: a duplicate is seen, a
    /// loss is not.
    fn lifecycle_once(&self, event: Lifecycle) -> Result<u64, ClientError> {
        let give_up = Instant::now() + self.deadline;
        let answer = loop {
            match self.call(session_request::Msg::Lifecycle(event.clone())) {
                Err(ClientError::Disconnected) if Instant::now() < give_up => {
                    let left = give_up.saturating_duration_since(Instant::now());
                    std::thread::sleep(FIRST_BACKOFF.min(left));
                }
                other => break other?,
            }
        };
        match answer {
            session_response::Msg::RecordedSeq(seq) => Ok(seq),
            session_response::Msg::Error(e) => Err(ClientError::Refused(e.message)),
            other => Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// How long a stream may sit unused before a call reopens it
    /// ([`DEFAULT_MAX_IDLE`]); for a broker whose keepalive is shorter.
    pub fn max_idle(mut self, max_idle: Duration) -> Self {
        self.max_idle = max_idle;
        self
    }

    /// The first lane no other call holds, or else the first lane once it is
    /// free, if that is before `until`. A spare lane that is down and
    /// waiting out its backoff is passed over.
    fn lane(&self, until: Instant) -> Option<(usize, MutexGuard<'_, Connection>)> {
        for (i, lane) in self.lanes.iter().enumerate() {
            let Some(conn) = lane.conn.try_lock() else {
                continue;
            };
            if i == 0 || conn.stream.is_some() || Instant::now() >= conn.retry_at {
                return Some((i, conn));
            }
        }
        Some((0, self.first(until)?))
    }

    /// A spare lane with a stream that can be used as it is (open, and not
    /// idle past `max_idle`), waiting for it until `until` if another call
    /// holds it.
    fn live_spare(&self, until: Instant) -> Option<(usize, MutexGuard<'_, Connection>)> {
        self.lanes.iter().enumerate().skip(1).find_map(|(i, lane)| {
            let conn = lane.conn.try_lock_until(until)?;
            (conn.stream.is_some() && conn.used_at.elapsed() < self.max_idle).then_some((i, conn))
        })
    }

    /// The first lane, once free, if that is before `until`: a call that
    /// holds it may keep it for its own whole deadline, which began later
    /// than ours.
    fn first(&self, until: Instant) -> Option<MutexGuard<'_, Connection>> {
        self.lanes[0].conn.try_lock_until(until)
    }

    /// One request and its answer, within the deadline in all: waiting for a
    /// lane, reconnecting and the exchange share it.
    fn call(&self, msg: session_request::Msg) -> Result<session_response::Msg, ClientError> {
        let until = Instant::now() + self.deadline;
        match self.call_until(msg.clone(), until) {
            // The stream was found broken: a broker that restarted leaves each
            // lane's old stream dead until a call finds it. Once more on a
            // fresh stream, within the same deadline, rather than a denial. A
            // request the old broker recorded before it went is recorded
            // twice: a duplicate is seen, a loss is not.
            Err(ClientError::Disconnected) if Instant::now() < until => {
                tracing::debug!("broker stream broken; asking again on a fresh one");
                self.call_until(msg, until)
            }
            other => other,
        }
    }

    fn call_until(
        &self,
        msg: session_request::Msg,
        until: Instant,
    ) -> Result<session_response::Msg, ClientError> {
        let left = || until.saturating_duration_since(Instant::now());
        // The wait for a lane used the time up: a denial, but not the
        // broker's failure (no reconnect tried, no backoff).
        let timeout = || ClientError::Timeout(self.deadline);
        let (mut i, mut conn) = self.lane(until).ok_or_else(timeout)?;
        if left().is_zero() {
            return Err(timeout());
        }
        // A spare lane that cannot connect hands its call to the first lane
        // rather than deny it: the broker may be up, only busy or at its limit.
        if i > 0 && !self.lanes[i].connected(&mut conn, &self.uri, left(), self.max_idle)? {
            drop(conn);
            (i, conn) = (0, self.first(until).ok_or_else(timeout)?);
        }
        if !self.lanes[i].connected(&mut conn, &self.uri, left(), self.max_idle)? {
            // The first lane is down (waiting out its backoff, or its
            // reconnect failed): a spare lane whose stream is up answers
            // instead of the call being denied.
            drop(conn);
            (i, conn) = self.live_spare(until).ok_or(ClientError::Disconnected)?;
        }
        let wait = left();
        if wait.is_zero() {
            return Err(ClientError::Timeout(self.deadline));
        }
        let lane = &self.lanes[i];
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lane.call(&mut conn, wait, id, msg)
    }
}

impl Lane {
    /// Whether the lane has a stream, opening one if it has none and its
    /// backoff has passed. `NoThread` is the call's failure, not the
    /// broker's: no backoff, and not a broken stream to ask again on.
    fn connected(
        &self,
        conn: &mut Connection,
        uri: &BrokerUri,
        deadline: Duration,
        max_idle: Duration,
    ) -> Result<bool, ClientError> {
        if conn.stream.is_some() {
            if conn.used_at.elapsed() < max_idle {
                return Ok(true);
            }
            // Nothing answered the broker's keepalive pings while the lane
            // sat unused (its runtime runs only inside a call), so the broker
            // may have closed it: a fresh stream, not a denial.
            tracing::debug!("reopening a broker stream idle since {:?}", conn.used_at);
            conn.stream = None;
        }
        if Instant::now() < conn.retry_at {
            return Ok(false);
        }
        match self
            .runtime
            .block_on(async { tokio::time::timeout(deadline, open_stream(uri)).await })
        {
            Ok(Ok(Ok(stream))) => {
                tracing::info!("broker stream opened");
                conn.stream = Some(stream);
                conn.used_at = Instant::now();
                conn.answered = false;
                Ok(true)
            }
            // The call's time ran out, too little was left to judge the
            // broker (the wait for a lane used it): no backoff, which would
            // deny the next calls of a healthy broker.
            Ok(Err(_)) if deadline < FAIR_CONNECT_WAIT => Ok(false),
            // No thread to wait on: this call is denied, the broker is not
            // at fault.
            Err(e) => Err(ClientError::NoThread(e.to_string())),
            _ => {
                conn.retry_at = Instant::now() + conn.backoff;
                conn.backoff = (conn.backoff * 2).min(MAX_BACKOFF);
                Ok(false)
            }
        }
    }

    /// One request and its answer on the lane's open stream.
    fn call(
        &self,
        conn: &mut Connection,
        deadline: Duration,
        id: u64,
        mut msg: session_request::Msg,
    ) -> Result<session_response::Msg, ClientError> {
        let Some(stream) = conn.stream.as_mut() else {
            return Err(ClientError::Disconnected);
        };
        // The broker must answer a margin sooner than the call stops waiting,
        // or record the call as the denial it then is.
        if let session_request::Msg::Decide(req) = &mut msg {
            req.timeout_ns = cordon_broker::decide::request_timeout_ns(deadline);
            req.deadline_unix_ns =
                cordon_broker::decide::unix_now_ns().saturating_add(req.timeout_ns);
        }
        let exchange = async {
            stream
                .outbound
                .send(SessionRequest {
                    request_id: id,
                    msg: Some(msg),
                })
                .await
                .map_err(|_| ClientError::Disconnected)?;
            loop {
                match stream.inbound.message().await {
                    Ok(Some(resp)) if resp.request_id == id => {
                        return resp
                            .msg
                            .ok_or_else(|| ClientError::Refused("empty answer".into()));
                    }
                    // An answer to a call that already timed out: not ours.
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => return Err(ClientError::Disconnected),
                }
            }
        };
        let result = match self
            .runtime
            .block_on(async { tokio::time::timeout(deadline, exchange).await })
        {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Timeout(deadline)),
            Err(e) => Err(ClientError::NoThread(e.to_string())),
        };
        conn.used_at = Instant::now();
        match &result {
            Ok(_) => {
                conn.answered = true;
                conn.backoff = FIRST_BACKOFF;
            }
            // A stream that answered and then broke (a broker restart) is
            // reopened by the next call at once, which the caller makes by
            // asking again. One that broke before any answer counts as a
            // failed connect: backed off, so that a broker that takes streams
            // and drops them is not asked twice per call without pause.
            Err(ClientError::Disconnected) if conn.answered => {
                tracing::warn!("the broker stream broke; reopening it");
                conn.stream = None;
                conn.retry_at = Instant::now();
            }
            Err(ClientError::Disconnected) => {
                tracing::warn!("the broker stream broke before any answer; backing off");
                conn.stream = None;
                conn.retry_at = Instant::now() + conn.backoff;
                conn.backoff = (conn.backoff * 2).min(MAX_BACKOFF);
            }
            Err(ClientError::Timeout(_)) => {
                tracing::warn!(error = ?result.as_ref().err(), "dropping the broker stream; denying until reconnected");
                conn.stream = None;
                conn.retry_at = Instant::now() + FIRST_BACKOFF;
            }
            _ => {}
        }
        result
    }
}

impl Decider for Remote {
    fn decide(&self, req: &DecideRequest) -> Result<Decision, ClientError> {
        match self.call(session_request::Msg::Decide(req.clone()))? {
            session_response::Msg::Decision(d) => Ok(d),
            session_response::Msg::Error(e) => Err(ClientError::Refused(e.message)),
            other => Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// See [`Remote::lifecycle_once`]; a record it could not get
    /// acknowledged is counted as lost.
    fn lifecycle(&self, event: Lifecycle) -> Result<u64, ClientError> {
        let recorded = self.lifecycle_once(event);
        if recorded.is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
        recorded
    }

    fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    fn backstop(&self, sandbox: &SandboxInfo) -> Result<Option<serde_json::Value>, ClientError> {
        match self.call(session_request::Msg::Backstop(sandbox.clone()))? {
            session_response::Msg::BackstopJson(j) if j.is_empty() => Ok(None),
            session_response::Msg::BackstopJson(j) => serde_json::from_str(&j)
                .map(Some)
                .map_err(|e| ClientError::Refused(format!("backstop from the broker: {e}"))),
            session_response::Msg::Error(e) => Err(ClientError::Refused(e.message)),
            other => Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
        }
    }
}

/// Opens a Session stream.
async fn open_stream(uri: &BrokerUri) -> Result<Stream, ConnectError> {
    let mut client = connect(uri).await?;
    let (outbound, rx) = mpsc::channel::<SessionRequest>(16);
    let inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|s| ConnectError::Connect {
            uri: uri.to_string(),
            message: s.message().to_owned(),
        })?
        .into_inner();
    Ok(Stream { outbound, inbound })
}
