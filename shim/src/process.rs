//! What the supervisor knows about the task behind a notification (from
//! `/proc/TID`), and running an operation with that task's file-system
//! credentials so an allowed call never gets more than the tool could do.

use std::{
    fs,
    os::fd::{AsFd, OwnedFd},
};

use nix::errno::Errno;

use crate::sys;

/// The file-system identity that permission checks use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    /// Effective ids: what a unix listener sees (`SO_PEERCRED`) of a connect.
    pub euid: u32,
    pub egid: u32,
    pub fsuid: u32,
    pub fsgid: u32,
    pub groups: Vec<u32>,
    /// Effective capabilities (`CapEff`): a root tool that dropped
    /// capabilities must not borrow the supervisor's.
    pub cap_eff: u64,
}

/// One task, as the kernel describes it at the time of the notification.
#[derive(Debug, Clone)]
pub struct Task {
    pub tid: i32,
    pub tgid: i32,
    pub ppid: i32,
    /// Real ids.
    pub uid: u32,
    pub gid: u32,
    /// Saved ids (with the real and effective ones, what the task may name
    /// as its own in `SCM_CREDENTIALS`).
    pub suid: u32,
    pub sgid: u32,
    pub creds: Creds,
    pub comm: String,
    pub exe: Vec<u8>,
    pub cwd: Vec<u8>,
}

fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

fn ids(s: Option<&str>) -> Option<Vec<u32>> {
    s?.split_whitespace().map(|v| v.parse().ok()).collect()
}

fn four(s: Option<&str>) -> Option<[u32; 4]> {
    ids(s)?.try_into().ok()
}

fn missing() -> Errno {
    // The task exited between the notification and our look at it.
    Errno::ESRCH
}

/// What the supervisor keeps of the tasks that make calls, between calls.
///
/// Read per call is only what may change without a syscall the filter traps:
/// the ids and the parent (`PIDFD_GET_INFO`, ~0.8 µs here), the name (any
/// thread may rewrite it through `/proc`) and the working directory (shared
/// between threads, and renamed along with its parents). Kept between calls,
/// and read again from `/proc/TID/status` and the `exe` link only after
/// [`TaskCache::invalidate`], are:
/// - the groups and effective capabilities, which only the task's own
///   credential syscalls change: the filter traps every one (`set*id`,
///   `setgroups`, `capset`), and the supervisor invalidates before letting
///   it run; a change of any id is also seen per call;
/// - the executable, which only an exec changes: the exec verifier
///   invalidates at the exec event, before the new image runs
///   (`prctl(PR_SET_MM)`, the other way, is refused by the filter). A
///   rename of the file after the first call is not seen: `exe` is the path
///   the image had then.
///
/// Generating a status file costs ~8 µs of kernel time and each readlink
/// ~2.5 µs, which per call was a quarter of the supervisor's work. Kernels
/// without `PIDFD_GET_INFO` (before 6.13) or `PIDFD_THREAD` (6.9) read
/// everything per call.
///
/// The fds are tied to their task: once it is gone, reads fail and we
/// reopen, so a reused tid never reads a dead task's files.
#[derive(Debug, Default)]
pub struct TaskCache {
    tasks: std::sync::Mutex<Cached>,
    generation: Invalidator,
    /// Set once `PIDFD_GET_INFO` or `PIDFD_THREAD` turns out to be missing.
    per_call: std::sync::atomic::AtomicBool,
}

/// Marks every value a [`TaskCache`] keeps as stale; cloned into the
/// threads that see the events (the exec verifier).
#[derive(Debug, Clone, Default)]
pub struct Invalidator(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Invalidator {
    pub fn invalidate(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn generation(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[derive(Debug)]
struct TaskFiles {
    /// `/proc/TID`; the other files are opened through it (so the same task).
    dir: OwnedFd,
    /// A pidfd on the thread, opened before `dir` and checked after it.
    pidfd: Option<OwnedFd>,
    comm: fs::File,
    /// Reread with `pread`: opening it each time doubled the cost of a read.
    status: fs::File,
    kept: Option<Kept>,
}

/// Values read at generation `generation` for a task with ids `ids`.
#[derive(Debug)]
struct Kept {
    generation: u64,
    ids: sys::TaskIds,
    groups: Vec<u32>,
    cap_eff: u64,
    exe: Vec<u8>,
}

#[derive(Debug, Default)]
struct Cached {
    files: std::collections::HashMap<i32, TaskFiles>,
    /// Reused for every read (a status file is ~1.5 KiB; 16 KiB is room for
    /// thousands of groups).
    buf: Vec<u8>,
}

/// Tasks whose files are kept (four fds each): few enough that a
/// fork-heavy tool cannot exhaust our fds.
const MAX_CACHED_TASKS: usize = 64;

fn open_in(dir: &OwnedFd, name: &str) -> Result<OwnedFd, Errno> {
    nix::fcntl::openat(
        dir,
        name,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|_| missing())
}

/// A whole small `/proc` file, read at offset 0 into `buf`.
fn read_whole<'a>(file: &fs::File, buf: &'a mut Vec<u8>) -> Result<&'a [u8], Errno> {
    use std::os::unix::fs::FileExt;
    buf.resize(16 * 1024, 0);
    match file.read_at(buf, 0) {
        Ok(n) if n > 0 && n < buf.len() => Ok(&buf[..n]),
        _ => Err(missing()),
    }
}

fn status_text<'a>(file: &fs::File, buf: &'a mut Vec<u8>) -> Result<&'a str, Errno> {
    std::str::from_utf8(read_whole(file, buf)?).map_err(|_| missing())
}

