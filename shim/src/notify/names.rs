//! `rename` and `link`: a file given a new name is decided under both
//! names, so that a file the policy denies (a `.env`, a key) cannot be read
//! under a name made for it, nor a name it protects (`.bashrc`) replaced.
//!
//! The old name must be one the tool may read and write (the file becomes
//! reachable, writable, under the new name); the new one one it may create
//! (or, for `RENAME_EXCHANGE`, read and write too). The supervisor then makes
//! the change itself, as the tool, from what it looked up: the directories
//! it holds and, for a link, the very file decided (through its fd), so
//! another thread rewriting the paths after the decision changes nothing.
//! A name the tool could re-point at another file meanwhile is one only a
//! brokered call (a rename or link, decided again) could give a file the
//! policy denies.

use std::{
    ffi::OsStr,
    os::fd::{AsRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    sync::Arc,
};

use cordon_broker::proto::{FileAccess, decide_request::Subject};
use nix::{
    errno::Errno,
    fcntl::{AtFlags, OFlag, RenameFlags},
    sys::stat::FileStat,
};

use super::{PATH_MAX, Supervisor};
use crate::{
    memory::ToolMemory,
    process::{Task, with_creds},
    protect::Use,
    resolve::{self, Create, Found, Lookup},
    sys::Notification,
};

const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;
const RENAME_WHITEOUT: u32 = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    /// `renameat2` flags.
    Rename(u32),
    /// `linkat` flags.
    Link(i32),
}

/// A name as the call will use it: the directory it is in (held), its last
/// component, and the path the policy sees.
struct Name {
    parent: OwnedFd,
    name: Vec<u8>,
    path: Vec<u8>,
    /// What is there now (not following a symlink), if anything.
    existing: Option<(OwnedFd, FileStat)>,
}

