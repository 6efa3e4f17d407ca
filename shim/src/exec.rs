//! Making an approved exec the exec that happens.
//!
//! The kernel reads `execve`'s path and argv from the tool's memory *after*
//! we answer "continue", so another thread (or a process sharing the memory)
//! could swap them in between. We therefore verify the result, not the
//! request: before continuing, the exec'ing thread is attached with
//! `PTRACE_SEIZE` + `PTRACE_O_TRACEEXEC` (+ `EXITKILL`, so a dead supervisor
//! means a dead tracee), then interrupted. The kernel stops it at
//! `PTRACE_EVENT_EXEC` — after the new image is loaded, before its first
//! instruction — and we compare `/proc/PID/exe` (device and inode) and
//! `/proc/PID/cmdline` with what the policy approved, and, for a `#!`
//! script, that its name in the new process (its cwd, its fds) still leads
//! to the script that was decided. A mismatch is killed
//! with `SIGKILL`; the unapproved program never runs. If the exec fails, the
//! interrupt (sent before the exec continues, see `verify`) stops the thread
//! on its way back to user space and we detach.
//!
//! All ptrace requests come from one thread (ptrace is per tracer thread),
//! which handles execs one at a time.

use std::{
    ffi::OsStr,
    os::fd::OwnedFd,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use nix::{
    errno::Errno,
    fcntl::{AtFlags, OFlag},
    sys::stat::Mode,
    sys::{
        ptrace,
        signal::{Signal, kill},
        wait::{Id, WaitPidFlag, WaitStatus, waitid},
    },
    unistd::Pid,
};

use crate::{
    process::{Creds, Invalidator},
    sys::Listener,
};

/// The image and arguments the policy approved.
#[derive(Debug, Clone)]
pub struct Approved {
    pub dev: u64,
    pub ino: u64,
    /// The expected `/proc/PID/cmdline`: argv as the kernel builds it (for
    /// `#!` scripts, prefixed with the interpreter, its argument and the
    /// script's name), each string with its NUL. Flat: an argv of 262,144
    /// strings held as one buffer, not as as many allocations.
    pub cmdline: Vec<u8>,
    /// The `#!` scripts of the chain, if any: the image checked is the last
    /// interpreter's, which opens its script by the name in its argv.
    pub scripts: Option<Scripts>,
}

impl Approved {
    pub fn new(dev: u64, ino: u64, argv: &[Vec<u8>], scripts: Option<Scripts>) -> Approved {
        let mut cmdline = Vec::with_capacity(argv.iter().map(|a| a.len() + 1).sum());
        for a in argv {
            cmdline.extend_from_slice(a);
            cmdline.push(0);
        }
        Approved {
            dev,
            ino,
            cmdline,
            scripts,
        }
    }
}

/// The scripts of an exec's chain, and the credentials to look them up
/// with: the tool's (a directory only it may search), switched to from ours.
#[derive(Debug, Clone)]
pub struct Scripts {
    pub chain: Vec<Script>,
    pub tool: Creds,
    pub me: Creds,
}

/// A script that was decided, by the name the kernel passes its
/// interpreter, and the file that name led to.
#[derive(Debug, Clone)]
pub struct Script {
    pub name: Vec<u8>,
    pub dev: u64,
    pub ino: u64,
}

impl Script {
    /// Where `name` starts in the stopped process `pid`, as its
    /// interpreter will look it up: its cwd for a relative name, one of its
    /// own magic links for a name through `/dev/fd`, `/proc/self` or
    /// `/proc/PID` (`resolve::own_magic_link`, as the open path splits them;
    /// opened here
    /// `O_PATH`, as ourselves: `/proc/PID/` needs ptrace access, which the
    /// tool's own credentials lack where the exec made the process
    /// non-dumpable, as an execute-only interpreter does), and the rest of
    /// the name, to look up from it as the tool; or no anchor and the name.
    fn anchor(&self, pid: i32) -> Result<(Option<OwnedFd>, Vec<u8>), String> {
        let (anchor, rest) = if self.name.first() != Some(&b'/') {
            (Some(format!("/proc/{pid}/cwd")), self.name.clone())
        } else {
            let path = crate::resolve::rewrite_proc_self(&self.name, pid, pid);
            // After the exec the process is one thread: its tid is its pid.
            match crate::resolve::own_magic_link(&path, pid, pid) {
                Some((link, rest)) => (Some(link), rest),
                None => (None, path),
            }
        };
        let anchor = anchor
            .map(|a| {
                nix::fcntl::open(a.as_str(), OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
                    .map_err(|e| {
                        format!(
                            "cannot find where the script {} starts ({a}): {e}",
                            self.shown()
                        )
                    })
            })
            .transpose()?;
        Ok((anchor, rest))
    }

    /// Whether the name leads, from `anchor`, to the decided file. Between
    /// the decision and the exec another thread could have moved the cwd
    /// (`fchdir`) or put another directory at the fd of an `execveat`
    /// (`dup2`); after it, the process is alone with its fd table (no
    /// thread, and no process shares its cwd: the filter refuses
    /// `CLONE_FS` without `CLONE_THREAD`).
    fn leads_to_itself(&self, anchor: Option<&OwnedFd>, rest: &[u8]) -> Result<(), String> {
        let found = match (anchor, rest.is_empty()) {
            (Some(fd), true) => nix::sys::stat::fstat(fd),
            (Some(fd), false) => {
                nix::sys::stat::fstatat(fd, OsStr::from_bytes(rest), AtFlags::empty())
            }
            (None, _) => nix::sys::stat::fstatat(
                nix::fcntl::AT_FDCWD,
                OsStr::from_bytes(rest),
                AtFlags::empty(),
            ),
        };
        match found {
            Ok(st) if (st.st_dev, st.st_ino) == (self.dev, self.ino) => Ok(()),
            Ok(st) => Err(format!(
                "the script {} is now another file ({}:{}) than the one the policy \
                 approved ({}:{})",
                self.shown(),
                st.st_dev,
                st.st_ino,
                self.dev,
                self.ino
            )),
            Err(e) => Err(format!(
                "the script {} no longer leads to the one the policy approved: {e}",
                self.shown()
            )),
        }
    }

    fn shown(&self) -> String {
        format!("{:?}", String::from_utf8_lossy(&self.name))
    }
}

/// How a verified exec ended, for the supervisor's counters and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The approved image is running.
    Verified,
    /// The exec failed in the kernel (the tool sees the error).
    Failed,
    /// The task died before or during the exec.
    Gone,
    /// Something else ran or would have run; killed.
    Killed(String),
    /// Could not attach; the exec was denied.
    Refused(String),
}

#[derive(Debug)]
struct Job {
    id: u64,
    tid: i32,
    tgid: i32,
    approved: Approved,
    /// Told of the exec event, before the new image runs: what the
    /// supervisor keeps of the task (`exe`, credentials) is stale.
    on_exec: Invalidator,
    done: mpsc::Sender<Outcome>,
}

/// Handle to the verifier thread.
#[derive(Debug, Clone)]
pub struct ExecVerifier {
    jobs: mpsc::Sender<Job>,
    /// To answer a notification the verifier thread never got.
    listener: Arc<Listener>,
    /// Execs refused because they could not be verified, counted before
    /// the answer: a spawn whose first exec fails reads it at once.
    refusals: Arc<AtomicU64>,
}

impl ExecVerifier {
    /// `main_pid` is the sandbox's first process: our own child, whose exit
    /// status belongs to the waiter, so the verifier never reaps it.
    pub fn start(listener: Arc<Listener>, main_pid: i32) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let thread_listener = listener.clone();
        let refusals = Arc::new(AtomicU64::new(0));
        let thread_refusals = refusals.clone();
        std::thread::Builder::new()
            .name("cordon-exec".into())
            .spawn(move || {
                for job in rx {
                    let outcome = verify(&thread_listener, &job, main_pid, &thread_refusals);
                    let _ = job.done.send(outcome);
                }
            })?;
        Ok(Self {
            jobs,
            listener,
            refusals,
        })
    }

    /// How many execs were refused for want of a verification.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::SeqCst)
    }

    /// Lets the exec proceed under verification and returns how it ended.
    /// Answers the notification in every case (`EACCES` when the verifier
    /// cannot take the job).
    pub fn run(
        &self,
        id: u64,
        tid: i32,
        tgid: i32,
        approved: Approved,
        _image: std::os::fd::OwnedFd,
        on_exec: Invalidator,
    ) -> Outcome {
        let (done, rx) = mpsc::channel();
        let job = Job {
            id,
            tid,
            tgid,
            approved,
            on_exec,
            done,
        };
        if self.jobs.send(job).is_err() {
            self.refusals.fetch_add(1, Ordering::SeqCst);
            let _ = self.listener.fail(id, libc::EACCES);
            return Outcome::Refused("the exec verifier is not running".into());
        }
        rx.recv().unwrap_or_else(|_| {
            // The verifier died with the job: whether it answered is unknown;
            // a second answer to an answered id is refused by the kernel.
            self.refusals.fetch_add(1, Ordering::SeqCst);
            let _ = self.listener.fail(id, libc::EACCES);
            Outcome::Refused("the exec verifier stopped".into())
        })
    }
}

