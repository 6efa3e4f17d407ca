//! The shim's client for a `cordon serve` (`Remote`) against the real broker
//! service on a real Unix socket, through a relay that can hold back one
//! connection's answers: what two supervisor threads get when one call's
//! answer is slow.

mod support;

use std::{
    io::{Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, mpsc},
    time::{Duration, Instant},
};

use cordon_broker::{
    Broker,
    audit::{AuditLog, Durability, SledAudit},
    policy::{PolicyEngine, PolicySource},
    service::{AccessPolicy, bind_unix, serve_unix},
};
use cordon_proto::v1::{Decision, Lifecycle, SandboxExited, lifecycle};
use cordon_shim::{
    Decider, Remote,
    client::{ClientError, DEFAULT_MAX_IDLE},
};

/// The broker service in this process, on `socket`, with the built-in policy.
fn serve(socket: &Path, audit_dir: &Path) -> tokio::runtime::Runtime {
    let audit: Arc<dyn AuditLog> = Arc::new(
        SledAudit::open(
            audit_dir,
            Durability::Batched {
                window: Duration::from_millis(10),
            },
        )
        .expect("open audit"),
    );
    let policy = PolicyEngine::new(PolicySource::Builtin, support::patient_policy())
        .expect("built-in policy");
    let broker = Broker::new(Arc::new(policy), audit);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt.block_on(async { bind_unix(socket) }).expect("bind");
    rt.spawn(async move {
        let _ = serve_unix(
            broker,
            Durability::Batched {
                window: Duration::from_millis(10),
            },
            AccessPolicy::default(),
            listener,
            std::future::pending::<()>(),
        )
        .await;
    });
    rt
}

/// Which connections' broker-to-client bytes are held back, and how many
/// bytes each has held.
struct Gate {
    /// Per connection: its client end, to cut it as a broker would.
    clients: Mutex<Vec<UnixStream>>,
    held: Mutex<Vec<(bool, usize)>>,
    changed: Condvar,
    /// Connections from this one on are closed as soon as they are accepted.
    refuse_from: usize,
    /// Whether connections accepted from now on start held.
    hold_new: Mutex<bool>,
}

impl Gate {
    fn new(refuse_from: usize) -> Arc<Self> {
        Arc::new(Gate {
            clients: Mutex::default(),
            held: Mutex::default(),
            changed: Condvar::new(),
            refuse_from,
            hold_new: Mutex::new(false),
        })
    }

    fn set(&self, conn: usize, hold: bool) {
        let mut held = self.held.lock().unwrap();
        held[conn].0 = hold;
        self.changed.notify_all();
    }

    /// Blocks until connection `conn` has held back some bytes.
    fn wait_held(&self, conn: usize) {
        let held = self.held.lock().unwrap();
        let (held, timeout) = self
            .changed
            .wait_timeout_while(held, Duration::from_secs(20), |h| h[conn].1 == 0)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "no answer reached the relay: {held:?}"
        );
    }

    /// Closes connection `conn`, as the broker closes one that does not
    /// answer its keepalive pings.
    fn cut(&self, conn: usize) {
        let _ = self.clients.lock().unwrap()[conn].shutdown(std::net::Shutdown::Both);
    }

    fn connections(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    /// Blocks until the relay has accepted `n` connections.
    fn wait_connections(&self, n: usize) {
        let held = self.held.lock().unwrap();
        let (held, timeout) = self
            .changed
            .wait_timeout_while(held, Duration::from_secs(20), |h| h.len() < n)
            .unwrap();
        assert!(!timeout.timed_out(), "{} connections, not {n}", held.len());
    }
}