impl Supervisor {
    /// rename, renameat, renameat2, link and linkat.
    pub(super) fn handle_names(self: &Arc<Self>, n: &Notification) -> Result<(), Errno> {
        let a = n.args;
        let (old_dir, old_ptr, new_dir, new_ptr, change) = match n.nr {
            libc::SYS_rename => (
                libc::AT_FDCWD,
                a[0],
                libc::AT_FDCWD,
                a[1],
                Change::Rename(0),
            ),
            libc::SYS_renameat => (a[0] as i32, a[1], a[2] as i32, a[3], Change::Rename(0)),
            libc::SYS_renameat2 => (
                a[0] as i32,
                a[1],
                a[2] as i32,
                a[3],
                Change::Rename(a[4] as u32),
            ),
            libc::SYS_link => (libc::AT_FDCWD, a[0], libc::AT_FDCWD, a[1], Change::Link(0)),
            _ => (
                a[0] as i32,
                a[1],
                a[2] as i32,
                a[3],
                Change::Link(a[4] as i32),
            ),
        };
        // The flags first, as the kernel checks them.
        match change {
            Change::Rename(f) => {
                let known = RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT;
                if f & !known != 0
                    || f & RENAME_EXCHANGE != 0 && f & (RENAME_NOREPLACE | RENAME_WHITEOUT) != 0
                {
                    return Err(Errno::EINVAL);
                }
            }
            Change::Link(f) => {
                if f & !(libc::AT_SYMLINK_FOLLOW | libc::AT_EMPTY_PATH) != 0 {
                    return Err(Errno::EINVAL);
                }
            }
        }
        let mem = ToolMemory::new(n.tid);
        let old = mem.read_cstr(old_ptr, PATH_MAX - 1)?;
        let new = mem.read_cstr(new_ptr, PATH_MAX - 1)?;
        let mut task = self.task(n)?;
        // The file that gets the new name: for a link, the file itself
        // (through its fd); for a rename, the name in its directory.
        let (old_path, object, old_name) = match change {
            Change::Link(flags) => {
                let empty = old.is_empty() && flags & libc::AT_EMPTY_PATH != 0;
                let path = match old_dir {
                    _ if !empty => old.clone(),
                    libc::AT_FDCWD => format!("/proc/{}/cwd", n.tid).into_bytes(),
                    fd if fd < 0 => return Err(Errno::EBADF),
                    fd => format!("/proc/{}/fd/{fd}", n.tid).into_bytes(),
                };
                let lookup = Lookup {
                    tid: n.tid,
                    tgid: task.tgid,
                    dirfd: if empty { libc::AT_FDCWD } else { old_dir },
                    path: &path,
                    follow: empty || flags & libc::AT_SYMLINK_FOLLOW != 0,
                    create: Create::No,
                    resolve: 0,
                };
                let (path, found) =
                    self.resolve_for(&mut task, &lookup, n.id)
                        .map_err(|e| match e {
                            // No such fd, rather than no such file.
                            Errno::ENOENT if empty && old_dir >= 0 => Errno::EBADF,
                            e => e,
                        })?;
                let Found::Existing(fd) = found else {
                    return Err(Errno::ENOENT);
                };
                let stat = nix::sys::stat::fstat(&fd).map_err(|_| Errno::EACCES)?;
                (path, (fd, stat), None)
            }
            Change::Rename(_) => {
                let name = self.name(&mut task, n, old_dir, &old, change, true)?;
                let Some(object) = name.existing else {
                    return Err(Errno::ENOENT);
                };
                (name.path, object, Some((name.parent, name.name)))
            }
        };
        let is_dir = |st: &FileStat| st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let old_is_dir = is_dir(&object.1);
        let new_name = self.name(&mut task, n, new_dir, &new, change, false)?;
        // What the kernel answers before it changes anything, in its order
        // (`do_renameat2`, `do_linkat`).
        let new_is_dir = new_name.existing.as_ref().map(|(_, st)| is_dir(st));
        match change {
            Change::Link(_) if new_name.existing.is_some() => return Err(Errno::EEXIST),
            Change::Link(_) if new.ends_with(b"/") => return Err(Errno::ENOENT),
            Change::Link(_) if old_is_dir => return Err(Errno::EPERM),
            Change::Link(_) => {}
            // (Linux 6.18, measured: an exchange's missing name, then the
            // trailing slashes, then NOREPLACE's EEXIST.)
            Change::Rename(f) => {
                if f & RENAME_EXCHANGE != 0 {
                    match new_is_dir {
                        None => return Err(Errno::ENOENT),
                        Some(false) if new.ends_with(b"/") => return Err(Errno::ENOTDIR),
                        _ => {}
                    }
                }
                // Unless the old name is a directory, a trailing slash on
                // it, or (but for an exchange) on the new one, is ENOTDIR.
                if !old_is_dir
                    && (old.ends_with(b"/") || f & RENAME_EXCHANGE == 0 && new.ends_with(b"/"))
                {
                    return Err(Errno::ENOTDIR);
                }
                if f & RENAME_NOREPLACE != 0 && new_is_dir.is_some() {
                    return Err(Errno::EEXIST);
                }
            }
        }
        let exchange = matches!(change, Change::Rename(f) if f & RENAME_EXCHANGE != 0);
        // Cordon's own files, under either name.
        let (object_fd, object_stat) = object;
        let object_found = Found::Existing(object_fd);
        self.refuse_protected(
            n,
            &old_path,
            &object_found,
            Some(&object_stat),
            Use::Write,
            false,
        )?;
        let (new_found, new_stat) = match new_name.existing {
            Some((fd, stat)) => (Found::Existing(fd), Some(stat)),
            None => (
                Found::Missing {
                    parent: new_name.parent.try_clone().map_err(|_| Errno::EMFILE)?,
                    name: new_name.name.clone(),
                },
                None,
            ),
        };
        self.refuse_protected(
            n,
            &new_name.path,
            &new_found,
            new_stat.as_ref(),
            Use::Write,
            false,
        )?;
        // A directory renamed, or whose name is taken, with cordon's own
        // files beneath it: they would move, or others take their place.
        for path in [&old_path, &new_name.path] {
            if matches!(change, Change::Rename(_)) && self.protected.holds_beneath(path) {
                return Err(self.refuse_counted(n, "protected file"));
            }
        }
        let replaces = new_stat.is_some();
        let mut flag_names = flag_names(change);
        // A directory's name: what is beneath it moves with it (either of
        // an exchange's: both move; found by review).
        if old_is_dir || new_is_dir == Some(true) {
            flag_names.insert(0, "DIR".to_owned());
        }
        let file = |path: Vec<u8>, role: &str, access: &[&str], create: bool| FileAccess {
            path,
            access: access.iter().map(|a| (*a).to_owned()).collect(),
            create,
            truncate: false,
            flags: std::iter::once(role.to_owned())
                .chain(flag_names.iter().cloned())
                .collect(),
        };
        self.ask(self.request(
            &task,
            n,
            Subject::File(file(old_path, "OLD", &["read", "write"], false)),
        ))?;
        let new_access: &[&str] = if exchange {
            &["read", "write"]
        } else {
            &["write"]
        };
        self.ask(self.request(
            &task,
            n,
            Subject::File(file(new_name.path, "NEW", new_access, !replaces)),
        ))?;
        let (new_parent, new_last) = (new_name.parent, new_name.name);
        let identity = |st: &FileStat| (st.st_dev, st.st_ino);
        let decided = (identity(&object_stat), new_stat.as_ref().map(identity));
        let op = move || -> Result<i64, Errno> {
            let Found::Existing(object_fd) = &object_found else {
                return Err(Errno::EACCES);
            };
            match (change, old_name) {
                (Change::Rename(flags), Some((old_parent, old_last))) => rename_decided(
                    flags,
                    (&old_parent, &old_last),
                    (&new_parent, &new_last),
                    decided,
                ),
                // The very file decided, through our fd on it; an fd named
                // by AT_EMPTY_PATH too: the kernel lets its opener link it
                // (Linux 6.10+), and our fd's opener is not the tool (any
                // process may link its own fd through /proc/self/fd).
                _ => link_fd(object_fd, &new_parent, &new_last),
            }
            .map(|()| 0)
        };
        self.perform_then(n, &task, false, None, true, op);
        Ok(())
    }

