//! Getting decisions: from a broker embedded in this process, or from a
//! `cordon serve` over one long-lived `Session` stream.
//!
//! Fail-closed lives in the caller (`notify::Supervisor::ask`): every
//! [`ClientError`] becomes a denial. The remote client answers each request
//! within its deadline or not at all, never blocks the supervisor longer, and
//! reconnects with backoff while calls are denied.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
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
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Why no decision came back. The caller denies.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the broker is not connected")]
    Disconnected,
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the broker refused the request: {0}")]
    Refused(String),
}

/// Something that decides requests and records sandbox lifecycle events.
pub trait Decider: Send + Sync + std::fmt::Debug {
    fn decide(&self, req: DecideRequest) -> Result<Decision, ClientError>;
    fn lifecycle(&self, event: Lifecycle) -> Result<u64, ClientError>;
    /// The policy's kernel backstop for this sandbox, if it defines one.
    fn backstop(&self, sandbox: &SandboxInfo) -> Result<Option<serde_json::Value>, ClientError>;
    /// Makes everything recorded so far durable (the embedded store's
    /// batched tail); a remote broker owns its own durability.
    fn flush(&self) -> Result<(), ClientError> {
        Ok(())
    }
}

/// The broker core in this process: no gRPC hop.
#[derive(Debug, Clone)]
pub struct Embedded(pub Broker);

impl Decider for Embedded {
    fn decide(&self, req: DecideRequest) -> Result<Decision, ClientError> {
        self.0
            .decide(&req)
            .map_err(|e| ClientError::Refused(e.to_string()))
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
    /// When the next reconnect may be tried, and the backoff after that.
    retry_at: Instant,
    backoff: Duration,
}

/// A `cordon serve` reached over one `Session` stream.
///
/// The calling thread drives the stream itself (a current-thread tokio
/// runtime, entered per call): no hand-off to another thread and back, which
/// on a small machine costs more than the call. Calls are serialized; a call
/// that misses its deadline drops the stream (a late answer is never applied)
/// and the next call reconnects, with exponential backoff while the broker
/// stays unreachable.
#[derive(Debug)]
pub struct Remote {
    uri: BrokerUri,
    runtime: tokio::runtime::Runtime,
    conn: Mutex<Connection>,
    next_id: AtomicU64,
    deadline: Duration,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Remote {
    /// Connects and opens the stream. Fails if the broker cannot be reached
    /// now: a sandbox must not start without its broker.
    pub fn connect(uri: &BrokerUri, deadline: Duration) -> Result<Remote, ConnectError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConnectError::Connect {
                uri: format!("{uri:?}"),
                message: e.to_string(),
            })?;
        let stream = runtime.block_on(open_stream(uri))?;
        Ok(Remote {
            uri: uri.clone(),
            runtime,
            conn: Mutex::new(Connection {
                stream: Some(stream),
                retry_at: Instant::now(),
                backoff: FIRST_BACKOFF,
            }),
            next_id: AtomicU64::new(1),
            deadline,
        })
    }

    fn call(&self, msg: session_request::Msg) -> Result<session_response::Msg, ClientError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if conn.stream.is_none() {
            if Instant::now() < conn.retry_at {
                return Err(ClientError::Disconnected);
            }
            let deadline = self.deadline;
            match self
                .runtime
                .block_on(async { tokio::time::timeout(deadline, open_stream(&self.uri)).await })
            {
                Ok(Ok(stream)) => {
                    tracing::info!("reconnected to the broker");
                    conn.stream = Some(stream);
                    conn.backoff = FIRST_BACKOFF;
                }
                _ => {
                    conn.retry_at = Instant::now() + conn.backoff;
                    conn.backoff = (conn.backoff * 2).min(MAX_BACKOFF);
                    return Err(ClientError::Disconnected);
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stream = conn.stream.as_mut().expect("connected above");
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
        let deadline = self.deadline;
        let result = match self
            .runtime
            .block_on(async { tokio::time::timeout(deadline, exchange).await })
        {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(self.deadline)),
        };
        if matches!(
            result,
            Err(ClientError::Disconnected | ClientError::Timeout(_))
        ) {
            tracing::warn!(error = ?result.as_ref().err(), "dropping the broker stream; denying until reconnected");
            conn.stream = None;
            conn.retry_at = Instant::now() + FIRST_BACKOFF;
        }
        result
    }
}

impl Decider for Remote {
    fn decide(&self, req: DecideRequest) -> Result<Decision, ClientError> {
        match self.call(session_request::Msg::Decide(req))? {
            session_response::Msg::Decision(d) => Ok(d),
            session_response::Msg::Error(e) => Err(ClientError::Refused(e.message)),
            other => Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    fn lifecycle(&self, event: Lifecycle) -> Result<u64, ClientError> {
        match self.call(session_request::Msg::Lifecycle(event))? {
            session_response::Msg::RecordedSeq(seq) => Ok(seq),
            session_response::Msg::Error(e) => Err(ClientError::Refused(e.message)),
            other => Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
        }
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
            uri: format!("{uri:?}"),
            message: s.message().to_owned(),
        })?
        .into_inner();
    Ok(Stream { outbound, inbound })
}
