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
//! - real-time (`SCHED_FIFO`, priority 1) where this process may, for at
//!   most [`REAL_TIME_FOR`] (a long recovery must not hold a CPU against
//!   everything else), then a fair thread like the next;
//! - otherwise a fair thread with the shortest slice (0.1 ms, EEVDF since
//!   Linux 6.6: its deadlines come first, so a waking spinner does not
//!   preempt it; older kernels ignore the slice).
//!
//! Both with `SCHED_RESET_ON_FORK`, so the workers it starts get default
//! scheduling. The open starts the pool: recovery reads an existing store's
//! segments on it, and a new store's first write goes through it.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

/// How long the opening thread may stay real-time.
const REAL_TIME_FOR: Duration = Duration::from_millis(10);

/// Whether sled's pool was started by an open of ours in this process.
static POOL_STARTED: AtomicBool = AtomicBool::new(false);

/// Opens a store with `config`, starting sled's pool with it on a thread of
/// its own if no open of ours has yet.
pub(super) fn open(config: &sled::Config) -> sled::Result<sled::Db> {
    open_real_time_for(config, REAL_TIME_FOR)
}

fn open_real_time_for(config: &sled::Config, real_time_for: Duration) -> sled::Result<sled::Db> {
    if POOL_STARTED.load(Ordering::Acquire) {
        return config.open();
    }
    std::thread::scope(|s| {
        let (started_tx, started_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let opener = std::thread::Builder::new()
            .name("cordon-store-open".into())
            .spawn_scoped(s, move || {
                let _ = started_tx.send((nix::unistd::gettid(), sys::prefer_this_thread()));
                let opened = config.open();
                if opened.is_ok() {
                    POOL_STARTED.store(true, Ordering::Release);
                }
                let _ = done_tx.send(opened);
                // Alive (its tid its own) until the caller is done with it.
                let _ = release_rx.recv();
            })
            .map_err(sled::Error::Io)?;
        let opened = match started_rx.recv() {
            Ok((tid, sys::Preferred::RealTime)) => match done_rx.recv_timeout(real_time_for) {
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    sys::make_fair(tid);
                    done_rx.recv().ok()
                }
                done => done.ok(),
            },
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

/// `sched_setattr(2)`, which neither nix nor std wraps.
mod sys {
    #![allow(unsafe_code)]

    use nix::{libc, unistd::Pid};

    /// How the calling thread now runs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Preferred {
        RealTime,
        ShortSlice,
        /// Neither was allowed: as before.
        Unchanged,
    }

    /// `struct sched_attr`, first version (48 bytes, Linux 3.14).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }

    const SCHED_FLAG_RESET_ON_FORK: u64 = 1;
    /// The shortest slice a fair thread may ask for (EEVDF clamps to it).
    const SHORTEST_SLICE_NS: u64 = 100_000;

    fn set(tid: Pid, policy: i32, priority: u32, runtime: u64) -> bool {
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            policy: policy as u32,
            flags: SCHED_FLAG_RESET_ON_FORK,
            nice: 0,
            priority,
            runtime,
            deadline: 0,
            period: 0,
        };
        // SAFETY: `attr` is a valid, initialised `struct sched_attr` whose
        // `size` says how much of it the kernel may read; the kernel only
        // reads it, during the call.
        unsafe {
            libc::syscall(
                libc::SYS_sched_setattr,
                tid.as_raw(),
                &attr as *const SchedAttr,
                0,
            ) == 0
        }
    }

    /// Real-time where allowed (`CAP_SYS_NICE` or `RLIMIT_RTPRIO`), else the
    /// shortest fair slice.
    pub fn prefer_this_thread() -> Preferred {
        let me = Pid::from_raw(0);
        if set(me, libc::SCHED_FIFO, 1, 0) {
            Preferred::RealTime
        } else if set(me, libc::SCHED_OTHER, 0, SHORTEST_SLICE_NS) {
            Preferred::ShortSlice
        } else {
            Preferred::Unchanged
        }
    }

    /// Makes a thread of ours that [`prefer_this_thread`] made real-time a
    /// fair one with the shortest slice (allowed: we could make it
    /// real-time).
    pub fn make_fair(tid: Pid) {
        let _ = set(tid, libc::SCHED_OTHER, 0, SHORTEST_SLICE_NS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduling policy of a thread (`/proc/…/stat` field 41).
    fn policy(stat: &str) -> u32 {
        let after_name = &stat[stat.rfind(')').expect("stat") + 1..];
        after_name
            .split_whitespace()
            .nth(38)
            .expect("policy")
            .parse()
            .expect("number")
    }

    fn policy_of_this_thread() -> u32 {
        policy(&std::fs::read_to_string("/proc/thread-self/stat").expect("stat"))
    }

    #[test]
    fn threads_the_opener_starts_get_default_scheduling() {
        let (preferred, own, started) = std::thread::spawn(|| {
            let preferred = sys::prefer_this_thread();
            let own = policy_of_this_thread();
            let started = std::thread::spawn(policy_of_this_thread)
                .join()
                .expect("thread");
            (preferred, own, started)
        })
        .join()
        .expect("thread");
        if preferred == sys::Preferred::RealTime {
            assert_eq!(own, nix::libc::SCHED_FIFO as u32);
        }
        assert_eq!(started, nix::libc::SCHED_OTHER as u32, "{preferred:?}");
    }

    #[test]
    fn a_real_time_opener_is_made_fair_again() {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let preferred = sys::prefer_this_thread();
            let _ = tid_tx.send((nix::unistd::gettid(), preferred));
            let _ = go_rx.recv();
            policy_of_this_thread()
        });
        let (tid, preferred) = tid_rx.recv().expect("tid");
        sys::make_fair(tid);
        let _ = go_tx.send(());
        let after = thread.join().expect("thread");
        if preferred != sys::Preferred::Unchanged {
            assert_eq!(after, nix::libc::SCHED_OTHER as u32, "{preferred:?}");
        }
    }

    #[test]
    fn the_first_open_starts_sleds_pool_and_leaves_it_fair() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Real-time for the whole open (a debug build's takes longer
        // than the bound), so that the workers start under it.
        let config = sled::Config::new().path(dir.path());
        let db = open_real_time_for(&config, Duration::from_secs(600)).expect("open");
        assert!(POOL_STARTED.load(Ordering::Acquire));
        let mut workers = 0;
        for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
            let task = task.expect("task").path();
            let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
            if name.starts_with("sled-io-") {
                let stat = std::fs::read_to_string(task.join("stat")).expect("stat");
                assert_eq!(policy(&stat), nix::libc::SCHED_OTHER as u32, "{name}");
                workers += 1;
            }
        }
        assert!(workers > 0, "no sled-io thread");
        drop(db);
    }
}