/// A relay from `front` to `back` that copies bytes both ways, except that
/// the answers on a connection the gate holds wait until it is released.
fn relay(front: &Path, back: PathBuf, gate: Arc<Gate>) {
    let listener = UnixListener::bind(front).expect("bind relay");
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            gate.clients
                .lock()
                .unwrap()
                .push(client.try_clone().unwrap());
            let conn = {
                let mut held = gate.held.lock().unwrap();
                held.push((*gate.hold_new.lock().unwrap(), 0));
                gate.changed.notify_all();
                held.len() - 1
            };
            if conn >= gate.refuse_from {
                gate.cut(conn);
                continue;
            }
            let broker = UnixStream::connect(&back).expect("reach the broker");
            let (mut c_in, mut b_out) = (client.try_clone().unwrap(), broker.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut c_in, &mut b_out));
            let (mut b_in, mut c_out, gate) = (broker, client, gate.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    let n = match b_in.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let mut held = gate.held.lock().unwrap();
                    if held[conn].0 {
                        held[conn].1 += n;
                        gate.changed.notify_all();
                        held = gate.changed.wait_while(held, |h| h[conn].0).unwrap();
                    }
                    drop(held);
                    if c_out.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// The broker service and a client of it through a relay, in a temp dir.
struct Relayed {
    gate: Arc<Gate>,
    remote: Arc<Remote>,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn relayed(refuse_from: usize, max_idle: Duration) -> Relayed {
    relayed_with_deadline(refuse_from, max_idle, Duration::from_secs(60))
}

fn relayed_with_deadline(refuse_from: usize, max_idle: Duration, deadline: Duration) -> Relayed {
    let dir = tempfile::tempdir().unwrap();
    let (socket, front) = (
        dir.path().join("broker.sock"),
        dir.path().join("relay.sock"),
    );
    let rt = serve(&socket, &dir.path().join("audit"));
    let gate = Gate::new(refuse_from);
    relay(&front, socket, gate.clone());
    let uri = format!("unix://{}", front.display()).parse().unwrap();
    let remote = Remote::connect(&uri, deadline).expect("connect");
    let remote = Arc::new(remote.max_idle(max_idle));
    assert_eq!(gate.connections(), 1, "one stream at start");
    Relayed {
        gate,
        remote,
        _rt: rt,
        _dir: dir,
    }
}

/// A library caller's "no limit" (Duration::MAX) is a long deadline, not a
/// panic when a call adds it to the clock.
#[test]
fn an_unbounded_deadline_is_a_long_one() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("broker.sock");
    let _rt = serve(&socket, &dir.path().join("audit"));
    let uri = format!("unix://{}", socket.display()).parse().unwrap();
    let remote = Remote::connect(&uri, Duration::MAX).expect("connect");
    assert!(remote.decide(&support::read_system_lib(1)).unwrap().allow);
}

/// A decision asked on another thread.
fn decide_on_a_thread(
    remote: &Arc<Remote>,
    id: u64,
) -> std::thread::JoinHandle<Result<Decision, ClientError>> {
    let remote = remote.clone();
    std::thread::spawn(move || remote.decide(&support::read_system_lib(id)))
}

/// A call on another thread whose answer the relay holds back (on the first
/// stream) until the gate releases it.
fn held_call(
    gate: &Gate,
    remote: &Arc<Remote>,
) -> std::thread::JoinHandle<Result<Decision, ClientError>> {
    gate.set(0, true);
    let first = decide_on_a_thread(remote, 1);
    gate.wait_held(0);
    first
}

#[test]
fn a_slow_answer_does_not_hold_up_another_threads_call() {
    let Relayed { gate, remote, .. } = &relayed(usize::MAX, DEFAULT_MAX_IDLE);

    let first = held_call(gate, remote);
    let (tx, rx) = mpsc::channel();
    {
        let remote = remote.clone();
        std::thread::spawn(move || tx.send(remote.decide(&support::read_system_lib(2))));
    }
    let second = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the second call waited for the first call's answer");
    assert!(second.expect("decided").allow);
    assert!(!first.is_finished(), "the first answer was released early");
    assert_eq!(
        gate.connections(),
        2,
        "the second call had a stream of its own"
    );

    gate.set(0, false);
    assert!(first.join().unwrap().expect("decided").allow);
    // Back to one caller: the first stream serves it, no third is opened.
    assert!(remote.decide(&support::read_system_lib(3)).unwrap().allow);
    assert_eq!(gate.connections(), 2);
}

#[test]
fn a_call_whose_second_stream_is_refused_waits_for_the_first() {
    let Relayed { gate, remote, .. } = &relayed(1, DEFAULT_MAX_IDLE);

    let first = held_call(gate, remote);
    let second = decide_on_a_thread(remote, 2);
    // The second call tried a stream of its own, which the relay closed.
    gate.wait_connections(2);
    gate.set(0, false);
    assert!(first.join().unwrap().expect("decided").allow);
    // Not denied for want of a second stream: decided on the first.
    assert!(second.join().unwrap().expect("decided").allow);
}

#[test]
fn a_stream_idle_past_the_brokers_keepalive_is_reopened_not_denied() {
    let max_idle = Duration::from_millis(300);
    let Relayed { gate, remote, .. } = &relayed(usize::MAX, max_idle);
    assert!(remote.decide(&support::read_system_lib(1)).unwrap().allow);
    // Unused for longer than the broker waits for pings to be answered: it
    // has closed the connection.
    gate.cut(0);
    std::thread::sleep(max_idle * 2);
    assert!(
        remote
            .decide(&support::read_system_lib(2))
            .expect("decided on a fresh stream")
            .allow
    );
    assert_eq!(gate.connections(), 2);
}

#[test]
fn while_the_first_stream_is_down_a_call_goes_to_the_second() {
    // The relay refuses the first stream's reconnects.
    let Relayed { gate, remote, .. } = &relayed(2, DEFAULT_MAX_IDLE);
    // Two calls at once: the second opens the second stream.
    let first = held_call(gate, remote);
    assert!(
        decide_on_a_thread(remote, 2)
            .join()
            .unwrap()
            .expect("decided")
            .allow
    );
    gate.set(0, false);
    assert!(first.join().unwrap().expect("decided").allow);
    assert_eq!(gate.connections(), 2);

    // The broker closes the first stream: the call on it is asked again
    // (it used to be lost), and with the first lane unable to reconnect the
    // second stream answers it.
    gate.cut(0);
    assert!(
        remote
            .decide(&support::read_system_lib(3))
            .expect("asked again on the second stream")
            .allow
    );
    // The first lane is down and cannot reconnect; the second answers.
    for id in 4..8 {
        let d = remote.decide(&support::read_system_lib(id));
        assert!(d.expect("decided on the second stream").allow);
    }
}

#[test]
fn a_lifecycle_record_waits_out_a_lost_stream_instead_of_being_lost() {
    let Relayed { gate, remote, .. } = &relayed(usize::MAX, DEFAULT_MAX_IDLE);
    assert!(remote.decide(&support::read_system_lib(1)).unwrap().allow);
    // The broker went away and came back: the stream is dead.
    gate.cut(0);
    let exited = Lifecycle {
        sandbox: support::sandbox("sb-exit", "tool"),
        event: Some(lifecycle::Event::Exited(SandboxExited {
            pid: 42,
            status: 3,
            ..Default::default()
        })),
    };
    let seq = remote
        .lifecycle(exited)
        .expect("recorded on a reopened stream");
    assert!(seq >= 2, "seq {seq}");
    assert_eq!(gate.connections(), 2);
}

/// A call waits for a lane no longer than its own deadline, though the call
/// holding that lane may have begun later and keep it for a whole deadline
/// of its own. Here: the first lane's call hangs (A); a second call (B) tries
/// to open the second lane, which hangs too; A times out and a third call
/// (E) takes the first lane and hangs reconnecting; B, its own connect timed
/// out, wants the first lane back. Before, B waited for E's deadline too:
/// 1.6 s of B's 1 s (with a 1 s deadline). Deadlines of 3 s and B 1.2 s
/// after A leave a loaded machine room: E must reconnect before B's
/// deadline, and B may be late by a second, not by E's whole deadline.
#[test]
fn a_call_waits_for_a_lane_no_longer_than_its_deadline() {
    let deadline = Duration::from_secs(3);
    let Relayed { gate, remote, .. } =
        &relayed_with_deadline(usize::MAX, DEFAULT_MAX_IDLE, deadline);
    // Every answer from now on is held: the broker hangs.
    *gate.hold_new.lock().unwrap() = true;
    let a = held_call(gate, remote);
    std::thread::sleep(Duration::from_millis(1200));
    let b = {
        let remote = remote.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let result = remote.decide(&support::read_system_lib(2));
            (result, start.elapsed())
        })
    };
    // B's stream of its own is being opened, and hangs.
    gate.wait_connections(2);
    assert!(
        matches!(a.join().unwrap(), Err(ClientError::Timeout(_))),
        "A was answered"
    );
    std::thread::sleep(Duration::from_millis(50));
    // Past the first lane's backoff after A's timeout, E reconnects it.
    let e = decide_on_a_thread(remote, 3);
    let (result, waited) = b.join().unwrap();
    assert!(result.is_err(), "B was answered: {result:?}");
    assert!(
        waited < deadline + Duration::from_secs(1),
        "B waited {waited:?} with a deadline of {deadline:?}"
    );
    assert!(e.join().unwrap().is_err(), "E was answered");
    assert_eq!(gate.connections(), 3, "E did not reconnect the first lane");
}
