//! The supervisor: receives each notification, decodes the call from the
//! tool's memory, asks the policy, and makes the decision what happens.
//!
//! Invariants:
//! - every error on the decision path is a denial ([`Supervisor::ask`]);
//! - the notification id is re-validated after reading the tool's memory
//!   and before acting on what was read;
//! - an allowed open, connect, bind or datagram send is performed by us on
//!   the object the policy saw; "continue" is only answered for calls whose
//!   arguments are registers (socket, personality, listen's fd via a dup) or
//!   whose meaning cannot change (stream sends, `O_PATH` opens — see
//!   docs/threat-model.md), and for exec under verification ([`crate::exec`]).

use std::{
    collections::BTreeMap,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use cordon_broker::proto::{
    DecideRequest, ExecAccess, FileAccess, NetworkAccess, Process, Sandbox, decide_request::Subject,
};
use nix::{errno::Errno, poll::PollTimeout, sys::stat::FileStat};

// An exec's argv at most: the broker's own bounds, one definition, so that
// the shim never reads an argv the broker then refuses (`E2BIG` beyond, as
// the kernel says past ARG_MAX).
use cordon_broker::request::{MAX_ARGV, MAX_ARGV_BYTES};

use crate::{
    backstop::Opener,
    client::Decider,
    connector::{self, Connectors},
    emulate::{self, Address},
    exec::{Approved, ExecVerifier, Outcome, Script, Scripts},
    filter, interrupt,
    memory::ToolMemory,
    process::{Creds, Task, TaskCache, with_creds, with_opener_creds},
    protect::{Protected, Use},
    resolve::{self, Create, Found, Lookup},
    sys::{self, Listener, Notification},
};

const PATH_MAX: usize = 4096;
/// Numbers of one forbidden call counted apart (the exit record lists them).
const MAX_NUMBERED_KINDS: usize = 32;
/// The largest datagram we copy out of the tool for an emulated send.
const MAX_DATAGRAM: usize = 1024 * 1024;
const MAX_IOV: usize = 1024;
const MAX_MMSG: usize = 1024;

/// The send flags passed on for the tool (the kernel masks its internal
/// ones). Any other is refused: `MSG_FASTOPEN` connects, `MSG_ZEROCOPY`
/// sends from our memory after the call returns, and a flag added later is
/// not known to be harmless.
const SEND_FLAGS: i32 = libc::MSG_OOB
    | libc::MSG_DONTROUTE
    | libc::MSG_DONTWAIT
    | libc::MSG_EOR
    | libc::MSG_CONFIRM
    | libc::MSG_NOSIGNAL
    | libc::MSG_MORE;

/// Counters reported in the sandbox's exit record.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub decisions: u64,
    pub denied: u64,
    /// Forbidden calls answered by the filter rules, by name.
    pub forbidden: BTreeMap<String, u64>,
    /// Calls denied because no decision could be obtained.
    pub undecided: u64,
    pub exec_killed: u64,
    /// Creates that found their name taken since the lookup (decided again).
    pub create_races: u64,
    /// Opens that found a lease on their file being broken (and waited for
    /// it on a helper thread, or got `EAGAIN` where none could start).
    pub lease_waits: u64,
}

/// An allowed open once decided: all it needs but what it opens.
#[derive(Debug, Clone, Copy)]
struct OpenJob {
    id: u64,
    tgid: i32,
    tid: i32,
    flags: i32,
    mode: u32,
    umask: u32,
    /// The file type found, if the file exists.
    kind: Option<u32>,
    /// Whether `EEXIST` means the name was taken since the lookup (a create
    /// without the tool's own `O_EXCL`).
    create_raced_if_exists: bool,
}

/// Where and how [`Supervisor::open_and_inject`] makes an open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// On the serving thread (or the opener thread), without waiting for a
    /// lease: [`Opened::Leased`] if one is being broken.
    FirstTry,
    /// On a helper thread of its own: it may wait, and a signal the tool
    /// handles ends the wait.
    OnHelper,
}

/// How [`Supervisor::open_and_inject`] ended.
enum Opened {
    /// The tool has its answer: the fd, or an errno.
    Answered,
    /// The create found its name taken; nothing was answered.
    NameTaken,
    /// A lease on the file is being broken; nothing was answered, and the
    /// open may wait (on a helper thread) with what it opens.
    Leased(Found, Creds),
}

/// The broker's unix socket: its path, and its device and inode (read once).
#[derive(Debug)]
struct BrokerSocket {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

/// Stripes of [`Supervisor::socket_turn`]: binds and listens are rare, and
/// one waits for another only in the same stripe.
const SOCKET_TURNS: usize = 64;

/// One sandbox's supervisor.
#[derive(Debug)]
pub struct Supervisor {
    listener: Arc<Listener>,
    decider: Arc<dyn Decider>,
    sandbox: Sandbox,
    me: Creds,
    /// Our real, effective and saved uids and gids, read once: what we may
    /// name as ourselves in `SCM_CREDENTIALS` (`with_creds` changes only fs
    /// ids, `with_opener_creds`, for opens alone, the effective ones too, and
    /// nothing else changes ours).
    own_ids: Option<([u32; 3], [u32; 3])>,
    /// Unix sockets the tool must never reach: brokers'.
    broker_sockets: Vec<BrokerSocket>,
    /// The host's files the tool must never reach.
    protected: Protected,
    exec: ExecVerifier,
    counters: Mutex<Counters>,
    tasks: TaskCache,
    /// Helper threads in flight (blocking calls, exec verification).
    helpers: std::sync::atomic::AtomicUsize,
    /// Canonical paths of unix sockets we bound, by socket inode.
    unix_binds: Mutex<std::collections::HashMap<u64, Vec<u8>>>,
    /// Held from a `bind`'s or `listen`'s decision to its performing, by
    /// socket inode (in stripes): a `listen` is decided on the address the
    /// socket has, which another thread's `bind` would otherwise change in
    /// between (on the other serving thread).
    socket_turns: [Mutex<()>; SOCKET_TURNS],
    /// With a kernel backstop: the restricted thread that performs opens.
    opener: Option<Opener>,
    /// Held by the serving thread that receives: see `serve`.
    receiving: Mutex<()>,
    injects: Injects,
    /// The processes that make the tool's unix connects.
    connectors: Connectors,
}

/// Injects in flight. Until its ADDFD returns, the kernel holds a reference
/// to the file it injects (and we our fd): the tool's own close does not end
/// the open file then, so an exec of a file it has just written and closed
/// would fail with `ETXTBSY`. With two serving threads, that exec can be
/// handled while the other thread still waits in its ADDFD: exec waits for
/// the injects in flight (`Injects::wait_idle`).
#[derive(Debug, Default)]
struct Injects {
    count: Mutex<usize>,
    done: std::sync::Condvar,
}

impl Injects {
    /// Counts an inject until the guard (dropped after our fd) goes.
    fn begin(&self) -> InjectGuard<'_> {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        InjectGuard(self)
    }

    /// Waits, at most `max`, until no inject is in flight (one ends when the
    /// tool has installed the fd: microseconds, unless the tool is dying).
    fn wait_idle(&self, max: Duration) {
        let count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        let (count, timeout) = self
            .done
            .wait_timeout_while(count, max, |n| *n > 0)
            .unwrap_or_else(|p| p.into_inner());
        if timeout.timed_out() {
            tracing::warn!(
                in_flight = *count,
                "an exec went ahead of unfinished fd injects"
            );
        }
    }
}

struct InjectGuard<'a>(&'a Injects);

impl Drop for InjectGuard<'_> {
    fn drop(&mut self) {
        let mut n = self.0.count.lock().unwrap_or_else(|p| p.into_inner());
        *n -= 1;
        if *n == 0 {
            self.0.done.notify_all();
        }
    }
}

/// Unix bind names remembered at once (see `remember_unix_bind`).
const MAX_BOUND_NAMES: usize = 1024;

/// At most this many calls wait on helper threads at once; beyond, a call
/// fails with `EAGAIN` rather than letting a tool make us spawn without bound.
const MAX_HELPERS: usize = 256;

/// The controlling terminal of task `tid` (`tty_nr` in its stat; 0: none,
/// or unreadable). The file is a few hundred bytes; `comm` may hold any
/// byte but not `) `-then-digits past its 16, so the last `) ` ends it.
fn controlling_tty(tid: i32) -> i64 {
    std::fs::read_to_string(format!("/proc/{tid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(") ")?.1;
            rest.split(' ').nth(4)?.parse::<i64>().ok()
        })
        .unwrap_or(0)
}

fn syscall_name(nr: i64) -> &'static str {
    match nr {
        libc::SYS_open => "open",
        libc::SYS_openat => "openat",
        libc::SYS_openat2 => "openat2",
        libc::SYS_creat => "creat",
        libc::SYS_connect => "connect",
        libc::SYS_bind => "bind",
        libc::SYS_listen => "listen",
        libc::SYS_sendto => "sendto",
        libc::SYS_sendmsg => "sendmsg",
        libc::SYS_sendmmsg => "sendmmsg",
        libc::SYS_execve => "execve",
        libc::SYS_execveat => "execveat",
        libc::SYS_rename => "rename",
        libc::SYS_renameat => "renameat",
        libc::SYS_renameat2 => "renameat2",
        libc::SYS_link => "link",
        libc::SYS_linkat => "linkat",
        libc::SYS_symlink => "symlink",
        libc::SYS_symlinkat => "symlinkat",
        libc::SYS_socket => "socket",
        libc::SYS_personality => "personality",
        libc::SYS_io_uring_setup => "io_uring_setup",
        libc::SYS_io_uring_enter => "io_uring_enter",
        libc::SYS_io_uring_register => "io_uring_register",
        libc::SYS_clone => "clone",
        libc::SYS_clone3 => "clone3",
        libc::SYS_landlock_create_ruleset => "landlock_create_ruleset",
        libc::SYS_landlock_add_rule => "landlock_add_rule",
        libc::SYS_landlock_restrict_self => "landlock_restrict_self",
        libc::SYS_ptrace => "ptrace",
        libc::SYS_ioctl => "ioctl",
        libc::SYS_kill => "kill",
        libc::SYS_tgkill => "tgkill",
        libc::SYS_tkill => "tkill",
        libc::SYS_pidfd_open => "pidfd_open",
        libc::SYS_prlimit64 => "prlimit64",
        libc::SYS_sched_setscheduler => "sched_setscheduler",
        libc::SYS_sched_setparam => "sched_setparam",
        libc::SYS_sched_setattr => "sched_setattr",
        libc::SYS_sched_setaffinity => "sched_setaffinity",
        libc::SYS_setpriority => "setpriority",
        libc::SYS_ioprio_set => "ioprio_set",
        libc::SYS_mount => "mount",
        libc::SYS_unshare => "unshare",
        libc::SYS_setns => "setns",
        libc::SYS_bpf => "bpf",
        libc::SYS_process_vm_readv => "process_vm_readv",
        libc::SYS_pidfd_getfd => "pidfd_getfd",
        libc::SYS_process_vm_writev => "process_vm_writev",
        libc::SYS_perf_event_open => "perf_event_open",
        libc::SYS_userfaultfd => "userfaultfd",
        libc::SYS_chroot => "chroot",
        libc::SYS_pivot_root => "pivot_root",
        libc::SYS_keyctl => "keyctl",
        libc::SYS_rt_sigqueueinfo => "rt_sigqueueinfo",
        libc::SYS_rt_tgsigqueueinfo => "rt_tgsigqueueinfo",
        libc::SYS_fcntl => "fcntl",
        libc::SYS_umount2 => "umount2",
        libc::SYS_fsopen => "fsopen",
        libc::SYS_fsconfig => "fsconfig",
        libc::SYS_fsmount => "fsmount",
        libc::SYS_fspick => "fspick",
        libc::SYS_move_mount => "move_mount",
        libc::SYS_open_tree => "open_tree",
        filter::SYS_OPEN_TREE_ATTR => "open_tree_attr",
        libc::SYS_socketpair => "socketpair",
        libc::SYS_getsockopt => "getsockopt",
        libc::SYS_setsockopt => "setsockopt",
        libc::SYS_mount_setattr => "mount_setattr",
        libc::SYS_open_by_handle_at => "open_by_handle_at",
        libc::SYS_name_to_handle_at => "name_to_handle_at",
        libc::SYS_add_key => "add_key",
        libc::SYS_request_key => "request_key",
        libc::SYS_kexec_load => "kexec_load",
        libc::SYS_kexec_file_load => "kexec_file_load",
        libc::SYS_init_module => "init_module",
        libc::SYS_finit_module => "finit_module",
        libc::SYS_delete_module => "delete_module",
        libc::SYS_fanotify_init => "fanotify_init",
        libc::SYS_fanotify_mark => "fanotify_mark",
        libc::SYS_iopl => "iopl",
        libc::SYS_ioperm => "ioperm",
        libc::SYS_acct => "acct",
        libc::SYS_swapon => "swapon",
        libc::SYS_swapoff => "swapoff",
        libc::SYS_quotactl => "quotactl",
        libc::SYS_quotactl_fd => "quotactl_fd",
        libc::SYS_reboot => "reboot",
        libc::SYS_sethostname => "sethostname",
        libc::SYS_setdomainname => "setdomainname",
        libc::SYS_syslog => "syslog",
        libc::SYS_mknod => "mknod(device)",
        libc::SYS_mknodat => "mknodat(device)",
        _ => "other",
    }
}

fn open_flag_names(flags: i32) -> Vec<String> {
    let mut out = vec![match flags & libc::O_ACCMODE {
        libc::O_RDONLY => "O_RDONLY",
        libc::O_WRONLY => "O_WRONLY",
        libc::O_RDWR => "O_RDWR",
        // 3: an fd for ioctls, for which the kernel checks read and write
        // permission (`access` says both). Not O_RDONLY: a rule reading the
        // first flag as the mode would take it as read-only.
        _ => "O_ACCMODE",
    }];
    for (bit, name) in [
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NONBLOCK, "O_NONBLOCK"),
        (libc::O_DIRECTORY, "O_DIRECTORY"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_CLOEXEC, "O_CLOEXEC"),
        (libc::O_PATH, "O_PATH"),
        (libc::O_NOCTTY, "O_NOCTTY"),
        (libc::O_SYNC, "O_SYNC"),
        (libc::O_DIRECT, "O_DIRECT"),
        (libc::O_NOATIME, "O_NOATIME"),
    ] {
        if flags & bit == bit {
            out.push(name);
        }
    }
    if flags & libc::O_TMPFILE == libc::O_TMPFILE {
        out.retain(|n| *n != "O_DIRECTORY");
        out.push("O_TMPFILE");
    }
    out.into_iter().map(String::from).collect()
}

/// One message of a send, read from the tool.
struct Message {
    name: Option<Address>,
    iov: Vec<Vec<u8>>,
    /// How many iovecs the tool gave (empty ones included).
    iovecs: usize,
    /// Tool fd numbers passed as `SCM_RIGHTS`.
    fds: Vec<i32>,
    /// What the tool names in `SCM_CREDENTIALS` (unix sockets), each one.
    creds: Vec<libc::ucred>,
}

/// The largest control buffer we read (room for 250+ fds).
const MAX_CONTROL: usize = 1024;
/// The most fds one call may make us duplicate (the kernel's SCM_MAX_FD).
const MAX_FDS: usize = 253;

/// Tools' fds we hold for sends in progress, every sandbox of this process
/// together.
static FDS_IN_SENDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The most [`FDS_IN_SENDS`] may reach: half of our fd limit. A send blocks
/// holding our copies of the fds it passes, so without a bound a tool
/// filled our fd table with sends that never end, and then listing the
/// orphans to kill at its end failed: a detached descendant outlived cordon
/// (found by review). A send past it fails as the kernel fails one with too
/// many fds in flight (`ETOOMANYREFS`).
fn fds_in_sends_limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(512, |(soft, _)| (soft / 2).min(usize::MAX as u64) as usize)
    })
}

/// A send's fds, copied from the tool, counted in [`FDS_IN_SENDS`] until
/// dropped.
struct PassedFds {
    fds: Vec<OwnedFd>,
    counted: usize,
}