/// The policy may key on exe or cwd: one it cannot be told (a cwd deeper
/// than a page makes readlink fail) is a denial, not "".
fn link(dir: &OwnedFd, what: &str) -> Result<Vec<u8>, Errno> {
    sys::readlinkat(dir.as_fd(), what).map_err(|_| Errno::EACCES)
}

impl TaskFiles {
    /// `Ok(None)` when a thread pidfd was asked for and this kernel has no
    /// `PIDFD_THREAD` (Linux 6.9).
    fn open(tid: i32, with_pidfd: bool) -> Result<Option<TaskFiles>, Errno> {
        let pidfd = if with_pidfd {
            match sys::pidfd_open_thread(tid) {
                Ok(fd) => Some(fd),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Err(missing()),
                // The flag unknown: this kernel. Anything else (EMFILE…)
                // is this call's failure, not a reason to stop keeping.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
                Err(e) => return Err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
            }
        } else {
            None
        };
        let dir = nix::fcntl::open(
            format!("/proc/{tid}").as_str(),
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|_| missing())?;
        let comm = open_in(&dir, "comm")?.into();
        let status = open_in(&dir, "status")?.into();
        Ok(Some(TaskFiles {
            dir,
            pidfd,
            comm,
            status,
            kept: None,
        }))
    }

    /// The task's name: `comm` without its newline (raw bytes, where the
    /// status file would escape them).
    fn comm(&self, buf: &mut Vec<u8>) -> Result<String, Errno> {
        let bytes = read_whole(&self.comm, buf)?;
        let name = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        Ok(String::from_utf8_lossy(name).into_owned())
    }
}

/// How a read of a task through its kept files went.
enum Read {
    Task(Task),
    /// The kernel has no `PIDFD_GET_INFO` or `PIDFD_THREAD`: read everything
    /// per call.
    PerCall,
}

impl TaskCache {
    /// Marks every kept value stale (see the type's documentation).
    pub fn invalidate(&self) {
        self.generation.invalidate();
    }

    /// A handle for other threads to invalidate with.
    pub fn invalidator(&self) -> Invalidator {
        self.generation.clone()
    }

    /// The task `tid`, as it is now.
    pub fn inspect(&self, tid: i32) -> Result<Task, Errno> {
        self.inspect_with(tid, true)
    }

    /// [`TaskCache::inspect`], but `cwd` left empty where the facts are
    /// kept: for a caller that opens the cwd itself and takes its path from
    /// what it opened (one link read instead of two, and the same directory).
    pub fn inspect_without_cwd(&self, tid: i32) -> Result<Task, Errno> {
        self.inspect_with(tid, false)
    }

    fn inspect_with(&self, tid: i32, cwd: bool) -> Result<Task, Errno> {
        use std::sync::atomic::Ordering;
        let mut cached = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let Cached { files, buf } = &mut *cached;
        // Twice at most: kept files that fail with ESRCH may be a dead
        // task's whose tid was reused; fresh ones settle it.
        for _ in 0..2 {
            let per_call = self.per_call.load(Ordering::Relaxed);
            if !files.contains_key(&tid) {
                if files.len() >= MAX_CACHED_TASKS {
                    files.clear();
                }
                match TaskFiles::open(tid, !per_call)? {
                    Some(task) => {
                        files.insert(tid, task);
                    }
                    None => {
                        self.read_per_call(files);
                        continue;
                    }
                }
            }
            let task = files.get_mut(&tid).expect("present or just inserted");
            let read = match &task.pidfd {
                Some(_) if !per_call => self.read_kept(tid, task, buf, cwd),
                _ => Task::read_all(tid, task, buf).map(Read::Task),
            };
            match read {
                Ok(Read::Task(t)) => return Ok(t),
                Ok(Read::PerCall) => self.read_per_call(files),
                Err(Errno::ESRCH) => {
                    files.remove(&tid);
                }
                // An unreadable link (`EACCES`): the caller's answer.
                Err(e) => return Err(e),
            }
        }
        Err(missing())
    }

