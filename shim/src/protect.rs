//! Files of the host's that the tool may never reach, whatever the policy
//! says ([`crate::Sandbox::protect`]): cordon's own, such as the embedded
//! broker's audit store, the policy files and a TLS client key. They belong
//! to the user who runs the tool, so its credentials do not keep it out.
//!
//! Each is recognised by its canonical path (a directory: everything under
//! it), and by device and inode: a hard link to it, or another mount of a
//! directory that holds it. The inodes are read when the supervisor starts,
//! and again when a file with more than one name turns up on a protected
//! directory's device (a hard link to a file made since).

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// At most this many inodes are read under one protected directory; past
/// it, what is not read is recognised by its path only.
const MAX_INODES: usize = 4096;
/// How deep under a protected directory inodes are read.
const MAX_DEPTH: usize = 4;

#[derive(Debug)]
struct Entry {
    /// Canonical, as the tool's lookups are.
    path: Vec<u8>,
    protection: Protection,
    /// The device of the path, and whether it is a directory (when it
    /// exists at start).
    dev: Option<u64>,
    dir: bool,
    scan: Mutex<Scan>,
}

/// What was under a protected path when last read.
#[derive(Debug, Default)]
struct Scan {
    /// Device and inode of the path and of everything under it.
    inodes: HashSet<(u64, u64)>,
    /// The directories read, with their change times then.
    dirs: Vec<(PathBuf, (i64, i64))>,
    /// When they were read.
    at: i64,
}

/// A directory changed less than this before it was read may change again
/// within the same tick of the file system's clock, unseen: it is read again.
const SETTLE_SECONDS: i64 = 2;

/// The sandbox's protected files.
#[derive(Debug, Default)]
pub struct Protected {
    entries: Vec<Entry>,
}

impl Protected {
    /// Reads where each path is now (a path that does not exist yet is
    /// protected by name).
    pub fn new(paths: &[(PathBuf, Protection)]) -> Self {
        let entries = paths
            .iter()
            .map(|(path, protection)| {
                let path = canonical(path);
                let meta = std::fs::symlink_metadata(&path).ok();
                let path = path.as_os_str().as_bytes().to_vec();
                Entry {
                    scan: Mutex::new(Scan::of(&path)),
                    path,
                    protection: *protection,
                    dev: meta.as_ref().map(|m| m.dev()),
                    dir: meta.as_ref().is_some_and(|m| m.is_dir()),
                }
            })
            .collect();
        Self { entries }
    }

    /// Whether the tool may not `how` use `canonical`, which its lookup
    /// found as `found` (the file, or the directory a name would be created
    /// in; `stat`, the file's status if the caller has read it). Fails
    /// closed: a file that cannot be told is refused.
    pub fn refuses(
        &self,
        canonical: &[u8],
        found: &Found,
        stat: Option<&FileStat>,
        how: Use,
    ) -> bool {
        let mut applicable = self
            .entries
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
        // the inodes were read, to a file under a protected directory.
        let linked = existing && st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink > 1;
        applicable.any(|e| {
            if under(&e.path, canonical) {
                return true;
            }
            let mut scan = e.scan.lock().unwrap_or_else(|p| p.into_inner());
            if linked && e.dir && e.dev == Some(st.st_dev) && !scan.settled() {
                *scan = Scan::of(&e.path);
            }
            scan.inodes.contains(&id)
        })
    }
}

impl Scan {
    /// Reads the inodes of `path` and of what it holds.
    fn of(path: &[u8]) -> Self {
        let mut scan = Self {
            at: now_seconds(),
            ..Self::default()
        };
        let path = Path::new(std::ffi::OsStr::from_bytes(path));
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            scan.inodes.insert((meta.dev(), meta.ino()));
            if meta.is_dir() {
                scan.read_dir(path, &meta, MAX_DEPTH);
            }
        }
        scan
    }

    /// Adds the device and inode of everything under `dir` (not following
    /// symlinks), `depth` levels down, up to [`MAX_INODES`].
    fn read_dir(&mut self, dir: &Path, meta: &std::fs::Metadata, depth: usize) {
        self.dirs
            .push((dir.to_path_buf(), (meta.ctime(), meta.ctime_nsec())));
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if self.inodes.len() >= MAX_INODES {
                return;
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            self.inodes.insert((meta.dev(), meta.ino()));
            if meta.is_dir() && depth > 1 {
                self.read_dir(&entry.path(), &meta, depth - 1);
            }
        }
    }

    /// Whether nothing can have been added since the scan: no directory
    /// read has changed since, nor had changed shortly before.
    fn settled(&self) -> bool {
        self.dirs.iter().all(|(dir, ctime)| {
            ctime.0 < self.at - SETTLE_SECONDS
                && std::fs::symlink_metadata(dir)
                    .is_ok_and(|m| (m.ctime(), m.ctime_nsec()) == *ctime)
        })
    }
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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

    #[test]
    fn another_name_of_a_file_made_under_it_since_the_start_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
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
        // Only writes, for a protection of writes.
        let writes = Protected::new(&[(store.clone(), Protection::Writes)]);
        let old = o_path(&dir.path().join("old-link"));
        assert!(!writes.refuses(b"/elsewhere", &old, None, Use::Read));
        assert!(writes.refuses(b"/elsewhere", &old, None, Use::Write));
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
