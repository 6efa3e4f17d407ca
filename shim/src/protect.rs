//! Files of the host's that the tool may never reach, whatever the policy
//! says ([`crate::Sandbox::protect`]): cordon's own, such as the embedded
//! broker's audit store, the policy files and a TLS client key. They belong
//! to the user who runs the tool, so its credentials do not keep it out.
//!
//! Each is recognised by its canonical path (a directory: everything under
//! it), and by device, inode and birth time: a hard link to it, the same
//! file under another mount, or a file known at the last read after the
//! tool moved it (`rename` is not brokered). Only opens, execs and unix
//! connects, binds and sends are checked: `unlink`, `rename` and
//! `truncate` by path are not brokered (docs/threat-model.md). What a protected directory holds is read at the sandbox's first
//! check (once its broker is ready: an embedded store still opening
//! changes its own directory), before the tool's exec, and read again, through an fd kept on the directory, when a
//! regular file with more than one name turns up on its device (a hard
//! link to a file made since) and a directory read has changed since (its
//! change time: inotify would tell as exactly, but closing an instance with
//! watches waits out an SRCU grace period, ~15 ms here, at every sandbox's
//! end). What was known stays known.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};

use nix::sys::stat::FileStat;

use crate::resolve::Found;

/// What a protection refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Every open, exec and unix connect.
    All,
    /// Opens that write, truncate or create, and unix binds (which create).
    Writes,
}

/// How a call uses the file it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Read,
    Write,
}

/// At most this many distinct files are taken from one read of a protected
/// directory, and at most [`MAX_ENTRIES`] names looked at (links to one file
/// count once in the first, each in the second); past either, a file with
/// other names on its device is refused.
const MAX_INODES: usize = 4096;
const MAX_ENTRIES: usize = 8 * MAX_INODES;
/// Once more than this many files are known over all the reads of one
/// protected directory (a tool can make and remove files there, `unlink` is
/// not brokered), it is not read again, and a file with other names on its
/// device is refused for the sandbox's life.
const MAX_KNOWN: usize = 16 * MAX_INODES;
/// A directory changed less than this before it was read may change again
/// within the same tick of the file system's clock, unseen: it is read
/// again. Two seconds where its change time has no fraction of a second (a
/// file system that keeps whole seconds, or FAT's two); a tenth of one
/// where it has, in nanoseconds (ext4, tmpfs, xfs, btrfs: the kernel's
/// coarse clock, a few milliseconds behind at most).
const SETTLE_NS: i128 = 2_000_000_000;
const SETTLE_FINE_NS: i128 = 100_000_000;

/// How long before a read a directory's change time must be, for a later
/// change to show as another one.
fn settle_ns(ctime: (i64, i64)) -> i128 {
    if ctime.1 == 0 {
        SETTLE_NS
    } else {
        SETTLE_FINE_NS
    }
}

fn ns(ctime: (i64, i64)) -> i128 {
    i128::from(ctime.0) * 1_000_000_000 + i128::from(ctime.1)
}

/// A file's identity: device and inode (kept with its birth time where the
/// file system keeps one: an inode number is reused once its file is gone).
type Id = (u64, u64);
type Birth = Option<std::time::SystemTime>;

#[derive(Debug)]
struct Entry {
    /// Canonical, as the tool's lookups are.
    path: Vec<u8>,
    protection: Protection,
    /// The device of the path (when it exists at the first read).
    dev: Option<u64>,
    /// A protected directory, opened at the first read: read again through this fd,
    /// wherever it has been moved since.
    dir: Option<OwnedFd>,
    known: RwLock<Known>,
    /// Held while checking for changes and reading again: one read at a
    /// time (a second thread that found a change reads again after it only
    /// if the directory is still not settled).
    reading: Mutex<()>,
}

/// What was found under a protected path.
#[derive(Debug, Default, Clone)]
struct Known {
    files: HashMap<Id, Birth>,
    /// The directories last read, with their change times then: a name
    /// added to one since changes its change time, to the clock's time then
    /// (which the tool cannot set: the sandbox takes `CAP_SYS_TIME` away),
    /// and [`settle_ns`] covers the clock's tick.
    dirs: Arc<Vec<ReadDir>>,
    /// The file system's change times cannot be trusted (FUSE: sshfs
    /// reports the modification time, which `utimensat` sets back): every
    /// check counts as a change.
    untrusted_times: bool,
    /// When they were read.
    at: i128,
    /// The last read stopped short (an unreadable directory, too many
    /// files): what it missed is unknown.
    incomplete: bool,
    /// [`MAX_KNOWN`] was reached: nothing more is read or added.
    full: bool,
}