fn verify(listener: &Listener, job: &Job, main_pid: i32, refusals: &AtomicU64) -> Outcome {
    let tid = Pid::from_raw(job.tid);
    let opts = ptrace::Options::PTRACE_O_TRACEEXEC | ptrace::Options::PTRACE_O_EXITKILL;
    if let Err(e) = ptrace::seize(tid, opts) {
        refusals.fetch_add(1, Ordering::SeqCst);
        let _ = listener.fail(job.id, libc::EACCES);
        return Outcome::Refused(format!("cannot attach to verify the exec: {e}"));
    }
    // Seized by number: while the notification is pending, the number is
    // the caller's. Gone, it may be another process's by now.
    if !listener.id_valid(job.id) {
        release(tid, main_pid);
        return Outcome::Gone;
    }
    // Held from before the exec continues: a kill on timeout below reaches
    // this process, never a later one that reused its pid.
    let process = crate::sys::pidfd_open(job.tgid).ok();
    // The interrupt stops the thread if the exec fails and it heads back to
    // user space. It must be pending before the exec continues: answered
    // first, the thread can run at once (the answer's synchronous wake-up
    // hands it our CPU), fail the exec and make its next brokered call, an
    // exec fallback such as execvp's, before the interrupt is sent. Waiting
    // for that answer, which is queued behind this job, it would never stop:
    // a deadlock. A received notification's wait is killable only
    // (WAIT_KILLABLE_RECV), so the pending interrupt does not cancel it. On
    // kernels without that flag it would, so there the interrupt follows the
    // answer and the race remains (docs/threat-model.md).
    let interrupt_first = crate::sys::wait_killable_recv();
    if interrupt_first {
        let _ = ptrace::interrupt(tid);
    }
    if listener.allow_continue(job.id).is_err() {
        // The notification is gone (the task was killed): nothing runs.
        release(tid, main_pid);
        return Outcome::Gone;
    }
    if !interrupt_first {
        let _ = ptrace::interrupt(tid);
    }
    loop {
        let status = match next_stop(job) {
            Ok(s) => s,
            Err(e) => {
                // Whatever stopped the wait (a timeout, most likely), kill
                // first: a detach before the kill would let an exec stop
                // that arrives just now run its unverified image.
                let killed = match &process {
                    Some(fd) => crate::sys::pidfd_kill(fd, libc::SIGKILL)
                        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
                    None => kill(Pid::from_raw(job.tgid), Signal::SIGKILL),
                };
                return match killed {
                    Ok(()) | Err(Errno::ESRCH) => {
                        // Never leave a task stopped under our trace (it
                        // would hang), nor dead under it unreaped (its
                        // process would never end). Dying, it runs nothing.
                        // The traced thread first: a leader is not
                        // reported dead while a thread of its group is an
                        // unreaped zombie of ours.
                        for id in [job.tid, job.tgid] {
                            release(Pid::from_raw(id), main_pid);
                        }
                        if killed.is_ok() {
                            Outcome::Killed(format!(
                                "the exec could not be followed to its end ({e})"
                            ))
                        } else {
                            Outcome::Gone
                        }
                    }
                    Err(k) => {
                        // Not killed, so not let go either: stopped under our
                        // trace it runs nothing, and PTRACE_O_EXITKILL ends
                        // it with us.
                        tracing::error!(error = %k, tgid = job.tgid, "cannot kill a process whose exec could not be verified; it stays stopped");
                        Outcome::Killed(format!(
                            "the exec could not be verified ({e}) and the process could not be killed ({k}); it stays stopped"
                        ))
                    }
                };
            }
        };
        tracing::debug!(?status, tid = job.tid, tgid = job.tgid, "exec verifier");
        if let WaitStatus::PtraceEvent(pid, ..) | WaitStatus::Stopped(pid, _) = status {
            // Consume the stop (it was only peeked at): after a non-leader
            // exec the kernel refuses ptrace requests (ESRCH) until the
            // PTRACE_EVENT_EXEC stop has been waited for, because the
            // tracee's pid changed under it.
            let _ = waitid(
                Id::Pid(pid),
                WaitPidFlag::WSTOPPED | WaitPidFlag::__WALL | WaitPidFlag::WNOHANG,
            );
        }
        match status {
            WaitStatus::PtraceEvent(pid, _, libc::PTRACE_EVENT_EXEC) => {
                job.on_exec.invalidate();
                let outcome = check_image(pid, &job.approved);
                match &outcome {
                    Outcome::Verified => {
                        let _ = ptrace::detach(pid, None);
                    }
                    _ => {
                        let _ = kill(pid, Signal::SIGKILL);
                        reap_killed(pid, main_pid);
                    }
                }
                return outcome;
            }
            WaitStatus::PtraceEvent(pid, _, _) => {
                // Our interrupt, before any exec event: the exec failed.
                let _ = ptrace::detach(pid, None);
                return Outcome::Failed;
            }
            WaitStatus::Stopped(pid, sig) => {
                // A signal arrived meanwhile; deliver it and keep waiting.
                let _ = ptrace::cont(pid, sig);
            }
            WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _) => {
                reap_killed(pid, main_pid);
                return Outcome::Gone;
            }
            _ => {}
        }
    }
}