impl PassedFds {
    /// Copies `nums` from the tool behind `pidfd`, if the limit allows.
    fn copy(pidfd: &OwnedFd, nums: &[i32]) -> Result<PassedFds, Errno> {
        use std::sync::atomic::Ordering;
        let counted = nums.len();
        if counted > 0
            && FDS_IN_SENDS.fetch_add(counted, Ordering::SeqCst) + counted > fds_in_sends_limit()
        {
            FDS_IN_SENDS.fetch_sub(counted, Ordering::SeqCst);
            return Err(Errno::ETOOMANYREFS);
        }
        let mut passed = PassedFds {
            fds: Vec::with_capacity(counted),
            counted,
        };
        for &fd in nums {
            passed
                .fds
                .push(sys::pidfd_getfd(pidfd, fd).map_err(|_| Errno::EBADF)?);
        }
        Ok(passed)
    }

    /// Closes them (they were sent), uncounted.
    fn clear(&mut self) {
        self.fds.clear();
        FDS_IN_SENDS.fetch_sub(
            std::mem::take(&mut self.counted),
            std::sync::atomic::Ordering::SeqCst,
        );
    }
}

impl std::ops::Deref for PassedFds {
    type Target = [OwnedFd];
    fn deref(&self) -> &[OwnedFd] {
        &self.fds
    }
}

