//! What the supervisor knows about the task behind a notification (from
//! `/proc/TID`), and running an operation with that task's file-system
//! credentials so an allowed call never gets more than the tool could do.

use std::{fs, os::unix::ffi::OsStrExt};

use nix::errno::Errno;

use crate::sys;

/// The file-system identity that permission checks use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub fsuid: u32,
    pub fsgid: u32,
    pub groups: Vec<u32>,
    /// Effective capabilities (`CapEff`): a root tool that dropped
    /// capabilities must not borrow the supervisor's.
    pub cap_eff: u64,
}

/// One task, as `/proc` describes it at the time of the notification.
#[derive(Debug, Clone)]
pub struct Task {
    pub tid: i32,
    pub tgid: i32,
    pub ppid: i32,
    pub uid: u32,
    pub gid: u32,
    pub creds: Creds,
    pub umask: u32,
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

fn missing() -> Errno {
    // The task exited between the notification and our look at it.
    Errno::ESRCH
}

/// Open `/proc/TID` entries of the tasks that make calls, kept between calls:
/// the status file is reread with `pread` (generating it is the kernel's
/// cost, but opening it each time doubles it) and the `exe` and `cwd` links
/// are read relative to the directory (a path walk through `/proc` per link
/// was ~3 µs of each call). The fds are tied to their task: once it is gone
/// reads fail and we reopen, so a reused tid never reads a dead task's files.
#[derive(Debug, Default)]
pub struct StatusFiles(std::sync::Mutex<Cached>);

#[derive(Debug)]
struct TaskFiles {
    status: fs::File,
    /// `/proc/TID`; the status file is opened through it (so the same task).
    dir: std::os::fd::OwnedFd,
}

#[derive(Debug, Default)]
pub struct Cached {
    files: std::collections::HashMap<i32, TaskFiles>,
    /// Reused for every read (a status file is ~1.5 KiB; 16 KiB is room for
    /// thousands of groups).
    buf: Vec<u8>,
}

/// Tasks whose files are kept (two fds each): few enough that a fork-heavy
/// tool cannot exhaust our fds.
const MAX_CACHED_TASKS: usize = 64;

impl StatusFiles {
    /// Calls `f` with the task's status text and its `/proc/TID` directory.
    fn look<T>(
        &self,
        tid: i32,
        f: impl FnOnce(&str, &std::os::fd::OwnedFd) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        use std::os::unix::fs::FileExt;
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Cached { files, buf } = &mut *cached;
        buf.resize(16 * 1024, 0);
        for _ in 0..2 {
            if !files.contains_key(&tid) {
                if files.len() >= MAX_CACHED_TASKS {
                    files.clear();
                }
                let dir = nix::fcntl::open(
                    format!("/proc/{tid}").as_str(),
                    nix::fcntl::OFlag::O_PATH
                        | nix::fcntl::OFlag::O_DIRECTORY
                        | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
                .map_err(|_| missing())?;
                let status = nix::fcntl::openat(
                    &dir,
                    "status",
                    nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
                .map_err(|_| missing())?;
                files.insert(
                    tid,
                    TaskFiles {
                        status: status.into(),
                        dir,
                    },
                );
            }
            let task = &files[&tid];
            match task.status.read_at(buf, 0) {
                Ok(n) if n > 0 && n < buf.len() => {
                    let status = std::str::from_utf8(&buf[..n]).map_err(|_| missing())?;
                    return f(status, &task.dir);
                }
                _ => {
                    files.remove(&tid);
                }
            }
        }
        Err(missing())
    }
}

impl Task {
    /// Reads the task through `files`.
    pub fn inspect(tid: i32, files: &StatusFiles) -> Result<Task, Errno> {
        files.look(tid, |status, dir| Task::parse(tid, status, dir))
    }

    /// A task from its status text and its `/proc/TID` directory (for the
    /// `exe` and `cwd` links).
    fn parse(tid: i32, status: &str, dir: &std::os::fd::OwnedFd) -> Result<Task, Errno> {
        let uids = ids(field(status, "Uid"))
            .filter(|v| v.len() == 4)
            .ok_or_else(missing)?;
        let gids = ids(field(status, "Gid"))
            .filter(|v| v.len() == 4)
            .ok_or_else(missing)?;
        let num = |name| {
            field(status, name)
                .and_then(|v| v.parse::<i32>().ok())
                .ok_or_else(missing)
        };
        let umask = field(status, "Umask")
            .and_then(|v| u32::from_str_radix(v, 8).ok())
            .unwrap_or(0o022);
        // The policy may key on exe or cwd: one it cannot be told (a cwd
        // deeper than a page makes readlink fail) is a denial, not "".
        let link = |what: &str| {
            nix::fcntl::readlinkat(dir, what)
                .map(|p| p.as_bytes().to_vec())
                .map_err(|_| Errno::EACCES)
        };
        Ok(Task {
            tid,
            tgid: num("Tgid")?,
            ppid: num("PPid")?,
            uid: uids[0],
            gid: gids[0],
            creds: Creds::from_status(status).ok_or_else(missing)?,
            umask,
            comm: field(status, "Name").unwrap_or_default().to_owned(),
            exe: link("exe")?,
            cwd: link("cwd")?,
        })
    }
}

impl Creds {
    /// The identity lines of a `/proc/TID/status` text.
    fn from_status(status: &str) -> Option<Creds> {
        let uids = ids(field(status, "Uid")).filter(|v| v.len() == 4)?;
        let gids = ids(field(status, "Gid")).filter(|v| v.len() == 4)?;
        Some(Creds {
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
    /// If `/proc` cannot tell them, every capability is assumed, so that
    /// `with_creds` drops what the tool lacks rather than keep what it does
    /// not know. (The tool's own status is unreadable then too, and every
    /// call is denied before that.)
    pub fn of_thread() -> Creds {
        Creds::read("/proc/thread-self/status").unwrap_or_else(Creds::assumed)
    }

    /// The process's (its main thread's), with the same fallback.
    pub fn of_self() -> Creds {
        Creds::read("/proc/self/status").unwrap_or_else(Creds::assumed)
    }

    fn assumed() -> Creds {
        Creds {
            fsuid: nix::unistd::geteuid().as_raw(),
            fsgid: nix::unistd::getegid().as_raw(),
            groups: nix::unistd::getgroups()
                .map(|g| g.iter().map(|g| g.as_raw()).collect())
                .unwrap_or_default(),
            cap_eff: u64::MAX,
        }
    }
}

/// Runs `f` on this thread with the tool's fs uid, fs gid and groups, and no
/// effective capability the tool lacks, when they differ from the
/// supervisor's; then switches back. If the switch is not possible the
/// answer is `EACCES`: the supervisor never opens with credentials the tool
/// does not have.
pub fn with_creds<R>(tool: &Creds, me: &Creds, f: impl FnOnce() -> R) -> Result<R, Errno> {
    let same_ids = (tool.fsuid, tool.fsgid, &tool.groups) == (me.fsuid, me.fsgid, &me.groups);
    // Capabilities the supervisor has and the tool does not.
    let extra_caps = me.cap_eff & !tool.cap_eff;
    if same_ids && extra_caps == 0 {
        return Ok(f());
    }
    let switch_ids = |c: &Creds| -> std::io::Result<()> {
        sys::set_thread_groups(&c.groups)?;
        sys::set_thread_fs_ids(c.fsuid, c.fsgid)
    };
    let restore = |caps: Option<u64>| {
        // Capabilities first: switching the ids back needs CAP_SETUID and
        // CAP_SETGID. Back to the supervisor's own set, not the one saved
        // after the id switch (which had the fs capabilities cleared).
        let caps = caps.map_or(Ok(0), |_| sys::set_thread_effective_caps(me.cap_eff));
        let ids = if same_ids { Ok(()) } else { switch_ids(me) };
        if let Err(e) = caps.map(|_| ()).and(ids) {
            // Continuing with the tool's identity would be wrong either way.
            tracing::error!(error = %e, "cannot restore the supervisor's credentials");
            std::process::abort();
        }
    };
    if !same_ids && let Err(e) = switch_ids(tool) {
        tracing::warn!(error = %e, "cannot take on the tool's credentials; denying");
        restore(None);
        return Err(Errno::EACCES);
    }
    // After the fs id switch (which itself clears the fs capabilities when
    // leaving uid 0), keep only what both have.
    let saved = if extra_caps != 0 {
        match sys::set_thread_effective_caps(me.cap_eff & tool.cap_eff) {
            Ok(prev) => Some(prev),
            Err(e) => {
                tracing::warn!(error = %e, "cannot drop capabilities the tool lacks; denying");
                restore(None);
                return Err(Errno::EACCES);
            }
        }
    } else {
        None
    };
    let out = f();
    restore(saved);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