/// A directory read under a protected one.
#[derive(Debug)]
struct ReadDir {
    /// Relative to the top one.
    rel: PathBuf,
    /// For the first [`KEPT_DIR_FDS`]: an `fstat` tells whether it changed,
    /// where a path would be walked again.
    fd: Option<OwnedFd>,
    /// Device and inode: a directory reached by its path again must be the
    /// one read (not another moved in its place, as old).
    id: Id,
    ctime: (i64, i64),
}

/// Reads of a protected directory in a row while it changes during each.
const READ_ATTEMPTS: usize = 3;

/// Directory fds kept per protected directory.
const KEPT_DIR_FDS: usize = 16;

/// What must happen before the protected paths are first read (again, if
/// a first read panicked).
pub type BeforeRead = Box<dyn Fn() + Send + Sync>;

/// The sandbox's protected files.
#[derive(Default)]
pub struct Protected {
    paths: Vec<(PathBuf, Protection)>,
    before_read: Option<BeforeRead>,
    entries: OnceLock<Vec<Entry>>,
}

impl std::fmt::Debug for Protected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protected")
            .field("paths", &self.paths)
            .field("entries", &self.entries.get())
            .finish()
    }
}

impl Protected {
    /// Reads where each path is now (a path that does not exist yet is
    /// protected by name).
    pub fn new(paths: &[(PathBuf, Protection)]) -> Self {
        let protected = Self {
            paths: paths.to_vec(),
            before_read: None,
            entries: OnceLock::new(),
        };
        protected.entries();
        protected
    }

    /// Reads where each path is at the first check, once `before_read` has
    /// returned: an embedded store still opening (`cordon run` forks the
    /// tool meanwhile) changes its directory as it would be read. Checks
    /// wait for the read.
    pub fn deferred(paths: &[(PathBuf, Protection)], before_read: BeforeRead) -> Self {
        Self {
            paths: paths.to_vec(),
            before_read: Some(before_read),
            entries: OnceLock::new(),
        }
    }

    fn entries(&self) -> &[Entry] {
        self.entries.get_or_init(|| {
            if let Some(before) = &self.before_read {
                before();
            }
            read_entries(&self.paths)
        })
    }
}

/// Where each path is now, and what a protected directory holds.
fn read_entries(paths: &[(PathBuf, Protection)]) -> Vec<Entry> {
    paths
        .iter()
        .map(|(path, protection)| {
            let path = canonical(path);
            let stat = std::fs::symlink_metadata(&path);
            // A path that does not exist yet is protected by name, and
            // so, with a warning, is one that cannot be looked up: its
            // device is not known, so neither are its other names.
            if let Err(e) = &stat
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e,
                        "a protected path cannot be looked up: protected by its name only");
            }
            let meta = stat.ok();
            // What a directory holds is read for full protection only:
            // one for writes (a policy directory, which may be a large
            // checkout) is known by its path and its own inode.
            let scanned = meta
                .as_ref()
                .is_some_and(|m| m.is_dir() && *protection == Protection::All);
            let dir = scanned
                .then(|| std::fs::File::open(&path).ok().map(OwnedFd::from))
                .flatten();
            let mut known = Known::default();
            if let Some(m) = &meta {
                known.files.insert((m.dev(), m.ino()), m.created().ok());
            }
            // A directory that cannot be read is not known: its files
            // with other names on its device are refused.
            known.incomplete = scanned && dir.is_none();
            if let Some(dir) = &dir {
                known.untrusted_times = untrusted_times(dir);
                known.read(dir);
            }
            Entry {
                path: path.as_os_str().as_bytes().to_vec(),
                protection: *protection,
                dev: meta.as_ref().map(|m| m.dev()),
                dir,
                known: RwLock::new(known),
                reading: Mutex::new(()),
            }
        })
        .collect()
}

impl Protected {
    /// Whether a protected entry lies beneath `canonical` (a directory the
    /// tool would rename, or whose name it would take): the rename would
    /// move cordon's own files, or put others in their place.
    pub fn holds_beneath(&self, canonical: &[u8]) -> bool {
        self.entries()
            .iter()
            .any(|e| e.path.len() > canonical.len() && under(canonical, &e.path))
    }

