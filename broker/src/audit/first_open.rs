//! The first store a process opens, opened where sled's thread pool cannot
//! take the CPU from it.
//!
//! sled 0.34 starts its I/O pool on first use in a process: the thread that
//! first hands it work spawns seven workers, and each worker spins (no
//! yield, `sled::lazy`) on the pool's lock until that thread has started
//! them all. On two CPUs the spinners preempt the thread they wait for: an
//! open of ~3 ms of work took 8–12 ms and burnt 11–18 ms of CPU, half of it
//! in the spin (BENCHMARKS.md, session 19). So the first open runs on a
//! thread of its own that the workers do not preempt:
//! - real-time (`SCHED_FIFO`, priority 1) where the program allowed it
//!   ([`allow_raised_priority`](super::allow_raised_priority): the `cordon`
//!   command does, a library host is not changed unasked), this process may, and it may run on two CPUs or more
//!   (the caller, on another, makes the thread fair again once the open has
//!   taken [`REAL_TIME_FOR`]: a long recovery must not hold a CPU against
//!   everything else);
//! - otherwise a fair thread with the shortest slice (0.1 ms; Linux 6.12
//!   takes a fair thread's slice from `sched_runtime`: its deadlines come
//!   first, so a waking spinner does not preempt it; older kernels ignore
//!   it).
//!
//! Both with `SCHED_RESET_ON_FORK`, so the workers it starts get default
//! scheduling, and only for a thread that runs with the default policy (a
//! `chrt -b` or `-i` of cordon is kept). The pool is started there: an
//! existing store's recovery reads its segments on it, and for a new one a
//! `flush_async` hands it its first work. One such open at a time: a second
//! first open waits for it (rather than spin at real-time priority on the
//! pool's lock), then opens on its caller's thread, as every later open.

use super::sched as sys;
use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    task::{Context, Poll, Wake},
    time::Duration,
};

/// How long the opening thread may stay real-time.
const REAL_TIME_FOR: Duration = Duration::from_millis(10);

/// Whether an open of ours started sled's pool in this process.
static POOL_STARTED: AtomicBool = AtomicBool::new(false);

/// Whether this thread may run on two CPUs or more.
fn two_cpus_or_more() -> bool {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).is_ok_and(|set| {
        (0..nix::sched::CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .nth(1)
            .is_some()
    })
}

/// Held by the open that starts the pool.
static STARTING: Mutex<()> = Mutex::new(());

/// Opens a store with `config`, starting sled's pool with it on a thread of
/// its own if no open of ours has yet.
pub(super) fn open(config: &sled::Config) -> sled::Result<sled::Db> {
    if POOL_STARTED.load(Ordering::Acquire) {
        return config.open();
    }
    let _starting = STARTING.lock().unwrap_or_else(|p| p.into_inner());
    if POOL_STARTED.load(Ordering::Acquire) {
        return config.open();
    }
    let real_time = sys::raised_priority_allowed() && two_cpus_or_more();
    open_on_own_thread(config, real_time.then_some(REAL_TIME_FOR))
}

/// `real_time_for`: real-time allowed, for that long.
fn open_on_own_thread(
    config: &sled::Config,
    real_time_for: Option<Duration>,
) -> sled::Result<sled::Db> {
    std::thread::scope(|s| {
        let (started_tx, started_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let opener = std::thread::Builder::new()
            .name("cordon-store-open".into())
            .spawn_scoped(s, move || {
                let preferred = sys::prefer_this_thread(real_time_for.is_some());
                let _ = started_tx.send((nix::unistd::gettid(), preferred));
                let opened = config.open();
                if let Ok(db) = &opened {
                    // `flush_async` always hands the pool its work. A failed
                    // flush is the store's next flush's to report.
                    let _ = block_on(db.flush_async());
                    POOL_STARTED.store(true, Ordering::Release);
                }
                let _ = done_tx.send(opened);
                // Alive (its tid its own) until the caller is done with it.
                let _ = release_rx.recv();
            });
        let Ok(opener) = opener else {
            // No thread to spare: open here, as a later open would.
            return config.open();
        };
        let opened = match started_rx.recv() {
            Ok((tid, sys::Preferred::RealTime { nice })) => {
                match done_rx.recv_timeout(real_time_for.unwrap_or_default()) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if !sys::make_fair(tid, nice) {
                            tracing::warn!(
                                "the audit store's opening thread could not be made fair again: it stays real-time until the open ends"
                            );
                        }
                        done_rx.recv().ok()
                    }
                    done => done.ok(),
                }
            }
            _ => done_rx.recv().ok(),
        };
        let _ = release_tx.send(());
        match (opener.join(), opened) {
            (Err(panic), _) => std::panic::resume_unwind(panic),
            (Ok(()), Some(opened)) => opened,
            (Ok(()), None) => Err(sled::Error::ReportableBug(
                "the store's opening thread ended without an answer".into(),
            )),
        }
    })
}