    /// From now on, everything per call (the kernel lacks what keeping
    /// needs).
    fn read_per_call(&self, files: &mut std::collections::HashMap<i32, TaskFiles>) {
        tracing::debug!("no PIDFD_GET_INFO or PIDFD_THREAD: reading /proc/TID/status per call");
        self.per_call
            .store(true, std::sync::atomic::Ordering::Relaxed);
        files.clear();
    }

    fn read_kept(
        &self,
        tid: i32,
        task: &mut TaskFiles,
        buf: &mut Vec<u8>,
        cwd: bool,
    ) -> Result<Read, Errno> {
        // Before any read: an invalidation from now on discards what we keep.
        let generation = self.generation.generation();
        let pidfd = task.pidfd.as_ref().expect("checked by the caller");
        let ids = match sys::pidfd_task_ids(pidfd) {
            Ok(ids) => ids,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Err(missing()),
            // The ioctl unknown (ENOTTY) or its argument (EINVAL): this
            // kernel. Anything else is this call's failure.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
                return Ok(Read::PerCall);
            }
            Err(e) => return Err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
        };
        let fresh = task
            .kept
            .as_ref()
            .is_some_and(|k| k.generation == generation && k.ids == ids);
        if !fresh {
            task.kept = None;
            let (from_status, creds) = Task::ids_from_status(status_text(&task.status, buf)?)?;
            let exe = link(&task.dir, "exe")?;
            if from_status != ids {
                // Changed between the two reads: use this call's status and
                // keep nothing.
                return Task::read_all(tid, task, buf).map(Read::Task);
            }
            task.kept = Some(Kept {
                generation,
                ids,
                groups: creds.groups,
                cap_eff: creds.cap_eff,
                exe,
            });
        }
        let kept = task.kept.as_ref().expect("kept above");
        Ok(Read::Task(Task {
            tid,
            tgid: ids.tgid,
            ppid: ids.ppid,
            uid: ids.uids[0],
            gid: ids.gids[0],
            suid: ids.uids[2],
            sgid: ids.gids[2],
            creds: Creds {
                euid: ids.uids[1],
                egid: ids.gids[1],
                fsuid: ids.uids[3],
                fsgid: ids.gids[3],
                groups: kept.groups.clone(),
                cap_eff: kept.cap_eff,
            },
            comm: task.comm(buf)?,
            exe: kept.exe.clone(),
            cwd: if cwd {
                link(&task.dir, "cwd")?
            } else {
                Vec::new()
            },
        }))
    }

    /// The task's umask (shared between threads, so read when needed: for
    /// the calls that create files).
    pub fn umask(&self, tid: i32) -> Result<u32, Errno> {
        let mut cached = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let Cached { files, buf } = &mut *cached;
        // The entry `inspect` made for this call or, if another call's
        // clean-up dropped it since, the file opened again. By tid alone
        // either could be a later task's: the caller checks.
        let fresh;
        let status = match files.get(&tid) {
            Some(task) => &task.status,
            None => {
                fresh = TaskFiles::open(tid, false)?.ok_or_else(missing)?;
                &fresh.status
            }
        };
        let status = status_text(status, buf)?;
        // No guess: a wrong umask would create files more open than the
        // tool asked for (`Umask:` is there since Linux 4.7).
        field(status, "Umask")
            .and_then(|v| u32::from_str_radix(v, 8).ok())
            .ok_or_else(missing)
    }
}

impl Task {
    /// The ids and credentials in a status text.
    fn ids_from_status(status: &str) -> Result<(sys::TaskIds, Creds), Errno> {
        let num = |name| {
            field(status, name)
                .and_then(|v| v.parse::<i32>().ok())
                .ok_or_else(missing)
        };
        let ids = sys::TaskIds {
            tgid: num("Tgid")?,
            ppid: num("PPid")?,
            uids: four(field(status, "Uid")).ok_or_else(missing)?,
            gids: four(field(status, "Gid")).ok_or_else(missing)?,
        };
        Ok((ids, Creds::from_status(status).ok_or_else(missing)?))
    }

    /// Everything read now, from the status file and the links.
    fn read_all(tid: i32, task: &TaskFiles, buf: &mut Vec<u8>) -> Result<Task, Errno> {
        let (ids, creds) = Task::ids_from_status(status_text(&task.status, buf)?)?;
        Ok(Task {
            tid,
            tgid: ids.tgid,
            ppid: ids.ppid,
            uid: ids.uids[0],
            gid: ids.gids[0],
            suid: ids.uids[2],
            sgid: ids.gids[2],
            creds,
            comm: task.comm(buf)?,
            exe: link(&task.dir, "exe")?,
            cwd: link(&task.dir, "cwd")?,
        })
    }
}

