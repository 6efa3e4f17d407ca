//! Connectors: the processes that make the tool's unix-socket connects, so
//! that the peer a listener sees is under a seccomp filter, as the tool is
//! (a broker refuses such a peer: a tool never reaches a `cordon serve`,
//! whatever path a policy lets it connect to). The process itself is in
//! `sys::connector`; this is the pool around it.
//!
//! Connectors are forked on demand, one per connect in flight (a blocking
//! connect holds its connector), from one thread that blocks every signal
//! and lives as long as the pool: when it ends, its connectors are killed
//! (`PR_SET_PDEATHSIG`). Idle ones are kept for the next connects.

use std::{
    collections::BTreeSet,
    os::fd::OwnedFd,
    sync::{Arc, Mutex, mpsc},
};

use nix::errno::Errno;

use crate::{
    process::Creds,
    sys::{
        BpfProgram,
        connector::{As, ConnectError, Connector},
    },
};

pub use crate::sys::connector::PATH_SLOT;

/// Idle connectors kept; more are ended when their connect returns.
const KEEP_IDLE: usize = 2;

type Spawned = std::io::Result<Connector>;

/// The pool: a thread waiting, and no connector until the first unix connect.
#[derive(Debug)]
pub struct Connectors {
    idle: Mutex<Vec<Held>>,
    spawner: Option<mpsc::Sender<mpsc::SyncSender<Spawned>>>,
}

impl Default for Connectors {
    fn default() -> Self {
        Self::new()
    }
}

impl Connectors {
    /// Starts the spawning thread now, on the caller's thread: it and its
    /// connectors get this thread's credentials and Landlock domain (none),
    /// never those of a serving thread that is acting as the tool, or of the
    /// restricted opener thread.
    pub fn new() -> Connectors {
        let (tx, rx) = mpsc::channel::<mpsc::SyncSender<Spawned>>();
        let spawner = std::thread::Builder::new()
            .name("cordon-connect".into())
            .spawn(move || spawn_loop(rx))
            .map_err(
                |e| tracing::warn!(error = %e, "no connector thread: unix connects will be denied"),
            )
            .ok()
            .map(|_| tx);
        Connectors {
            idle: Mutex::default(),
            spawner,
        }
    }

    /// Connects `sock` to `addr` (raw `sockaddr_un` bytes, naming `path` as
    /// `/proc/self/fd/PATH_SLOT` when there is one) in a connector, with the
    /// tool's credentials. A connector that cannot be had or dies is a
    /// denial (`EACCES`).
    pub fn connect(
        &self,
        sock: &OwnedFd,
        path: Option<&OwnedFd>,
        addr: &[u8],
        tool: &Creds,
    ) -> Result<i64, Errno> {
        let creds = As {
            euid: tool.euid,
            egid: tool.egid,
            fsuid: tool.fsuid,
            fsgid: tool.fsgid,
            groups: &tool.groups,
            cap_eff: tool.cap_eff,
        };
        // An idle connector may have died since (killed, out of memory): a
        // request it never received is made again, once, in a new one.
        for attempt in 0..2 {
            let connector = self.take(attempt > 0).map_err(|e| {
                tracing::warn!(error = %e, "no connector for a unix connect; denying");
                Errno::EACCES
            })?;
            match connector.connect(sock, path, addr, creds) {
                Ok(answer) => {
                    if !answer.retired {
                        self.put(connector);
                    }
                    return answer.result.map(|()| 0).map_err(Errno::from_raw);
                }
                Err(ConnectError::Interrupted) => {
                    // As the kernel's own connect ends when a signal comes
                    // while it waits for room in the listener's backlog: the
                    // connector goes (killed, with its connect), and the
                    // call is EINTR, unless the connect got through first.
                    // (Only a stream or seqpacket socket without a peer
                    // is connected under an interrupt: `notify.rs`.)
                    drop(connector);
                    return match crate::sys::has_peer(sock) {
                        Ok(true) => Ok(0),
                        _ => Err(Errno::EINTR),
                    };
                }
                Err(ConnectError::NotSent(e)) if attempt == 0 => {
                    tracing::debug!(error = %e, "an idle connector was gone; trying a new one");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a connector failed; denying the connect");
                    return Err(Errno::EACCES);
                }
            }
        }
        Err(Errno::EACCES)
    }

    /// An idle connector, or (`fresh`, or none idle) a new one.
    fn take(&self, fresh: bool) -> std::io::Result<Held> {
        if !fresh && let Some(c) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(c);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let ended = || std::io::Error::other("the connector thread has ended");
        self.spawner
            .as_ref()
            .ok_or_else(ended)?
            .send(tx)
            .map_err(|_| ended())?;
        let connector = rx.recv().map_err(|_| ended())??;
        Ok(Held {
            connector: Some(connector),
        })
    }

    fn put(&self, c: Held) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < KEEP_IDLE {
            idle.push(c);
        }
    }
}

/// A connector of the pool; its pid leaves [`ALL`] (entered when it was
/// forked) once it is killed and reaped, when this is dropped.
#[derive(Debug)]
struct Held {
    connector: Option<Connector>,
}

impl std::ops::Deref for Held {
    type Target = Connector;
    fn deref(&self) -> &Connector {
        self.connector.as_ref().expect("held until dropped")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(c) = self.connector.take() {
            let pid = c.pid();
            drop(c);
            ALL.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
        }
    }
}

/// Every pool's connectors in this process, from fork to reaping. Each is a
/// copy of this process's memory: no tool may open their `/proc` entries or
/// signal them, whichever sandbox they serve; and a subreaper's sweep at
/// one sandbox's end spares them.
static ALL: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Whether `pid` is a connector of any pool of this process.
pub fn is_ours(pid: i32) -> bool {
    ALL.lock().unwrap_or_else(|p| p.into_inner()).contains(&pid)
}

/// The spawner thread: connectors start with its signal mask (all blocked,
/// so a terminal's ^C or a relayed signal never runs a handler of ours in
/// them) and die when it ends, with the pool's sender.
fn spawn_loop(requests: mpsc::Receiver<mpsc::SyncSender<Spawned>>) {
    let _ = nix::sys::signal::SigSet::all().thread_block();
    let forked = |pid: i32, alive: bool| {
        let mut all = ALL.lock().unwrap_or_else(|p| p.into_inner());
        if alive {
            all.insert(pid);
        } else {
            all.remove(&pid);
        }
    };
    let mut program: Option<Arc<BpfProgram>> = None;
    for reply in requests {
        // Until `forked` names it: a subreaper's sweep spares it then.
        let spawning = crate::sandbox::SPAWNING
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let spawned = match &program {
            Some(p) => Connector::spawn(p, &forked),
            None => match crate::filter::connector() {
                Ok(p) => {
                    let p = program.insert(Arc::new(p));
                    Connector::spawn(p, &forked)
                }
                Err(e) => Err(std::io::Error::other(e.to_string())),
            },
        };
        drop(spawning);
        // Nobody waits for it any more: it goes, and its pid with it.
        if let Err(mpsc::SendError(Ok(unwanted))) = reply.send(spawned) {
            let pid = unwanted.pid();
            drop(unwanted);
            forked(pid, false);
        }
    }
}