/// Runs a future to completion on this thread (sled's flush future is
/// woken by the pool thread that finishes the flush).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field of `/proc/thread-self/sched` (or of another task's); a
    /// real-time task has no `se.slice`.
    fn sched_field(sched: &str, name: &str) -> Option<u64> {
        sched.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == name).then(|| value.trim().parse().ok())?
        })
    }

    /// This thread's policy and slice.
    fn this_thread() -> (Option<u64>, Option<u64>) {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").expect("sched");
        (
            sched_field(&sched, "policy"),
            sched_field(&sched, "se.slice"),
        )
    }

    const OTHER: u64 = nix::libc::SCHED_OTHER as u64;
    const FIFO: u64 = nix::libc::SCHED_FIFO as u64;

    /// The slice asked for, where the kernel takes it (Linux 6.12; older
    /// ones accept `sched_runtime` and ignore it): else whatever it shows.
    fn short_slice_if_honoured(shown: Option<u64>) -> Option<u64> {
        let release = nix::sys::utsname::uname().expect("uname");
        let release = release.release().to_string_lossy();
        let mut numbers = release.split(|c: char| !c.is_ascii_digit());
        let major: u32 = numbers.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let minor: u32 = numbers.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        if (major, minor) >= (6, 12) {
            Some(sys::SHORTEST_SLICE_NS)
        } else {
            shown
        }
    }

    #[test]
    fn the_opener_is_preferred_and_the_threads_it_starts_are_not() {
        for real_time in [false, true] {
            let (before, preferred, own, started) = std::thread::spawn(move || {
                let before = this_thread();
                let preferred = sys::prefer_this_thread(real_time);
                let own = this_thread();
                let started = std::thread::spawn(this_thread).join().expect("thread");
                (before, preferred, own, started)
            })
            .join()
            .expect("thread");
            match preferred {
                sys::Preferred::RealTime { .. } => {
                    assert!(real_time);
                    assert_eq!(own.0, Some(FIFO));
                }
                sys::Preferred::ShortSlice => {
                    assert_eq!(own, (Some(OTHER), short_slice_if_honoured(own.1)));
                }
                sys::Preferred::Unchanged => assert_eq!(own, before),
            }
            // What the opener starts runs as the opener did before.
            assert_eq!(started, before, "{preferred:?}");
        }
    }

    #[test]
    fn a_real_time_opener_is_made_fair_again() {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = tid_tx.send((nix::unistd::gettid(), sys::prefer_this_thread(true)));
            let _ = go_rx.recv();
            this_thread()
        });
        let (tid, preferred) = tid_rx.recv().expect("tid");
        let made_fair = match preferred {
            sys::Preferred::RealTime { nice } => Some(sys::make_fair(tid, nice)),
            _ => None,
        };
        let _ = go_tx.send(());
        let after = thread.join().expect("thread");
        if let Some(made_fair) = made_fair {
            assert!(made_fair);
            assert_eq!(after.0, Some(OTHER));
            assert_eq!(after.1, short_slice_if_honoured(after.1));
        }
    }

    /// In a process of its own (this test binary again, running only this
    /// test), so that its open is the one that starts sled's pool.
    #[test]
    fn the_first_open_starts_sleds_pool_on_its_thread_and_leaves_it_fair() {
        const CHILD: &str = "CORDON_TEST_FIRST_OPEN_CHILD";
        const NAME: &str = "audit::first_open::tests::the_first_open_starts_sleds_pool_on_its_thread_and_leaves_it_fair";
        if std::env::var_os(CHILD).is_none() {
            let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
                .args(["--exact", NAME, "--test-threads=1", "--nocapture"])
                .env(CHILD, "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("test binary");
            // Real-time workers would spin against their real-time starter
            // for good: a failure, not a hang.
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while child.try_wait().expect("wait").is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("the first open did not finish in 120 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let out = child.wait_with_output().expect("test binary");
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("1 passed"), "{text}");
            return;
        }
        assert!(!POOL_STARTED.load(Ordering::Acquire));
        // A new store, opened as the broker opens one, real-time for the
        // whole open (a debug build's takes longer than the bound).
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_on_own_thread(&super::super::sled_config(dir.path()), Some(Duration::MAX))
            .expect("open");
        assert!(POOL_STARTED.load(Ordering::Acquire));
        // The workers are started by the time the open returns; each names
        // itself once it runs.
        let workers = || {
            std::fs::read_dir("/proc/self/task")
                .expect("tasks")
                .filter_map(|t| {
                    let task = t.ok()?.path();
                    let name = std::fs::read_to_string(task.join("comm")).ok()?;
                    name.starts_with("sled-io-")
                        .then(|| std::fs::read_to_string(task.join("sched")).ok())?
                })
                .collect::<Vec<_>>()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while workers().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let found = workers();
        assert!(!found.is_empty(), "no sled-io thread");
        for sched in &found {
            assert_eq!(sched_field(sched, "policy"), Some(OTHER), "{sched}");
        }
        drop(db);
    }
}
