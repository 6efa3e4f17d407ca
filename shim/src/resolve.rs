//! Resolving a path the way the kernel would for the tool, once, and keeping
//! what was found open so the allowed call acts on exactly that file.
//!
//! The lookup starts from the tool's cwd (`/proc/TID/cwd`) or dirfd
//! (`/proc/TID/fd/N`) and follows `..` and symlinks with `openat2(O_PATH)`,
//! honouring the tool's `O_NOFOLLOW` and `openat2` resolve flags. The
//! canonical path the policy sees is read back from the `O_PATH` fd, and the
//! allowed open later reopens that fd: a rename or symlink swap after the
//! check cannot redirect it. `/proc/self`, `/proc/thread-self`, `/dev/fd`
//! and `/dev/std*` are rewritten to the tool's pid (they would otherwise name
//! the supervisor).

use std::os::{
    fd::{AsFd, AsRawFd, OwnedFd},
    unix::ffi::OsStrExt,
};

use nix::{
    errno::Errno,
    fcntl::{AT_FDCWD, OFlag, OpenHow, ResolveFlag, openat2},
};

/// What a lookup found.
#[derive(Debug)]
pub enum Found {
    /// The path exists; `O_PATH` fd on it (on the link itself with nofollow).
    Existing(OwnedFd),
    /// The last component does not exist (yet); its parent directory does.
    Missing { parent: OwnedFd, name: Vec<u8> },
}

/// A lookup's outcome: the absolute path the policy sees, and the file or the
/// reason the kernel would have failed.
#[derive(Debug)]
pub struct Resolved {
    pub path: Vec<u8>,
    pub found: Result<Found, Errno>,
    /// The tool's cwd, when the lookup started there: the path of the
    /// directory it opened.
    pub cwd: Option<Vec<u8>>,
}

/// A path lookup on behalf of a tool thread.
#[derive(Debug, Clone)]
pub struct Lookup<'a> {
    pub tid: i32,
    pub tgid: i32,
    /// `AT_FDCWD` or the tool's fd number.
    pub dirfd: i32,
    pub path: &'a [u8],
    pub follow: bool,
    /// What a missing last component means.
    pub create: Create,
    pub resolve: u64,
}

/// Whether a lookup may end at a name that does not exist, and for what:
/// the kernel treats a trailing `/` differently for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// The last component must exist.
    No,
    /// An `O_CREAT` open: a missing name is created; with a trailing `/` it
    /// never is (EISDIR, whatever is there, once the parent resolves).
    Open,
    /// A unix socket's `bind`: with a trailing `/` nothing is created
    /// (ENOENT where the name is missing, EADDRINUSE where it exists).
    Bind,
}

/// The absolute path behind an fd of ours, as the kernel names it.
pub fn fd_path(fd: &impl AsRawFd) -> Option<Vec<u8>> {
    let name = fd.as_raw_fd().to_string();
    match own_fd_dir() {
        // Relative to a kept `/proc/PID/fd`: a walk through `/proc/self`
        // per call was a third of what reading the link cost.
        Some(dir) => crate::sys::readlinkat(dir, name.as_str()).ok(),
        None => std::fs::read_link(format!("/proc/self/fd/{name}"))
            .ok()
            .map(|p| std::os::unix::ffi::OsStringExt::into_vec(p.into_os_string())),
    }
}