impl Drop for PassedFds {
    fn drop(&mut self) {
        FDS_IN_SENDS.fetch_sub(self.counted, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A decoded open-family call.
struct OpenCall {
    dirfd: i32,
    path_ptr: u64,
    flags: i32,
    mode: u32,
    resolve: u64,
}

impl Supervisor {
    /// Call it on the thread that will run it: that thread's credentials are
    /// the ones it switches back to after acting as the tool (they are per
    /// thread, and the threads it starts inherit them).
    pub fn new(
        listener: Arc<Listener>,
        decider: Arc<dyn Decider>,
        sandbox: Sandbox,
        broker_sockets: Vec<PathBuf>,
        protected: Protected,
        exec: ExecVerifier,
        opener: Option<Opener>,
    ) -> Self {
        Self {
            listener,
            decider,
            sandbox,
            me: Creds::of_supervisor_thread(),
            own_ids: own_ids(),
            broker_sockets: broker_sockets
                .into_iter()
                .map(|path| BrokerSocket {
                    id: nix::sys::stat::stat(path.as_path())
                        .ok()
                        .map(|st| (st.st_dev, st.st_ino)),
                    // Compared with the tool's resolved paths: resolved too.
                    path: resolved_socket_path(path),
                })
                .collect(),
            protected,
            exec,
            counters: Mutex::default(),
            tasks: TaskCache::default(),
            helpers: Default::default(),
            unix_binds: Mutex::default(),
            socket_turns: std::array::from_fn(|_| Mutex::new(())),
            opener,
            receiving: Mutex::new(()),
            connectors: {
                // On the thread that makes the supervisor, before any helper
                // (whose Landlock domain and credentials a new thread would
                // inherit), as the connectors' spawner.
                interrupt::start();
                Connectors::new()
            },
            injects: Injects::default(),
        }
    }

    /// Execs refused because they could not be verified (counted in
    /// [`Counters::undecided`] too, but only after the answer).
    pub fn exec_refusals(&self) -> u64 {
        self.exec.refusals()
    }

    pub fn counters(&self) -> Counters {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Serves notifications until no task uses the filter any more.
    /// An `Err` means the loop broke down while tasks may still use the
    /// filter: the caller must end the sandbox.
    pub fn run(self: Arc<Self>) -> Result<(), Errno> {
        let _ = self.listener.set_sync_wakeup();
        if let Err(e) = private_fs_context() {
            tracing::warn!(error = %e, "cannot unshare the supervisor thread's fs context");
            // Umask changes around binds would reach the whole process:
            // one serving thread, as before there were two.
            return self.serve(None);
        }
        // Two threads serve. An injected fd makes its thread wait until the
        // tool has installed it, and that wake-up lands on the thread's own
        // (idle, slow to wake) core; meanwhile the tool's next call is taken
        // by the other thread, woken on the tool's core. Each thread's end,
        // however it comes, wakes the other: the second thread holds
        // `alive`'s write end, this one `stop`'s. One that fails ends both,
        // so that nothing answers for a sandbox whose supervisor failed.
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
        let (Ok((alive, alive_w)), Ok((stop, stop_w))) = (pipe(), pipe()) else {
            return self.serve(None);
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let me = self.clone();
        let second = std::thread::Builder::new()
            .name("cordon-notify".into())
            .spawn(move || {
                // Its own umask too: binds set it around the call.
                if let Err(e) = private_fs_context() {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
                let _ = ready_tx.send(Ok(()));
                let _alive = alive_w;
                me.serve(Some(stop.as_fd()))
            });
        let second = match second {
            Ok(t) => match ready_rx.recv() {
                Ok(Ok(())) => t,
                _ => {
                    tracing::warn!("the second serving thread has no fs context of its own");
                    let _ = t.join();
                    return self.serve(None);
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a second serving thread");
                return self.serve(None);
            }
        };
        let first = self.serve(Some(alive.as_fd()));
        // Every task is gone (the second thread sees that too), or this
        // thread failed: either way the second one ends now.
        drop(stop_w);
        let second = match second.join() {
            Ok(result) => result,
            Err(_) => Err(Errno::EIO),
        };
        first.and(second)
    }

    /// One serving thread's loop. With `partner` (the read end of a pipe
    /// the other serving thread holds open), the other's end ends this one
    /// too: an error unless the filter has no users left either.
    fn serve(self: &Arc<Self>, partner: Option<BorrowedFd<'_>>) -> Result<(), Errno> {
        use nix::poll::{PollFd, PollFlags};
        let mut partner = partner;
        loop {
            let listener = PollFd::new(self.listener.as_fd(), PollFlags::POLLIN);
            let mut one;
            let mut both;
            let polled: &mut [PollFd] = match partner {
                Some(p) => {
                    both = [listener, PollFd::new(p, PollFlags::POLLIN)];
                    &mut both
                }
                None => {
                    one = [listener];
                    &mut one
                }
            };
            match nix::poll::poll(polled, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "polling the listener failed");
                    return Err(e);
                }
            }
            let revents = polled[0].revents().unwrap_or(PollFlags::POLLERR);
            if polled.len() > 1 && polled[1].revents().is_some_and(|r| !r.is_empty()) {
                // The other thread ended. Fine only if the filter has no
                // users left, which the listener itself reports (HUP).
                if !revents.contains(PollFlags::POLLHUP) || revents.contains(PollFlags::POLLIN) {
                    tracing::error!("the other serving thread ended while the tool runs");
                    return Err(Errno::EIO);
                }
                partner = None;
                continue;
            }
            if !revents.contains(PollFlags::POLLIN) {
                if revents.contains(PollFlags::POLLHUP) {
                    return Ok(()); // every sandboxed task is gone
                }
                tracing::error!(?revents, "the listener reported an error");
                return Err(Errno::EIO);
            }
            // Both threads wake for one notification, and a receive with
            // none pending sleeps in the kernel, deaf to the other thread's
            // end: receive one at a time, and only what a fresh look shows.
            let received = {
                let _turn = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
                let mut again = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
                match nix::poll::poll(&mut again, PollTimeout::ZERO) {
                    Ok(_)
                        if again[0]
                            .revents()
                            .is_some_and(|r| r.contains(PollFlags::POLLIN)) => {}
                    Ok(_) | Err(Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "polling the listener failed");
                        return Err(e);
                    }
                }
                self.listener.recv()
            };
            match received {
                Ok(n) => {
                    let id = n.id;
                    let handled =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.handle(n)));
                    if handled.is_err() {
                        // Denied if not answered yet; the sandbox ends.
                        let _ = self.listener.fail(id, libc::EACCES);
                        tracing::error!("handling a notification panicked");
                        return Err(Errno::EIO);
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "receiving a notification failed");
                    return Err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)));
                }
            }
        }
    }

    /// Runs `work` (which answers notification `id`) on a helper thread.
    fn spawn_helper(self: &Arc<Self>, id: u64, work: impl FnOnce() + Send + 'static) {
        self.spawn_helper_or(id, Err(Errno::EAGAIN), work)
    }

    /// [`Self::spawn_helper`], answering `busy` when no helper can start.
    fn spawn_helper_or(
        self: &Arc<Self>,
        id: u64,
        busy: Result<i64, Errno>,
        work: impl FnOnce() + Send + 'static,
    ) {
        use std::sync::atomic::Ordering;
        if self.helpers.fetch_add(1, Ordering::SeqCst) >= MAX_HELPERS {
            self.helpers.fetch_sub(1, Ordering::SeqCst);
            self.count(|c| {
                *c.forbidden
                    .entry("helper threads exhausted".into())
                    .or_default() += 1
            });
            self.answer(id, busy, None);
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("cordon-helper".into())
            .spawn(move || {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err() {
                    // Denied if it was not answered yet (else the kernel
                    // refuses this second answer).
                    let _ = me.listener.fail(id, libc::EACCES);
                }
                me.helpers.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.helpers.fetch_sub(1, Ordering::SeqCst);
            self.answer(id, busy, None);
        }
    }

    /// The tool's umask now. When its task's files were dropped since this
    /// call's `task` (the other serving thread's clean-up), they are opened
    /// again by tid: the notification, still valid after, says it is the same
    /// task.
    fn umask(&self, n: &Notification) -> Result<u32, Errno> {
        let umask = self.tasks.umask(n.tid)?;
        if !self.listener.id_valid(n.id) {
            return Err(Errno::ESRCH);
        }
        Ok(umask)
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.counters.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn forbid(&self, n: &Notification, what: String, errno: i32) {
        tracing::debug!(pid = n.tid, call = %what, "forbidden by the filter");
        self.count(|c| *c.forbidden.entry(what).or_default() += 1);
        let _ = self.listener.fail(n.id, errno);
    }

    /// [`Self::forbid`] for a call named by a number the tool picks (a socket
    /// family, a prctl option), `call(label number)`: past
    /// `MAX_NUMBERED_KINDS` numbers of one call the rest are counted as
    /// `call(other label values)`, so the tool can grow neither the counters nor
    /// the exit record without bound (the fixed names are a bounded set).
    fn forbid_numbered(&self, n: &Notification, call: &str, label: &str, number: i64, errno: i32) {
        let what = format!("{call}({label} {number})");
        tracing::debug!(pid = n.tid, call = %what, "forbidden by the filter");
        self.count(|c| {
            // This call's numbered kinds only (not `prctl(PR_SET_MM)`).
            let prefix = format!("{call}({label} ");
            let kinds = c
                .forbidden
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .count();
            let key = if kinds < MAX_NUMBERED_KINDS || c.forbidden.contains_key(&what) {
                what
            } else {
                format!("{call}(other {label} values)")
            };
            *c.forbidden.entry(key).or_default() += 1
        });
        let _ = self.listener.fail(n.id, errno);
    }

    fn handle(self: &Arc<Self>, n: Notification) {
        let result = match n.nr {
            libc::SYS_open | libc::SYS_openat | libc::SYS_openat2 | libc::SYS_creat => {
                self.handle_open(&n)
            }
            libc::SYS_connect | libc::SYS_bind => self.handle_addressed(&n),
            libc::SYS_sendto | libc::SYS_sendmsg | libc::SYS_sendmmsg => self.handle_send(&n),
            libc::SYS_listen => self.handle_listen(&n),
            libc::SYS_execve | libc::SYS_execveat => self.handle_exec(&n),
            libc::SYS_rename
            | libc::SYS_renameat
            | libc::SYS_renameat2
            | libc::SYS_link
            | libc::SYS_linkat => self.handle_names(&n),
            libc::SYS_symlink | libc::SYS_symlinkat => self.handle_symlink(&n),
            libc::SYS_socket => {
                let (domain, protocol) = (n.args[0] as i32, n.args[2] as i32);
                let sock_type = n.args[1] as i32 & 0xf;
                let ok = matches!(domain, libc::AF_UNIX | libc::AF_INET | libc::AF_INET6)
                    || (domain == libc::AF_NETLINK && protocol == libc::NETLINK_ROUTE);
                let inet = matches!(domain, libc::AF_INET | libc::AF_INET6);
                // 10: SOCK_PACKET, the obsolete raw link-layer type.
                if inet && matches!(sock_type, libc::SOCK_RAW | 10) {
                    // A raw socket (a tool with CAP_NET_RAW) writes its own
                    // headers: the port, and with IP_HDRINCL the address, the
                    // policy saw would not be where the packet goes. EPERM is
                    // what a tool without the capability gets anyway.
                    self.forbid(&n, "socket(SOCK_RAW)".into(), libc::EPERM);
                } else if ok {
                    let _ = self.listener.allow_continue(n.id);
                } else {
                    let domain = i64::from(domain);
                    self.forbid_numbered(&n, "socket", "family", domain, libc::EAFNOSUPPORT);
                }
                Ok(())
            }
            nr if nr == libc::SYS_kill
                || nr == libc::SYS_tkill
                || nr == libc::SYS_tgkill
                || nr == libc::SYS_rt_sigqueueinfo
                || nr == libc::SYS_rt_tgsigqueueinfo
                || nr == libc::SYS_pidfd_open
                || nr == libc::SYS_fcntl
                || filter::TASK_TUNING.contains(&nr) =>
            {
                if n.nr == libc::SYS_fcntl && n.args[1] as i32 == filter::F_SETOWN_EX {
                    self.forbid(&n, "fcntl(F_SETOWN_EX)".into(), libc::EPERM);
                } else if self.targets_supervisor(&n) {
                    self.forbid(
                        &n,
                        format!("{}(supervisor)", syscall_name(n.nr)),
                        libc::EPERM,
                    );
                } else {
                    let _ = self.listener.allow_continue(n.id);
                }
                Ok(())
            }
            nr if filter::CREDENTIAL_CHANGES.contains(&nr) => {
                // `setfsuid(-1)` and `setfsgid(-1)` only ask (glibc's way to
                // read the fs ids): nothing changes, nothing to forget.
                let query = matches!(nr, libc::SYS_setfsuid | libc::SYS_setfsgid)
                    && n.args[0] as u32 == u32::MAX;
                if !query {
                    // Forget first: the call runs once we answer, and the
                    // caller's next notification comes after it.
                    self.tasks.invalidate();
                }
                let _ = self.listener.allow_continue(n.id);
                Ok(())
            }
            // A zero length clears the option (tcp_wrappers, older sshd drop
            // received source routes so): nothing to route by. The length is
            // a register, so continuing cannot be raced.
            libc::SYS_setsockopt if n.args[4] as u32 == 0 => {
                let _ = self.listener.allow_continue(n.id);
                Ok(())
            }
            libc::SYS_setsockopt | libc::SYS_getsockopt
                if (n.args[1] as u32 as u64, n.args[2] as u32 as u64)
                    == (libc::SOL_SOCKET as u64, filter::SO_PASSPIDFD)
                    || (n.args[1] as u32 as u64, n.args[2] as u32 as u64)
                        == (libc::SOL_SOCKET as u64, filter::SO_PEERPIDFD) =>
            {
                let name = if n.args[2] as u32 as u64 == filter::SO_PASSPIDFD {
                    "SO_PASSPIDFD"
                } else {
                    "SO_PEERPIDFD"
                };
                self.forbid(
                    &n,
                    format!("{}({name})", syscall_name(n.nr)),
                    libc::ENOPROTOOPT,
                );
                Ok(())
            }
            libc::SYS_socketpair => {
                let domain = n.args[0] as i32;
                if domain == libc::AF_UNIX {
                    let _ = self.listener.allow_continue(n.id);
                } else if matches!(domain, libc::AF_INET | libc::AF_INET6 | libc::AF_NETLINK) {
                    // What the kernel answers for these families' pairs.
                    self.forbid_numbered(
                        &n,
                        "socketpair",
                        "family",
                        i64::from(domain),
                        libc::EOPNOTSUPP,
                    );
                } else {
                    self.forbid_numbered(
                        &n,
                        "socketpair",
                        "family",
                        i64::from(domain),
                        libc::EAFNOSUPPORT,
                    );
                }
                Ok(())
            }
            libc::SYS_setsockopt => {
                let (level, optname) = (n.args[1] as u32 as u64, n.args[2] as u32 as u64);
                let name = filter::SOURCE_ROUTE_OPTIONS
                    .iter()
                    .find(|o| (o.0, o.1) == (level, optname))
                    .map_or("a source route", |o| o.2);
                self.forbid(&n, format!("setsockopt({name})"), libc::EPERM);
                Ok(())
            }
            libc::SYS_prctl => {
                // The filter notifies `PR_SET_MM` only; any other option
                // that reaches us is refused too, under its own number.
                let option = n.args[0] as u32 as i32;
                if option == libc::PR_SET_MM {
                    self.forbid(&n, "prctl(PR_SET_MM)".to_owned(), libc::EPERM);
                } else {
                    self.forbid_numbered(&n, "prctl", "option", i64::from(option), libc::EPERM);
                }
                Ok(())
            }
            libc::SYS_personality => {
                let persona = n.args[0] as u32;
                if persona == 0 || persona == u32::MAX {
                    let _ = self.listener.allow_continue(n.id);
                } else {
                    self.forbid(&n, "personality".into(), libc::EPERM);
                }
                Ok(())
            }
            nr => {
                let errno = filter::forbidden_errno(nr).unwrap_or(libc::ENOSYS);
                self.forbid(&n, syscall_name(nr).into(), errno);
                Ok(())
            }
        };
        if let Err(e) = result {
            // ESRCH: the task went away; the answer does not matter.
            let _ = self.listener.fail(n.id, e as i32);
        }
    }

    /// Objects the tool may never reach, whatever the policy says, named
    /// for the exit record:
    /// - the supervisor's `/proc` entries, which the supervisor — a
    ///   ptrace-capable parent — could open where the tool could not (its
    ///   memory, environment, fds; and a `/proc/PID` directory fd is a
    ///   signal target for `pidfd_send_signal`), and so any procfs mounted
    ///   elsewhere than `/proc`;
    /// - the files the host protected ([`crate::Sandbox::protect`]), for
    ///   what the call would do with them (`how`; `stat`: the found file's,
    ///   if the caller has it);
    /// - for unix connects (`socket`), brokers' sockets (the sandbox's own,
    ///   the default locations, any the host named), by path or by inode (a
    ///   hard link or another mount of one is the same socket).
    fn protected(
        &self,
        canonical: &[u8],
        found: &Found,
        stat: Option<&FileStat>,
        how: Use,
        socket: bool,
    ) -> Option<&'static str> {
        // A procfs reached at another path (a second mount, a bind mount:
        // /srv/chroot/x/proc, /host/proc) has the supervisor's entries too,
        // which the check below knows by the /proc/ prefix only. The tool has
        // /proc itself: procfs anywhere else is refused.
        if !(canonical == b"/proc" || canonical.starts_with(b"/proc/")) {
            let fd = match found {
                Found::Existing(fd) => fd,
                Found::Missing { parent, .. } => parent,
            };
            // Fails closed: a file system that cannot be told is refused.
            let fs = nix::sys::statfs::fstatfs(fd)
                .ok()
                .map(|fs| fs.filesystem_type());
            if fs.is_none_or(|fs| fs == nix::sys::statfs::PROC_SUPER_MAGIC) {
                return Some("procfs outside /proc");
            }
            // binfmt_misc mounted elsewhere than /proc/sys/fs/binfmt_misc.
            if how == Use::Write && fs == Some(nix::sys::statfs::FsType(BINFMTFS_MAGIC)) {
                return Some("kernel-run program");
            }
        }
        if how == Use::Write && names_a_program_the_kernel_runs(canonical) {
            return Some("kernel-run program");
        }
        if let Some(rest) = canonical.strip_prefix(b"/proc/") {
            let id = rest.split(|&b| b == b'/').next().unwrap_or_default();
            let me = std::process::id() as i32;
            if let Some(id) = std::str::from_utf8(id)
                .ok()
                .and_then(|v| v.parse::<i32>().ok())
                && (id == me || tgid_of(id) == Some(me) || connector::is_ours(id))
            {
                return Some("supervisor /proc");
            }
        }
        if self.protected.refuses(canonical, found, stat, how) {
            return Some("protected file");
        }
        if !socket {
            return None;
        }
        if is_default_broker_socket(canonical)
            || self
                .broker_sockets
                .iter()
                .any(|broker| canonical == broker.path.as_os_str().as_bytes())
        {
            return Some("broker socket");
        }
        let Found::Existing(fd) = found else {
            return None;
        };
        let st = nix::sys::stat::fstat(fd).ok()?;
        let id = Some((st.st_dev, st.st_ino));
        // A default socket reached by another name (a hard link): its
        // owner's default location holds the same inode.
        let id_at = |path: &std::path::Path| {
            nix::sys::stat::stat(path)
                .ok()
                .map(|d| (d.st_dev, d.st_ino))
        };
        // Our broker's socket as it was at the start, and as it is now: a
        // broker that restarted made a new one (found by review: a hard
        // link to it was let through).
        let is_socket = st.st_mode & libc::S_IFMT == libc::S_IFSOCK;
        (self
            .broker_sockets
            .iter()
            .any(|broker| broker.id == id || is_socket && id_at(&broker.path) == id)
            || (is_socket
                && crate::sandbox::DEFAULT_BROKER_SOCKETS
                    .map(str::to_owned)
                    .into_iter()
                    .chain([format!("/run/user/{}/cordon/broker.sock", st.st_uid)])
                    .any(|path| id_at(std::path::Path::new(&path)) == id)))
        .then_some("broker socket")
    }

    /// Refuses a protected object (see [`Self::protected`]), counting it.
    fn refuse_protected(
        &self,
        n: &Notification,
        canonical: &[u8],
        found: &Found,
        stat: Option<&FileStat>,
        how: Use,
        socket: bool,
    ) -> Result<(), Errno> {
        match self.protected(canonical, found, stat, how, socket) {
            Some(what) => Err(self.refuse_counted(n, what)),
            None => Ok(()),
        }
    }

    /// Counts call `n` as refused for `what`, whatever the policy says (the
    /// exit record's `call(what)×N`), and gives its errno, `EACCES`.
    fn refuse_counted(&self, n: &Notification, what: &str) -> Errno {
        self.count(|c| {
            *c.forbidden
                .entry(format!("{}({what})", syscall_name(n.nr)))
                .or_default() += 1
        });
        Errno::EACCES
    }

    /// Remembers the canonical path a unix socket was bound to (by socket
    /// inode), for `listen`'s decision. Bounded: forgotten wholesale past
    /// [`MAX_BOUND_NAMES`].
    fn remember_unix_bind(&self, sock: &OwnedFd, name: Vec<u8>) {
        if let Ok(st) = nix::sys::stat::fstat(sock) {
            let mut names = self.unix_binds.lock().unwrap_or_else(|p| p.into_inner());
            if names.len() >= MAX_BOUND_NAMES {
                names.clear();
            }
            names.insert(st.st_ino, name);
        }
    }

    /// The turn of `sock` for a `bind` or `listen` (see `socket_turns`).
    fn socket_turn(&self, sock: &OwnedFd) -> Result<std::sync::MutexGuard<'_, ()>, Errno> {
        let ino = nix::sys::stat::fstat(sock)?.st_ino;
        Ok(self.socket_turns[(ino % SOCKET_TURNS as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner()))
    }

    fn bound_unix_name(&self, sock: &OwnedFd) -> Option<Vec<u8>> {
        let st = nix::sys::stat::fstat(sock).ok()?;
        let names = self.unix_binds.lock().unwrap_or_else(|p| p.into_inner());
        names.get(&st.st_ino).cloned()
    }

    /// Whether a signal (or a pidfd, or SIGIO ownership) would reach the
    /// supervisor: any of its threads, its process group, or everyone. The
    /// arguments are registers, so "continue" after this check is safe.
    fn targets_supervisor(&self, n: &Notification) -> bool {
        let me = std::process::id() as i32;
        let my_pgid = nix::unistd::getpgrp().as_raw();
        let mine =
            |id: i32| id == me || (id > 0 && tgid_of(id) == Some(me)) || connector::is_ours(id);
        let group = |pgid: i32| pgid == my_pgid;
        let caller_group = || {
            nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(n.tid)))
                .map(|p| p.as_raw() == my_pgid)
                .unwrap_or(true)
        };
        let a0 = n.args[0] as i32;
        match n.nr {
            libc::SYS_kill | libc::SYS_rt_sigqueueinfo => match a0 {
                -1 => true,
                0 => caller_group(),
                p if p < 0 => group(p.wrapping_neg()),
                p => mine(p),
            },
            libc::SYS_tkill | libc::SYS_pidfd_open => mine(a0),
            libc::SYS_tgkill | libc::SYS_rt_tgsigqueueinfo => a0 == me || mine(n.args[1] as i32),
            libc::SYS_fcntl => match n.args[2] as i32 {
                p if p < 0 => group(p.wrapping_neg()),
                p => mine(p),
            },
            // A task named by pid or tid; 0 is the caller. A prlimit64 that
            // only reads (no new limit) changes nothing.
            libc::SYS_prlimit64 => n.args[2] != 0 && a0 != 0 && mine(a0),
            libc::SYS_sched_setscheduler
            | libc::SYS_sched_setparam
            | libc::SYS_sched_setattr
            | libc::SYS_sched_setaffinity => a0 != 0 && mine(a0),
            libc::SYS_setpriority | libc::SYS_ioprio_set => {
                // (which, who): one process, a process group, or a user's
                // every process (refused for the caller's user or the
                // supervisor's: the supervisor runs as that user).
                let process = if n.nr == libc::SYS_setpriority {
                    libc::PRIO_PROCESS as i32
                } else {
                    filter::IOPRIO_WHO_PROCESS as i32
                };
                let who = n.args[1] as i32;
                match a0.wrapping_sub(process) {
                    0 => who != 0 && mine(who),
                    1 if who == 0 => caller_group(),
                    1 => group(who),
                    2 => who == 0 || who as u32 == nix::unistd::getuid().as_raw(),
                    _ => false,
                }
            }
            _ => false,
        }
    }

    /// The task behind a notification, read after the arguments: if the id
    /// is still valid the task is the one that made the call.
    fn task(&self, n: &Notification) -> Result<Task, Errno> {
        self.task_with(n, true)
    }

    /// [`Supervisor::task`], with `cwd` empty (where the facts are kept)
    /// unless `cwd`.
    fn task_with(&self, n: &Notification, cwd: bool) -> Result<Task, Errno> {
        let task = if cwd {
            self.tasks.inspect(n.tid)?
        } else {
            self.tasks.inspect_without_cwd(n.tid)?
        };
        if !self.listener.id_valid(n.id) {
            return Err(Errno::ESRCH);
        }
        Ok(task)
    }

    fn request(&self, task: &Task, n: &Notification, subject: Subject) -> DecideRequest {
        DecideRequest {
            request_id: 0,
            sandbox: Some(self.sandbox.clone()),
            process: Some(Process {
                pid: task.tgid,
                ppid: task.ppid,
                uid: task.uid,
                gid: task.gid,
                exe: task.exe.clone(),
                cwd: task.cwd.clone(),
                comm: task.comm.clone(),
            }),
            syscall: syscall_name(n.nr).into(),
            subject: Some(subject),
            // Set by a remote client as it sends the request.
            timeout_ns: 0,
            deadline_unix_ns: 0,
        }
    }

    /// Asks for a decision. Fail-closed: anything but a clear allow is an
    /// `Err` carrying a real, non-zero errno (an errno the shim does not know,
    /// or none, is `EACCES`: a zero would complete the call as a success).
    pub fn ask(&self, req: DecideRequest) -> Result<(), Errno> {
        let answer = match self.decider.decide_owned(req) {
            Ok(d) if d.allow => Ok(()),
            Ok(d) => Err(denial_errno(d.errno_code)),
            Err((e, req)) => {
                tracing::warn!(
                    error = %e,
                    pid = req.process.as_ref().map_or(0, |p| p.pid),
                    syscall = %req.syscall,
                    call = %describe(&req),
                    "no decision; denying"
                );
                self.count(|c| c.undecided += 1);
                Err(Errno::EACCES)
            }
        };
        self.count(|c| {
            c.decisions += 1;
            if answer.is_err() {
                c.denied += 1;
            }
        });
        answer
    }

    // --- files ---------------------------------------------------------------

    fn decode_open(&self, n: &Notification, mem: &ToolMemory) -> Result<OpenCall, Errno> {
        let a = n.args;
        Ok(match n.nr {
            libc::SYS_open => OpenCall {
                dirfd: libc::AT_FDCWD,
                path_ptr: a[0],
                flags: a[1] as i32,
                mode: a[2] as u32,
                resolve: 0,
            },
            libc::SYS_creat => OpenCall {
                dirfd: libc::AT_FDCWD,
                path_ptr: a[0],
                flags: libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
                mode: a[1] as u32,
                resolve: 0,
            },
            libc::SYS_openat => OpenCall {
                dirfd: a[0] as i32,
                path_ptr: a[1],
                flags: a[2] as i32,
                mode: a[3] as u32,
                resolve: 0,
            },
            _ => {
                // openat2(dirfd, path, struct open_how *how, size_t size)
                let size = a[3] as usize;
                if size < 24 {
                    return Err(Errno::EINVAL);
                }
                if size > 4096 {
                    return Err(Errno::E2BIG);
                }
                // The rest must be zero, checked first, as the kernel does
                // (`copy_struct_from_user`): a page at a time, so that a
                // non-zero byte before an unreadable page is E2BIG, as the
                // kernel (which stops at it) says, not EFAULT.
                let mut at = a[2].checked_add(24).ok_or(Errno::EFAULT)?;
                let end = a[2].checked_add(size as u64).ok_or(Errno::EFAULT)?;
                while at < end {
                    let page_end = (at | 4095).saturating_add(1);
                    let chunk = mem.read(at, (page_end.min(end) - at) as usize)?;
                    if chunk.iter().any(|&b| b != 0) {
                        return Err(Errno::E2BIG);
                    }
                    at = page_end;
                }
                let how = mem.read(a[2], 24)?;
                let word = |i: usize| u64::from_ne_bytes(how[i..i + 8].try_into().expect("8"));
                if word(0) > u32::MAX as u64 {
                    return Err(Errno::EINVAL);
                }
                let (flags, mode, resolve) = (word(0) as i32, word(8), word(16));
                // The kernel's `build_open_flags` checks, in its order.
                if flags & !VALID_OPEN_FLAGS != 0 {
                    return Err(Errno::EINVAL);
                }
                let creates =
                    flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE;
                if creates && mode & !0o7777 != 0 || !creates && mode != 0 {
                    return Err(Errno::EINVAL);
                }
                // Then the checks `openat` shares, and O_PATH's own: only
                // the flags that mean something with it.
                check_open_flags(flags)?;
                if flags & libc::O_PATH != 0 && flags & !O_PATH_FLAGS != 0 {
                    return Err(Errno::EINVAL);
                }
                // RESOLVE_NO_XDEV … RESOLVE_CACHED; anything else is EINVAL.
                const KNOWN_RESOLVE: u64 = 0x3f;
                if resolve & !KNOWN_RESOLVE != 0
                    || resolve & libc::RESOLVE_BENEATH != 0 && resolve & libc::RESOLVE_IN_ROOT != 0
                {
                    return Err(Errno::EINVAL);
                }
                // CACHED asks for a lookup without I/O, never one that may
                // write; the lookup here is a full one (the hint is dropped).
                if resolve & libc::RESOLVE_CACHED != 0
                    && flags & (libc::O_TRUNC | libc::O_CREAT | O_TMPFILE_BIT) != 0
                {
                    return Err(Errno::EAGAIN);
                }
                OpenCall {
                    dirfd: a[0] as i32,
                    path_ptr: a[1],
                    flags,
                    mode: mode as u32,
                    resolve: resolve & !libc::RESOLVE_CACHED,
                }
            }
        })
    }

    fn handle_open(self: &Arc<Self>, n: &Notification) -> Result<(), Errno> {
        self.handle_open_attempt(n, CREATE_RACE_RETRIES)
    }

    /// One lookup, decision and open. A name found missing is created with
    /// `O_EXCL`: if something took the name since (another thread's rename
    /// or link), the decision was about a file that is not the one there,
    /// and the call is looked up and decided again, `retries` more times.
    fn handle_open_attempt(self: &Arc<Self>, n: &Notification, retries: u32) -> Result<(), Errno> {
        let mem = ToolMemory::new(n.tid);
        let mut call = self.decode_open(n, &mem)?;
        if call.flags & libc::O_PATH != 0 && n.nr != libc::SYS_openat2 {
            // What `openat` keeps of an O_PATH open (the kernel's
            // `build_open_how`): O_CREAT and the rest mean nothing then.
            call.flags &= O_PATH_FLAGS;
        }
        // (`decode_open` checked an openat2's already, in the kernel's order.)
        if n.nr != libc::SYS_openat2 {
            check_open_flags(call.flags)?;
        }
        if n.nr == libc::SYS_openat2 && call.flags & libc::O_PATH != 0 {
            // O_PATH opens are answered "continue" (ADDFD cannot install
            // them), and openat2's flags live in the tool's memory: another
            // thread could swap O_PATH for O_RDWR after the check. ENOSYS
            // makes callers fall back to openat, whose flags are a register.
            self.forbid(n, "openat2(O_PATH)".into(), libc::ENOSYS);
            return Ok(());
        }
        let path = mem.read_cstr(call.path_ptr, PATH_MAX - 1)?;
        // A lookup from the cwd opens it and reads its path: `process.cwd`
        // comes from there, not from a second read of the link.
        let from_cwd = call.dirfd == libc::AT_FDCWD && path.first() != Some(&b'/');
        let mut task = if from_cwd {
            self.task_with(n, false)?
        } else {
            self.task(n)?
        };
        let flags = call.flags;
        let is_tmpfile = flags & libc::O_TMPFILE == libc::O_TMPFILE;
        let creates = flags & libc::O_CREAT != 0 && !is_tmpfile;
        let lookup = Lookup {
            tid: n.tid,
            tgid: task.tgid,
            dirfd: call.dirfd,
            path: &path,
            // O_CREAT | O_EXCL never follows a final symlink: the link is
            // what exists (EEXIST), as the kernel says.
            follow: flags & libc::O_NOFOLLOW == 0 && !(creates && flags & libc::O_EXCL != 0),
            create: if creates { Create::Open } else { Create::No },
            resolve: call.resolve,
        };
        // A path that does not resolve fails as the kernel would have failed
        // it; there is nothing to open, so nothing to decide.
        let (resolved_path, found) = self.resolve_for(&mut task, &lookup, n.id)?;
        if task.cwd.is_empty() {
            // Unreachable: a lookup from the cwd that found something has
            // opened it. Never a request without the caller's cwd.
            return Err(Errno::EACCES);
        }
        // An existing file's status, read once.
        let stat = match &found {
            // A file we hold but cannot stat is denied, not waved past the
            // /dev/tty check below.
            Found::Existing(fd) => Some(nix::sys::stat::fstat(fd).map_err(|_| Errno::EACCES)?),
            Found::Missing { .. } => None,
        };
        // (file type, device, owner)
        let existing = stat
            .as_ref()
            .map(|s| (s.st_mode & libc::S_IFMT, s.st_rdev, s.st_uid));
        // What O_CREAT on an existing file fails with, in the kernel's order,
        // before any decision (the supervisor's own open drops O_CREAT, so
        // it would skip them): O_EXCL, a directory, and a file someone else
        // left in a sticky directory (fs.protected_regular / protected_fifos).
        if creates && let Some((kind, _, owner)) = existing {
            if flags & libc::O_EXCL != 0 {
                return Err(Errno::EEXIST);
            }
            if kind == libc::S_IFDIR {
                return Err(Errno::EISDIR);
            }
            let file = stat.as_ref().map_or((0, 0), |s| (s.st_dev, s.st_ino));
            if emulate::refused_in_sticky(
                &path,
                &resolved_path,
                (kind, owner, file),
                task.creds.fsuid,
            ) {
                return Err(Errno::EACCES);
            }
        }
        // Then O_DIRECTORY on anything else, a symlink under O_NOFOLLOW
        // included (`do_open`: before the symlink's ELOOP).
        if flags & libc::O_DIRECTORY != 0
            && existing.is_some_and(|(kind, _, _)| kind != libc::S_IFDIR)
        {
            return Err(Errno::ENOTDIR);
        }
        // /dev/tty means the opener's controlling terminal: ours, were we to
        // open it. Only a tool whose terminal is ours may have it; one with
        // none (its own session: the kernel's ENXIO) or with another (one it
        // took with TIOCSCTTY, which we cannot open for it) gets ENXIO.
        if existing
            .is_some_and(|(kind, dev, _)| (kind, dev) == (libc::S_IFCHR, libc::makedev(5, 0)))
        {
            let theirs = controlling_tty(n.tid);
            if !self.listener.id_valid(n.id) {
                return Err(Errno::ESRCH);
            }
            if theirs == 0 || theirs != controlling_tty(std::process::id() as i32) {
                return Err(Errno::ENXIO);
            }
        }
        // Opens no policy may allow (EACCES, whatever it says).
        // /dev/userfaultfd hands out what the filter refuses as a call: a
        // userfaultfd, whose registered pages would stall the supervisor's
        // reads of the tool's memory, and every serving thread with them
        // (found by review); an O_PATH open, which gives no ioctl, goes on.
        // A tun device is bound to its opener's network namespace: ours,
        // were we to open it for a tool in a namespace of its own
        // (`--network none`), whose interfaces would then be the host's.
        // The same for the IPC state files, and for the network's sysctls
        // (a root tool's writes would set the host's forwarding).
        let char_device = |want: Option<u64>| {
            existing.is_some_and(|(kind, dev, _)| kind == libc::S_IFCHR && Some(dev) == want)
        };
        let refused = if flags & libc::O_PATH == 0 && char_device(userfaultfd_device()) {
            Some("/dev/userfaultfd")
        } else if char_device(Some(libc::makedev(10, 200))) {
            (!same_namespace(n.tid, "net")).then_some("tun device of another netns")
        } else if names_ipc_namespace_state(&resolved_path) {
            (!same_namespace(n.tid, "ipc")).then_some("IPC state of another namespace")
        } else if resolved_path.starts_with(b"/proc/sys/net/") {
            (!same_namespace(n.tid, "net")).then_some("network state of another namespace")
        } else {
            None
        };
        if let Some(what) = refused {
            if !self.listener.id_valid(n.id) {
                return Err(Errno::ESRCH);
            }
            return Err(self.refuse_counted(n, what));
        }
        // Writing, truncating or creating a file (`O_PATH` ignores the
        // rest; `O_CREAT` on a file that exists only opens it).
        let writes = flags & libc::O_PATH == 0
            && (flags & libc::O_ACCMODE != libc::O_RDONLY
                || flags & libc::O_TRUNC != 0
                || creates && matches!(found, Found::Missing { .. })
                || is_tmpfile);
        let how = if writes { Use::Write } else { Use::Read };
        self.refuse_protected(n, &resolved_path, &found, stat.as_ref(), how, false)?;
        // Natively a full fd table fails the open before it truncates; here
        // the fd is injected after the open: a file with contents is not
        // truncated for a tool that cannot take the fd (found by review).
        let truncates = flags & libc::O_TRUNC != 0
            && flags & libc::O_PATH == 0
            && stat
                .as_ref()
                .is_some_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFREG && s.st_size > 0);
        if truncates && !crate::process::has_fd_room(n.tid) {
            return Err(Errno::EMFILE);
        }
        let access: Vec<String> = if flags & libc::O_PATH != 0 {
            vec![]
        } else {
            match flags & libc::O_ACCMODE {
                libc::O_WRONLY => vec!["write".into()],
                libc::O_RDONLY => vec!["read".into()],
                // O_RDWR, and 3, for which the kernel checks both too.
                _ => vec!["read".into(), "write".into()],
            }
        };
        let file = FileAccess {
            path: resolved_path,
            access,
            create: creates && matches!(found, Found::Missing { .. }) || is_tmpfile,
            truncate: flags & libc::O_TRUNC != 0,
            flags: open_flag_names(flags),
        };
        self.ask(self.request(&task, n, Subject::File(file)))?;
        if flags & libc::O_PATH != 0 {
            // ADDFD cannot install O_PATH files. An O_PATH fd grants no
            // access to contents; every use that would (reopen, exec) is
            // brokered again through /proc/PID/fd/N.
            let _ = self.listener.allow_continue(n.id);
            return Ok(());
        }
        let kind = existing.map(|(kind, _, _)| kind);
        let blocking_fifo = flags & libc::O_NONBLOCK == 0 && kind == Some(libc::S_IFIFO);
        // The umask (shared between threads, so not kept) only for a file
        // this open may create.
        let umask = if creates || is_tmpfile {
            self.umask(n)?
        } else {
            0
        };
        // The tool's own O_EXCL: its EEXIST is the answer, not a race.
        let create_raced_if_exists =
            matches!(found, Found::Missing { .. }) && flags & libc::O_EXCL == 0;
        let job = OpenJob {
            id: n.id,
            tgid: task.tgid,
            tid: n.tid,
            flags,
            mode: call.mode,
            umask,
            kind,
            create_raced_if_exists,
        };
        let creds = task.creds;
        let me = self.clone();
        if blocking_fifo {
            // Opening a FIFO waits for the other end: not on this thread.
            // (Never a create: the FIFO exists.)
            self.spawn_helper(n.id, move || me.open_waiting(job, found, creds));
            return Ok(());
        }
        match self.open_and_inject(job, found, creds, Attempt::FirstTry) {
            Opened::Answered => {}
            Opened::Leased(found, creds) => {
                // Waits until the lease holder lets go (or the kernel's
                // lease-break-time): on a helper thread, as a FIFO's. With
                // every helper taken (256 calls waiting), EAGAIN, as for a
                // FIFO: a wait here would hold every brokered call of the
                // sandbox, a thread's creation (clone3) included.
                self.count(|c| c.lease_waits += 1);
                self.spawn_helper(n.id, move || {
                    me.open_waiting(job, found, creds);
                });
            }
            Opened::NameTaken if retries == 0 => {
                // A tool racing itself on purpose: the call is denied (its
                // allow records stay: decisions for creates that did not
                // happen).
                tracing::warn!(tid = n.tid, "a create kept finding its name taken; denying");
                self.count(|c| c.denied += 1);
                return Err(Errno::EACCES);
            }
            Opened::NameTaken => {
                self.count(|c| c.create_races += 1);
                return self.handle_open_attempt(n, retries - 1);
            }
        }
        Ok(())
    }

    /// [`Self::open_and_inject`] on a helper thread, for an open that may
    /// wait (a FIFO's other end, a lease being broken). Never a create, nor
    /// a first try: answered whatever it ends with.
    fn open_waiting(self: &Arc<Self>, job: OpenJob, found: Found, creds: Creds) {
        if !matches!(
            self.open_and_inject(job, found, creds, Attempt::OnHelper),
            Opened::Answered
        ) {
            let _ = self.listener.fail(job.id, libc::EACCES);
        }
    }

    /// Performs an allowed open as the tool and injects its fd (or answers
    /// its errno), as `attempt` says. A first try opens an existing regular
    /// file the tool opens without `O_NONBLOCK` with it: a lease being
    /// broken (another process's `F_SETLEASE`) then comes back as
    /// `EWOULDBLOCK` ([`Opened::Leased`]) instead of holding this thread,
    /// and behind it the sandbox's other opens, for up to the kernel's
    /// lease-break-time (45 s).
    fn open_and_inject(
        self: &Arc<Self>,
        job: OpenJob,
        found: Found,
        creds: Creds,
        attempt: Attempt,
    ) -> Opened {
        let OpenJob {
            id,
            tgid,
            tid,
            flags,
            mode,
            umask,
            kind,
            create_raced_if_exists,
        } = job;
        let waits = attempt == Attempt::OnHelper;
        let lease_probe = attempt == Attempt::FirstTry
            && flags & libc::O_NONBLOCK == 0
            && kind == Some(libc::S_IFREG);
        let try_flags = if lease_probe {
            flags | libc::O_NONBLOCK
        } else {
            flags
        };
        let listener = self.listener.clone();
        let open = move |creds: &Creds, mine: &Creds, found: &Found| {
            with_opener_creds(creds, mine, || {
                let call = || emulate::open_found(found, kind, try_flags, mode, umask);
                // On its helper thread: a signal the tool handles ends it.
                if waits {
                    let pending = move || listener.id_valid(id);
                    interrupt::while_blocked(tgid, tid, pending, true, call)
                } else {
                    call()
                }
            })
            .and_then(|r| r)
        };
        // Inside the kernel backstop too, when it could refuse this open:
        // on the restricted opener thread, or (on a helper thread of its
        // own) by restricting this thread first. What was found comes back,
        // to undo a create whose fd cannot be given.
        let (opened, kept) = match &self.opener {
            Some(o) if o.governs_open(flags) && waits => {
                let opened = match o.restrict_this_thread() {
                    Ok(()) => open(&creds, &self.me, &found),
                    Err(_) => Err(Errno::EACCES),
                };
                (opened, Some((found, creds)))
            }
            Some(o) if o.governs_open(flags) => {
                let mine = self.me.clone();
                match o.run(move || (open(&creds, &mine, &found), found, creds)) {
                    Some((opened, found, creds)) => (opened, Some((found, creds))),
                    None => (Err(Errno::EACCES), None),
                }
            }
            _ => (open(&creds, &self.me, &found), Some((found, creds))),
        };
        let opened = match (opened, kept) {
            (Err(Errno::EAGAIN), Some((found, creds))) if lease_probe => {
                return Opened::Leased(found, creds);
            }
            (Ok(fd), kept) if lease_probe => (emulate::without_nonblock(fd, flags), kept),
            other => other,
        };
        match opened {
            (Ok(fd), kept) => {
                // Only a writable file makes an exec of it ETXTBSY.
                let _inject =
                    (flags & libc::O_ACCMODE != libc::O_RDONLY).then(|| self.injects.begin());
                if let Err(e) =
                    self.listener
                        .inject_fd_and_return(id, &fd, flags & libc::O_CLOEXEC != 0)
                {
                    // Not given for want of an fd number (EMFILE, which
                    // natively comes before the create): what this open
                    // created goes again. Not when the call is gone
                    // (ENOENT: killed, or interrupted by a signal), where
                    // another thread may have opened it by name.
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        if let Some((Found::Missing { parent, name }, creds)) = &kept {
                            let _ = with_creds(creds, &self.me, || {
                                emulate::undo_create(parent, name, &fd)
                            });
                        }
                        let _ = self
                            .listener
                            .fail(id, e.raw_os_error().unwrap_or(libc::EIO));
                    }
                }
            }
            (Err(Errno::EEXIST), _) if create_raced_if_exists => return Opened::NameTaken,
            (Err(e), _) => {
                let _ = self.listener.fail(id, interrupt::answer_errno(e));
            }
        }
        Opened::Answered
    }

    // --- network -------------------------------------------------------------

    /// A pidfd on the calling thread (its process before Linux 6.9), taken
    /// before re-checking the notification: if the id is still valid, the id
    /// was not reused. The thread's: `pidfd_getfd` reads the fd table of the
    /// task it names, and a thread made without `CLONE_FILES` has its own.
    fn tool_pidfd(&self, n: &Notification, task: &Task) -> Result<OwnedFd, Errno> {
        // Whether this kernel has `PIDFD_THREAD`, asked once on a thread of
        // ours (a tool thread's EINVAL may only mean it is exiting).
        static THREAD_PIDFD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let supported = *THREAD_PIDFD
            .get_or_init(|| sys::pidfd_open_thread(nix::unistd::gettid().as_raw()).is_ok());
        let pidfd = if supported {
            sys::pidfd_open_thread(n.tid)
        } else {
            sys::pidfd_open(task.tgid)
        }
        .map_err(|_| Errno::ESRCH)?;
        if !self.listener.id_valid(n.id) {
            return Err(Errno::ESRCH);
        }
        Ok(pidfd)
    }

    /// Our duplicate of the tool's fd `fd` (the same open socket).
    fn tool_socket(&self, pidfd: &OwnedFd, fd: i32) -> Result<OwnedFd, Errno> {
        sys::pidfd_getfd(pidfd, fd)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)))
    }

    /// Looks a path up as the tool would, with its credentials: its
    /// canonical path and what was found, or the errno the kernel would
    /// have given. A lookup that started from the tool's cwd also sets
    /// `task.cwd`, to the path of the directory it opened: the policy sees
    /// the cwd the path was resolved from, even if another thread changed it
    /// since the task's facts were read.
    fn resolve_for(
        &self,
        task: &mut Task,
        lookup: &Lookup,
        id: u64,
    ) -> Result<(Vec<u8>, Found), Errno> {
        // Where it starts, through the tool's own links, as ourselves; the
        // walk from there as the tool (`resolve::start`). Where our
        // credentials follow links the tool's could not (the kernel compares
        // fs ids, or asks for `CAP_SYS_PTRACE`), the caller must still be
        // waiting, so that `/proc/TID` was it, not a process that took its
        // tid after it was killed. (Not otherwise: one `ioctl` more, +0.4 µs
        // on every relative open.)
        const CAP_SYS_PTRACE: u64 = 1 << 19;
        let stronger = (self.me.fsuid, self.me.fsgid) != (task.creds.fsuid, task.creds.fsgid)
            || self.me.cap_eff & !task.creds.cap_eff & CAP_SYS_PTRACE != 0;
        let start = resolve::start(lookup);
        if stronger && start.went_through_proc() && !self.listener.id_valid(id) {
            return Err(Errno::ESRCH);
        }
        let resolved = with_creds(&task.creds, &self.me, || resolve::walk(lookup, start))?;
        let found = resolved.found?;
        if let Some(cwd) = resolved.cwd {
            task.cwd = cwd;
        }
        Ok((resolved.path, found))
    }

    /// For unix paths: the resolved object (or parent + name for bind) and the
    /// `/proc/self/fd/...` path that names it for our own call.
    fn resolve_unix(
        &self,
        task: &mut Task,
        n: &Notification,
        path: &[u8],
        create: bool,
    ) -> Result<(Vec<u8>, Found), Errno> {
        let lookup = Lookup {
            tid: n.tid,
            tgid: task.tgid,
            dirfd: libc::AT_FDCWD,
            path,
            follow: true,
            create: if create { Create::Bind } else { Create::No },
            resolve: 0,
        };
        let (path, found) = self.resolve_for(task, &lookup, n.id)?;
        if create && matches!(found, Found::Existing(_)) {
            return Err(Errno::EADDRINUSE);
        }
        Ok((path, found))
    }

    /// Runs `op` now, or on its own thread when it may block (a blocking
    /// socket), unless the caller no longer waits, and answers the
    /// notification with its result; on `EPIPE` a
    /// SIGPIPE to `(tgid, tid)` if given.
    /// `in_backstop`: the call is one Landlock governs (connect, bind), so it
    /// runs inside the kernel backstop when there is one.
    fn perform_then(
        self: &Arc<Self>,
        n: &Notification,
        task: &Task,
        may_block: bool,
        sigpipe: Option<(i32, i32)>,
        in_backstop: bool,
        op: impl FnOnce() -> Result<i64, Errno> + Send + 'static,
    ) {
        let me = self.clone();
        let creds = task.creds.clone();
        let id = n.id;
        let run = move || {
            // Not for a caller that stopped waiting while its decision was
            // made (killed, or interrupted by a signal): natively its call
            // would not have happened. (A caller that goes after this check
            // still has it done.)
            if !me.listener.id_valid(id) {
                return;
            }
            let result = match (&me.opener, in_backstop) {
                (Some(o), true) if may_block => match o.restrict_this_thread() {
                    Ok(()) => with_creds(&creds, &me.me, op).and_then(|r| r),
                    Err(_) => Err(Errno::EACCES),
                },
                (Some(o), true) => {
                    let mine = me.me.clone();
                    o.run(move || with_creds(&creds, &mine, op).and_then(|r| r))
                        .unwrap_or(Err(Errno::EACCES))
                }
                _ => with_creds(&creds, &me.me, op).and_then(|r| r),
            };
            me.answer(id, result, sigpipe);
        };
        if may_block {
            self.spawn_helper(id, run);
        } else {
            run();
        }
    }

    /// Answers notification `id` with `result`, after a SIGPIPE to
    /// `(tgid, tid)` if given and the result is `EPIPE`.
    fn answer(&self, id: u64, result: Result<i64, Errno>, sigpipe: Option<(i32, i32)>) {
        // Only while the call is pending is `tid` the caller: after a
        // long blocking send it may have died and its id been reused.
        if let (Err(Errno::EPIPE), Some((tgid, tid))) = (&result, sigpipe)
            && self.listener.id_valid(id)
        {
            let _ = tgkill_sigpipe(tgid, tid);
        }
        let _ = match result {
            Ok(v) => self.listener.succeed(id, v),
            Err(e) => self.listener.fail(id, interrupt::answer_errno(e)),
        };
    }

    /// Builds the network subject for an address; for unix paths resolves
    /// them and returns the path our own call must use.
    #[allow(clippy::type_complexity)]
    fn network_subject(
        &self,
        task: &mut Task,
        n: &Notification,
        op: &str,
        addr: &Address,
        sock_type: i32,
    ) -> Result<(NetworkAccess, Option<(Vec<u8>, Found)>), Errno> {
        let (family, address, port, v4_mapped) = emulate::describe(addr);
        let mut access = NetworkAccess {
            op: op.into(),
            family: family.into(),
            protocol: emulate::protocol_name(family, sock_type).into(),
            address,
            port,
            path: vec![],
            v4_mapped,
        };
        let mut unix = None;
        match addr {
            Address::UnixPath(p) => {
                let (canonical, found) = self.resolve_unix(task, n, p, op == "bind")?;
                let how = if op == "bind" { Use::Write } else { Use::Read };
                self.refuse_protected(n, &canonical, &found, None, how, true)?;
                access.path = canonical.clone();
                unix = Some((canonical, found));
            }
            Address::UnixAbstract(name) => {
                access.path = [b"@".as_slice(), name].concat();
            }
            Address::UnixUnnamed => access.path = b"@".to_vec(),
            _ => {}
        }
        Ok((access, unix))
    }

    /// connect and bind.
    fn handle_addressed(self: &Arc<Self>, n: &Notification) -> Result<(), Errno> {
        let op = syscall_name(n.nr);
        let mem = ToolMemory::new(n.tid);
        let (fd, addr_ptr, addr_len) = (n.args[0] as i32, n.args[1], n.args[2] as u32 as usize);
        if addr_len > std::mem::size_of::<libc::sockaddr_storage>() {
            return Err(Errno::EINVAL);
        }
        let raw = mem.read(addr_ptr, addr_len)?;
        let mut task = self.task(n)?;
        let sock = self.tool_socket(&self.tool_pidfd(n, &task)?, fd)?;
        let sock_type = emulate::socket_type(&sock)?;
        let addr = emulate::parse_sockaddr(&raw)?;
        // A bind to an unspecified address means every local one.
        let addr = if n.nr == libc::SYS_connect {
            addr.as_destination(|| emulate::bound_ip(&sock))
        } else {
            addr
        };
        let may_block = n.nr == libc::SYS_connect && emulate::is_blocking(&sock);
        // A stream connect may wait even on a socket that is non-blocking
        // now, made on a serving thread: O_NONBLOCK is the open file's,
        // shared with our duplicate, and another thread or process of the
        // tool may clear it before our connect. So every inet stream connect
        // is made interruptible (`while_blocked`): by a signal the tool handles,
        // and by the caller's end. Otherwise that serving thread stalled,
        // deaf to both, until the peer gave up (minutes). A datagram connect
        // never waits.
        let stream = sock_type != libc::SOCK_DGRAM;
        // A bind is performed below, on this thread or the opener's, before
        // this returns: its turn covers the decision and the bind.
        let _turn = if n.nr == libc::SYS_bind {
            Some(self.socket_turn(&sock)?)
        } else {
            None
        };
        let mut unix_call_path = None;
        let mut keep_alive = None;
        let mut bound_name = None;
        refuse_netlink_peer(op, &addr, &task)?;
        if addr.needs_decision(op) {
            let (access, unix) = self.network_subject(&mut task, n, op, &addr, sock_type)?;
            self.ask(self.request(&task, n, Subject::Network(access)))?;
            if let Some((canonical, found)) = unix {
                bound_name = Some(canonical);
                // A connect is made in a connector, which has the fd at
                // PATH_SLOT; a bind here, with our own number.
                let number = |fd: &OwnedFd| {
                    if n.nr == libc::SYS_connect {
                        connector::PATH_SLOT
                    } else {
                        fd.as_raw_fd()
                    }
                };
                unix_call_path = Some(match &found {
                    Found::Existing(fd) => emulate::unix_via_fd(number(fd), None)?,
                    Found::Missing { parent, name } => {
                        emulate::unix_via_fd(number(parent), Some(name))?
                    }
                });
                keep_alive = Some(found);
            }
        }
        if n.nr == libc::SYS_bind
            && let Address::Inet { addr: inet, .. } = &addr
            && lacks_bind_service(inet.port(), &task)
            && !netns_is_ours(&sock)
        {
            // Our bind is checked against our capabilities in the user
            // namespace that owns the socket's network namespace. Where that
            // is not ours, we may own it (`--network none` without root
            // makes it; a root supervisor owns any root made) and then hold
            // every capability there, whatever `with_creds` lowered: the
            // kernel would let our bind through where the tool's own would
            // fail. Its check is made here instead, against the value a new
            // network namespace starts with (ip_unprivileged_port_start
            // 1024), which a tool without capabilities cannot change.
            return Err(Errno::EACCES);
        }
        let nr = n.nr;
        let umask = if nr == libc::SYS_bind && unix_call_path.is_some() {
            self.umask(n)?
        } else {
            0
        };
        let me = self.clone();
        // A unix connect is made in a connector, which Landlock does not
        // govern anyway: no hop through the restricted thread.
        let unix_connect = n.nr == libc::SYS_connect
            && matches!(addr, Address::UnixPath(_) | Address::UnixAbstract(_));
        let in_backstop = !unix_connect
            && self.opener.as_ref().is_some_and(|o| {
                o.governs_connect_or_bind(n.nr == libc::SYS_bind && unix_call_path.is_some())
            });
        let tool_creds = task.creds.clone();
        let (tgid, tid, id) = (task.tgid, n.tid, n.id);
        self.perform_then(n, &task, may_block, None, in_backstop, move || {
            let unix = unix_call_path.as_deref();
            match nr {
                libc::SYS_connect if unix_connect => {
                    let path_fd = keep_alive.as_ref().map(|found| match found {
                        Found::Existing(fd) => fd,
                        Found::Missing { parent, .. } => parent,
                    });
                    let connect = || {
                        emulate::connect_unix(
                            &me.connectors,
                            &sock,
                            &addr,
                            unix,
                            path_fd,
                            &tool_creds,
                        )
                    };
                    // A signal the tool handles ends a connect that waits
                    // for room in a listener's backlog, as the kernel's (the
                    // connect is given up, unlike inet's). A datagram
                    // connect, or one to a socket that has a peer (EISCONN),
                    // never waits: nothing to interrupt. Nor does one on a
                    // non-blocking socket, which is not made interruptible:
                    // the connector's round trip can outlast a tick under
                    // load, and a non-blocking connect never ends in EINTR.
                    // Should the tool make the socket blocking meanwhile,
                    // this thread waits for room in the backlog (threat
                    // model, "Behaviour that differs from the kernel").
                    if may_block && matches!(crate::sys::has_peer(&sock), Ok(false)) {
                        let listener = me.listener.clone();
                        let waits = move || listener.id_valid(id);
                        let restartable = !emulate::has_send_timeout(&sock);
                        interrupt::while_blocked(tgid, tid, waits, restartable, connect)
                    } else {
                        connect()
                    }
                }
                // On a helper thread when blocking, else on this thread or
                // the opener's: either way a signal the tool handles ends it
                // (the connect goes on, as the kernel's).
                libc::SYS_connect if stream => {
                    let listener = me.listener.clone();
                    let waits = move || listener.id_valid(id);
                    let restartable = !emulate::has_send_timeout(&sock);
                    interrupt::while_blocked(tgid, tid, waits, restartable, || {
                        emulate::connect(&sock, &addr, unix)
                    })
                }
                libc::SYS_connect => emulate::connect(&sock, &addr, unix),
                _ => {
                    let _pinned = &keep_alive;
                    // A unix bind creates a file: with the tool's umask. This
                    // runs on a serving thread or, under a backstop, the
                    // opener thread (never a helper: a bind does not block);
                    // each has an fs context of its own (`unshare(CLONE_FS)`),
                    // so the umask set here is theirs alone.
                    let old =
                        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
                    let r = emulate::bind(&sock, &addr, unix);
                    nix::sys::stat::umask(old);
                    if let (Ok(_), Some(name)) = (&r, bound_name) {
                        me.remember_unix_bind(&sock, name);
                    }
                    r
                }
            }
        });
        Ok(())
    }

    fn handle_listen(self: &Arc<Self>, n: &Notification) -> Result<(), Errno> {
        let task = self.task(n)?;
        let sock = self.tool_socket(&self.tool_pidfd(n, &task)?, n.args[0] as i32)?;
        let sock_type = emulate::socket_type(&sock)?;
        // Until the listen is done: a bind of this socket waits (and then
        // fails, the socket being bound by the listen).
        let _turn = self.socket_turn(&sock)?;
        let local: nix::sys::socket::SockaddrStorage =
            nix::sys::socket::getsockname(std::os::fd::AsRawFd::as_raw_fd(&sock))?;
        let mut access = NetworkAccess {
            op: "listen".into(),
            ..Default::default()
        };
        if let Some(v4) = local.as_sockaddr_in() {
            access.family = "inet".into();
            access.address = v4.ip().to_string();
            access.port = v4.port() as u32;
        } else if let Some(v6) = local.as_sockaddr_in6() {
            // An IPv4-mapped address as the policy sees one elsewhere: inet
            // with v4_mapped (Java binds 127.0.0.1 as ::ffff:127.0.0.1).
            match v6.ip().to_ipv4_mapped() {
                Some(v4) => {
                    access.family = "inet".into();
                    access.address = v4.to_string();
                    access.v4_mapped = true;
                }
                None => {
                    access.family = "inet6".into();
                    access.address = v6.ip().to_string();
                }
            }
            access.port = v6.port() as u32;
        } else if let Some(un) = local.as_unix_addr() {
            access.family = "unix".into();
            // A path we bound reads back as our /proc/self/fd/N/name: the
            // policy gets the canonical path it decided at bind.
            access.path = match (self.bound_unix_name(&sock), un.path(), un.as_abstract()) {
                (Some(name), _, _) => name,
                (None, Some(p), _) => p.as_os_str().as_bytes().to_vec(),
                (None, None, Some(a)) => [b"@".as_slice(), a].concat(),
                _ => b"@".to_vec(),
            };
        } else {
            return Err(Errno::EOPNOTSUPP);
        }
        access.protocol = emulate::protocol_name(&access.family, sock_type).into();
        self.ask(self.request(&task, n, Subject::Network(access)))?;
        // listen on our duplicate: the same socket even if the tool's fd
        // number is reused meanwhile. With the tool's effective ids: a
        // listening socket keeps its caller's for `SO_PEERCRED`, which its
        // peers read (a nobody tool's listener claimed root to them, and a
        // cordon client took it for a root broker; found by review). The pid
        // they are told is still ours.
        let backlog = n.args[1] as i32;
        let result = with_opener_creds(&task.creds, &self.me, || emulate::listen(&sock, backlog))
            .and_then(|r| r);
        self.answer(n.id, result, None);
        Ok(())
    }

    /// Reads one `struct msghdr` at `at`. Stream payloads are cut at
    /// [`MAX_DATAGRAM`] (a short write, which stream callers handle);
    /// larger datagrams are `EMSGSIZE`.
    fn read_msghdr(
        &self,
        mem: &ToolMemory,
        at: u64,
        stream: bool,
        unix: bool,
        sock: &OwnedFd,
    ) -> Result<Message, Errno> {
        let h = mem.read(at, 56)?;
        let word = |i: usize| u64::from_ne_bytes(h[i..i + 8].try_into().expect("8"));
        // The kernel clamps an oversized name length rather than failing,
        // and refuses a negative one (an int) with a name.
        let (name_ptr, iov_ptr, iov_len) = (word(0), word(16), word(24));
        let name_len = i32::from_ne_bytes(h[8..12].try_into().expect("4"));
        if name_ptr != 0 && name_len < 0 {
            return Err(Errno::EINVAL);
        }
        let name_len =
            (name_len.max(0) as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        let (control_ptr, control_len) = (word(32), word(40));
        let name = if name_ptr != 0 && name_len > 0 {
            Some(mem.read(name_ptr, name_len)?)
        } else {
            None
        };
        if iov_len > MAX_IOV as u64 {
            return Err(Errno::EMSGSIZE);
        }
        // The iovec array in one read (at most 16 KiB).
        let iovecs = iov_len as usize;
        let table = mem.read(iov_ptr, 16 * iovecs)?;
        let mut iov = Vec::with_capacity(iovecs);
        let mut room = MAX_DATAGRAM;
        for entry in table.chunks_exact(16) {
            let base = u64::from_ne_bytes(entry[..8].try_into().expect("8"));
            let len = u64::from_ne_bytes(entry[8..].try_into().expect("8"));
            if len == 0 {
                continue;
            }
            if len > room as u64 && !stream {
                return Err(Errno::EMSGSIZE);
            }
            let take = (len as usize).min(room);
            iov.push(mem.read(base, take)?);
            room -= take;
            // A datagram with more after a full one is `EMSGSIZE` (above),
            // not sent cut short.
            if room == 0 && stream {
                break;
            }
        }
        if control_len > MAX_CONTROL as u64 {
            return Err(Errno::ENOBUFS);
        }
        let control = emulate::control_data(&mem.read(control_ptr, control_len as usize)?, unix)?;
        Ok(Message {
            name: name
                .map(|b| {
                    // What an unspecified destination means depends on
                    // where the socket is bound.
                    emulate::parse_sockaddr(&b)
                        .map(|a| a.as_destination(|| emulate::bound_ip(sock)))
                })
                .transpose()?,
            iov,
            iovecs,
            fds: control.fds,
            creds: control.creds,
        })
    }

    /// sendmsg, sendmmsg, and sendto with an address. Every one is performed
    /// by us on a duplicate of the socket: a stream's peer was decided at
    /// connect (its address argument is ignored), each datagram destination
    /// is decided here. Continuing instead would let another thread swap the
    /// fd number or the address after our check.
    fn handle_send(self: &Arc<Self>, n: &Notification) -> Result<(), Errno> {
        let mem = ToolMemory::new(n.tid);
        let mut task = self.task(n)?;
        let pidfd = self.tool_pidfd(n, &task)?;
        let sock = self.tool_socket(&pidfd, n.args[0] as i32)?;
        let sock_type = emulate::socket_type(&sock)?;
        let is_unix = emulate::is_unix(&sock);
        let stream = sock_type == libc::SOCK_STREAM;
        // Sends only to its peer, whatever name is given: a stream, and a
        // unix seqpacket socket (`unix_seqpacket_sendmsg` drops the name,
        // but keeps its records: not a stream for anything else).
        let peer_only = stream || is_unix && sock_type == libc::SOCK_SEQPACKET;
        let flags = n.args[match n.nr {
            libc::SYS_sendmsg => 2,
            _ => 3,
        }] as i32;
        if flags & !SEND_FLAGS != 0 {
            // Named for the exit record where the reason is known:
            // `MSG_FASTOPEN` connects (the tool must use connect), and
            // `MSG_ZEROCOPY` would have the kernel send our buffer's pages
            // when it transmits, after we freed them: our memory to the peer.
            let call = syscall_name(n.nr);
            let named = [
                (libc::MSG_FASTOPEN, "MSG_FASTOPEN"),
                (libc::MSG_ZEROCOPY, "MSG_ZEROCOPY"),
            ]
            .into_iter()
            .find(|(f, _)| flags & f != 0);
            match named {
                Some((_, name)) => self.forbid(n, format!("{call}({name})"), libc::EOPNOTSUPP),
                None => {
                    let other = i64::from(flags & !SEND_FLAGS);
                    self.forbid_numbered(n, call, "flags", other, libc::EOPNOTSUPP)
                }
            }
            return Ok(());
        }
        let (headers, stride) = match n.nr {
            libc::SYS_sendmsg => (vec![n.args[1]], 0),
            libc::SYS_sendmmsg => {
                let vlen = (n.args[2] as u32 as usize).min(MAX_MMSG);
                // Tool-given: wrap, never overflow (a wrapped read is EFAULT).
                (
                    (0..vlen)
                        .map(|i| n.args[1].wrapping_add(64 * i as u64))
                        .collect(),
                    64,
                )
            }
            _ => (vec![], 0),
        };
        let mut messages = Vec::with_capacity(headers.len().max(1));
        if n.nr == libc::SYS_sendto {
            let len = (n.args[2] as usize).min(if stream { MAX_DATAGRAM } else { usize::MAX });
            if len > MAX_DATAGRAM {
                return Err(Errno::EMSGSIZE);
            }
            let addr_len = n.args[5] as u32 as usize;
            if addr_len > std::mem::size_of::<libc::sockaddr_storage>() {
                return Err(Errno::EINVAL);
            }
            // A stream ignores the address; on an inet datagram socket even
            // a zero length is an address (and EINVAL), as the kernel reads
            // it, where a unix one sends to its peer.
            let name = if n.args[4] != 0 && !peer_only && !(is_unix && addr_len == 0) {
                Some(
                    emulate::parse_sockaddr(&mem.read(n.args[4], addr_len)?)?
                        .as_destination(|| emulate::bound_ip(&sock)),
                )
            } else {
                None
            };
            messages.push(Message {
                name,
                iov: vec![mem.read(n.args[1], len)?],
                iovecs: 1,
                fds: vec![],
                creds: vec![],
            });
        }
        // What one call may cost us, whatever the number of messages: bytes
        // copied, iovecs read, fds duplicated. Past any, the rest is for the
        // tool's next call (a partial sendmmsg).
        let (mut copied, mut iovecs, mut fds) = (0usize, 0usize, 0usize);
        for at in &headers {
            match self.read_msghdr(&mem, *at, stream, is_unix, &sock) {
                Ok(m) => {
                    copied += m.iov.iter().map(Vec::len).sum::<usize>();
                    iovecs += m.iovecs;
                    fds += m.fds.len();
                    let over = copied > MAX_DATAGRAM || iovecs > MAX_IOV || fds > MAX_FDS;
                    if over && !messages.is_empty() {
                        break;
                    }
                    messages.push(m);
                    if over {
                        break;
                    }
                }
                Err(Errno::EOPNOTSUPP) => {
                    self.forbid(
                        n,
                        format!(
                            "{}(control data other than SCM_RIGHTS and SCM_CREDENTIALS)",
                            syscall_name(n.nr)
                        ),
                        libc::EOPNOTSUPP,
                    );
                    return Ok(());
                }
                // A later message that cannot be read ends a sendmmsg before
                // it: the kernel sends those before it and returns their
                // count.
                Err(e) if messages.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        // Credentials the tool names are checked as the kernel checks its
        // own send, each one, before anything else of it (`scm_send` comes
        // first); a message that fails ends a sendmmsg before it.
        let check = |c: &libc::ucred| {
            emulate::may_name(
                c,
                task.tgid,
                [task.uid, task.creds.euid, task.suid],
                [task.gid, task.creds.egid, task.sgid],
                task.creds.cap_eff,
            )
        };
        let first_bad = messages
            .iter()
            .enumerate()
            .find_map(|(k, m)| m.creds.iter().try_for_each(check).err().map(|e| (k, e)));
        match first_bad {
            Some((0, e)) => return Err(e),
            Some((k, _)) => messages.truncate(k),
            None => {}
        }
        if !self.listener.id_valid(n.id) {
            return Err(Errno::ESRCH);
        }
        let mut planned = Vec::with_capacity(messages.len());
        let mut plan = |m: Message| {
            let mut unix = None;
            // A stream's destination is its peer; datagram addresses are decided.
            let dest = if peer_only { None } else { m.name };
            if let Some(a) = &dest {
                refuse_netlink_peer(syscall_name(n.nr), a, &task)?;
            }
            if let Some(a) = &dest
                && a.needs_decision(syscall_name(n.nr))
            {
                let (access, u) =
                    self.network_subject(&mut task, n, syscall_name(n.nr), a, sock_type)?;
                self.ask(self.request(&task, n, Subject::Network(access)))?;
                if let Some((_, found)) = u {
                    let path = match &found {
                        Found::Existing(fd) => emulate::unix_via_fd(fd.as_raw_fd(), None)?,
                        Found::Missing { .. } => return Err(Errno::ECONNREFUSED),
                    };
                    unix = Some((path, found));
                }
            }
            // The fds the tool passes, as ours: the same open files.
            let fds = PassedFds::copy(&pidfd, &m.fds)?;
            // On a unix socket a receiver that asks (`SO_PASSCRED`:
            // journald, syslog's `/dev/log`, systemd's notify socket) is
            // told who sent: what the sender named last, else its pid and
            // real ids. We send for the tool, so we name what it would.
            let wanted = is_unix.then(|| {
                m.creds.last().copied().unwrap_or(libc::ucred {
                    pid: task.tgid,
                    uid: task.uid,
                    gid: task.gid,
                })
            });
            Ok((dest, m.iov, fds, unix, wanted))
        };
        for m in messages {
            match plan(m) {
                Ok(p) => planned.push(p),
                Err(e) if planned.is_empty() => return Err(e),
                // A refused or failing message ends a sendmmsg before it,
                // as the kernel ends one: the messages before it are sent
                // and counted.
                Err(_) => break,
            }
        }
        // Naming another task needs capabilities (`emulate::Naming`): the
        // send has them on top of the tool's credentials (they grant
        // nothing else on a unix send that passes no fds; see the threat
        // model). What we may not name falls back to our pid with the
        // tool's ids, then to nothing (the kernel names us).
        let passes_fds = planned.iter().any(|p| !p.2.is_empty());
        let mut naming = match self.own_ids {
            Some(ids) => emulate::Naming::new(
                std::process::id() as i32,
                ids,
                self.me.cap_eff,
                task.creds.cap_eff,
                passes_fds,
            ),
            None => emulate::Naming::new(0, ([u32::MAX; 3], [u32::MAX; 3]), 0, 0, true),
        };
        let mut send_creds = task.creds.clone();
        for p in &mut planned {
            p.4 = p.4.and_then(|w| naming.adapt(w));
            if let Some(c) = &p.4 {
                send_creds.cap_eff |= naming.needs(c);
            }
        }
        let is_mmsg = n.nr == libc::SYS_sendmmsg;
        let first_hdr = n.args[1];
        let may_block = emulate::is_blocking(&sock) && flags & libc::MSG_DONTWAIT == 0;
        // Performed here on the serving thread, it must not block even if
        // another tool thread clears O_NONBLOCK (shared with our duplicate)
        // meanwhile: that race ends in EAGAIN, not a stalled supervisor.
        let flags = if may_block {
            flags
        } else {
            flags | libc::MSG_DONTWAIT
        };
        // A failed send on a broken stream raises SIGPIPE in the sender
        // unless it asked otherwise: relayed to the tool thread by `perform`,
        // with the supervisor's own credentials.
        let sigpipe = (stream && flags & libc::MSG_NOSIGNAL == 0).then_some((task.tgid, n.tid));
        let (me, id, tgid, tid) = (self.clone(), n.id, task.tgid, n.tid);
        // Most sends on a blocking socket find room at once: one message is
        // tried here first with MSG_DONTWAIT, and a helper thread (~40 µs to
        // start) waits only when it would block. A stream that took part of
        // it has the rest sent by the helper, as the blocking send would
        // (the fds went with the first part). Not urgent data: the kernel
        // marks the last byte of each send, and a split would mark two.
        let mut already = 0i64;
        let oob = stream && flags & libc::MSG_OOB != 0;
        if may_block && planned.len() == 1 && !is_mmsg && !oob {
            let (addr, iov, fds, unix, sender) = &mut planned[0];
            if names_a_gone_caller(*sender, tgid, &self.listener, id) {
                return Err(Errno::ESRCH);
            }
            let dest = destination(addr, unix);
            let tried = with_creds(&send_creds, &self.me, || {
                let not_interruptible = None::<(i32, i32, fn() -> bool, bool)>;
                let flags = flags | libc::MSG_DONTWAIT;
                send_named(
                    &sock,
                    iov,
                    fds,
                    sender,
                    &mut naming,
                    flags,
                    dest,
                    not_interruptible,
                )
            })
            .and_then(|r| r);
            let total: usize = iov.iter().map(Vec::len).sum();
            match tried {
                Err(Errno::EAGAIN) => {}
                Ok(n) if stream && n > 0 && (n as usize) < total => {
                    already = n;
                    *iov = vec![iov.concat().split_off(n as usize)];
                    fds.clear();
                }
                result => {
                    self.answer(id, result, sigpipe);
                    return Ok(());
                }
            }
        }
        // Only a blocking send can be interrupted (one getsockopt less else).
        let restartable = may_block && !emulate::has_send_timeout(&sock);
        // Each send as the tool, each `msg_len` written back as ourselves:
        // writing the tool's memory is checked against our real uid and
        // needs `CAP_SYS_PTRACE` for a tool of another uid, which the switch
        // drops (the first message went, then the call failed with EFAULT).
        let creds = send_creds;
        let op = move || {
            let mut sent = 0i64;
            for (i, (addr, iov, fds, unix, sender)) in planned.iter_mut().enumerate() {
                let dest = destination(addr, unix);
                if names_a_gone_caller(*sender, tgid, &me.listener, id) {
                    return Err(Errno::ESRCH);
                }
                // On its helper thread when blocking: a signal the tool
                // handles ends it (with the bytes sent so far, if any).
                let interruptible = may_block.then(|| {
                    let listener = me.listener.clone();
                    (tgid, tid, move || listener.id_valid(id), restartable)
                });
                let sent_now = with_creds(&creds, &me.me, || {
                    send_named(
                        &sock,
                        iov,
                        fds,
                        sender,
                        &mut naming,
                        flags,
                        dest,
                        interruptible,
                    )
                })
                .and_then(|r| r);
                // The part a first try sent counts, whatever became of the rest.
                let sent_now = match sent_now {
                    Ok(bytes) => Ok(already + bytes),
                    Err(_) if already > 0 => Ok(already),
                    Err(e) => Err(e),
                };
                match sent_now {
                    Ok(bytes) if is_mmsg => {
                        // msg_len of mmsghdr i, as sendmmsg reports it.
                        let at = first_hdr.wrapping_add((stride * i) as u64 + 56);
                        // The caller still waits (a blocking send may have
                        // outlived it, and its tid been reused).
                        if !me.listener.id_valid(id) {
                            return Err(Errno::ESRCH);
                        }
                        // As the kernel: a msg_len it cannot write ends the
                        // call, which reports the messages counted before
                        // (EFAULT only when there are none).
                        if let Err(e) = mem.write(at, &(bytes as u32).to_ne_bytes()) {
                            return if sent > 0 { Ok(sent) } else { Err(e) };
                        }
                        sent += 1;
                    }
                    Ok(bytes) => return Ok(bytes),
                    Err(e) if sent == 0 => return Err(e),
                    Err(_) => break,
                }
            }
            Ok(sent)
        };
        // As `perform_then` (no backstop for sends); a helper that cannot
        // start leaves the part a first try sent as the answer.
        let me = self.clone();
        let run = move || {
            let mut op = op;
            let result = op();
            me.answer(id, result, sigpipe);
        };
        if may_block {
            let busy = if already > 0 {
                Ok(already)
            } else {
                Err(Errno::EAGAIN)
            };
            self.spawn_helper_or(id, busy, run);
        } else {
            run();
        }
        Ok(())
    }

    // --- exec ----------------------------------------------------------------

    /// A program (or `#!` interpreter) as the kernel would find it: its
    /// canonical path and an `O_PATH` fd on it. Only regular files execute
    /// (the kernel says EACCES too; it also keeps `shebang` off FIFOs).
    fn resolve_executable(
        &self,
        task: &mut Task,
        n: &Notification,
        dirfd: i32,
        path: &[u8],
        follow: bool,
    ) -> Result<(Vec<u8>, Executable), Errno> {
        let lookup = Lookup {
            tid: n.tid,
            tgid: task.tgid,
            dirfd,
            path,
            follow,
            create: Create::No,
            resolve: 0,
        };
        let (path, found) = self.resolve_for(task, &lookup, n.id)?;
        self.refuse_protected(n, &path, &found, None, Use::Read, false)?;
        let Found::Existing(file) = found else {
            return Err(Errno::ENOENT);
        };
        match nix::sys::stat::fstat(&file)?.st_mode & libc::S_IFMT {
            libc::S_IFREG => {}
            // A symlink not followed (AT_SYMLINK_NOFOLLOW), as the kernel says.
            libc::S_IFLNK => return Err(Errno::ELOOP),
            _ => return Err(Errno::EACCES),
        }
        // The kernel refuses an image the tool may not execute (no exec bit
        // for it, a noexec mount) before it reads a byte of it; so do we,
        // before reading its `#!` line (`first_line`).
        let checked = with_creds(&task.creds, &self.me, || sys::may_execute(&file))?
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EACCES)))?;
        Ok((path, Executable { file, checked }))
    }

    /// The `#!` line of an image, read as the tool: what it can read, we read
    /// (a file on a root-squashed NFS share, say, which we could not). The
    /// kernel reads the line without read permission, so an image the tool
    /// may only execute is read with our own credentials; but only once the
    /// execute check has passed, never in its place.
    fn first_line(&self, task: &Task, image: &Executable) -> Result<Option<Interpreter>, Errno> {
        match with_creds(&task.creds, &self.me, || shebang(&image.file))? {
            Err(Errno::EACCES) if image.checked => shebang(&image.file),
            line => line,
        }
    }

    fn ask_exec(
        &self,
        task: &Task,
        n: &Notification,
        path: Vec<u8>,
        argv: &[Vec<u8>],
    ) -> Result<(), Errno> {
        // A script's argv grows by its interpreter, that one's argument and
        // its own name: past the bounds, E2BIG as the kernel would say
        // (the broker would refuse the request).
        let bytes: usize = argv.iter().map(|a| a.len() + 1).sum();
        if argv.len() > MAX_ARGV || bytes > MAX_ARGV_BYTES {
            return Err(Errno::E2BIG);
        }
        self.ask(self.request(
            task,
            n,
            Subject::Exec(ExecAccess {
                path,
                argv: argv.to_vec(),
            }),
        ))
    }

    fn handle_exec(self: &Arc<Self>, n: &Notification) -> Result<(), Errno> {
        let mem = ToolMemory::new(n.tid);
        let (dirfd, path_ptr, argv_ptr, flags) = match n.nr {
            libc::SYS_execve => (libc::AT_FDCWD, n.args[0], n.args[1], 0),
            _ => (n.args[0] as i32, n.args[1], n.args[2], n.args[4] as i32),
        };
        let path = mem.read_cstr(path_ptr, PATH_MAX - 1)?;
        let empty_path = path.is_empty() && flags & libc::AT_EMPTY_PATH != 0;
        if path.is_empty() && !empty_path {
            // The kernel refuses an empty name as it reads it, before it
            // looks at the dirfd.
            return Err(Errno::ENOENT);
        }
        let mut task = self.task(n)?;
        let lookup_path = match dirfd {
            _ if !empty_path => path.clone(),
            // The cwd: a directory, so EACCES below, as natively.
            libc::AT_FDCWD => format!("/proc/{}/cwd", n.tid).into_bytes(),
            fd if fd < 0 => return Err(Errno::EBADF),
            fd => format!("/proc/{}/fd/{fd}", n.tid).into_bytes(),
        };
        // An empty path names the fd's own file: its /proc link is followed
        // whatever the flags (the file is then a symlink only if the fd is
        // an O_PATH one on a symlink, which the kernel refuses too).
        let follow = empty_path || flags & libc::AT_SYMLINK_NOFOLLOW == 0;
        // The kernel opens the file before it reads argv (Linux 6.18 here:
        // a missing file with a bad argv is ENOENT, not EFAULT).
        let (canonical, file) = self
            .resolve_executable(&mut task, n, dirfd, &lookup_path, follow)
            .map_err(|e| match e {
                // No such fd, rather than no such file.
                Errno::ENOENT if empty_path && dirfd >= 0 => Errno::EBADF,
                e => e,
            })?;
        let argv = mem.read_argv(argv_ptr, MAX_ARGV, MAX_ARGV_BYTES)?;
        if !self.listener.id_valid(n.id) {
            return Err(Errno::ESRCH);
        }
        // The argv the kernel will build. Linux ≥ 5.18 runs an empty argv as [""].
        let mut kernel_argv = if argv.is_empty() {
            vec![Vec::new()]
        } else {
            argv
        };
        self.ask_exec(&task, n, canonical, &kernel_argv)?;
        // A `#!` script runs its interpreter: that must be allowed too, and it
        // is the interpreter's image, with the argv binfmt_script builds
        // (interpreter, its argument, the name the script was run by, then
        // argv[1..]), that we must find after the exec.
        let mut image = file;
        let mut run_as = kernel_exec_name(&path, dirfd, empty_path);
        let mut scripts = Vec::new();
        for depth in 0.. {
            let Some((interp, arg)) = self.first_line(&task, &image)? else {
                break;
            };
            let st = nix::sys::stat::fstat(&image.file)?;
            scripts.push(Script {
                name: run_as.clone(),
                dev: st.st_dev,
                ino: st.st_ino,
            });
            let (canonical, interp_fd) =
                self.resolve_executable(&mut task, n, libc::AT_FDCWD, &interp, true)?;
            // The kernel runs at most 5 scripts in a chain (exec_binprm),
            // failing on the sixth once it has opened that one's interpreter.
            if depth == MAX_SCRIPT_DEPTH {
                return Err(Errno::ELOOP);
            }
            let mut next = vec![interp.clone()];
            next.extend(arg);
            next.push(run_as);
            next.extend(kernel_argv.drain(..).skip(1));
            kernel_argv = next;
            self.ask_exec(&task, n, canonical, &kernel_argv)?;
            image = interp_fd;
            run_as = interp;
        }
        let image = image.file;
        let st = nix::sys::stat::fstat(&image)?;
        let scripts = (!scripts.is_empty()).then(|| Scripts {
            chain: scripts,
            tool: task.creds.clone(),
            me: self.me.clone(),
        });
        let approved = Approved::new(st.st_dev, st.st_ino, &kernel_argv, scripts);
        drop(kernel_argv);
        let me = self.clone();
        let (id, tid, tgid) = (n.id, n.tid, task.tgid);
        let on_exec = self.tasks.invalidator();
        // The verifier answers the notification; do not hold up other calls.
        // `image` stays open until the exec is verified, so its inode
        // number cannot be reused by another file meanwhile.
        self.clone().spawn_helper(id, move || {
            // A file the tool has just written and closed may still be open
            // here (an inject in flight): wait, off the serving thread.
            me.injects.wait_idle(Duration::from_secs(1));
            match me.exec.run(id, tid, tgid, approved, image, on_exec) {
                Outcome::Killed(why) => {
                    tracing::error!(pid = tgid, reason = %why, "exec did not match the decision; killed");
                    me.count(|c| c.exec_killed += 1);
                }
                Outcome::Refused(why) => {
                    tracing::error!(pid = tgid, reason = %why, "exec denied: cannot verify it");
                    me.count(|c| c.undecided += 1);
                }
                _ => {}
            }
        });
        Ok(())
    }
}