/// Lets go of a task we may trace, stopped or not. A detach needs a stop,
/// so a running task is interrupted first and detached at that stop; a task
/// that dies instead is reaped (a traced task that dies waits for its
/// tracer, and its process never ends until it is). Bounded: a task that
/// neither stops nor dies in time stays traced (PTRACE_O_EXITKILL ends it
/// with us), and is logged. A task we do not trace is left alone.
fn release(tid: Pid, main_pid: i32) {
    if ptrace::detach(tid, None).is_ok() {
        return;
    }
    if ptrace::interrupt(tid).is_err()
        && waitid(
            Id::Pid(tid),
            WaitPidFlag::WEXITED
                | WaitPidFlag::__WALL
                | WaitPidFlag::WNOHANG
                | WaitPidFlag::WNOWAIT,
        )
        .is_err()
    {
        // Neither traced by us nor ours to wait for.
        return;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let flags = WaitPidFlag::WSTOPPED
        | WaitPidFlag::WEXITED
        | WaitPidFlag::__WALL
        | WaitPidFlag::WNOHANG
        | WaitPidFlag::WNOWAIT;
    while std::time::Instant::now() < deadline {
        match waitid(Id::Pid(tid), flags) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(1)),
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => {
                reap_killed(tid, main_pid);
                return;
            }
            Ok(status) => {
                let _ = waitid(
                    Id::Pid(tid),
                    WaitPidFlag::WSTOPPED | WaitPidFlag::__WALL | WaitPidFlag::WNOHANG,
                );
                let signal = match status {
                    WaitStatus::Stopped(_, sig) => Some(sig),
                    _ => None,
                };
                let _ = ptrace::detach(tid, signal);
                return;
            }
            Err(_) => return,
        }
    }
    tracing::warn!(
        tid = tid.as_raw(),
        "a task under exec verification neither stopped nor ended; it stays traced"
    );
}