    /// Whether the tool may not `how` use `canonical`, which its lookup
    /// found as `found` (the file, or the directory a name would be created
    /// in; `stat`, the file's status if the caller has read it). Fails
    /// closed where a file cannot be told: a status that cannot be read is a
    /// refusal, and so is a file with other names on a protected device when
    /// the protected directory could not be read whole. A file with one name
    /// that is not known (moved out with a single link left) is allowed.
    pub fn refuses(
        &self,
        canonical: &[u8],
        found: &Found,
        stat: Option<&FileStat>,
        how: Use,
    ) -> bool {
        let mut applicable = self
            .entries()
            .iter()
            .filter(|e| e.protection == Protection::All || how == Use::Write)
            .peekable();
        if applicable.peek().is_none() {
            return false;
        }
        let (fd, existing) = match found {
            Found::Existing(fd) => (fd, true),
            Found::Missing { parent, .. } => (parent, false),
        };
        let st = match (stat, existing) {
            (Some(st), true) => *st,
            _ => match nix::sys::stat::fstat(fd) {
                Ok(st) => st,
                Err(_) => return true,
            },
        };
        let id = (st.st_dev, st.st_ino);
        // A regular file with other names may be a hard link, made since
        // the last read, to a file under a protected directory.
        let linked = existing && st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink > 1;
        // Read once, when an inode matches.
        let mut birth = None;
        let mut born = || *birth.get_or_insert_with(|| birth_of(fd));
        applicable.any(|e| {
            if under(&e.path, canonical) {
                return true;
            }
            let on_device = e.dev == Some(st.st_dev);
            if !on_device {
                return false;
            }
            if e.matches(id, &mut born) == Some(true) {
                return true;
            }
            if !linked {
                return false;
            }
            e.read_again_if_changed();
            e.refused_by_what_is_known(id, &mut born)
        })
    }
}

/// A file's birth time, through its fd (`statx` of the fd itself, on a
/// duplicate; `None` where the file system keeps none).
fn birth_of(fd: &OwnedFd) -> Birth {
    std::fs::File::from(fd.try_clone().ok()?)
        .metadata()
        .ok()?
        .created()
        .ok()
}

/// Whether two birth times say the same file: unknown on either side is
/// the same (fail closed).
fn same_birth(a: Birth, b: Birth) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