/// Gives the calling thread an fs context of its own with umask 0: files we
/// create take the tool's umask, applied by hand, and a bind sets it around
/// the call without reaching any other thread.
fn private_fs_context() -> nix::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    emulate::has_own_fs_context();
    Ok(())
}

/// The name the kernel gives the executed file (`bprm->filename`), which
/// binfmt_script passes to the interpreter: the path as given, or
/// `/dev/fd/N[/path]` for `execveat` relative to a directory fd.
fn kernel_exec_name(path: &[u8], dirfd: i32, empty_path: bool) -> Vec<u8> {
    if dirfd == libc::AT_FDCWD || path.first() == Some(&b'/') {
        path.to_vec()
    } else if empty_path {
        format!("/dev/fd/{dirfd}").into_bytes()
    } else {
        [format!("/dev/fd/{dirfd}/").as_bytes(), path].concat()
    }
}

/// SIGPIPE to one tool thread (what a failed send on a broken stream does).
fn tgkill_sigpipe(tgid: i32, tid: i32) -> nix::Result<()> {
    crate::sys::tgkill(tgid, tid, libc::SIGPIPE)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::ESRCH)))
}

/// How many times an open whose name was taken between its lookup and its
/// create is looked up and decided again before it is denied (a tool racing
/// itself on purpose; an honest race settles at the first retry).
const CREATE_RACE_RETRIES: u32 = 3;

