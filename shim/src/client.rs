//! Getting decisions: from a broker embedded in this process, or from a
//! `cordon serve` over one long-lived `Session` stream.
//!
//! Fail-closed lives in the caller (`notify::Supervisor::ask`): every
//! [`ClientError`] becomes a denial. The remote client answers each request
//! within its deadline or not at all, never blocks the supervisor longer, and
//! reconnects in the background with backoff while calls are denied.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc as std_mpsc,
    },
    time::Duration,
};

use cordon_broker::{
    Broker,
    client::{BrokerUri, ConnectError, connect},
    proto::{
        DecideRequest, Decision, Lifecycle, SessionRequest, session_request, session_response,
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
}

type Answer = Result<session_response::Msg, ClientError>;

#[derive(Debug, Default)]
struct Shared {
    /// Sender into the current stream; `None` while disconnected.
    outbound: Mutex<Option<mpsc::Sender<SessionRequest>>>,
    pending: Mutex<HashMap<u64, std_mpsc::SyncSender<Answer>>>,
}

impl Shared {
    fn fail_all(&self, why: fn() -> ClientError) {
        for (_, tx) in self.pending.lock().expect("pending lock").drain() {
            let _ = tx.try_send(Err(why()));
        }
    }
}

/// A `cordon serve` reached over the `Session` stream.
#[derive(Debug)]
pub struct Remote {
    shared: Arc<Shared>,
    next_id: AtomicU64,
    deadline: Duration,
    /// Owns the stream tasks; dropped with the client.
    _runtime: tokio::runtime::Runtime,
}

impl Remote {
    /// Connects and opens the stream. Fails if the broker cannot be reached
    /// now: a sandbox must not start without its broker.
    pub fn connect(uri: &BrokerUri, deadline: Duration) -> Result<Remote, ConnectError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cordon-client")
            .enable_all()
            .build()
            .map_err(|e| ConnectError::Connect {
                uri: format!("{uri:?}"),
                message: e.to_string(),
            })?;
        let shared = Arc::new(Shared::default());
        runtime.block_on(open_stream(uri, &shared))?;
        let (uri2, shared2) = (uri.clone(), shared.clone());
        runtime.spawn(async move { keep_connected(uri2, shared2).await });
        Ok(Remote {
            shared,
            next_id: AtomicU64::new(1),
            deadline,
            _runtime: runtime,
        })
    }

    fn call(&self, msg: session_request::Msg) -> Answer {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std_mpsc::sync_channel(1);
        let outbound = self
            .shared
            .outbound
            .lock()
            .expect("outbound lock")
            .clone()
            .ok_or(ClientError::Disconnected)?;
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .insert(id, tx);
        let req = SessionRequest {
            request_id: id,
            msg: Some(msg),
        };
        if outbound.try_send(req).is_err() {
            self.shared
                .pending
                .lock()
                .expect("pending lock")
                .remove(&id);
            return Err(ClientError::Disconnected);
        }
        match rx.recv_timeout(self.deadline) {
            Ok(answer) => answer,
            Err(_) => {
                self.shared
                    .pending
                    .lock()
                    .expect("pending lock")
                    .remove(&id);
                Err(ClientError::Timeout(self.deadline))
            }
        }
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
}

/// Opens a Session stream and starts routing its answers to callers.
async fn open_stream(uri: &BrokerUri, shared: &Arc<Shared>) -> Result<(), ConnectError> {
    let mut client = connect(uri).await?;
    let (tx, rx) = mpsc::channel::<SessionRequest>(1024);
    let inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|s| ConnectError::Connect {
            uri: format!("{uri:?}"),
            message: s.message().to_owned(),
        })?
        .into_inner();
    *shared.outbound.lock().expect("outbound lock") = Some(tx);
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut inbound = inbound;
        while let Ok(Some(resp)) = inbound.message().await {
            let waiter = shared
                .pending
                .lock()
                .expect("pending lock")
                .remove(&resp.request_id);
            if let (Some(tx), Some(msg)) = (waiter, resp.msg) {
                let _ = tx.try_send(Ok(msg));
            }
        }
        tracing::warn!("lost the broker stream; denying until reconnected");
        *shared.outbound.lock().expect("outbound lock") = None;
        shared.fail_all(|| ClientError::Disconnected);
    });
    Ok(())
}

/// Reconnects whenever the stream is gone, with exponential backoff.
async fn keep_connected(uri: BrokerUri, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let connected = shared.outbound.lock().expect("outbound lock").is_some();
        if connected {
            backoff = Duration::from_millis(50);
            continue;
        }
        match open_stream(&uri, &shared).await {
            Ok(()) => tracing::info!("reconnected to the broker"),
            Err(e) => {
                tracing::debug!(error = %e, "broker still unreachable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
