//! Signals the tool handles, for the blocking calls the supervisor makes for
//! it.
//!
//! A notified call waits killably (`SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`,
//! which Go programs need), so a signal the tool handles does not end that
//! wait, where it would end the tool's own blocking connect, send or FIFO
//! open with `EINTR` (or the bytes sent so far) and run the handler: an
//! `alarm()` timeout, a `SIGINT` handler. So while a helper thread makes
//! such a call for the tool, a watcher thread looks at the calling thread's
//! pending signals every [`TICK`]. When one would interrupt the native call
//! (pending, not blocked, handled), it interrupts ours: a signal to the
//! helper thread, whose handler does nothing and is installed without
//! `SA_RESTART`. The helper answers with a partial count if its call made
//! one, else with `-ERESTARTSYS`, as the kernel's own call would have
//! returned: on the way out the kernel runs the tool's handler and restarts
//! the call if the handler has `SA_RESTART` (a new notification), or makes it
//! `EINTR`.
//!
//! A signal sent to the whole process counts for its main thread, which the
//! kernel picks first, and for another thread when the main thread blocks
//! it. When the kernel gave it to another thread for another reason (the
//! main thread busy with a signal already), a call made for that thread
//! goes on where natively it would end.
//!
//! The watcher also frees a helper whose caller no longer waits (the tool
//! was killed while a FIFO open waited for a writer): its call is
//! interrupted and its answer goes nowhere.

use std::{
    collections::HashMap,
    sync::{Condvar, LazyLock, Mutex, Once},
    time::Duration,
};

use crate::sys;

/// How often the watcher looks, while a call is waiting: the longest an
/// interruption takes, beyond the signal itself.
pub const TICK: Duration = Duration::from_millis(10);

struct Waiting {
    helper: libc::pthread_t,
    tgid: i32,
    tid: i32,
    /// Whether the caller still waits for the answer.
    waits: Box<dyn Fn() -> bool + Send>,
    /// Whether we signalled the helper.
    fired: bool,
}

/// What the kernel's own blocking call returns when a signal interrupts it
/// before it did anything; the tool never sees it (see the module doc).
pub const ERESTARTSYS: i32 = 512;

/// The errno to answer with: our marker for an interrupted call
/// (`ERESTART`, which none of the calls made for the tool returns) becomes
/// `ERESTARTSYS`.
pub fn answer_errno(e: nix::errno::Errno) -> i32 {
    if e == nix::errno::Errno::ERESTART {
        ERESTARTSYS
    } else {
        e as i32
    }
}

#[derive(Default)]
struct Registry {
    next: u64,
    waiting: HashMap<u64, Waiting>,
}