impl Creds {
    /// The identity lines of a `/proc/TID/status` text.
    fn from_status(status: &str) -> Option<Creds> {
        let uids = four(field(status, "Uid"))?;
        let gids = four(field(status, "Gid"))?;
        Some(Creds {
            euid: uids[1],
            egid: gids[1],
            fsuid: uids[3],
            fsgid: gids[3],
            // Always present (empty when there are none): a status without
            // it is not one to trust for the rest either.
            groups: ids(field(status, "Groups"))?,
            cap_eff: field(status, "CapEff").and_then(|v| u64::from_str_radix(v, 16).ok())?,
        })
    }

    /// Those in a status file, from its identity lines alone (not the exe
    /// or cwd links, which a deep working directory makes unreadable).
    fn read(status: &str) -> Option<Creds> {
        Creds::from_status(&fs::read_to_string(status).ok()?)
    }

    /// The calling thread's own (fs ids and capabilities are per thread):
    /// what the supervisor thread, and the threads it starts, switch back to.
    /// If `/proc` cannot tell them (no fd left, say), the ids and groups come
    /// from their syscalls and the capabilities from `capget`, or, failing
    /// that, every one is assumed, so that `with_creds` drops what the tool
    /// lacks rather than keep what it does not know (and switching back sets
    /// what the thread is permitted: it cannot fail on a guess).
    pub fn of_thread() -> Creds {
        Creds::read("/proc/thread-self/status").unwrap_or_else(Creds::assumed)
    }

    /// The calling thread's, as a supervisor thread acts with them: without
    /// `CAP_SYS_RESOURCE`, which every sandboxed tool gives up with its
    /// rlimits (`RLIMIT_CORE` is always set), nor `CAP_NET_ADMIN` and
    /// `CAP_NET_RAW`, which every tool gives up, so no call made for a tool
    /// may use them. [`with_creds`] takes it out of each thread that acts with
    /// these once, rather than lower and restore it around every call of a
    /// root tool (two `capset`s, 3.3 µs, BENCHMARKS.md session 28).
    pub fn of_supervisor_thread() -> Creds {
        let mut me = Creds::of_thread();
        me.cap_eff &= !(sys::RESOURCE_CAPABILITY | sys::NETWORK_CAPABILITIES);
        me
    }

    /// The process's (its main thread's), with the same fallback.
    pub fn of_self() -> Creds {
        Creds::read("/proc/self/status").unwrap_or_else(Creds::assumed)
    }

    fn assumed() -> Creds {
        Creds {
            euid: nix::unistd::geteuid().as_raw(),
            egid: nix::unistd::getegid().as_raw(),
            fsuid: nix::unistd::geteuid().as_raw(),
            fsgid: nix::unistd::getegid().as_raw(),
            groups: nix::unistd::getgroups()
                .map(|g| g.iter().map(|g| g.as_raw()).collect())
                .unwrap_or_default(),
            cap_eff: sys::thread_effective_caps().unwrap_or(u64::MAX),
        }
    }
}

/// Whether thread `tid` has an fd number free below its `RLIMIT_NOFILE`,
/// so that a file injected into it gets one (else `EMFILE`). Read from
/// `/proc` (its limits, and its fd table's entries below the limit); where
/// either cannot be read, yes: the injection then says. Another thread of
/// the tool may take the last number after this; that race is the tool's.
pub fn has_fd_room(tid: i32) -> bool {
    let limit = fs::read_to_string(format!("/proc/{tid}/limits"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("Max open files"))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        });
    let (Some(limit), Ok(entries)) = (limit, fs::read_dir(format!("/proc/{tid}/fd"))) else {
        return true;
    };
    let used = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|&fd| fd < limit)
        .count() as u64;
    used < limit
}

/// Runs `f` on this thread with the tool's fs ids, groups, and no
/// effective capability the tool lacks, where they differ from the
/// supervisor's; then switches back. If a switch is not possible the answer
/// is `EACCES`: the supervisor never acts with credentials the tool does not
/// have.
pub fn with_creds<R>(tool: &Creds, me: &Creds, f: impl FnOnce() -> R) -> Result<R, Errno> {
    switch(tool, me, false, f)
}

/// [`with_creds`], and the tool's effective ids too, for an open whose file
/// the tool gets: an open file keeps its opener's credentials (`f_cred`),
/// and checks made later against them (a cgroup v1 `cgroup.procs` write
/// moves any process whose uid matches the opener's euid, or every process
/// for euid 0), or at the open by euid (sysctl files), took a nobody tool's
/// file for root's (found by review). The real and saved ids stay ours:
/// what signals and ptrace check against this thread, and what lets it
/// switch back. Not for sends, which name our ids (`own_ids` in notify.rs).
pub fn with_opener_creds<R>(tool: &Creds, me: &Creds, f: impl FnOnce() -> R) -> Result<R, Errno> {
    switch(tool, me, true, f)
}