/// The kernel's `O_LARGEFILE` (glibc's is 0 on 64-bit targets, and so is the
/// libc crate's), which 64-bit callers may still pass: rustix's `openat2`
/// always does.
#[cfg(target_arch = "aarch64")]
const KERNEL_O_LARGEFILE: i32 = 0o400000;
#[cfg(not(target_arch = "aarch64"))]
const KERNEL_O_LARGEFILE: i32 = 0o100000;

/// `O_TMPFILE` without the `O_DIRECTORY` it includes: the kernel's `__O_TMPFILE`.
const O_TMPFILE_BIT: i32 = libc::O_TMPFILE & !libc::O_DIRECTORY;

/// The kernel's checks of open flags for `openat` and `openat2` alike
/// (`build_open_flags`), made before anything is looked up or decided:
/// `O_CREAT | O_DIRECTORY` (Linux 6.4 on), an `O_TMPFILE` bit without its
/// `O_DIRECTORY` or with `O_CREAT`, and a read-only `O_TMPFILE` are `EINVAL`.
/// (`O_PATH` opens are left to the kernel, which first drops other flags.)
fn check_open_flags(flags: i32) -> Result<(), Errno> {
    if flags & libc::O_PATH != 0 {
        return Ok(());
    }
    if flags & (libc::O_DIRECTORY | libc::O_CREAT) == libc::O_DIRECTORY | libc::O_CREAT
        && creat_directory_is_einval()
    {
        return Err(Errno::EINVAL);
    }
    if flags & O_TMPFILE_BIT != 0
        && (flags & (libc::O_TMPFILE | libc::O_CREAT) != libc::O_TMPFILE
            || flags & libc::O_ACCMODE == libc::O_RDONLY)
    {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// Whether this kernel refuses `O_CREAT | O_DIRECTORY` (Linux 6.4 on;
/// before, it creates a regular file and fails with `ENOTDIR`, which the
/// supervisor's own create then does too). Asked once.
fn creat_directory_is_einval() -> bool {
    static SINCE_6_4: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SINCE_6_4.get_or_init(|| {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let mut next = || {
            parts
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                .unwrap_or(0)
        };
        (next(), next()) >= (6, 4)
    })
}

/// The flags an O_PATH open keeps (the kernel's `O_PATH_FLAGS`).
const O_PATH_FLAGS: i32 = libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_PATH | libc::O_CLOEXEC;

/// The open flags `openat2` accepts (the kernel's `VALID_OPEN_FLAGS`):
/// others are `EINVAL` there, where `openat` ignores them.
const VALID_OPEN_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_CREAT
    | libc::O_EXCL
    | libc::O_NOCTTY
    | libc::O_TRUNC
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DSYNC
    | libc::O_SYNC
    | libc::O_ASYNC
    | libc::O_DIRECT
    | KERNEL_O_LARGEFILE
    | libc::O_DIRECTORY
    | libc::O_NOFOLLOW
    | libc::O_NOATIME
    | libc::O_CLOEXEC
    | libc::O_PATH
    | libc::O_TMPFILE;

/// What a call asked for, for a log line: the path, the address and port,
/// or the socket path.
fn describe(req: &DecideRequest) -> String {
    use cordon_broker::request::display_bytes;
    match &req.subject {
        Some(Subject::File(f)) => display_bytes(&f.path),
        Some(Subject::Exec(e)) => display_bytes(&e.path),
        Some(Subject::Network(n)) if n.family == "unix" => display_bytes(&n.path),
        Some(Subject::Network(n)) => format!("{} port {}", n.address, n.port),
        None => String::new(),
    }
}

/// The errno a denial fails the call with: the broker's, if it is a real
/// one; `EACCES` for 0, negative or unknown codes.
fn denial_errno(code: i32) -> Errno {
    match Errno::from_raw(code) {
        Errno::UnknownErrno => Errno::EACCES,
        e => e,
    }
}

/// The thread group of a pid or tid (`/proc/ID/status` exists for both).
fn tgid_of(id: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{id}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The interpreter (and its optional argument) of a `#!` file.
fn shebang(file: &OwnedFd) -> Result<Option<Interpreter>, Errno> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    // The caller checked it is a regular file the tool may execute. The
    // kernel then reads the line whatever the read permissions; we read it
    // with our own credentials, and a file we cannot read (an execute-only
    // script, a supervisor without root) is EACCES: its interpreter is
    // unknown, so it cannot be decided. O_NONBLOCK regardless, this runs on
    // a thread that answers notifications.
    let unreadable = |e: std::io::Error| {
        tracing::debug!(error = %e, "cannot read an executable's first line");
        Errno::EACCES
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(file)
        ))
        .map_err(unreadable)?;
    // The kernel's buffer: the file's first bytes, NUL-padded.
    let mut buf = [0u8; BINPRM_BUF_SIZE];
    let mut read = 0;
    let mut f = f.take(BINPRM_BUF_SIZE as u64);
    while read < buf.len() {
        match f.read(&mut buf[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(unreadable(e)),
        }
    }
    Ok(parse_shebang(&buf))
}

/// A planned message's destination as [`send_named`] takes it: the address,
/// and for a unix path the `/proc/self/fd/N` name of what was resolved.
fn destination<'a>(
    addr: &'a Option<Address>,
    unix: &'a Option<(Vec<u8>, Found)>,
) -> Option<(&'a Address, Option<&'a [u8]>)> {
    addr.as_ref()
        .map(|a| (a, unix.as_ref().map(|(p, _)| p.as_slice())))
}

/// Whether a message names the caller's pid while the caller no longer
/// waits: a pid named is the caller's only as long as it waits (after, it
/// may be another process's).
fn names_a_gone_caller(
    sender: Option<libc::ucred>,
    tgid: i32,
    listener: &Listener,
    id: u64,
) -> bool {
    sender.is_some_and(|c| c.pid == tgid) && !listener.id_valid(id)
}

/// One message sent on `sock` with `sender` named in it, naming less where
/// the kernel refuses it (nothing was sent then); `interruptible` on a
/// helper thread: `(tgid, tid, waits, restartable)` of the caller, see
/// [`interrupt::while_blocked`].
#[allow(clippy::too_many_arguments)]
fn send_named<W: Fn() -> bool + Send + Clone + 'static>(
    sock: &OwnedFd,
    iov: &[Vec<u8>],
    fds: &[OwnedFd],
    sender: &mut Option<libc::ucred>,
    naming: &mut emulate::Naming,
    flags: i32,
    dest: Option<(&Address, Option<&[u8]>)>,
    interruptible: Option<(i32, i32, W, bool)>,
) -> Result<i64, Errno> {
    // What an earlier message's refusal taught us.
    *sender = sender.and_then(|c| naming.adapt(c));
    let mut learned = None;
    loop {
        let send = || emulate::send(sock, iov, fds, *sender, flags, dest);
        let r = match interruptible.clone() {
            Some((tgid, tid, waits, restartable)) => {
                interrupt::while_blocked(tgid, tid, waits, restartable, send)
            }
            None => send(),
        };
        match (&r, &*sender) {
            (Err(Errno::EPERM), Some(c)) => match naming.less(c) {
                Some((less, refused)) => {
                    *sender = less;
                    learned = Some(refused);
                }
                None => return r,
            },
            _ => {
                // Remembered only once naming less got through: an EPERM
                // about something else (a peer connected elsewhere, an
                // LSM) must not take naming away from every later send.
                if let (Ok(_), Some(refused)) = (&r, learned) {
                    naming.learn(refused);
                }
                return r;
            }
        }
    }
}

