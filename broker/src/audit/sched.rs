//! Scheduling of the store's own threads: `sched_getattr(2)` and
//! `sched_setattr(2)`, which neither nix nor std wraps. The only `unsafe` of
//! the broker crate.
//!
//! Two users: the first open of a store (`first_open`: real-time or the
//! shortest slice, for a few milliseconds) and the batched flusher
//! ([`raise_this_thread`]: above cordon's other threads; nice levels count
//! within a scheduling group), both only where the program allowed it
//! (`allow_raised_priority`).

#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};

use nix::{libc, unistd::Pid};

/// Whether the program lets the store's threads run at a raised priority.
static RAISED_PRIORITY_ALLOWED: AtomicBool = AtomicBool::new(false);

/// Lets the store's threads run at a raised priority where this process may
/// (root, or `CAP_SYS_NICE`, or resource limits that allow it): the first
/// open of a store real-time for a few milliseconds (`first_open`), and the
/// batched flusher ten nice levels above cordon's other threads (sharing a CPU),
/// so that it keeps its window under load (`SledAudit`'s batched mode). Off
/// unless a program asks: a library host's threads are not changed unasked.
pub fn allow_raised_priority(allowed: bool) {
    RAISED_PRIORITY_ALLOWED.store(allowed, Ordering::Release);
}

pub(super) fn raised_priority_allowed() -> bool {
    RAISED_PRIORITY_ALLOWED.load(Ordering::Acquire)
}

/// How the calling thread now runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preferred {
    /// `SCHED_FIFO`; `nice` is the thread's nice value, kept for when it
    /// is made fair again.
    RealTime {
        nice: i32,
    },
    ShortSlice,
    /// Not the default policy, or neither was allowed: as before.
    Unchanged,
}

/// `struct sched_attr`, first version (48 bytes, Linux 3.14).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
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

const SIZE: u32 = std::mem::size_of::<SchedAttr>() as u32;
// The kernel's first version of the struct (SCHED_ATTR_SIZE_VER0), which
// the SAFETY comments below rely on: no padding, nothing for it to write back.
const _: () = assert!(SIZE == 48);
const SCHED_FLAG_RESET_ON_FORK: u64 = 1;
/// The shortest slice a fair thread may ask for (the kernel clamps to it).
pub const SHORTEST_SLICE_NS: u64 = 100_000;

fn get(tid: Pid) -> Option<SchedAttr> {
    let mut attr = SchedAttr::default();
    // SAFETY: the kernel writes at most `SIZE` bytes, the size of
    // `attr`, which we own, during the call.
    let done = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid.as_raw(),
            &mut attr as *mut SchedAttr,
            SIZE,
            0,
        )
    };
    if done != 0 {
        tracing::debug!(errno = %nix::errno::Errno::last(), "sched_getattr refused");
        return None;
    }
    Some(attr)
}

fn set(tid: Pid, attr: SchedAttr) -> bool {
    let attr = SchedAttr {
        size: SIZE,
        flags: SCHED_FLAG_RESET_ON_FORK,
        ..attr
    };
    // SAFETY: `attr` is an initialised `struct sched_attr` whose `size`
    // says how much of it the kernel may read. The kernel reads it during
    // the call (and would write `size` back only on E2BIG, for a larger
    // struct than it knows, which 48 bytes is not).
    let done = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            tid.as_raw(),
            &attr as *const SchedAttr,
            0,
        )
    };
    if done != 0 {
        // EPERM without `CAP_SYS_NICE` is expected; anything else is not.
        tracing::debug!(errno = %nix::errno::Errno::last(), policy = attr.policy,
            nice = attr.nice, "sched_setattr refused");
        return false;
    }
    true
}

fn fair(nice: i32) -> SchedAttr {
    SchedAttr {
        policy: libc::SCHED_OTHER as u32,
        nice,
        runtime: SHORTEST_SLICE_NS,
        ..SchedAttr::default()
    }
}

/// Real-time if `real_time` and the process may (`CAP_SYS_NICE` or
/// `RLIMIT_RTPRIO`), else the shortest fair slice; for a thread with the
/// default policy only.
pub fn prefer_this_thread(real_time: bool) -> Preferred {
    let me = Pid::from_raw(0);
    let Some(now) = get(me).filter(|a| a.policy == libc::SCHED_OTHER as u32) else {
        return Preferred::Unchanged;
    };
    let fifo = SchedAttr {
        policy: libc::SCHED_FIFO as u32,
        priority: 1,
        ..SchedAttr::default()
    };
    if real_time && set(me, fifo) {
        Preferred::RealTime { nice: now.nice }
    } else if set(me, fair(now.nice)) {
        Preferred::ShortSlice
    } else {
        Preferred::Unchanged
    }
}

/// Makes a thread of ours that [`prefer_this_thread`] made real-time a
/// fair one again, at its own nice value and the shortest slice.
pub fn make_fair(tid: Pid, nice: i32) -> bool {
    set(tid, fair(nice))
}

/// Lowers this thread's nice value by `by` (to -20 at most), for a thread
/// with the default policy only (a `chrt -b` or `-i` of cordon is kept):
/// the new nice value, or `None` where the process may not (it needs
/// `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows it) or the thread runs
/// otherwise. Relative, so that a `nice -n 5 cordon` stays lower than the
/// same command without it.
pub fn raise_this_thread(by: i32) -> Option<i32> {
    let me = Pid::from_raw(0);
    let now = get(me).filter(|a| a.policy == libc::SCHED_OTHER as u32)?;
    let nice = now.nice.saturating_sub(by).max(-20);
    let raised = SchedAttr {
        policy: libc::SCHED_OTHER as u32,
        nice,
        // The default slice.
        runtime: 0,
        ..SchedAttr::default()
    };
    set(me, raised).then_some(nice)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's nice value, from `/proc/thread-self/stat` (field 19).
    fn nice_now() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        // Fields after the command name, which is in parentheses.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        rest.split(' ')
            .nth(16)
            .expect("nice")
            .parse()
            .expect("a number")
    }

    #[test]
    fn a_raised_thread_runs_that_many_nice_levels_up_or_is_left_as_it_was() {
        std::thread::spawn(|| {
            let before = nice_now();
            match raise_this_thread(10) {
                Some(nice) => {
                    assert_eq!(nice, (before - 10).max(-20));
                    assert_eq!(nice_now(), nice);
                }
                // Not permitted (no CAP_SYS_NICE): nothing changed.
                None => assert_eq!(nice_now(), before),
            }
        })
        .join()
        .unwrap();
    }
}