    /// Looks up `path` from `dirfd` as a name to change: its directory
    /// (followed, as the tool) and its last component, and what is there.
    fn name(
        &self,
        task: &mut Task,
        n: &Notification,
        dirfd: i32,
        path: &[u8],
        change: Change,
        old: bool,
    ) -> Result<Name, Errno> {
        if path.is_empty() {
            return Err(Errno::ENOENT);
        }
        let (parent, last) = resolve::split_last(path);
        if last.is_empty() || last == b"." || last == b".." {
            // `do_renameat2`: EBUSY for either name; `filename_create`
            // (a link's new name): EEXIST.
            return Err(match change {
                Change::Link(_) if !old => Errno::EEXIST,
                _ => Errno::EBUSY,
            });
        }
        let lookup = Lookup {
            tid: n.tid,
            tgid: task.tgid,
            dirfd,
            path: parent,
            follow: true,
            create: Create::No,
            resolve: 0,
        };
        let (parent_path, found) = self.resolve_for(task, &lookup, n.id)?;
        let Found::Existing(parent) = found else {
            return Err(Errno::ENOENT);
        };
        let parent_stat = nix::sys::stat::fstat(&parent).map_err(|_| Errno::EACCES)?;
        if parent_stat.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(Errno::ENOTDIR);
        }
        let existing = with_creds(&task.creds, &self.me, || {
            let fd = nix::fcntl::openat(
                &parent,
                OsStr::from_bytes(last),
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )?;
            let stat = nix::sys::stat::fstat(&fd)?;
            Ok::<_, Errno>((fd, stat))
        })?;
        let existing = match existing {
            Ok(found) => Some(found),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(e),
        };
        Ok(Name {
            path: resolve::join(&parent_path, last),
            parent,
            name: last.to_vec(),
            existing,
        })
    }
}

impl Supervisor {
    /// symlink and symlinkat: the link's name is decided as a create
    /// (`flags: ["NEW", "SYMLINK"]`), as a rename's new name is, so a link
    /// cannot plant a hook or a command where a write may not (found by
    /// review). Its target is decided when something opens through it.
    pub(super) fn handle_symlink(self: &Arc<Self>, n: &Notification) -> Result<(), Errno> {
        let a = n.args;
        let (target_ptr, dir, path_ptr) = match n.nr {
            libc::SYS_symlink => (a[0], libc::AT_FDCWD, a[1]),
            _ => (a[0], a[1] as i32, a[2]),
        };
        let mem = ToolMemory::new(n.tid);
        let target = mem.read_cstr(target_ptr, PATH_MAX - 1)?;
        let path = mem.read_cstr(path_ptr, PATH_MAX - 1)?;
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        let mut task = self.task(n)?;
        let name = self.name(&mut task, n, dir, &path, Change::Link(0), false)?;
        if name.existing.is_some() {
            return Err(Errno::EEXIST);
        }
        if path.ends_with(b"/") {
            return Err(Errno::ENOENT);
        }
        let found = Found::Missing {
            parent: name.parent.try_clone().map_err(|_| Errno::EMFILE)?,
            name: name.name.clone(),
        };
        self.refuse_protected(n, &name.path, &found, None, Use::Write, false)?;
        self.ask(self.request(
            &task,
            n,
            Subject::File(FileAccess {
                path: name.path,
                access: vec!["write".to_owned()],
                create: true,
                truncate: false,
                flags: vec!["NEW".to_owned(), "SYMLINK".to_owned()],
            }),
        ))?;
        let (parent, last) = (name.parent, name.name);
        let op = move || -> Result<i64, Errno> {
            nix::unistd::symlinkat(
                OsStr::from_bytes(&target),
                &parent,
                OsStr::from_bytes(&last),
            )
            .map(|()| 0)
        };
        self.perform_then(n, &task, false, None, true, op);
        Ok(())
    }
}