/// Our real, effective and saved uids and gids (`with_creds` changes only
/// fs ids, so they are the process's).
fn own_ids() -> Option<([u32; 3], [u32; 3])> {
    let u = nix::unistd::getresuid().ok()?;
    let g = nix::unistd::getresgid().ok()?;
    Some((
        [u.real, u.effective, u.saved].map(|u| u.as_raw()),
        [g.real, g.effective, g.saved].map(|g| g.as_raw()),
    ))
}

/// `CAP_NET_ADMIN`: a netlink message to anyone but the kernel.
const CAP_NET_ADMIN: u64 = 1 << 12;

/// A netlink connect or message to another socket or a group (not a bind:
/// route netlink lets anyone listen to its groups): the kernel asks for
/// `CAP_NET_ADMIN` (route netlink has no `NL_CFG_F_NONROOT_SEND`) in the
/// network namespace's owner, which may be ours (`--network none` without
/// root makes it), where our capabilities are whole whatever `with_creds`
/// lowered. Answered here as the tool's own call would be: every tool lacks
/// it (`sys::NETWORK_CAPABILITIES`).
fn refuse_netlink_peer(op: &str, addr: &Address, task: &Task) -> Result<(), Errno> {
    match addr {
        Address::Netlink { pid, groups }
            if op != "bind"
                && (*pid != 0 || *groups != 0)
                && task.creds.cap_eff & CAP_NET_ADMIN == 0 =>
        {
            Err(Errno::EPERM)
        }
        _ => Ok(()),
    }
}