impl Entry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.known.read().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(true)` if `id` is a known file here (by birth time too),
    /// `Some(false)` if its inode was another file's, `None` if unknown.
    fn matches(&self, id: Id, born: &mut impl FnMut() -> Birth) -> Option<bool> {
        let known = *self.read().files.get(&id)?;
        Some(same_birth(known, born()))
    }

    /// Whether `id` is a known file here, or unknown after a read that
    /// stopped short. Under one guard: another thread's read between a miss
    /// and the look at `incomplete` could find the file and leave the read
    /// complete.
    fn refused_by_what_is_known(&self, id: Id, born: &mut impl FnMut() -> Birth) -> bool {
        let known = self.read();
        match known.files.get(&id) {
            Some(birth) => same_birth(*birth, born()),
            None => known.incomplete,
        }
    }

    /// Reads the directory again (under the entry's `reading` lock, which
    /// only other such reads wait for) unless nothing can have been added
    /// since the last read, and adds what it finds.
    fn read_again_if_changed(&self) {
        let Some(dir) = &self.dir else {
            return;
        };
        let _reading = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        let (changed, incomplete, at) = {
            let known = self.read();
            if known.full {
                return;
            }
            (known.changed(dir), known.incomplete, known.at)
        };
        // A read that stopped short is tried again, once a second at most:
        // meanwhile what it missed is refused.
        let again = if incomplete {
            now_ns() > at + 1_000_000_000
        } else {
            changed
        };
        if !again {
            return;
        }
        let mut fresh = Known {
            untrusted_times: self.read().untrusted_times,
            ..Known::default()
        };
        fresh.read(dir);
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        // An inode seen again with another birth time is another file now.
        known.files.extend(fresh.files);
        known.dirs = fresh.dirs;
        known.at = fresh.at;
        known.incomplete = fresh.incomplete;
        if known.files.len() > MAX_KNOWN {
            tracing::warn!(path = %String::from_utf8_lossy(&self.path), known = known.files.len(),
                "a protected directory has had too many files to keep track of: \
                 files with other names on its device are refused from now on");
            known.full = true;
            known.incomplete = true;
            known.files.shrink_to_fit();
            // Never read again: its fds are of no more use.
            known.dirs = Arc::new(Vec::new());
        }
    }
}

impl Known {
    /// Reads what `dir` holds, again while a directory changed during the
    /// read (a name moved, within it, to a directory already listed would
    /// be missed), [`READ_ATTEMPTS`] times at most: past that it is
    /// incomplete. A change in the same tick of the file system's clock as
    /// the change time taken leaves it as it was: on kernels before 6.13
    /// (multigrain timestamps), or file systems without them, such a change
    /// during the read is not seen; the directory is not settled then, and
    /// the next file that needs it reads again. Where change times cannot
    /// be trusted (FUSE, network file systems) nothing tells whether a name
    /// moved during the read (`rename` is not brokered: the tool can keep a
    /// store's file moving between two of its directories), so the read is
    /// incomplete: what it found is refused, and so is every file with
    /// other names on that device.
    fn read(&mut self, dir: &OwnedFd) {
        for _ in 0..READ_ATTEMPTS {
            self.read_once(dir);
            if self.untrusted_times {
                break;
            }
            if unchanged(dir, &self.dirs) {
                return;
            }
        }
        self.incomplete = true;
    }

    /// One read of what `dir` holds, breadth first (one directory open at
    /// a time), up to [`MAX_INODES`] files and [`MAX_ENTRIES`] names, adding
    /// to what is known.
    fn read_once(&mut self, dir: &OwnedFd) {
        self.at = now_ns();
        let mut dirs = Vec::new();
        let mut names = 0;
        let mut pending = std::collections::VecDeque::from([PathBuf::new()]);
        'read: while let Some(rel) = pending.pop_front() {
            let sub = match open_beneath(dir, &rel) {
                Ok(sub) => sub,
                // Gone since it was listed: removed, renamed, or a symlink
                // or a file in its place now (not read through). Harmless;
                // any other failure leaves the read incomplete.
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR)
                    if !rel.as_os_str().is_empty() =>
                {
                    continue;
                }
                Err(_) => {
                    self.incomplete = true;
                    continue;
                }
            };
            // The directory the fd is open on, whatever happens to its path.
            let path = fd_path(&sub);
            // The change time before the listing: a name added after it
            // changes it.
            let (Ok(meta), Ok(entries)) = (std::fs::metadata(&path), std::fs::read_dir(&path))
            else {
                self.incomplete = true;
                continue;
            };
            dirs.push(ReadDir {
                rel: rel.clone(),
                fd: (dirs.len() < KEPT_DIR_FDS).then_some(sub),
                id: (meta.dev(), meta.ino()),
                ctime: (meta.ctime(), meta.ctime_nsec()),
            });
            for entry in entries {
                names += 1;
                if self.files.len() >= MAX_INODES || names > MAX_ENTRIES {
                    self.incomplete = true;
                    break 'read;
                }
                let entry = match entry.and_then(|e| e.metadata().map(|m| (e.file_name(), m))) {
                    Ok(entry) => entry,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(_) => {
                        self.incomplete = true;
                        continue;
                    }
                };
                let (name, meta) = entry;
                self.files
                    .insert((meta.dev(), meta.ino()), meta.created().ok());
                if meta.is_dir() {
                    pending.push_back(rel.join(name));
                }
            }
        }
        self.dirs = Arc::new(dirs);
    }

    /// Whether a name may have been added since the read (`dir`: the top
    /// directory's fd).
    fn changed(&self, dir: &OwnedFd) -> bool {
        self.untrusted_times || !settled(dir, &self.dirs, self.at)
    }
}

/// Whether nothing can have been added under `dir` since `at`: no
/// directory read then has changed since, nor had changed shortly before.
fn settled(dir: &OwnedFd, dirs: &[ReadDir], at: i128) -> bool {
    dirs.iter().all(|d| ns(d.ctime) < at - settle_ns(d.ctime)) && unchanged(dir, dirs)
}

/// File systems whose change times cannot tell a change here (statfs
/// magic numbers, linux/magic.h): FUSE's are what its server says (sshfs:
/// the modification time, which `utimensat` sets back); a network file
/// system's come from the server's clock and may be cached, while the
/// settle time is read from ours. FUSE, NFS, SMB, SMB2, CIFS, 9p, Ceph.
const UNTRUSTED_TIMES: &[u64] = &[
    0x6573_5546,
    0x6969,
    0x517b,
    0xfe53_4d42,
    0xff53_4d42,
    0x0102_1997,
    0x00c3_6400,
];

/// Whether the change times of the file system `dir` is on cannot be
/// trusted to tell a change (unknown: they cannot).
fn untrusted_times(dir: &OwnedFd) -> bool {
    nix::sys::statfs::fstatfs(dir).map_or(true, |fs| {
        UNTRUSTED_TIMES.contains(&(fs.filesystem_type().0 as u64))
    })
}

/// Whether every directory read is still the one read (device and inode),
/// with the change time it had then.
fn unchanged(dir: &OwnedFd, dirs: &[ReadDir]) -> bool {
    let same = |fd: &OwnedFd, d: &ReadDir| {
        nix::sys::stat::fstat(fd).is_ok_and(|st| {
            (st.st_dev, st.st_ino) == d.id && (st.st_ctime, st.st_ctime_nsec) == d.ctime
        })
    };
    dirs.iter().all(|d| match &d.fd {
        Some(fd) => same(fd, d),
        // Not through a symlink put in its place: that is a change.
        None => open_beneath(dir, &d.rel).is_ok_and(|fd| same(&fd, d)),
    })
}

/// The directory `rel` (a path of directories listed; empty: `top`
/// itself) beneath `top`, without following a symlink or leaving it: each
/// name must still be the directory it was.
fn open_beneath(top: &OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    nix::fcntl::openat2(
        top,
        rel,
        OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH),
    )
}

/// A path to the directory `fd` is open on, wherever it is now.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    // This thread's fd table: the same as the process's, unless a library
    // host's thread unshared its own, and there even if the main thread ended.
    PathBuf::from(format!("/proc/thread-self/fd/{}", fd.as_raw_fd()))
}

/// The clock's time, in nanoseconds since the epoch (before it: 0, which
/// settles nothing).
fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// `path` made absolute and free of symlinks as far as it exists (the
/// rest, a name not made yet, kept as given).
fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => canonical(parent).join(name),
        _ => absolute,
    }
}

/// Whether `path` is `top` or lies under it.
fn under(top: &[u8], path: &[u8]) -> bool {
    match path.strip_prefix(top) {
        Some(rest) => rest.is_empty() || rest[0] == b'/' || top.ends_with(b"/"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_protected_path_covers_what_lies_under_it_and_no_sibling() {
        assert!(under(b"/a/store", b"/a/store"));
        assert!(under(b"/a/store", b"/a/store/db"));
        assert!(!under(b"/a/store", b"/a/store2"));
        assert!(!under(b"/a/store", b"/a/stor"));
        assert!(!under(b"/a/store", b"/a"));
        assert!(under(b"/", b"/etc"));
    }

    fn o_path(path: &Path) -> Found {
        let fd = nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        Found::Existing(fd)
    }

    /// A temporary directory with an empty `store` in it.
    fn with_store() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        (dir, store)
    }

    /// A file of the tool's own in `dir` with a second name, found by it.
    fn own_linked_file(dir: &Path) -> Found {
        std::fs::write(dir.join("own"), "").unwrap();
        std::fs::hard_link(dir.join("own"), dir.join("own-link")).unwrap();
        o_path(&dir.join("own-link"))
    }

    #[test]
    fn another_name_of_a_file_made_under_it_since_the_start_is_recognised() {
        let (dir, store) = with_store();
        std::fs::write(store.join("old"), "").unwrap();
        let protected = Protected::new(&[(store.clone(), Protection::All)]);
        // Made after the inodes were read, then linked outside.
        std::fs::write(store.join("late"), "").unwrap();
        std::fs::hard_link(store.join("late"), dir.path().join("late-link")).unwrap();
        std::fs::hard_link(store.join("old"), dir.path().join("old-link")).unwrap();
        // A file with two names that is not the store's.
        std::fs::write(dir.path().join("other"), "").unwrap();
        std::fs::hard_link(dir.path().join("other"), dir.path().join("other-link")).unwrap();
        for (name, refused) in [
            ("late-link", true),
            ("old-link", true),
            ("other-link", false),
        ] {
            let found = o_path(&dir.path().join(name));
            assert_eq!(
                protected.refuses(b"/elsewhere", &found, None, Use::Read),
                refused,
                "{name}"
            );
        }
        // Only writes, for a file protected for writes (a directory so
        // protected is not read: its files are known by path).
        let writes = Protected::new(&[
            (store.join("old"), Protection::Writes),
            (store.clone(), Protection::Writes),
        ]);
        let old = o_path(&dir.path().join("old-link"));
        assert!(!writes.refuses(b"/elsewhere", &old, None, Use::Read));
        assert!(writes.refuses(b"/elsewhere", &old, None, Use::Write));
        let late = o_path(&dir.path().join("late-link"));
        assert!(!writes.refuses(b"/elsewhere", &late, None, Use::Write));
        assert!(writes.refuses(
            store.join("late").as_os_str().as_bytes(),
            &late,
            None,
            Use::Write
        ));
    }

    #[test]
    fn what_was_known_stays_known_after_the_directory_is_moved() {
        let (dir, store) = with_store();
        std::fs::write(store.join("old"), "").unwrap();
        let protected = Protected::new(&[(store.clone(), Protection::All)]);
        // `rename` is not brokered: the tool may move the store away, then
        // link a file of its own, which makes the supervisor read it again.
        let moved = dir.path().join("moved");
        std::fs::rename(&store, &moved).unwrap();
        std::fs::rename(moved.join("old"), dir.path().join("old-out")).unwrap();
        std::fs::write(moved.join("late"), "").unwrap();
        std::fs::hard_link(moved.join("late"), dir.path().join("late-link")).unwrap();
        std::fs::write(dir.path().join("own"), "").unwrap();
        std::fs::hard_link(dir.path().join("own"), dir.path().join("own-link")).unwrap();
        // (`own-link` makes it read the directory again: `old-out` is no
        // longer there, and still known.)
        for (name, refused) in [
            ("old-out", true),
            ("own-link", false),
            ("late-link", true),
            ("old-out", true),
        ] {
            let found = o_path(&dir.path().join(name));
            assert_eq!(
                protected.refuses(b"/elsewhere", &found, None, Use::Read),
                refused,
                "{name}"
            );
        }
    }

    #[test]
    fn an_inode_number_of_a_file_gone_names_another_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "").unwrap();
        let protected = Protected::new(&[(key.clone(), Protection::All)]);
        let found = o_path(&key);
        assert!(protected.refuses(b"/elsewhere", &found, None, Use::Read));
        // As if the key had been removed and its inode number reused by a
        // file born later: where the file system keeps birth times, that
        // file is not the key.
        let Found::Existing(fd) = &found else {
            unreachable!()
        };
        let Some(born) = birth_of(fd) else {
            eprintln!("no birth times on this file system: an inode number is the file");
            return;
        };
        for birth in protected.entries()[0]
            .known
            .write()
            .unwrap()
            .files
            .values_mut()
        {
            *birth = Some(born - std::time::Duration::from_secs(60));
        }
        assert!(!protected.refuses(b"/elsewhere", &found, None, Use::Read));
    }

    #[test]
    fn a_directory_too_large_to_read_refuses_any_file_with_other_names_on_its_device() {
        let (dir, store) = with_store();
        let protected = Protected::new(&[(store.clone(), Protection::All)]);
        let own = own_linked_file(dir.path());
        assert!(!protected.refuses(b"/elsewhere", &own, None, Use::Read));
        // More entries than are read: one of them could be `own`.
        for i in 0..=MAX_INODES {
            std::fs::create_dir(store.join(i.to_string())).unwrap();
        }
        assert!(protected.refuses(b"/elsewhere", &own, None, Use::Read));
    }

    #[test]
    fn names_past_the_bound_leave_the_read_incomplete_links_to_one_file_included() {
        let (dir, store) = with_store();
        // One file, many names: one inode, but each name is looked at.
        std::fs::write(store.join("f"), "").unwrap();
        for i in 0..MAX_ENTRIES {
            std::fs::hard_link(store.join("f"), store.join(i.to_string())).unwrap();
        }
        let protected = Protected::new(&[(store.clone(), Protection::All)]);
        assert!(protected.entries()[0].read().incomplete);
        let own = own_linked_file(dir.path());
        assert!(protected.refuses(b"/elsewhere", &own, None, Use::Read));
    }

    #[test]
    fn a_directory_that_had_too_many_files_refuses_linked_files_for_good() {
        let (dir, store) = with_store();
        let protected = Protected::new(&[(store.clone(), Protection::All)]);
        let own = own_linked_file(dir.path());
        assert!(!protected.refuses(b"/elsewhere", &own, None, Use::Read));
        // As if earlier reads had found that many files, made and removed.
        protected.entries()[0]
            .known
            .write()
            .unwrap()
            .files
            .extend((0..MAX_KNOWN as u64).map(|i| ((u64::MAX, i), None)));
        // A name added: the next linked file's check reads the store again.
        std::fs::write(store.join("late"), "").unwrap();
        assert!(protected.refuses(b"/elsewhere", &own, None, Use::Read));
        assert!(protected.entries()[0].read().full);
        // And stays so, with nothing more read or kept.
        std::fs::write(store.join("later"), "").unwrap();
        assert!(protected.refuses(b"/elsewhere", &own, None, Use::Read));
        let later = std::fs::metadata(store.join("later")).unwrap();
        let known = protected.entries()[0].read();
        assert!(!known.files.contains_key(&(later.dev(), later.ino())));
        assert!(known.full && known.incomplete);
    }

    #[test]
    fn a_directory_is_opened_beneath_without_following_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir_all(store.join("a/b")).unwrap();
        std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
        std::fs::create_dir(dir.path().join("elsewhere/b")).unwrap();
        let top = OwnedFd::from(std::fs::File::open(&store).unwrap());
        assert!(open_beneath(&top, Path::new("a/b")).is_ok());
        // What the tool can do between a listing and its read (`rename` and
        // `symlink` are not brokered): a symlink in a directory's place.
        std::fs::rename(store.join("a"), dir.path().join("a-out")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), store.join("a")).unwrap();
        assert_eq!(
            open_beneath(&top, Path::new("a/b")).unwrap_err(),
            Errno::ELOOP
        );
        assert_eq!(
            open_beneath(&top, Path::new("a")).unwrap_err(),
            Errno::ELOOP
        );
        std::fs::remove_file(store.join("a")).unwrap();
        std::fs::write(store.join("a"), "").unwrap();
        assert_eq!(
            open_beneath(&top, Path::new("a")).unwrap_err(),
            Errno::ENOTDIR
        );
        assert_eq!(
            open_beneath(&top, Path::new("../elsewhere")).unwrap_err(),
            Errno::EXDEV
        );
    }

    #[test]
    fn an_unchanged_directory_is_settled_and_a_name_added_unsettles_it() {
        let (_dir, store) = with_store();
        std::fs::create_dir(store.join("sub")).unwrap();
        let protected = Protected::new(&[(store.clone(), Protection::All)]);
        let entry = &protected.entries()[0];
        let known = entry.read();
        let top = entry.dir.as_ref().unwrap();
        // Both kept by fd, and past the clock's tick.
        assert!(known.dirs.iter().all(|d| d.fd.is_some()));
        let later = known.at + SETTLE_NS + 1;
        assert!(settled(top, &known.dirs, later));
        // Changed lately when read: not settled until read again.
        let newest = known.dirs.iter().map(|d| ns(d.ctime)).max().unwrap();
        assert!(!settled(top, &known.dirs, newest + SETTLE_FINE_NS));
        past_a_tick();
        std::fs::write(store.join("sub/new"), "").unwrap();
        assert!(!settled(top, &known.dirs, later));
    }

    #[test]
    fn a_directory_past_the_kept_fds_is_looked_at_by_its_path_beneath() {
        let (_dir, store) = with_store();
        for i in 0..=KEPT_DIR_FDS {
            std::fs::create_dir(store.join(format!("d{i:02}"))).unwrap();
        }
        let protected = Protected::new(&[(store.clone(), Protection::All)]);
        let entry = &protected.entries()[0];
        let known = entry.read();
        let top = entry.dir.as_ref().unwrap();
        let by_path = known.dirs.iter().filter(|d| d.fd.is_none()).count();
        assert_eq!(by_path, known.dirs.len() - KEPT_DIR_FDS);
        let last = known.dirs.last().unwrap().rel.clone();
        let later = known.at + SETTLE_NS + 1;
        assert!(settled(top, &known.dirs, later));
        past_a_tick();
        std::fs::write(store.join(&last).join("new"), "").unwrap();
        assert!(!settled(top, &known.dirs, later));
    }

    #[test]
    fn a_read_where_change_times_are_untrusted_is_incomplete() {
        let (_dir, store) = with_store();
        std::fs::write(store.join("db"), "").unwrap();
        let dir = OwnedFd::from(std::fs::File::open(&store).unwrap());
        let mut known = Known {
            untrusted_times: true,
            ..Known::default()
        };
        known.read(&dir);
        assert!(!known.files.is_empty());
        assert!(known.incomplete);
        let mut trusted = Known::default();
        trusted.read(&dir);
        assert!(!trusted.incomplete);
    }

    #[test]
    fn change_times_on_local_file_systems_are_trusted() {
        let (_dir, store) = with_store();
        let dir = OwnedFd::from(std::fs::File::open(&store).unwrap());
        // /tmp: ext4 or tmpfs here.
        assert!(!untrusted_times(&dir));
        assert!(UNTRUSTED_TIMES.contains(&(nix::sys::statfs::FUSE_SUPER_MAGIC.0 as u64)));
        assert!(UNTRUSTED_TIMES.contains(&(nix::sys::statfs::NFS_SUPER_MAGIC.0 as u64)));
    }

    #[test]
    fn a_change_time_in_nanoseconds_settles_sooner_than_one_in_seconds() {
        let (_dir, store) = with_store();
        let protected = Protected::new(&[(store.clone(), Protection::All)]);
        let entry = &protected.entries()[0];
        let known = entry.read();
        let top = entry.dir.as_ref().unwrap();
        let newest = known.dirs.iter().map(|d| ns(d.ctime)).max().unwrap();
        if known.dirs.iter().any(|d| d.ctime.1 == 0) {
            eprintln!("skipped: a change time in whole seconds");
            return;
        }
        assert!(!settled(top, &known.dirs, newest + SETTLE_FINE_NS));
        assert!(settled(top, &known.dirs, newest + SETTLE_FINE_NS + 1));
        assert_eq!(settle_ns((1_700_000_000, 0)), SETTLE_NS);
        assert_eq!(settle_ns((1_700_000_000, 1)), SETTLE_FINE_NS);
    }

    /// A change made within the same tick of the file system's clock as
    /// the one read can leave the change time as it was (before Linux 6.13,
    /// or without multigrain timestamps): past it, a change shows.
    fn past_a_tick() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    #[test]
    fn a_directory_reached_by_its_path_must_be_the_one_read() {
        let (_dir, store) = with_store();
        std::fs::create_dir(store.join("a")).unwrap();
        std::fs::create_dir(store.join("b")).unwrap();
        let protected = Protected::new(&[(store.clone(), Protection::All)]);
        let entry = &protected.entries()[0];
        let top = entry.dir.as_ref().unwrap();
        let b = std::fs::metadata(store.join("b")).unwrap();
        let a = std::fs::metadata(store.join("a")).unwrap();
        let record = |id: Id| ReadDir {
            rel: PathBuf::from("b"),
            fd: None,
            id,
            ctime: (b.ctime(), b.ctime_nsec()),
        };
        assert!(unchanged(top, &[record((b.dev(), b.ino()))]));
        // The change time of "b", but another directory's identity: as if
        // "a", changed in the same tick, had been moved in its place.
        assert!(!unchanged(top, &[record((a.dev(), a.ino()))]));
    }

    #[test]
    fn a_directory_changed_lately_is_read_again() {
        let (dir, store) = with_store();
        let protected = Protected::new(&[(store.clone(), Protection::All)]);
        std::fs::write(store.join("late"), "").unwrap();
        std::fs::hard_link(store.join("late"), dir.path().join("late-link")).unwrap();
        let late = o_path(&dir.path().join("late-link"));
        assert!(protected.refuses(b"/elsewhere", &late, None, Use::Read));
    }

    #[test]
    fn a_name_not_made_yet_is_kept_under_its_canonical_parent() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::os::unix::fs::symlink(&real, real.join("link")).unwrap();
        assert_eq!(
            canonical(&real.join("link/not-yet/key")),
            real.join("not-yet/key")
        );
    }
}