/// Renames `old` to `new` (each a directory we hold and a name in it), and
/// checks that what moved is what was decided (`decided`: the old name's
/// file, and for an exchange the new name's). The kernel looks the names up
/// again: another thread may have put another file, or a directory, at the
/// old name since the decision (an exchange of two plain names), which the
/// policy was not asked about (found by review: a directory moved where a
/// file was decided, past the rules on directories). Then the move is
/// undone (the same exchange again; a move back where the old name is still
/// free) and the call fails with `EACCES`.
fn rename_decided(
    flags: u32,
    (old_dir, old_name): (&OwnedFd, &[u8]),
    (new_dir, new_name): (&OwnedFd, &[u8]),
    (old_file, new_file): ((u64, u64), Option<(u64, u64)>),
) -> Result<(), Errno> {
    let (old_name, new_name) = (OsStr::from_bytes(old_name), OsStr::from_bytes(new_name));
    nix::fcntl::renameat2(
        old_dir,
        old_name,
        new_dir,
        new_name,
        RenameFlags::from_bits_retain(flags),
    )?;
    let at = |dir: &OwnedFd, name: &OsStr| {
        nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| (st.st_dev, st.st_ino))
    };
    let exchange = flags & RENAME_EXCHANGE != 0;
    let moved = at(new_dir, new_name) == Some(old_file);
    let swapped = !exchange || at(old_dir, old_name) == new_file;
    if moved && swapped {
        return Ok(());
    }
    let back = if exchange {
        RenameFlags::RENAME_EXCHANGE
    } else {
        RenameFlags::RENAME_NOREPLACE
    };
    let undone = nix::fcntl::renameat2(new_dir, new_name, old_dir, old_name, back).is_ok();
    tracing::warn!(
        undone,
        "a rename moved another file than the one decided; refused"
    );
    Err(Errno::EACCES)
}

/// Links the file `fd` (ours, `O_PATH`) at `name` in `dir`, through its
/// `/proc/self/fd` entry: the inode decided, whatever its path says now.
fn link_fd(fd: &OwnedFd, dir: &OwnedFd, name: &[u8]) -> Result<(), Errno> {
    let entry = fd.as_raw_fd().to_string();
    let name = OsStr::from_bytes(name);
    match resolve::own_fd_dir() {
        Some(fds) => {
            nix::unistd::linkat(fds, entry.as_str(), dir, name, AtFlags::AT_SYMLINK_FOLLOW)
        }
        None => nix::unistd::linkat(
            nix::fcntl::AT_FDCWD,
            format!("/proc/self/fd/{entry}").as_str(),
            dir,
            name,
            AtFlags::AT_SYMLINK_FOLLOW,
        ),
    }
}

/// The call's flags, as the policy sees them beside `OLD` or `NEW`.
fn flag_names(change: Change) -> Vec<String> {
    let named: &[(i64, &str)] = match change {
        Change::Rename(_) => &[
            (RENAME_NOREPLACE as i64, "RENAME_NOREPLACE"),
            (RENAME_EXCHANGE as i64, "RENAME_EXCHANGE"),
            (RENAME_WHITEOUT as i64, "RENAME_WHITEOUT"),
        ],
        Change::Link(_) => &[
            (libc::AT_SYMLINK_FOLLOW as i64, "AT_SYMLINK_FOLLOW"),
            (libc::AT_EMPTY_PATH as i64, "AT_EMPTY_PATH"),
        ],
    };
    let flags = match change {
        Change::Rename(f) => i64::from(f),
        Change::Link(f) => i64::from(f),
    };
    named
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| (*name).to_owned())
        .collect()
}