fn switch<R>(tool: &Creds, me: &Creds, effective: bool, f: impl FnOnce() -> R) -> Result<R, Errno> {
    settle(me)?;
    let effective_ids_differ = effective && (tool.euid, tool.egid) != (me.euid, me.egid);
    let same_ids = (tool.fsuid, tool.fsgid, &tool.groups) == (me.fsuid, me.fsgid, &me.groups)
        && !effective_ids_differ;
    // Capabilities the supervisor has and the tool does not, of those a
    // call made for it can use: a root tool lacks `CAP_SYS_TIME` (the
    // sandbox takes it), which no open, connect, bind or send checks, and
    // must not pay two `capset`s per call for it. (It lacks
    // `CAP_SYS_RESOURCE` too, which `settle` took from this thread.)
    let extra_caps = me.cap_eff & !tool.cap_eff & !sys::CLOCK_CAPABILITY;
    if same_ids && extra_caps == 0 {
        return Ok(f());
    }
    // Only what differs: `setgroups` needs CAP_SETGID even to set the same
    // list, which a supervisor that is not root lacks (and a failed restore
    // aborts). A tool it started can only reach ids the supervisor may set
    // too. (A start with real and effective ids apart, which could make them
    // differ, already fails: such a cordon is not dumpable, and cannot take
    // the filter over from its child.)
    let groups_differ = tool.groups != me.groups;
    // The fs ids follow the effective ones as they change.
    let fs_ids_then = if effective_ids_differ {
        (tool.euid, tool.egid)
    } else {
        (me.fsuid, me.fsgid)
    };
    let fs_ids_differ = (tool.fsuid, tool.fsgid) != fs_ids_then;
    // From here on, whatever was switched is switched back when `undo`
    // drops: on every return, and when `f` panics (the serving loop catches
    // panics, and its thread goes on serving).
    let mut undo = Restore {
        me,
        caps: false,
        groups: false,
        effective_ids: false,
        back_to_root: effective_ids_differ && me.euid == 0 && tool.euid != 0,
        fs_ids: false,
    };
    if groups_differ {
        if let Err(e) = sys::set_thread_groups(&tool.groups) {
            // Nothing changed yet.
            tracing::warn!(error = %e, "cannot take on the tool's groups; denying");
            return Err(Errno::EACCES);
        }
        undo.groups = true;
    }
    // What the effective set is now, if an id switch changed it.
    let mut caps_now = me.cap_eff;
    if effective_ids_differ {
        // Before the switch: a failed one may have set the gid.
        undo.effective_ids = true;
        undo.caps = true;
        // Going back sets the fs ids to our effective ones: ours, usually.
        undo.fs_ids = (me.fsuid, me.fsgid) != (me.euid, me.egid);
        if let Err(e) = sys::set_thread_effective_ids(tool.euid, tool.egid) {
            tracing::warn!(error = %e, "cannot take on the tool's effective ids; denying");
            return Err(Errno::EACCES);
        }
        if me.euid == 0 && tool.euid != 0 {
            // Leaving euid 0 cleared the effective set (the permitted one
            // stays, the real and saved uids being ours).
            caps_now = 0;
            // Ours again, for an fs id switch; the tool's follow.
            if fs_ids_differ {
                if let Err(e) = sys::set_thread_effective_caps(me.cap_eff) {
                    tracing::warn!(error = %e, "cannot take back our capabilities; denying");
                    return Err(Errno::EACCES);
                }
                caps_now = me.cap_eff;
            }
        }
    }
    if fs_ids_differ {
        // Before the switch: a failed one may have set one of the two.
        undo.fs_ids = true;
        if let Err(e) = sys::set_thread_fs_ids(tool.fsuid, tool.fsgid) {
            tracing::warn!(error = %e, "cannot take on the tool's fs ids; denying");
            return Err(Errno::EACCES);
        }
        // Leaving fs uid 0 cleared the fs capabilities: not known exactly.
        caps_now = u64::MAX;
    }
    // After the id switches, keep only what both have.
    let wanted = me.cap_eff & tool.cap_eff;
    if (extra_caps != 0 || effective_ids_differ) && caps_now != wanted {
        undo.caps = true;
        if let Err(e) = sys::set_thread_effective_caps(wanted) {
            tracing::warn!(error = %e, "cannot drop capabilities the tool lacks; denying");
            return Err(Errno::EACCES);
        }
    }
    Ok(f())
}