/// `CAP_NET_BIND_SERVICE`: binding an inet port below
/// `ip_unprivileged_port_start`.
const CAP_NET_BIND_SERVICE: u64 = 1 << 10;

/// Whether a bind to `port` needs `CAP_NET_BIND_SERVICE` in a network
/// namespace with the kernel's initial `ip_unprivileged_port_start`, and
/// the tool lacks it.
fn lacks_bind_service(port: u16, task: &Task) -> bool {
    port != 0 && port < 1024 && task.creds.cap_eff & CAP_NET_BIND_SERVICE == 0
}

/// Whether task `tid` is in our network namespace. Unknown counts as not.
fn same_namespace(tid: i32, kind: &str) -> bool {
    let id = |path: &str| nix::sys::stat::stat(path).map(|st| (st.st_dev, st.st_ino));
    matches!(
        (id(&format!("/proc/{tid}/ns/{kind}")), id(&format!("/proc/self/ns/{kind}"))),
        (Ok(a), Ok(b)) if a == b
    )
}

/// Files that describe or set the IPC namespace of their opener: ours,
/// were we to open them for a tool in a namespace of its own (a root tool
/// gets one), whose objects and limits they would then be the host's.
/// The device number of /dev/userfaultfd: a misc device with a minor given
/// at registration (257 on this machine, not on every kernel), read once
/// from /proc/misc.
fn userfaultfd_device() -> Option<u64> {
    static DEVICE: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *DEVICE.get_or_init(|| {
        let misc = std::fs::read_to_string("/proc/misc").ok()?;
        misc.lines().find_map(|l| {
            let (minor, name) = l.trim().split_once(' ')?;
            let minor = minor
                .parse()
                .ok()
                .filter(|_| name.trim() == "userfaultfd")?;
            Some(libc::makedev(10, minor))
        })
    })
}