/// Waits for a tracee we killed to die. A tracee that is not our child is
/// reported to us (its tracer) first: reaping it hands it back to its real
/// parent, whose wait would otherwise hang on a zombie nobody releases.
fn reap_killed(pid: Pid, main_pid: i32) {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::__WALL;
    if pid.as_raw() == main_pid {
        // Our own child: the sandbox's waiter reaps it.
        let _ = waitid(Id::Pid(pid), flags | WaitPidFlag::WNOWAIT);
    } else {
        let _ = waitid(Id::Pid(pid), flags);
    }
}

/// The next state change of the exec'ing thread. A non-leader that execs
/// takes over the thread-group id mid-exec (its own id disappears), so then
/// both ids are polled, ignoring "no such child" while the identity moves,
/// until a state change shows up or a generous deadline passes.
fn next_stop(job: &Job) -> Result<WaitStatus, Errno> {
    let flags =
        WaitPidFlag::WSTOPPED | WaitPidFlag::WEXITED | WaitPidFlag::__WALL | WaitPidFlag::WNOWAIT;
    if job.tid == job.tgid {
        return waitid(Id::Pid(Pid::from_raw(job.tid)), flags);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        for id in [job.tgid, job.tid] {
            match waitid(Id::Pid(Pid::from_raw(id)), flags | WaitPidFlag::WNOHANG) {
                Ok(WaitStatus::StillAlive) | Err(_) => {}
                Ok(s) => return Ok(s),
            }
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    Err(Errno::ETIMEDOUT)
}

/// Whether the stopped, freshly exec'd process is the approved image with
/// the approved arguments.
fn check_image(pid: Pid, approved: &Approved) -> Outcome {
    let exe = match std::fs::metadata(format!("/proc/{pid}/exe")) {
        Ok(m) => m,
        Err(e) => return Outcome::Killed(format!("cannot inspect the new image: {e}")),
    };
    if (exe.dev(), exe.ino()) != (approved.dev, approved.ino) {
        return Outcome::Killed(format!(
            "the image that ran ({}:{}) is not the one the policy approved ({}:{})",
            exe.dev(),
            exe.ino(),
            approved.dev,
            approved.ino
        ));
    }
    // The approved arguments with their NULs, and one byte more to see a
    // longer cmdline: never read more than that from the new image.
    let expected = &approved.cmdline;
    let mut cmdline = Vec::new();
    let read = std::fs::File::open(format!("/proc/{pid}/cmdline")).and_then(|f| {
        use std::io::Read;
        f.take(expected.len() as u64 + 1).read_to_end(&mut cmdline)
    });
    if let Err(e) = read {
        return Outcome::Killed(format!("cannot read the new arguments: {e}"));
    }
    // Linux < 5.18 runs an empty argv as empty, later kernels as [""].
    let empty_argv = expected == b"\0";
    let matches = cmdline == *expected || (empty_argv && cmdline.is_empty());
    if !matches {
        return Outcome::Killed(
            "the arguments that ran are not the ones the policy approved".into(),
        );
    }
    if let Some(scripts) = &approved.scripts {
        let anchors = match scripts
            .chain
            .iter()
            .map(|script| script.anchor(pid.as_raw()))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(anchors) => anchors,
            Err(why) => return Outcome::Killed(why),
        };
        let found = crate::process::with_creds(&scripts.tool, &scripts.me, || {
            scripts
                .chain
                .iter()
                .zip(&anchors)
                .try_for_each(|(script, (anchor, rest))| {
                    script.leads_to_itself(anchor.as_ref(), rest)
                })
        });
        match found {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Outcome::Killed(why),
            Err(e) => {
                return Outcome::Killed(format!("cannot look the script up as the tool: {e}"));
            }
        }
    }
    Outcome::Verified
}