std::thread_local! {
    /// The effective set this thread was last brought within by [`settle`].
    static SETTLED: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Takes out of this thread's effective set, once per thread and `me`, what
/// `me` lacks (see [`Creds::of_supervisor_thread`]): [`with_creds`] compares
/// the tool with `me`, so the thread must hold no more than `me` says, or a
/// call it makes with no switch would use the difference. Lowering the
/// effective set needs no privilege; if it fails anyway, so does the call.
fn settle(me: &Creds) -> Result<(), Errno> {
    if SETTLED.get() == Some(me.cap_eff) {
        return Ok(());
    }
    let held = sys::thread_effective_caps().map_err(|e| {
        tracing::warn!(error = %e, "cannot read this thread's capabilities; denying");
        Errno::EACCES
    })?;
    if held & !me.cap_eff != 0 {
        sys::set_thread_effective_caps(held & me.cap_eff).map_err(|e| {
            tracing::warn!(error = %e, "cannot drop capabilities no tool has; denying");
            Errno::EACCES
        })?;
    }
    SETTLED.set(Some(me.cap_eff));
    Ok(())
}

/// What [`switch`] switched, switched back when dropped: the
/// capabilities (if lowered), the groups (if set), the effective ids and
/// the fs ids (if they differ: setting one's own is always allowed).
struct Restore<'a> {
    me: &'a Creds,
    caps: bool,
    groups: bool,
    effective_ids: bool,
    /// The effective uid goes from the tool's back to 0, which raises the
    /// effective set to the permitted one.
    back_to_root: bool,
    fs_ids: bool,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let me = self.me;
        let caps = || {
            if self.caps {
                sys::set_thread_effective_caps(me.cap_eff).map(|_| ())
            } else {
                Ok(())
            }
        };
        // The effective ids first where they go back to root from another
        // uid: that needs no capability (they are our real and saved ones),
        // raises the effective set to the permitted one (for the groups,
        // CAP_SETGID, and fs ids, CAP_SETUID), and sets the fs ids to ours
        // (so they need setting again only if they were switched apart from
        // them). Else capabilities first, back to the supervisor's own set,
        // not the one saved after the switch (which had the fs capabilities
        // cleared): a root tool's euid stays 0, and raises nothing (one
        // without CAP_SETGID then failed the groups' restore, and aborted
        // cordon; found by review). Again at the end, since a switch of ids
        // may change them.
        let early_caps = if self.back_to_root { Ok(()) } else { caps() };
        let effective_ids = if self.effective_ids {
            sys::set_thread_effective_ids(me.euid, me.egid)
        } else {
            Ok(())
        };
        let groups = if self.groups {
            sys::set_thread_groups(&me.groups)
        } else {
            Ok(())
        };
        let fs_ids = if self.fs_ids {
            sys::set_thread_fs_ids(me.fsuid, me.fsgid)
        } else {
            Ok(())
        };
        let late_caps = if self.effective_ids { caps() } else { Ok(()) };
        if let Err(e) = early_caps
            .and(effective_ids)
            .and(groups)
            .and(fs_ids)
            .and(late_caps)
        {
            // Continuing with the tool's identity would be wrong either way.
            tracing::error!(error = %e, "cannot restore the supervisor's credentials");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    /// Supervisor credentials guessed with every capability (what a failed
    /// read of its status assumes) are switched away from and back without
    /// aborting: the restore sets what the thread is permitted (it used to
    /// ask for all 64 bits, which `capset` refuses, and abort the process).
    #[test]
    fn assumed_capabilities_are_restored_as_the_thread_may() {
        let before = sys::thread_effective_caps().unwrap();
        if before == 0 {
            eprintln!("skipped: needs capabilities to lower");
            return;
        }
        let me = Creds {
            cap_eff: u64::MAX,
            ..Creds::of_thread()
        };
        let tool = Creds {
            cap_eff: 0,
            ..me.clone()
        };
        let inside = with_creds(&tool, &me, || sys::thread_effective_caps().unwrap()).unwrap();
        assert_eq!(inside, 0);
        assert_eq!(sys::thread_effective_caps().unwrap(), before);
    }

    /// A tool that lacks only `CAP_SYS_TIME` (the sandbox takes it), which
    /// no call made for it checks: its calls take the path without a switch.
    #[test]
    fn a_tool_without_only_the_clock_capability_needs_no_switch() {
        let me = Creds::of_thread();
        if me.cap_eff & sys::CLOCK_CAPABILITY == 0 {
            eprintln!("skipped: needs CAP_SYS_TIME to lack");
            return;
        }
        let tool = Creds {
            cap_eff: me.cap_eff & !sys::CLOCK_CAPABILITY,
            ..me.clone()
        };
        let inside = with_creds(&tool, &me, || sys::thread_effective_caps().unwrap()).unwrap();
        assert_eq!(inside, me.cap_eff, "capabilities were switched");
        // One more missing capability is switched as before.
        let tool = Creds {
            cap_eff: tool.cap_eff & !(1 << 1), // CAP_DAC_OVERRIDE
            ..tool
        };
        let inside = with_creds(&tool, &me, || sys::thread_effective_caps().unwrap()).unwrap();
        assert_eq!(inside, tool.cap_eff);
    }

    /// A supervisor thread that holds `CAP_SYS_RESOURCE` (root where the
    /// host grants it; here, root of a user namespace) serves a root tool,
    /// which never has it, with no switch per call, and never with it: the
    /// thread gives it up at its first call and keeps it given up. This
    /// machine's root lacks it, so the check runs in this test binary again
    /// under `unshare -Ur`.
    #[test]
    fn a_supervisor_thread_gives_up_the_resource_capability_once() {
        const INSIDE: &str = "CORDON_TEST_IN_USER_NS";
        if std::env::var_os(INSIDE).is_some() {
            let held = sys::thread_effective_caps().unwrap();
            assert_ne!(held & sys::RESOURCE_CAPABILITY, 0, "{held:x}");
            let me = Creds::of_supervisor_thread();
            let tool = Creds {
                cap_eff: held & !(sys::RESOURCE_CAPABILITY | sys::CLOCK_CAPABILITY),
                ..me.clone()
            };
            for call in 0..2 {
                let inside = with_creds(&tool, &me, || sys::thread_effective_caps().unwrap());
                // No switch (the clock capability is left, as ever), and
                // without the resource capability.
                assert_eq!(inside, Ok(me.cap_eff), "call {call}");
                assert_eq!(me.cap_eff & sys::RESOURCE_CAPABILITY, 0);
                let after = sys::thread_effective_caps().unwrap();
                assert_eq!(after, me.cap_eff, "after call {call}");
            }
            println!("checked in a user namespace");
            return;
        }
        let out = std::process::Command::new("unshare")
            .arg("-Ur")
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "process::tests::a_supervisor_thread_gives_up_the_resource_capability_once",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(INSIDE, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("checked in a user namespace"), "{text}");
    }

    /// A root tool with another gid and groups, and without CAP_SETGID: its
    /// euid stays 0 through the switch, so going back raises no capability,
    /// and the groups' restore must come after ours are back (it aborted the
    /// process: found by review).
    #[test]
    fn a_root_tool_without_setgid_is_switched_back_from() {
        let me = Creds::of_supervisor_thread();
        assert!(me.euid == 0, "this test runs as root");
        const CAP_SETGID: u64 = 1 << 6;
        let tool = Creds {
            egid: 1000,
            fsgid: 1000,
            groups: vec![1000],
            cap_eff: me.cap_eff & !CAP_SETGID,
            ..me.clone()
        };
        let inside = with_opener_creds(&tool, &me, Creds::of_thread).unwrap();
        assert_eq!(
            (inside.euid, inside.egid, &inside.groups),
            (0, 1000, &tool.groups)
        );
        assert_eq!(inside.cap_eff & CAP_SETGID, 0);
        let now = Creds::of_thread();
        assert_eq!(
            (now.euid, now.egid, now.fsgid, &now.groups, now.cap_eff),
            (me.euid, me.egid, me.fsgid, &me.groups, me.cap_eff)
        );
    }

    /// Waits until task `tid` has exec'd `/bin/sleep`; its canonical path.
    fn until_sleep_runs(tid: i32) -> std::path::PathBuf {
        let sleep = fs::canonicalize("/bin/sleep").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fs::read_link(format!("/proc/{tid}/exe")).ok().as_deref() != Some(sleep.as_path()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never ran sleep"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        sleep
    }

    /// A task as the cache tells it (ids from `PIDFD_GET_INFO`, the rest
    /// kept) and as `/proc` tells it per call: the same, and again after an
    /// invalidation and from the kept values.
    #[test]
    fn kept_and_per_call_reads_of_a_task_agree() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "umask 027; exec sleep 30"])
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let tid = child.id() as i32;
        let sleep = until_sleep_runs(tid);
        let kept = TaskCache::default();
        let per_call = TaskCache::default();
        per_call
            .per_call
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = [
            kept.inspect(tid).unwrap(),
            kept.inspect(tid).unwrap(),
            {
                kept.invalidate();
                kept.inspect(tid).unwrap()
            },
            per_call.inspect(tid).unwrap(),
        ];
        assert!(kept.tasks.lock().unwrap().files[&tid].pidfd.is_some());
        for task in &reads {
            assert_eq!(task.tgid, tid);
            assert_eq!(task.ppid, std::process::id() as i32);
            assert_eq!(task.comm, "sleep");
            assert_eq!(task.exe, sleep.as_os_str().as_bytes());
            assert_eq!(
                task.cwd,
                fs::canonicalize(dir.path()).unwrap().as_os_str().as_bytes()
            );
            assert_eq!(
                (task.uid, task.gid),
                (
                    nix::unistd::getuid().as_raw(),
                    nix::unistd::getgid().as_raw()
                )
            );
            assert_eq!(task.creds, reads[3].creds);
        }
        assert_eq!(kept.umask(tid), Ok(0o027));
        child.kill().unwrap();
        child.wait().unwrap();
        // Gone: no answer from its files, kept or not.
        assert_eq!(kept.inspect(tid).map(|_| ()), Err(Errno::ESRCH));
        assert_eq!(per_call.inspect(tid).map(|_| ()), Err(Errno::ESRCH));
    }

    /// A working directory whose path is longer than a page cannot be told
    /// to the policy: `EACCES`, the caller's answer, not "no such process".
    #[test]
    fn an_unreadable_cwd_is_eacces_kept_or_per_call() {
        let dir = tempfile::tempdir().unwrap();
        let name = "d".repeat(200);
        // Relative chdirs one level at a time (a shell's `cd` would hand the
        // kernel the whole path).
        let mut child = std::process::Command::new("/usr/bin/python3")
            .args([
                "-c",
                &format!(
                    "import os\nfor _ in range(25):\n    os.mkdir('{name}'); os.chdir('{name}')\n\
                     os.execv('/bin/sleep', ['sleep', '30'])"
                ),
            ])
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let tid = child.id() as i32;
        until_sleep_runs(tid);
        let per_call = TaskCache::default();
        per_call
            .per_call
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for cache in [TaskCache::default(), per_call] {
            assert_eq!(cache.inspect(tid).map(|_| ()), Err(Errno::EACCES));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn capabilities_drop_and_come_back_on_this_thread() {
        let me = Creds::of_self();
        let tool = Creds {
            cap_eff: 0,
            ..me.clone()
        };
        let inside = with_creds(&tool, &me, || Creds::of_thread().cap_eff).unwrap();
        assert_eq!(inside, 0);
        assert_eq!(Creds::of_thread().cap_eff, me.cap_eff);
    }

    /// The serving loop catches a handler's panic and goes on: the thread
    /// must be back to the supervisor's credentials then, or it would serve
    /// the next call (maybe another tool's) with this tool's.
    /// A tool that runs as nobody, without capabilities.
    fn nobody() -> Creds {
        Creds {
            euid: 65534,
            egid: 65534,
            fsuid: 65534,
            fsgid: 65534,
            groups: vec![65534],
            cap_eff: 0,
        }
    }

    #[test]
    fn credentials_come_back_when_the_work_panics() {
        let me = Creds::of_self();
        let tool = nobody();
        assert!(
            me.cap_eff != 0 && me.fsuid == 0,
            "this test runs as root with capabilities"
        );
        let inside = std::cell::Cell::new(None);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = with_opener_creds(&tool, &me, || {
                inside.set(Some(Creds::of_thread()));
                panic!("the work fails");
            });
        }));
        assert!(unwound.is_err());
        // The work did run as the tool ...
        let inside = inside.take().expect("the work ran");
        assert_eq!(
            (inside.euid, inside.egid, inside.fsuid, inside.cap_eff),
            (65534, 65534, 65534, 0)
        );
        // ... and the thread is itself again.
        let now = Creds::of_thread();
        assert_eq!(
            (
                now.euid,
                now.egid,
                now.fsuid,
                now.fsgid,
                &now.groups,
                now.cap_eff
            ),
            (me.euid, me.egid, me.fsuid, me.fsgid, &me.groups, me.cap_eff)
        );
    }

    /// A file the supervisor opens for a tool of another uid is the tool's
    /// to the kernel in every respect an open file keeps: its opener's
    /// effective ids (`f_cred`) as well as its fs ids. The real and saved
    /// ids stay ours (signals and ptrace check those against this thread).
    #[test]
    fn the_work_runs_with_the_tools_effective_ids_and_our_real_ones() {
        let me = Creds::of_supervisor_thread();
        assert!(me.euid == 0, "this test runs as root");
        let tool = nobody();
        let ids = |line: &str| {
            let status = fs::read_to_string("/proc/thread-self/status").unwrap();
            field(&status, line).map(str::to_owned).unwrap()
        };
        let (uids, gids) = with_opener_creds(&tool, &me, || (ids("Uid"), ids("Gid"))).unwrap();
        let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(words(&uids), ["0", "65534", "0", "65534"]);
        assert_eq!(words(&gids), ["0", "65534", "0", "65534"]);
        assert_eq!(words(&ids("Uid")), ["0", "0", "0", "0"]);
        assert_eq!(Creds::of_thread().cap_eff, me.cap_eff);
        // A file made meanwhile is the tool's, and so is the open file.
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let path = dir.path().join("made");
        with_opener_creds(&tool, &me, || std::fs::File::create(&path).unwrap()).unwrap();
        // Other calls (sends name our ids) keep our effective ids.
        let uids = with_creds(&tool, &me, || ids("Uid")).unwrap();
        assert_eq!(words(&uids), ["0", "0", "0", "65534"]);
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&path).unwrap());
        assert_eq!(owner, 65534);
    }
}