/// `/proc/self/fd` of this process, opened once per process: which process
/// this is, is checked on every use, so a child forked after the first call
/// (a library user's worker) opens its own instead of reading its parent's
/// fds. Only `try_lock`: a child forked while another thread held the lock
/// must not wait for it forever; it falls back to the path, as does a
/// contended call.
pub fn own_fd_dir() -> Option<std::os::fd::BorrowedFd<'static>> {
    /// Which process: its incarnation (no system call; a `getpid` is
    /// 0.18 µs here, and an open made two), or its pid where the kernel
    /// cannot tell the incarnation.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Process {
        Incarnation(u64),
        Pid(u32),
    }
    static DIR: std::sync::Mutex<Option<(Process, &'static OwnedFd)>> = std::sync::Mutex::new(None);
    let this = match crate::sys::incarnation() {
        Some(n) => Process::Incarnation(n),
        None => Process::Pid(std::process::id()),
    };
    let mut dir = DIR.try_lock().ok()?;
    if let Some((owner, fd)) = *dir
        && owner == this
    {
        return Some(fd.as_fd());
    }
    let fd = nix::fcntl::open(
        "/proc/self/fd",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    // Leaked on purpose: one per process that ever resolves a path (a
    // forked child's copy of its parent's is left open, harmless).
    let fd: &'static OwnedFd = Box::leak(Box::new(fd));
    *dir = Some((this, fd));
    Some(fd.as_fd())
}

/// Names that the kernel resolves relative to the *calling* process, so
/// resolved by the supervisor they would name the supervisor:
/// `/proc/self…` → `/proc/TGID…`, `/proc/thread-self…` → `/proc/TGID/task/TID…`,
/// `/dev/fd…` → `/proc/TGID/fd…`, `/dev/stdin|stdout|stderr` → `/proc/TGID/fd/0|1|2`.
/// The two leading components are matched as the kernel walks them (`.` and
/// repeated slashes are no-ops: `//dev/./fd/3` is `/dev/fd/3`); the rest of
/// the path is kept exactly as given.
pub fn rewrite_proc_self(path: &[u8], tid: i32, tgid: i32) -> Vec<u8> {
    if path.first() != Some(&b'/') {
        return path.to_vec();
    }
    // The first two components that are not `.` or empty, with where the
    // second ends.
    let mut comps: [&[u8]; 2] = [b"", b""];
    let mut found = 0;
    let mut end = 0;
    let mut at = 0;
    for c in path.split(|&b| b == b'/') {
        at += c.len();
        if !c.is_empty() && c != b"." {
            comps[found] = c;
            found += 1;
            if found == 2 {
                end = at;
                break;
            }
        }
        at += 1;
    }
    if found < 2 {
        return path.to_vec();
    }
    let with = match (comps[0], comps[1]) {
        (b"proc", b"self") => format!("/proc/{tgid}"),
        (b"proc", b"thread-self") => format!("/proc/{tgid}/task/{tid}"),
        (b"dev", b"fd") => format!("/proc/{tgid}/fd"),
        (b"dev", b"stdin") => format!("/proc/{tgid}/fd/0"),
        (b"dev", b"stdout") => format!("/proc/{tgid}/fd/1"),
        (b"dev", b"stderr") => format!("/proc/{tgid}/fd/2"),
        _ => return path.to_vec(),
    };
    let mut out = with.into_bytes();
    out.extend_from_slice(&path[end..]);
    out
}

/// Joins and normalises lexically (`.`, `..`, repeated `/`): only used to
/// name a path that could not be resolved.
pub fn lexical(base: &[u8], path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    let joined: Vec<&[u8]> = if path.first() == Some(&b'/') {
        path.split(|&b| b == b'/').collect()
    } else {
        base.split(|&b| b == b'/')
            .chain(path.split(|&b| b == b'/'))
            .collect()
    };
    for c in joined {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = Vec::new();
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

fn has_dotdot(path: &[u8]) -> bool {
    path.split(|&b| b == b'/').any(|c| c == b"..")
}

pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = dir.to_vec();
    if out.last() != Some(&b'/') {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

/// The directory a relative lookup starts from: an `O_PATH` fd and its path.
fn start_dir(tid: i32, dirfd: i32) -> Result<(OwnedFd, Vec<u8>), Errno> {
    let magic = if dirfd == libc::AT_FDCWD {
        format!("/proc/{tid}/cwd")
    } else if dirfd < 0 {
        return Err(Errno::EBADF);
    } else {
        format!("/proc/{tid}/fd/{dirfd}")
    };
    link_dir(&magic).map_err(|e| if e == Errno::ENOENT { Errno::EBADF } else { e })
}

/// The directory one of the tool's own magic links (`/proc/TID/cwd`, an fd)
/// leads to: an `O_PATH` fd and its path.
fn link_dir(magic: &str) -> Result<(OwnedFd, Vec<u8>), Errno> {
    let fd = openat2(
        AT_FDCWD,
        magic,
        OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC),
    )?;
    let st = nix::sys::stat::fstat(&fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(Errno::ENOTDIR);
    }
    // A directory whose path cannot be read (longer than a page) cannot be
    // told to the policy: the caller's answer, as for an unreadable cwd link.
    let path = fd_path(&fd).ok_or(Errno::EACCES)?;
    Ok((fd, path))
}

/// Splits an absolute path that starts with one of the caller's own magic
/// links — `/proc/ID/{fd/N,cwd,root,exe}` or `/proc/ID/task/T/…` the same,
/// for ID its tgid or tid — into that link and the rest (`.` and empty
/// components dropped; a trailing `/` kept as `.`).
///
/// Every other lookup refuses magic links (`RESOLVE_NO_MAGICLINKS`): followed
/// by the supervisor, `/proc/self` is the supervisor's, and a route such as
/// `/dev/../dev/fd/N`, `/proc/ID/root/proc/self/fd/N` or a symlink the tool made
/// to `/proc/self/fd/N` would reach the supervisor's fd N — a file the tool
/// may not be able to reach by its path (the magic link skips the search
/// permission on its directories).
pub(crate) fn own_magic_link(path: &[u8], tgid: i32, tid: i32) -> Option<(String, Vec<u8>)> {
    // Most paths are not under /proc: no allocation for them.
    if path.first() != Some(&b'/') || !path.windows(5).any(|w| w == b"proc/") {
        return None;
    }
    // Components with where each ends, `.` and empty ones skipped.
    let mut comps: Vec<(&[u8], usize)> = Vec::new();
    let mut at = 0;
    for c in path.split(|&b| b == b'/') {
        at += c.len();
        if !c.is_empty() && c != b"." {
            comps.push((c, at));
        }
        at += 1;
    }
    let name = |i: usize| comps.get(i).map(|c| c.0);
    let digits = |c: &[u8]| !c.is_empty() && c.iter().all(u8::is_ascii_digit);
    let (tgid, tid) = (tgid.to_string(), tid.to_string());
    if name(0) != Some(b"proc") {
        return None;
    }
    let id = name(1)?;
    if id != tgid.as_bytes() && id != tid.as_bytes() {
        return None;
    }
    let mut i = 2;
    if name(i) == Some(b"task") {
        if !name(i + 1).is_some_and(digits) || id != tgid.as_bytes() {
            return None;
        }
        i += 2;
    }
    let len = match name(i)? {
        b"cwd" | b"root" | b"exe" => i + 1,
        b"fd" if name(i + 1).is_some_and(digits) => i + 2,
        _ => return None,
    };
    let mut link = String::new();
    for (c, _) in &comps[..len] {
        link.push('/');
        link.push_str(std::str::from_utf8(c).ok()?);
    }
    // The rest exactly as given (a trailing `/` or `.` keeps its meaning),
    // from the link's directory: only slashes left mean the link's target
    // as a directory.
    let tail = &path[comps[len - 1].1..];
    let rest = match tail.iter().position(|&b| b != b'/') {
        Some(from) => tail[from..].to_vec(),
        None if tail.is_empty() => Vec::new(),
        None => b".".to_vec(),
    };
    Some((link, rest))
}

/// A lookup on the tool's behalf: its flags and resolve bits, and never
/// through a magic link (see [`own_magic_link`]).
fn how(flags: OFlag, resolve: u64) -> OpenHow {
    how_to_link(flags, resolve | libc::RESOLVE_NO_MAGICLINKS)
}

/// `openat2` of `path` from `dir` with [`how`]: a magic link on the way
/// is `ELOOP`, the kernel's answer for `RESOLVE_NO_MAGICLINKS`. (Telling it
/// from a symlink loop by looking again with magic links allowed would walk
/// the supervisor's own links for the tool: an oracle on its fds.)
fn lookup(
    dir: std::os::fd::BorrowedFd<'_>,
    path: &[u8],
    flags: OFlag,
    resolve: u64,
) -> Result<OwnedFd, Errno> {
    openat2(dir, std::ffi::OsStr::from_bytes(path), how(flags, resolve))
}

/// The same, for the tool's own magic link as the object itself.
fn how_to_link(flags: OFlag, resolve: u64) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::from_bits_truncate(resolve))
}

/// `/proc/ID/fd/N` (ID the caller's tgid or its own tid) or
/// `/proc/TGID/task/TID/fd/N`, and nothing longer (`/proc/TGID/root/dev/stdin`
/// would pass through `/proc/self` again).
fn is_own_fd_entry(path: &[u8], tgid: i32, tid: i32) -> bool {
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    let under = |id: i32| path.strip_prefix(format!("/proc/{id}/").as_bytes());
    if let Some(rest) = under(tgid) {
        let parts: Vec<&[u8]> = rest.split(|&b| b == b'/').collect();
        return match parts.as_slice() {
            [b"fd", n] => digits(n),
            [b"task", tid, b"fd", n] => digits(tid) && digits(n),
            _ => false,
        };
    }
    under(tid)
        .and_then(|rest| rest.strip_prefix(b"fd/"))
        .is_some_and(digits)
}

/// The path to report for an fd we resolved: its canonical name, or, for
/// objects without one (pipes, sockets, anonymous files), the lexical path —
/// but only if that path is the tool's own `/proc/TGID/fd/N` entry. Reached
/// any other way (say, a symlink to `/proc/self/fd/N`, which the supervisor
/// resolves as its own), a path-less object may be one of the supervisor's
/// fds: `EACCES`, whatever the policy would say.
///
/// A path with `..` never qualifies: the kernel applies `..` to wherever a
/// magic link led (`/proc/TGID/cwd/../fd/N` is the fd of whatever process's
/// directory the tool's cwd is in), while the lexical path pretends otherwise.
fn reported(
    fd: &OwnedFd,
    fallback: &[u8],
    (tgid, tid): (i32, i32),
    dotdot: bool,
) -> Result<Vec<u8>, Errno> {
    match fd_path(fd) {
        Some(p) if p.first() == Some(&b'/') => Ok(p),
        _ if !dotdot && is_own_fd_entry(fallback, tgid, tid) && pathless(fd) => {
            Ok(fallback.to_vec())
        }
        _ => Err(Errno::EACCES),
    }
}

/// Whether the object has no path to report: a pipe, a socket, or an
/// anonymous inode (no file type). A file or directory whose name could not
/// be read (longer than PATH_MAX) is not, and so is not reported under the
/// tool's `/proc/TGID/fd/N` entry, which a policy may let it write.
fn pathless(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstat(fd).is_ok_and(|st| {
        matches!(
            st.st_mode & libc::S_IFMT,
            libc::S_IFIFO | libc::S_IFSOCK | 0
        )
    })
}

/// Resolves `l.path` for the tool (both steps on this thread's
/// credentials).
pub fn resolve(l: &Lookup) -> Resolved {
    walk(l, start(l))
}

/// Where a lookup starts, found as the supervisor ([`start`]), before the
/// walk as the tool ([`walk`]).
#[derive(Debug)]
pub struct Start {
    /// The path to walk from `base`.
    path: Vec<u8>,
    absolute: bool,
    in_root: bool,
    /// The tool's own magic link is the object itself (`/proc/TGID/fd/3`):
    /// what it leads to, opened `O_PATH` (the open that uses it checks the
    /// object's permissions as the tool).
    link_is_object: Option<Result<OwnedFd, Errno>>,
    /// The tool's cwd as opened, for a lookup that starts there.
    cwd: Option<Vec<u8>>,
    /// Its directory (none: the supervisor's `/`), and that directory's path.
    base: Option<OwnedFd>,
    base_path: Vec<u8>,
    /// The lookup already failed: the tool's link could not be followed.
    failed: Option<Resolved>,
}

impl Start {
    /// Whether it followed one of the tool's `/proc/TID` links.
    pub fn went_through_proc(&self) -> bool {
        self.base.is_some() || self.link_is_object.is_some()
    }
}

/// The directory a lookup starts from: the tool's cwd, its dirfd, or the
/// directory one of its own magic links leads to. Opened (`O_PATH`, which
/// checks no permission on the directory) through the tool's
/// `/proc/TID/...` links, which the kernel lets the supervisor follow on
/// its own credentials: on the tool's, a tool that changed its ids but kept
/// a saved uid of 0 could not follow its own (ptrace's check against the
/// saved uid; found by review). The tool reaches these directories itself
/// whatever its credentials; what it may do in them is checked in the walk.
pub fn start(l: &Lookup) -> Start {
    // Under `RESOLVE_IN_ROOT` `/proc/self` and `/dev/stdin` name files under
    // the dirfd, not the kernel's: no rewriting. Under `RESOLVE_NO_SYMLINKS`
    // they are symlinks, so `ELOOP`: the supervisor's lookup says so itself.
    let in_root = l.resolve & libc::RESOLVE_IN_ROOT != 0;
    let mut path = if in_root || l.resolve & libc::RESOLVE_NO_SYMLINKS != 0 {
        l.path.to_vec()
    } else {
        rewrite_proc_self(l.path, l.tid, l.tgid)
    };
    let absolute = path.first() == Some(&b'/');
    // The tool's own magic link as the object itself (`/proc/TGID/fd/3`).
    let mut link_is_object = false;
    // The split is ours, so only for lookups the tool did not bound itself
    // (`RESOLVE_BENEATH`, `IN_ROOT`, `NO_XDEV`, `NO_SYMLINKS`,
    // `NO_MAGICLINKS` keep the kernel's answers).
    let own_link = if l.resolve == 0 {
        own_magic_link(&path, l.tgid, l.tid)
    } else {
        None
    };
    // `RESOLVE_IN_ROOT` takes even an absolute path from the dirfd, as its
    // root: never from the supervisor's `/`, let alone its cwd. (An absolute
    // path under `RESOLVE_BENEATH` is `EXDEV` before the kernel looks at the
    // dirfd: from `/`, the supervisor's lookup says so too.)
    // The tool's cwd as opened, for a lookup that starts there.
    let mut cwd = None;
    let failed = |path: &[u8], e| Resolved {
        path: lexical(b"/", path),
        found: Err(e),
        cwd: None,
    };
    let mut failure = None;
    // An empty path is ENOENT before the kernel looks at the dirfd (a bad
    // one is not EBADF, a file not ENOTDIR; found by review).
    if path.is_empty() {
        failure = Some(failed(&path, Errno::ENOENT));
    }
    let (base, base_path) = if failure.is_some() {
        (None, b"/".to_vec())
    } else if absolute && !in_root {
        match own_link {
            Some((_, rest)) if rest.is_empty() => {
                link_is_object = true;
                (None, b"/".to_vec())
            }
            // Through it, then the rest from where it leads.
            Some((link, rest)) => match link_dir(&link) {
                Ok((fd, p)) => {
                    path = rest;
                    (Some(fd), p)
                }
                Err(e) => {
                    failure = Some(failed(&path, e));
                    (None, b"/".to_vec())
                }
            },
            None => (None, b"/".to_vec()),
        }
    } else {
        match start_dir(l.tid, l.dirfd) {
            Ok((fd, p)) => {
                if l.dirfd == libc::AT_FDCWD {
                    cwd = Some(p.clone());
                }
                (Some(fd), p)
            }
            Err(e) => {
                failure = Some(failed(&path, e));
                (None, b"/".to_vec())
            }
        }
    };
    let link_is_object = link_is_object.then(|| {
        let nofollow = if l.follow {
            OFlag::empty()
        } else {
            OFlag::O_NOFOLLOW
        };
        openat2(
            AT_FDCWD,
            std::ffi::OsStr::from_bytes(&path),
            how_to_link(nofollow, l.resolve),
        )
    });
    Start {
        path,
        absolute,
        in_root,
        link_is_object,
        cwd,
        base,
        base_path,
        failed: failure,
    }
}

/// Walks a lookup from where [`start`] found it begins: as the tool, on
/// its credentials (every search permission, the last component's).
pub fn walk(l: &Lookup, start: Start) -> Resolved {
    let Start {
        path,
        absolute,
        in_root,
        link_is_object,
        cwd,
        base,
        base_path,
        failed,
    } = start;
    if let Some(failed) = failed {
        return failed;
    }
    // Under `RESOLVE_IN_ROOT` a leading `/` names the dirfd (the name
    // reported when the lookup fails; `..` is not clamped at that root).
    let lexical_path = if absolute && in_root {
        let from = path.iter().position(|&b| b != b'/').unwrap_or(path.len());
        lexical(&base_path, &path[from..])
    } else {
        lexical(&base_path, &path)
    };
    let fail = |e| Resolved {
        path: lexical_path.clone(),
        found: Err(e),
        cwd: cwd.clone(),
    };
    if path.is_empty() {
        return fail(Errno::ENOENT);
    }
    fn dir(b: &Option<OwnedFd>) -> std::os::fd::BorrowedFd<'_> {
        match b {
            Some(fd) => fd.as_fd(),
            None => AT_FDCWD,
        }
    }
    let nofollow = if l.follow {
        OFlag::empty()
    } else {
        OFlag::O_NOFOLLOW
    };
    let found = if let Some(object) = link_is_object {
        object
    } else {
        if l.create != Create::No
            && path.ends_with(b"/")
            && let (parent, name) = split_last(&path)
            && !(name.is_empty() || name == b"." || name == b"..")
        {
            // The kernel walks to the parent and stops: the name itself is
            // never followed, opened or created (`open_last_lookups`,
            // `filename_create`).
            return fail(
                match lookup(dir(&base), parent, OFlag::O_DIRECTORY, l.resolve) {
                    Err(e) => e,
                    Ok(_) if l.create == Create::Open => Errno::EISDIR,
                    Ok(pfd) => match lookup(pfd.as_fd(), name, OFlag::O_NOFOLLOW, l.resolve) {
                        // unix_bind's answer for EEXIST.
                        Ok(_) => Errno::EADDRINUSE,
                        Err(_) => Errno::ENOENT,
                    },
                },
            );
        }
        lookup(dir(&base), &path, nofollow, l.resolve)
    };
    match found {
        Ok(fd) => match reported(&fd, &lexical_path, (l.tgid, l.tid), has_dotdot(&path)) {
            Ok(path) => Resolved {
                path,
                found: Ok(Found::Existing(fd)),
                cwd,
            },
            Err(e) => fail(e),
        },
        Err(Errno::ENOENT) if l.create != Create::No => {
            // (A plain name before a trailing `/` was answered above.)
            let (parent, name) = split_last(&path);
            if name.is_empty() || name == b"." || name == b".." {
                // A directory, if its parent resolves; else the kernel's
                // failure is the parent's (`missing/..`: ENOENT).
                return fail(
                    lookup(dir(&base), parent, OFlag::O_DIRECTORY, l.resolve)
                        .map_or_else(|e| e, |_| Errno::EISDIR),
                );
            }
            match lookup(dir(&base), parent, OFlag::O_DIRECTORY, l.resolve) {
                Ok(pfd) => {
                    let parent_path = match fd_path(&pfd) {
                        Some(p) if p.first() == Some(&b'/') => p,
                        _ => return fail(Errno::ENOENT),
                    };
                    Resolved {
                        path: join(&parent_path, name),
                        found: Ok(Found::Missing {
                            parent: pfd,
                            name: name.to_vec(),
                        }),
                        cwd,
                    }
                }
                Err(e) => fail(e),
            }
        }
        Err(e) => fail(e),
    }
}