static REGISTRY: LazyLock<(Mutex<Registry>, Condvar)> = LazyLock::new(Default::default);
static WATCHER: Once = Once::new();
/// Whether our handler is installed (it is not when a library host has a
/// disposition of its own for the signal: then calls are not interrupted).
static HANDLER: LazyLock<bool> = LazyLock::new(|| match sys::install_interrupt_handler() {
    Ok(true) => true,
    Ok(false) => {
        tracing::warn!(
            signal = sys::interrupt_signal(),
            "the host handles the interrupt signal: the tool's blocking calls made for it cannot be interrupted by its signals"
        );
        false
    }
    Err(e) => {
        tracing::warn!(error = %e, "cannot install the interrupt handler");
        false
    }
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// Installs the handler and starts the watcher, once per process. Called
/// by each supervisor as it starts, on the host's thread: the watcher must
/// not inherit a helper's Landlock domain or the tool's credentials, which
/// would keep it from reading `/proc` or signalling helpers.
pub fn start() {
    WATCHER.call_once(|| {
        if !*HANDLER {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("cordon-interrupt".into())
            .spawn(watch);
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the interrupt watcher");
        }
    });
}

/// Runs `call`, a blocking call made on this (helper) thread for thread
/// `tid` of process `tgid`, so that a signal that thread handles interrupts
/// it; `waits` says whether the caller still waits for the answer. An
/// `EINTR` from our signal comes back as `ERESTART` (see [`answer_errno`])
/// if `restartable`: not for a socket with a send timeout, whose calls the
/// kernel ends with `EINTR` whatever the handler (`sock_intr_errno`).
/// Only on a thread of our own that makes nothing but this call while
/// registered: the signal may end any blocking call it makes meanwhile.
pub fn while_blocked<T>(
    tgid: i32,
    tid: i32,
    waits: impl Fn() -> bool + Send + 'static,
    restartable: bool,
    call: impl FnOnce() -> Result<T, nix::errno::Errno>,
) -> Result<T, nix::errno::Errno> {
    if !WATCHER.is_completed() || !*HANDLER || sys::unblock_interrupt_signal().is_err() {
        return call();
    }
    let (key, first) = {
        let mut r = registry();
        r.next += 1;
        let key = r.next;
        let helper = sys::this_thread();
        let waits = Box::new(waits);
        let fired = false;
        r.waiting.insert(
            key,
            Waiting {
                helper,
                tgid,
                tid,
                waits,
                fired,
            },
        );
        (key, r.waiting.len() == 1)
    };
    // The watcher waits only while nobody is registered: otherwise it looks
    // again within a tick anyway.
    if first {
        REGISTRY.1.notify_all();
    }
    // On every way out (a panic too): the signal blocked first, so one sent
    // just before cannot end a later call of this thread (its answer, an
    // inject), then unregistered (the watcher signals only threads it finds
    // registered, under the lock, so none after).
    struct Done(u64);
    impl Drop for Done {
        fn drop(&mut self) {
            let _ = sys::block_interrupt_signal();
            registry().waiting.remove(&self.0);
        }
    }
    let done = Done(key);
    let result = call();
    let fired = registry().waiting.get(&done.0).is_some_and(|w| w.fired);
    drop(done);
    match result {
        Err(nix::errno::Errno::EINTR) if fired && restartable => Err(nix::errno::Errno::ERESTART),
        other => other,
    }
}

fn watch() {
    loop {
        {
            let mut r = registry();
            while r.waiting.is_empty() {
                r = REGISTRY.1.wait(r).unwrap_or_else(|p| p.into_inner());
            }
        }
        std::thread::sleep(TICK);
        let looks: Vec<(u64, i32, i32)> = registry()
            .waiting
            .iter()
            .map(|(k, w)| (*k, w.tgid, w.tid))
            .collect();
        for (key, tgid, tid) in looks {
            if !interrupts(tgid, tid) {
                // Nobody waits for it: free the helper.
                let gone = registry().waiting.get(&key).is_some_and(|w| !(w.waits)());
                if !gone {
                    continue;
                }
            }
            let mut r = registry();
            if let Some(w) = r.waiting.get_mut(&key) {
                // Again at the next look if the call had not started yet
                // (the handler ran before it): the signal stays pending in
                // the tool until we answer.
                w.fired = true;
                let _ = sys::interrupt_thread(w.helper);
            }
        }
    }
}

/// Whether thread `tid` has a pending signal it neither blocks nor ignores
/// and has a handler for (its own, or the process's if it is the main
/// thread). Unreadable (it exited): no.
fn interrupts(tgid: i32, tid: i32) -> bool {
    let masks = |t: i32| {
        std::fs::read_to_string(format!("/proc/{tgid}/task/{t}/status"))
            .ok()
            .and_then(|s| SignalMasks::parse(&s))
    };
    let Some(m) = masks(tid) else {
        return false;
    };
    if m.interrupts(tid == tgid) {
        return true;
    }
    // A signal to the process that the main thread blocks goes to another.
    tid != tgid
        && m.shared_pending != 0
        && masks(tgid).is_some_and(|main| {
            SignalMasks {
                shared_pending: m.shared_pending & main.blocked,
                ..m
            }
            .interrupts(true)
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SignalMasks {
    thread_pending: u64,
    shared_pending: u64,
    blocked: u64,
    caught: u64,
}

impl SignalMasks {
    fn parse(status: &str) -> Option<SignalMasks> {
        let mask = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        };
        Some(SignalMasks {
            thread_pending: mask("SigPnd")?,
            shared_pending: mask("ShdPnd")?,
            blocked: mask("SigBlk")?,
            caught: mask("SigCgt")?,
        })
    }

    fn interrupts(&self, main_thread: bool) -> bool {
        let shared = if main_thread { self.shared_pending } else { 0 };
        (self.thread_pending | shared) & !self.blocked & self.caught != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_handled_unblocked_signal_interrupts() {
        let status = "Name:\tpython3\nSigQ:\t1/9999\nSigPnd:\t0000000000000000\n\
                      ShdPnd:\t0000000000002000\nSigBlk:\t0000000000000000\n\
                      SigIgn:\t0000000001001000\nSigCgt:\t0000000100002002\n";
        let m = SignalMasks::parse(status).unwrap();
        // SIGALRM (14, bit 13) sent to the process, handled.
        assert!(m.interrupts(true));
        // Another thread's call goes on: the main thread takes it.
        assert!(!m.interrupts(false));
        // Blocked, or not handled: no.
        assert!(
            !SignalMasks {
                blocked: 0x2000,
                ..m
            }
            .interrupts(true)
        );
        assert!(!SignalMasks { caught: 0x2, ..m }.interrupts(true));
        // Sent to the thread itself: any thread.
        let to_thread = SignalMasks {
            thread_pending: 0x2,
            shared_pending: 0,
            ..m
        };
        assert!(to_thread.interrupts(false));
        assert_eq!(SignalMasks::parse("SigPnd:\t0\n"), None);
    }
}