fn names_ipc_namespace_state(canonical: &[u8]) -> bool {
    const KERNEL: [&[u8]; 11] = [
        b"msgmax",
        b"msgmnb",
        b"msgmni",
        b"msg_next_id",
        b"sem",
        b"sem_next_id",
        b"shmall",
        b"shmmax",
        b"shmmni",
        b"shm_next_id",
        b"shm_rmid_forced",
    ];
    canonical.starts_with(b"/proc/sysvipc/")
        || canonical.starts_with(b"/proc/sys/fs/mqueue/")
        || canonical
            .strip_prefix(b"/proc/sys/kernel/")
            .is_some_and(|name| KERNEL.contains(&name))
}

/// Whether the user namespace that owns `sock`'s network namespace is
/// ours. Unknown counts as not ours.
fn netns_is_ours(sock: &OwnedFd) -> bool {
    let id = |st: nix::sys::stat::FileStat| (st.st_dev, st.st_ino);
    let owner = sys::socket_netns_owner(sock).and_then(|fd| Ok(nix::sys::stat::fstat(&fd)?));
    let ours = nix::sys::stat::stat("/proc/self/ns/user");
    matches!((owner, ours), (Ok(a), Ok(b)) if id(a) == id(b))
}

/// binfmt_misc's file system (linux/magic.h; the libc crate does not name it).
const BINFMTFS_MAGIC: libc::c_long = 0x4249_4e4d;

/// Files whose writing makes the kernel run a program of the writer's
/// choosing, with every capability and outside any sandbox (a core dump's
/// pipe, module loading, uevents, a cgroup v1 release agent, power-off; a
/// binfmt_misc interpreter runs for every matching exec on the host), or
/// acts on the whole host at once (sysrq). Writable by root only, and
/// refused to a root tool whatever its policy allows, as the filter refuses
/// `acct` and `swapon`: the kernel would act on them past the broker. The
/// sysfs and cgroup names also where those are mounted elsewhere.
fn names_a_program_the_kernel_runs(canonical: &[u8]) -> bool {
    const FILES: [&[u8]; 5] = [
        b"/proc/sys/kernel/core_pattern",
        b"/proc/sys/kernel/modprobe",
        b"/proc/sys/kernel/poweroff_cmd",
        b"/proc/sys/kernel/hotplug",
        b"/proc/sysrq-trigger",
    ];
    FILES.contains(&canonical)
        || canonical.starts_with(b"/proc/sys/fs/binfmt_misc/")
        || canonical.ends_with(b"/kernel/uevent_helper")
        || canonical.ends_with(b"/release_agent")
}

/// Where any user's `cordon serve` listens by default: `/run/cordon/...` for
/// root, `/run/user/UID/cordon/...` (`$XDG_RUNTIME_DIR`) for others, whoever
/// runs this supervisor.
fn is_default_broker_socket(canonical: &[u8]) -> bool {
    if crate::sandbox::DEFAULT_BROKER_SOCKETS
        .iter()
        .any(|p| canonical == p.as_bytes())
    {
        return true;
    }
    canonical
        .strip_prefix(b"/run/user/")
        .and_then(|rest| rest.strip_suffix(b"/cordon/broker.sock"))
        .is_some_and(|uid| !uid.is_empty() && uid.iter().all(u8::is_ascii_digit))
}

/// `path` with its directory's symlinks resolved (the socket itself may not
/// exist yet); as given when the directory cannot be resolved.
fn resolved_socket_path(path: PathBuf) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => {
            // A bare name is in the current directory.
            let dir = if dir.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                dir
            };
            std::fs::canonicalize(dir)
                .map(|dir| dir.join(name))
                .unwrap_or(path)
        }
        _ => path,
    }
}

/// An image an exec may run: a regular file, and whether the tool's right to
/// execute it was checked (`sys::may_execute`; not where the kernel lacks
/// the means).
struct Executable {
    file: OwnedFd,
    checked: bool,
}

/// A `#!` line's interpreter and its optional argument.
type Interpreter = (Vec<u8>, Option<Vec<u8>>);

/// Scripts the kernel runs in one chain of `#!` interpreters; one more is
/// `ELOOP`.
const MAX_SCRIPT_DEPTH: usize = 5;

/// The kernel reads this much of a file to recognise its format.
const BINPRM_BUF_SIZE: usize = 256;

/// The interpreter and its optional argument, parsed from a `#!` line
/// exactly as Linux's `load_script` (fs/binfmt_script.c) does: within the
/// first 255 bytes; a line that a NUL or the buffer's end cuts before any
/// newline is used only if the interpreter's name ends within it; name and
/// argument end at a NUL. `None` where the kernel says `ENOEXEC`.
fn parse_shebang(buf: &[u8; BINPRM_BUF_SIZE]) -> Option<Interpreter> {
    let spacetab = |b: u8| b == b' ' || b == b'\t';
    // Inclusive ranges, as the kernel's helpers take them.
    let next_non_spacetab = |from: usize, to: usize| (from..=to).find(|&i| !spacetab(buf[i]));
    let next_terminator =
        |from: usize, to: usize| (from..=to).find(|&i| spacetab(buf[i]) || buf[i] == 0);
    if !buf.starts_with(b"#!") {
        return None;
    }
    let buf_end = BINPRM_BUF_SIZE - 1;
    // strnchr: the first newline before any NUL.
    let newline = buf
        .iter()
        .take_while(|&&b| b != 0)
        .position(|&b| b == b'\n');
    let mut end = match newline {
        Some(i) => i,
        None => {
            let first = next_non_spacetab(2, buf_end)?;
            // No terminator after the name: it may be cut short.
            next_terminator(first, buf_end)?;
            buf_end
        }
    };
    while spacetab(buf[end - 1]) {
        end -= 1;
    }
    let name = next_non_spacetab(2, end).filter(|&i| i != end)?;
    let sep = next_terminator(name, end);
    let arg = sep
        .filter(|&i| buf[i] != 0)
        .and_then(|i| next_non_spacetab(i, end));
    // The kernel writes a NUL at `end` (and at `sep` when there is an
    // argument), then copies each string up to its first NUL.
    let until_nul = |from: usize, to: usize| {
        let s = &buf[from..to];
        s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())].to_vec()
    };
    Some(match arg {
        Some(a) => (until_nul(name, sep.unwrap_or(end)), Some(until_nul(a, end))),
        None => (until_nul(name, end), None),
    })
}

/// How long a notification may wait for a remote decision by default.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(2);

mod names;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_name_the_access_mode_first_mode_3_included() {
        let names = |f: i32| open_flag_names(f).join(",");
        assert_eq!(
            names(libc::O_RDONLY | libc::O_CLOEXEC),
            "O_RDONLY,O_CLOEXEC"
        );
        assert_eq!(names(libc::O_WRONLY | libc::O_CREAT), "O_WRONLY,O_CREAT");
        assert_eq!(names(libc::O_RDWR), "O_RDWR");
        // Mode 3, for ioctls: not O_RDONLY.
        assert_eq!(names(3 | libc::O_NONBLOCK), "O_ACCMODE,O_NONBLOCK");
    }

    fn shebang_of(text: &[u8]) -> Option<Interpreter> {
        let mut buf = [0u8; BINPRM_BUF_SIZE];
        let n = text.len().min(BINPRM_BUF_SIZE);
        buf[..n].copy_from_slice(&text[..n]);
        parse_shebang(&buf)
    }

    fn interp(name: &str, arg: Option<&str>) -> Option<Interpreter> {
        Some((name.into(), arg.map(Into::into)))
    }

    #[test]
    fn default_broker_sockets_of_every_user_are_recognised() {
        for yes in [
            "/run/cordon/broker.sock",
            "/run/user/1000/cordon/broker.sock",
            "/run/user/0/cordon/broker.sock",
        ] {
            assert!(is_default_broker_socket(yes.as_bytes()), "{yes}");
        }
        for no in [
            "/run/user//cordon/broker.sock",
            "/run/user/10x/cordon/broker.sock",
            "/run/user/1000/cordon/other.sock",
            "/run/user/1000/x/cordon/broker.sock",
            "/tmp/run/cordon/broker.sock",
        ] {
            assert!(!is_default_broker_socket(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn configured_sockets_are_compared_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let resolved = resolved_socket_path(dir.path().join("link/broker.sock"));
        assert_eq!(
            resolved,
            std::fs::canonicalize(&real).unwrap().join("broker.sock")
        );
        let missing = PathBuf::from("/nonexistent/dir/broker.sock");
        assert_eq!(resolved_socket_path(missing.clone()), missing);
        assert_eq!(
            resolved_socket_path(PathBuf::from("broker.sock")),
            std::env::current_dir().unwrap().join("broker.sock")
        );
    }

    /// Cases from fs/binfmt_script.c's rules (`load_script`).
    #[test]
    fn shebang_lines_parse_as_the_kernel_parses_them() {
        assert_eq!(shebang_of(b"#!/bin/sh\necho"), interp("/bin/sh", None));
        assert_eq!(shebang_of(b"#! /bin/sh  \n"), interp("/bin/sh", None));
        assert_eq!(
            shebang_of(b"#!/usr/bin/env  python3 -u \n"),
            interp("/usr/bin/env", Some("python3 -u"))
        );
        assert_eq!(
            shebang_of(b"#!\t/bin/sh\t-e\n"),
            interp("/bin/sh", Some("-e"))
        );
        // No newline: the file's end (NUL padding) ends the name.
        assert_eq!(shebang_of(b"#!/bin/sh"), interp("/bin/sh", None));
        // A NUL ends the name, and the argument.
        assert_eq!(shebang_of(b"#!/bin/sh\0 -x\n"), interp("/bin/sh", None));
        assert_eq!(
            shebang_of(b"#!/bin/sh -a\0b\n"),
            interp("/bin/sh", Some("-a"))
        );
        // A NUL before the newline hides it: the line runs to byte 255, and
        // the argument starts at the NUL, so it is empty (natively, this
        // script's echo prints " ./script").
        let mut long = b"#!/bin/echo \0".to_vec();
        long.resize(300, b'x');
        assert_eq!(shebang_of(&long), interp("/bin/echo", Some("")));
        // A line longer than the buffer: the argument is cut at 255 bytes.
        let mut long = b"#!/bin/echo ".to_vec();
        long.resize(300, b'y');
        let arg = "y".repeat(255 - b"#!/bin/echo ".len());
        assert_eq!(shebang_of(&long), interp("/bin/echo", Some(&arg)));
        // ...but a name that may be cut short is ENOEXEC.
        let mut long = b"#!/".to_vec();
        long.resize(300, b'n');
        assert_eq!(shebang_of(&long), None);
        // No interpreter, or no #! at all.
        assert_eq!(shebang_of(b"#!\n"), None);
        assert_eq!(shebang_of(b"#!   \t \n"), None);
        assert_eq!(shebang_of(b"# !/bin/sh\n"), None);
        assert_eq!(shebang_of(b"\x7fELF"), None);
    }

    #[test]
    fn scripts_see_the_name_the_kernel_gives_them() {
        assert_eq!(
            kernel_exec_name(b"./s.sh", libc::AT_FDCWD, false),
            b"./s.sh"
        );
        assert_eq!(kernel_exec_name(b"/bin/s.sh", 5, false), b"/bin/s.sh");
        assert_eq!(kernel_exec_name(b"s.sh", 5, false), b"/dev/fd/5/s.sh");
        assert_eq!(kernel_exec_name(b"", 7, true), b"/dev/fd/7");
    }

    #[test]
    fn a_denial_never_carries_errno_zero() {
        assert_eq!(denial_errno(libc::ECONNREFUSED), Errno::ECONNREFUSED);
        for bad in [0, -1, 4095, 100_000, i32::MIN, i32::MAX] {
            assert_eq!(denial_errno(bad), Errno::EACCES, "{bad}");
        }
    }
}