/// A path's parent and its last name, trailing `/`s aside (`a/b/`: `a`
/// and `b`; `b`: `.` and `b`).
pub(crate) fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    let end = path.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    let trimmed = &path[..end];
    match trimmed.iter().rposition(|&b| b == b'/') {
        Some(0) => (&b"/"[..], &trimmed[1..]),
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (&b"."[..], trimmed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_name_is_split_off_trailing_slashes_aside() {
        let split = |p: &str| {
            let (parent, name) = split_last(p.as_bytes());
            (
                String::from_utf8(parent.to_vec()).unwrap(),
                String::from_utf8(name.to_vec()).unwrap(),
            )
        };
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(split("a/b/"), pair("a", "b"));
        assert_eq!(split("a//b//"), pair("a/", "b"));
        assert_eq!(split("b"), pair(".", "b"));
        assert_eq!(split("/b/"), pair("/", "b"));
        assert_eq!(split("a/../"), pair("a", ".."));
        assert_eq!(split("//"), pair(".", ""));
    }

    #[test]
    fn lexical_normalises() {
        assert_eq!(lexical(b"/a/b", b"../c/./d"), b"/a/c/d");
        assert_eq!(lexical(b"/a", b"/x/../../y"), b"/y");
        assert_eq!(lexical(b"/", b".."), b"/");
    }

    #[test]
    fn proc_self_names_the_tool() {
        assert_eq!(rewrite_proc_self(b"/proc/self/fd/3", 7, 5), b"/proc/5/fd/3");
        assert_eq!(
            rewrite_proc_self(b"/proc/thread-self/comm", 7, 5),
            b"/proc/5/task/7/comm"
        );
        assert_eq!(rewrite_proc_self(b"/proc/selfish", 7, 5), b"/proc/selfish");
        assert_eq!(rewrite_proc_self(b"/proc/self", 7, 5), b"/proc/5");
        assert_eq!(rewrite_proc_self(b"/dev/fd/3", 7, 5), b"/proc/5/fd/3");
        assert_eq!(rewrite_proc_self(b"/dev/stdout", 7, 5), b"/proc/5/fd/1");
        assert_eq!(rewrite_proc_self(b"/dev/stdoutx", 7, 5), b"/dev/stdoutx");
        // `.` and repeated slashes on the way are no-ops, as for the kernel;
        // the rest stays exactly as given (a trailing `/` or `.` matters).
        assert_eq!(rewrite_proc_self(b"/dev/./fd/3", 7, 5), b"/proc/5/fd/3");
        assert_eq!(rewrite_proc_self(b"//proc//self/fd/", 7, 5), b"/proc/5/fd/");
        assert_eq!(
            rewrite_proc_self(b"/./dev/stdin/.", 7, 5),
            b"/proc/5/fd/0/."
        );
        // `..` is not lexical (a symlink may be on the way): left alone.
        assert_eq!(
            rewrite_proc_self(b"/dev/../dev/fd/3", 7, 5),
            b"/dev/../dev/fd/3"
        );
        assert_eq!(
            rewrite_proc_self(b"/proc/../self/fd/3", 7, 5),
            b"/proc/../self/fd/3"
        );
        assert_eq!(rewrite_proc_self(b"dev/fd/3", 7, 5), b"dev/fd/3");
        assert_eq!(rewrite_proc_self(b"/proc", 7, 5), b"/proc");
    }

    #[test]
    fn pathless_objects_only_through_the_tools_own_fd_entries() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert_eq!(
            reported(&r, b"/proc/1234/fd/3", (1234, 1240), false).unwrap(),
            b"/proc/1234/fd/3"
        );
        assert!(reported(&r, b"/proc/1234/task/1240/fd/0", (1234, 1240), false).is_ok());
        // A thread's own /proc/TID/fd/N too.
        assert!(reported(&r, b"/proc/1240/fd/0", (1234, 1240), false).is_ok());
        for refused in [
            // A symlink in the workdir to /proc/self/fd/N reaches the supervisor's fd.
            &b"/work/link"[..],
            b"/proc/99/fd/3",
            b"/proc/1234/root/dev/stdin",
            // Another thread's, or anything longer.
            b"/proc/1241/fd/0",
            b"/proc/1240/task/1240/fd/0",
            b"/proc/1240/fd/0/x",
        ] {
            assert_eq!(
                reported(&r, refused, (1234, 1240), false),
                Err(Errno::EACCES),
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
        // Lexically /proc/1234/fd/3, physically wherever cwd/.. is.
        assert_eq!(
            reported(&r, b"/proc/1234/fd/3", (1234, 1240), true),
            Err(Errno::EACCES)
        );
        let f = tempfile::tempfile().unwrap();
        let f: OwnedFd = f.into();
        assert!(
            reported(&f, b"/anything", (1234, 1240), false)
                .unwrap()
                .starts_with(b"/")
        );
    }

    #[test]
    fn existing_and_missing_files_resolve_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("real"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let me = std::process::id() as i32;
        let target = dir.path().join("link");
        let l = Lookup {
            tid: me,
            tgid: me,
            dirfd: libc::AT_FDCWD,
            path: target.as_os_str().as_bytes(),
            follow: true,
            create: Create::No,
            resolve: 0,
        };
        let r = resolve(&l);
        assert_eq!(r.path, dir.path().join("real").as_os_str().as_bytes());
        assert!(matches!(r.found, Ok(Found::Existing(_))));

        let nofollow = resolve(&Lookup {
            follow: false,
            ..l.clone()
        });
        assert_eq!(nofollow.path, target.as_os_str().as_bytes());

        let new = dir.path().join("sub/../new");
        let r = resolve(&Lookup {
            path: new.as_os_str().as_bytes(),
            create: Create::Open,
            ..l.clone()
        });
        assert!(r.found.is_err(), "sub does not exist");
        let new = dir.path().join("new");
        let r = resolve(&Lookup {
            path: new.as_os_str().as_bytes(),
            create: Create::Open,
            ..l
        });
        assert_eq!(r.path, new.as_os_str().as_bytes());
        assert!(matches!(r.found, Ok(Found::Missing { .. })));
    }

    #[test]
    fn only_the_callers_own_magic_links_are_split_off() {
        let split = |p: &str| {
            own_magic_link(p.as_bytes(), 50, 52)
                .map(|(link, rest)| (link, String::from_utf8(rest).unwrap()))
        };
        let some = |l: &str, r: &str| Some((l.to_string(), r.to_string()));
        assert_eq!(split("/proc/50/fd/3"), some("/proc/50/fd/3", ""));
        assert_eq!(split("/proc/52/cwd/a/b"), some("/proc/52/cwd", "a/b"));
        assert_eq!(
            split("//proc/./50/root/etc/x"),
            some("/proc/50/root", "etc/x")
        );
        assert_eq!(
            split("/proc/50/task/52/fd/7/"),
            some("/proc/50/task/52/fd/7", ".")
        );
        assert_eq!(split("/proc/50/exe"), some("/proc/50/exe", ""));
        assert_eq!(split("/proc/50/cwd/../x"), some("/proc/50/cwd", "../x"));
        for other in [
            "/proc/49/fd/3",         // another process
            "/proc/52/task/52/fd/3", // task/ under a tid, not the tgid
            "/proc/50/fd",           // the directory, not a link
            "/proc/50/fd/x",
            "/proc/50/ns/net", // not one we pass through
            "/proc/50/../50/fd/3",
            "/dev/fd/3", // rewritten before, never here
            "/proc/self/fd/3",
            "proc/50/fd/3",
        ] {
            assert_eq!(split(other), None, "{other}");
        }
    }

    /// Through the caller's own magic link the rest of the path keeps the
    /// kernel's meaning, a bounded lookup is never split, and any other
    /// magic link on the way is refused.
    #[test]
    fn own_magic_links_keep_the_kernels_answers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("/proc/self/fd/0", dir.path().join("link")).unwrap();
        let held = std::fs::File::open(dir.path()).unwrap();
        let me = std::process::id() as i32;
        let n = held.as_raw_fd();
        let run = |path: String, create: Create, flags: u64| {
            resolve(&Lookup {
                tid: me,
                tgid: me,
                dirfd: libc::AT_FDCWD,
                path: path.as_bytes(),
                follow: true,
                create,
                resolve: flags,
            })
            .found
            .map(|_| ())
        };
        assert_eq!(run(format!("/proc/{me}/fd/{n}/f"), Create::No, 0), Ok(()));
        assert_eq!(
            run(format!("/proc/{me}/fd/{n}/f/"), Create::No, 0),
            Err(Errno::ENOTDIR)
        );
        assert_eq!(
            run(format!("/proc/{me}/fd/{n}/new/"), Create::Open, 0),
            Err(Errno::EISDIR)
        );
        assert_eq!(
            run(
                format!("/proc/{me}/fd/{n}/f"),
                Create::No,
                libc::RESOLVE_BENEATH
            ),
            Err(Errno::EXDEV)
        );
        let link = dir.path().join("link");
        assert_eq!(
            run(link.display().to_string(), Create::No, 0),
            Err(Errno::ELOOP)
        );
        drop(held);
    }
}
