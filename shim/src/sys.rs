//! The only module with `unsafe`: raw kernel interfaces that neither `nix` nor
//! the `libseccomp` crate wraps (the seccomp notification ioctls, loading a
//! prepared BPF program with our own flags, `pidfd_getfd`, per-thread
//! `setgroups`), plus the code that runs in the forked child before exec,
//! and the connector process ([`connector`]).
//!
//! Everything here hands out owned, safe types: [`Listener`] owns the
//! notification fd, [`Notification`] is a plain copy of the kernel's struct,
//! fds come back as `OwnedFd`.

#![allow(unsafe_code)]

pub mod connector;

use std::{
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::process::CommandExt,
    },
    process::Command,
    sync::Arc,
};

/// One pending syscall, copied out of the kernel's `struct seccomp_notif`.
#[derive(Debug, Clone, Copy)]
pub struct Notification {
    /// Cookie for the answer; valid until answered or the task is interrupted.
    pub id: u64,
    /// Thread id of the caller, in the supervisor's pid namespace.
    pub tid: i32,
    pub nr: i64,
    pub arch: u32,
    pub args: [u64; 6],
}

/// The seccomp user-notification listener of one sandbox.
#[derive(Debug)]
pub struct Listener(OwnedFd);

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl std::os::fd::AsFd for Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Listener {
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self(fd)
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Blocks until a notification arrives. `ENOENT` means the caller went
    /// away before we could read it: callers skip it.
    pub fn recv(&self) -> io::Result<Notification> {
        // The kernel rejects a non-zeroed buffer with EINVAL.
        // SAFETY: seccomp_notif is a plain C struct of integers; all-zero is valid.
        let mut raw: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: RECV writes one seccomp_notif into the buffer we own.
        cvt(unsafe { libc::ioctl(self.fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut raw) })?;
        Ok(Notification {
            id: raw.id,
            tid: raw.pid as i32,
            nr: raw.data.nr as i64,
            arch: raw.data.arch,
            args: raw.data.args,
        })
    }

    fn send(&self, id: u64, val: i64, error: i32, flags: u32) -> io::Result<()> {
        let mut resp = libc::seccomp_notif_resp {
            id,
            val,
            error,
            flags,
        };
        // SAFETY: SEND reads one seccomp_notif_resp from memory we own.
        cvt(unsafe { libc::ioctl(self.fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) })?;
        Ok(())
    }

    /// Lets the syscall run as the tool made it. Only for calls whose
    /// meaning cannot change after our check (no pointers we relied on).
    pub fn allow_continue(&self, id: u64) -> io::Result<()> {
        self.send(id, 0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32)
    }

    /// Fails the syscall with `errno`. Anything that is not a real errno
    /// (0 would complete the call as a success) becomes `EACCES`.
    pub fn fail(&self, id: u64, errno: i32) -> io::Result<()> {
        let errno = if (1..4096).contains(&errno) {
            errno
        } else {
            libc::EACCES
        };
        self.send(id, 0, -errno, 0)
    }

    /// Completes the syscall with a return value, without running it.
    pub fn succeed(&self, id: u64, val: i64) -> io::Result<()> {
        self.send(id, val, 0, 0)
    }

    /// Whether the notification is still pending (the task did not die or
    /// get interrupted, so its pid and memory are still the ones we read).
    pub fn id_valid(&self, id: u64) -> bool {
        let mut id = id;
        // SAFETY: ID_VALID reads one u64 from memory we own.
        unsafe { libc::ioctl(self.fd(), libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &mut id) == 0 }
    }

    /// Installs `fd` in the tool and completes the syscall with the new fd
    /// number, atomically (`SECCOMP_ADDFD_FLAG_SEND`).
    pub fn inject_fd_and_return(&self, id: u64, fd: &OwnedFd, cloexec: bool) -> io::Result<i32> {
        let mut addfd = libc::seccomp_notif_addfd {
            id,
            flags: libc::SECCOMP_ADDFD_FLAG_SEND as u32,
            srcfd: fd.as_raw_fd() as u32,
            newfd: 0,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        // SAFETY: ADDFD reads one seccomp_notif_addfd from memory we own;
        // srcfd is a live fd borrowed for the duration of the call.
        cvt(unsafe { libc::ioctl(self.fd(), libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut addfd) })
    }

    /// Asks the kernel to wake the tool on the CPU that answers it
    /// (`SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`, Linux 6.6+). Best effort.
    pub fn set_sync_wakeup(&self) -> io::Result<()> {
        const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: libc::c_ulong = 1;
        // SAFETY: SET_FLAGS takes its argument by value, no memory is touched.
        cvt(unsafe {
            libc::ioctl(
                self.fd(),
                libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
                SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
            )
        })?;
        Ok(())
    }
}

/// A page the kernel zeroes in every child that does not share this
/// process's memory (`MADV_WIPEONFORK`, Linux 4.14), however it was made
/// (`fork`, `clone` or `clone3` without `CLONE_VM`): its first word holds
/// this process's [`incarnation`]. Null until first asked for.
static WIPED_IN_CHILDREN: std::sync::atomic::AtomicPtr<std::sync::atomic::AtomicU64> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Incarnations handed out; a child inherits the count, so its own
/// (counted on from there) differs from every one its ancestors hold.
static INCARNATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A number that tells this process from its parent and its children
/// without a system call: state a process keeps about itself (an fd on
/// `/proc/self/…`, which stays its opener's) can tell that it was inherited
/// from another process. `None` (ask `getpid`) where the kernel has no
/// `MADV_WIPEONFORK`. Never a wait (a child forked mid-call would wait
/// forever): two threads that both make the page keep one.
///
/// A child made with `CLONE_VM` but its own fd table shares the page, and
/// so the number: it must not rely on this (a `vfork` child, which only
/// execs, does not).
pub fn incarnation() -> Option<u64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut page = WIPED_IN_CHILDREN.load(Ordering::Acquire);
    if page.is_null() {
        let made = wiped_in_children()?;
        page = match WIPED_IN_CHILDREN.compare_exchange(
            std::ptr::null_mut(),
            made,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => made,
            Err(theirs) => {
                // SAFETY: `made` is the page mapped just above, which no one
                // else has seen.
                unsafe { libc::munmap(made.cast(), page_size()) };
                theirs
            }
        };
    }
    // SAFETY: a page, once published, stays mapped for the life of the
    // process (and of its children, which inherit the mapping); its first
    // word is only ever used as this atomic.
    let mark: &AtomicU64 = unsafe { &*page };
    let now = mark.load(Ordering::Acquire);
    if now != 0 {
        return Some(now);
    }
    // A new process (or the first call): the next number, unless another
    // thread of this one took one first.
    let next = INCARNATIONS.fetch_add(1, Ordering::AcqRel) + 1;
    match mark.compare_exchange(0, next, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Some(next),
        Err(theirs) => Some(theirs),
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf takes an integer and returns one.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// A zeroed page marked `MADV_WIPEONFORK`, or `None` where it cannot be.
fn wiped_in_children() -> Option<*mut std::sync::atomic::AtomicU64> {
    let size = page_size();
    // SAFETY: a new private anonymous mapping, at an address of the
    // kernel's choosing: nothing of ours is affected.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: `page` is the mapping just made, of `size` bytes.
    if unsafe { libc::madvise(page, size, libc::MADV_WIPEONFORK) } != 0 {
        // SAFETY: the same mapping, unused.
        unsafe { libc::munmap(page, size) };
        return None;
    }
    // Page-aligned and zeroed: a valid `AtomicU64` of value 0.
    Some(page.cast())
}

/// Whether this kernel has `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` (5.19),
/// which the tool's filter then uses: a tool thread whose notification was
/// received waits for the answer in a killable sleep, which no ptrace
/// interrupt or ordinary signal ends. Probed once, without installing
/// anything: the kernel checks the flags (EINVAL for unknown ones) before it
/// reads the program, so a null program is EFAULT where the flag exists.
pub fn wait_killable_recv() -> bool {
    static KNOWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KNOWN.get_or_init(|| {
        // SAFETY: the program pointer is null, so the kernel installs nothing
        // and reads nothing from us; it returns -1 with EFAULT or EINVAL.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER
                    | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
                std::ptr::null::<libc::sock_fprog>(),
            )
        };
        r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EFAULT)
    })
}

/// Whether the calling thread's credentials (fs ids, groups, capabilities)
/// may execute the file `fd` refers to, as the kernel's exec checks it: an
/// exec bit it may use, and a mount without `noexec` (`faccessat2` with
/// `AT_EACCESS`, Linux 5.8). `Ok(true)` when it may, `EACCES` when not;
/// `Ok(false)` where `faccessat2` is missing or refused and nothing was
/// checked (the exec itself still checks).
pub fn may_execute(fd: &OwnedFd) -> io::Result<bool> {
    // SAFETY: the path is a NUL-terminated static string and the fd is ours;
    // faccessat2 only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::X_OK,
            libc::AT_EMPTY_PATH | libc::AT_EACCESS,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        // Before Linux 5.8, or under a container profile that refuses
        // faccessat2: no answer here, and the kernel still checks at the exec.
        if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(true)
}

/// `readlinkat(2)` into a buffer on the stack, the link copied out at its
/// own size. nix's `readlinkat` allocates `PATH_MAX` bytes per call, which
/// glibc serves as a large request: it consolidated its fast bins at each
/// (one `malloc_consolidate` per open, `perf probe` in BENCHMARKS.md session
/// 35). A link that fills the buffer may be longer (no symlink is, nor a
/// `/proc` link with 4 KiB pages): it is read again by nix's, which grows
/// its buffer until the link fits.
pub fn readlinkat<P: ?Sized + nix::NixPath>(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &P,
) -> nix::Result<Vec<u8>> {
    readlinkat_within::<{ libc::PATH_MAX as usize }, P>(dir, name)
}

/// [`readlinkat`] with a buffer of `N` bytes (tests use a small one to
/// reach the longer links' path).
fn readlinkat_within<const N: usize, P: ?Sized + nix::NixPath>(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &P,
) -> nix::Result<Vec<u8>> {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); N];
    let n = name.with_nix_path(|name| {
        // SAFETY: `name` is NUL-terminated, `buf` is writable for its
        // length and outlives the call; the kernel writes at most that much.
        unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        }
    })?;
    let n = nix::errno::Errno::result(n)? as usize;
    if n < buf.len() {
        // SAFETY: the kernel wrote the first `n` bytes of `buf`.
        let link = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
        return Ok(link.to_vec());
    }
    nix::fcntl::readlinkat(dir, name).map(std::os::unix::ffi::OsStringExt::into_vec)
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_open(tid, PIDFD_THREAD)` (Linux 6.9): a pidfd on one thread.
pub fn pidfd_open_thread(tid: i32) -> io::Result<OwnedFd> {
    const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;
    // SAFETY: plain syscall with integer arguments; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid, PIDFD_THREAD) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A task's ids as `PIDFD_GET_INFO` tells them, in the caller's namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskIds {
    pub tgid: i32,
    pub ppid: i32,
    /// Real, effective, saved and fs uid.
    pub uids: [u32; 4],
    /// Real, effective, saved and fs gid.
    pub gids: [u32; 4],
}

/// `struct pidfd_info` as Linux 6.13 first defined it (64 bytes); later
/// kernels accept this size and fill what it has room for.
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}

/// `ioctl(pidfd, PIDFD_GET_INFO)` (Linux 6.13) for the ids and parent: a
/// fraction of the cost of generating `/proc/TID/status`. `ESRCH` once the
/// task is gone; `ENOTTY` or `EINVAL` where the kernel lacks it.
pub fn pidfd_task_ids(pidfd: &OwnedFd) -> io::Result<TaskIds> {
    const PIDFD_INFO_PID: u64 = 1;
    const PIDFD_INFO_CREDS: u64 = 2;
    // _IOWR(PIDFS_IOCTL_MAGIC, 11, struct pidfd_info), as this architecture
    // encodes it.
    const PIDFD_GET_INFO: nix::sys::ioctl::ioctl_num_type =
        nix::request_code_readwrite!(0xFF, 11, std::mem::size_of::<PidfdInfo>());
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_CREDS,
        ..PidfdInfo::default()
    };
    // SAFETY: the kernel reads the mask from and writes at most
    // `size_of::<PidfdInfo>()` bytes (the size encoded in the request) into
    // `info`, which we own.
    cvt(unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO, &mut info) })?;
    if info.mask & (PIDFD_INFO_PID | PIDFD_INFO_CREDS) != PIDFD_INFO_PID | PIDFD_INFO_CREDS {
        return Err(io::Error::from_raw_os_error(libc::ENOTTY));
    }
    Ok(TaskIds {
        tgid: info.tgid as i32,
        ppid: info.ppid as i32,
        uids: [info.ruid, info.euid, info.suid, info.fsuid],
        gids: [info.rgid, info.egid, info.sgid, info.fsgid],
    })
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`: a signal to exactly the process
/// the pidfd was opened on, never to a later process with a reused pid.
pub fn pidfd_kill(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: integer arguments and a null siginfo, which the kernel accepts.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `pidfd_getfd(pidfd, fd, 0)`: a duplicate of another process's fd (the
/// same open file description, so the same socket).
pub fn pidfd_getfd(pidfd: &OwnedFd, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; returns a new fd or -1.
    let new = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new as RawFd) })
}

/// The user namespace that owns a socket's network namespace, as an fd:
/// `ioctl(SIOCGSKNS)` gives the network namespace, `ioctl(NS_GET_USERNS)`
/// its owner (nix wraps neither).
pub fn socket_netns_owner(sock: &OwnedFd) -> io::Result<OwnedFd> {
    // NS_GET_USERNS: _IO(0xb7, 0x1).
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    // SAFETY: SIOCGSKNS takes no argument and returns a new fd or -1.
    let netns = cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGSKNS) })?;
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    let netns = unsafe { OwnedFd::from_raw_fd(netns) };
    // SAFETY: NS_GET_USERNS takes no argument and returns a new fd or -1.
    let owner = cvt(unsafe { libc::ioctl(netns.as_raw_fd(), NS_GET_USERNS) })?;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(owner) })
}

/// `tgkill(tgid, tid, sig)`: a signal to one thread of a process (nix has
/// no wrapper).
pub fn tgkill(tgid: i32, tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the supplementary groups of the calling thread only. glibc's
/// `setgroups` changes every thread of the process; the raw syscall does not.
pub fn set_thread_groups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: the kernel reads `len` gids from a slice we borrow.
    let ret = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// This thread's capability sets, as `capget` gives them: two
/// `{effective, permitted, inheritable}` structs (low and high 32 bits).
fn thread_cap_data() -> io::Result<[u32; 6]> {
    let mut header = [CAP_VERSION_3, 0]; // version, pid 0 = this thread
    let mut data = [0u32; 6];
    // SAFETY: capget writes two __user_cap_data_struct (6 u32) into `data`
    // and reads the header; both are ours and sized for version 3.
    if unsafe { libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

/// The calling thread's effective capabilities.
pub fn thread_effective_caps() -> io::Result<u64> {
    let data = thread_cap_data()?;
    Ok(data[0] as u64 | (data[3] as u64) << 32)
}

/// `CAP_SYS_TIME` (25, linux/capability.h; the libc crate does not name
/// capabilities), as a bit of a capability set.
pub const CLOCK_CAPABILITY: u64 = 1 << 25;

/// `CAP_SYS_RESOURCE` (24): raising a hard rlimit needs it, so a root tool
/// that keeps it is not bound by the limits cordon sets.
pub const RESOURCE_CAPABILITY: u64 = 1 << 24;

/// `CAP_NET_ADMIN` (12) and `CAP_NET_RAW` (13): a root tool that kept them
/// would remake the network the policy judges addresses in (an address or
/// route added for a denied destination, a tunnel, an interface moved into
/// another namespace, `--network none`'s included) and send from addresses
/// not its own (`IP_TRANSPARENT`). No tool keeps them.
pub const NETWORK_CAPABILITIES: u64 = 1 << 12 | 1 << 13;

/// Takes the capabilities in `bits` out of the calling thread's effective,
/// permitted and inheritable sets (and so its ambient set), which needs no
/// privilege. With `no_new_privs` set before exec, an exec cannot give them
/// back, not even to root: the kernel then bounds the new permitted set by
/// the old. Async-signal-safe: two syscalls on stack memory.
pub fn drop_capabilities(bits: u64) -> io::Result<()> {
    let words = [bits as u32, (bits >> 32) as u32];
    let mut data = thread_cap_data()?;
    // Indexes 0, 1, 2: the low words of effective, permitted, inheritable;
    // 3, 4, 5: their high words.
    // None held (a tool without privilege): no `capset`, which a confined
    // domain (SELinux `setcap`) may be refused even to lower.
    if (0..6).all(|i| data[i] & words[i / 3] == 0) {
        return Ok(());
    }
    for (i, word) in data.iter_mut().enumerate() {
        *word &= !words[i / 3];
    }
    let mut header = [CAP_VERSION_3, 0];
    // SAFETY: capset reads the header and the two structs in `data`; pid 0
    // is this thread.
    if unsafe { libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the effective capability set of the calling thread only (raw
/// `capget`/`capset` are per thread), keeping the permitted and inheritable
/// sets so the previous set can be restored. What the permitted set lacks is
/// left out (the kernel refuses it). Returns the previous set.
pub fn set_thread_effective_caps(effective: u64) -> io::Result<u64> {
    let mut data = thread_cap_data()?;
    let previous = data[0] as u64 | (data[3] as u64) << 32;
    let permitted = data[1] as u64 | (data[4] as u64) << 32;
    let effective = effective & permitted;
    data[0] = effective as u32;
    data[3] = (effective >> 32) as u32;
    let mut header = [CAP_VERSION_3, 0];
    // SAFETY: capset reads the header and the same two structs; pid 0 is
    // this thread.
    if unsafe { libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(previous)
}

/// Sets the fs uid/gid of the calling thread only (raw syscalls; they are
/// per-thread in the kernel). Returns an error when the change did not take.
pub fn set_thread_fs_ids(uid: u32, gid: u32) -> io::Result<()> {
    // Order: gid first, while we may still have the privilege to change it.
    // SAFETY: plain syscalls with integer arguments.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
    }
    // setfs*id return the previous value and never fail; read back to check.
    // SAFETY: as above; -1 is an invalid id, so these calls only query.
    let (now_uid, now_gid) = unsafe {
        (
            libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32,
            libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32,
        )
    };
    if now_uid != uid || now_gid != gid {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

/// Sets the effective uid and gid of the calling thread only (raw
/// `setresuid`/`setresgid`, per thread in the kernel; libc's wrappers change
/// every thread), the real and saved ones left as they are: what an open
/// file keeps of its opener (`f_cred`), and some permission checks, see.
/// The gid first, while a capability to change it may still be effective
/// (leaving euid 0 clears the effective set).
pub fn set_thread_effective_ids(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscalls with integer arguments; -1 leaves an id as it is.
    unsafe {
        cvt(libc::syscall(libc::SYS_setresgid, u32::MAX, gid, u32::MAX) as i32)?;
        cvt(libc::syscall(libc::SYS_setresuid, u32::MAX, uid, u32::MAX) as i32)?;
    }
    Ok(())
}

/// Whether a socket has a peer: `getpeername` into a buffer the size of any
/// address (nix 0.31's `UnixAddr` copies a reported length of 111, a
/// 108-byte path without its NUL, past its 110 bytes). Any failure but
/// `ENOTCONN` is an error.
pub fn has_peer(fd: &OwnedFd) -> io::Result<bool> {
    // SAFETY: sockaddr_storage is plain integers; all-zero is valid.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `addr`, which we
    // own, and the length into `len`.
    let r = unsafe {
        libc::getpeername(
            fd.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    match cvt(r) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `connect(fd, {AF_UNSPEC}, sizeof(sockaddr))`: dissolves a datagram
/// socket's association. nix cannot express this address.
pub fn connect_unspec(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: sockaddr is plain integers; all-zero is AF_UNSPEC.
    let addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    let len = std::mem::size_of::<libc::sockaddr>() as libc::socklen_t;
    // SAFETY: the kernel reads `len` bytes from a struct we own.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), &addr, len) })?;
    Ok(())
}

/// `listen(fd, backlog)` with the backlog as given: the kernel reads it as
/// unsigned and caps it at the socket's namespace's `somaxconn` (so -1, as
/// Rust's `UnixListener` passes, is the most allowed). nix's `Backlog`
/// takes no negative value and caps at 4096.
pub fn listen(fd: &OwnedFd, backlog: i32) -> io::Result<()> {
    // SAFETY: listen takes an fd we own and an integer.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(())
}

/// A BPF program ready to load, prepared before fork so the child does not
/// allocate.
#[derive(Debug)]
pub struct BpfProgram(Vec<libc::sock_filter>);

impl BpfProgram {
    /// From the bytes libseccomp exports (an array of `struct sock_filter`).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        const SIZE: usize = std::mem::size_of::<libc::sock_filter>();
        if bytes.is_empty()
            || !bytes.len().is_multiple_of(SIZE)
            || bytes.len() / SIZE > u16::MAX as usize
        {
            return None;
        }
        Some(Self(
            bytes
                .chunks_exact(SIZE)
                .map(|c| libc::sock_filter {
                    code: u16::from_ne_bytes([c[0], c[1]]),
                    jt: c[2],
                    jf: c[3],
                    k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
                })
                .collect(),
        ))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `fd`, close-on-exec and moved above fds 0–2 if it is one of them: for
/// fds the child uses in its hooks. A host that closed its stdio gets those
/// numbers for new fds, and the child's stdio set-up (`dup2` onto 0–2,
/// before the hooks) would replace them.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let moved = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// A close-on-exec pipe whose ends are not fds 0–2 ([`above_stdio`]).
pub fn pipe_above_stdio() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((above_stdio(r)?, above_stdio(w)?))
}

/// What the child reports to the parent once its filter is loaded: its pid
/// and the fd number of its listener, so the parent can `pidfd_getfd` it.
/// (Passing the fd with `sendmsg` would itself be a brokered call.)
pub const CHILD_REPORT_LEN: usize = 8;

/// The pipe on which the parent tells the child it has taken the listener
/// (a byte), or that it will not (the end closed without one).
#[derive(Debug, Clone, Copy)]
pub struct TakenPipe {
    pub read: RawFd,
    pub write: RawFd,
}

/// Arranges for `cmd`'s child to set `no_new_privs`, load `program` with a
/// new listener, write `[pid, listener fd]` to `report`, and once the parent
/// says on `taken` that it holds the listener, close its own before exec.
/// Its own copy kept, the child's exec (a brokered call) waited for ever
/// when the parent died before answering it: a listener still open keeps a
/// notification pending. Closed, the kernel fails it (`ENOSYS`).
///
/// `RLIMIT_NOFILE` (`nofile`) is set here, after the listener is made: set
/// before, a limit below the child's lowest free fd (cordon's own fds are
/// still open until exec) would leave no fd for the listener.
pub fn install_filter_before_exec(
    cmd: &mut Command,
    program: Arc<BpfProgram>,
    report: RawFd,
    taken: TakenPipe,
    nofile: Option<u64>,
) {
    // A failed step is reported as a setup step (see `prepare_child`): the
    // tool never ran, so it is cordon's failure (exit 125), not an exec's.
    let failed = move |step: SetupStep, e: io::Error| -> io::Error {
        let mut msg = [0u8; CHILD_REPORT_LEN];
        msg[..4].copy_from_slice(&(-(step as i32)).to_ne_bytes());
        msg[4..].copy_from_slice(&e.raw_os_error().unwrap_or(0).to_ne_bytes());
        // SAFETY: as for the report below.
        unsafe { libc::write(report, msg.as_ptr().cast(), msg.len()) };
        e
    };
    let hook = move || -> io::Result<()> {
        // Only async-signal-safe calls from here on: we are in a forked child
        // of a possibly multi-threaded parent. No allocation.
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(failed(SetupStep::Filter, io::Error::last_os_error()));
        }
        // A supervisor may have made itself non-dumpable (`cordon run` does);
        // the child inherits that until exec, and the supervisor must be able
        // to take the listener with pidfd_getfd before then.
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) } != 0 {
            return Err(failed(SetupStep::Filter, io::Error::last_os_error()));
        }
        let prog = libc::sock_fprog {
            len: program.0.len() as u16,
            filter: program.0.as_ptr() as *mut libc::sock_filter,
        };
        const NEW_LISTENER: libc::c_ulong = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
        // SAFETY: the kernel copies the program from memory that `program`
        // keeps alive; it returns a new fd (the listener) or -1.
        let mut fd = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
                &prog as *const libc::sock_fprog,
            )
        };
        if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // Kernels before 5.19 lack WAIT_KILLABLE_RECV.
            // SAFETY: as above.
            fd = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    NEW_LISTENER,
                    &prog as *const libc::sock_fprog,
                )
            };
        }
        if fd < 0 {
            return Err(failed(SetupStep::Filter, io::Error::last_os_error()));
        }
        let mut msg = [0u8; CHILD_REPORT_LEN];
        if let Some(value) = nofile {
            let lim = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            // SAFETY: setrlimit reads the struct on our stack.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
                return Err(failed(SetupStep::Rlimit, io::Error::last_os_error()));
            }
        }
        // SAFETY: getpid has no arguments and cannot fail.
        let pid = unsafe { libc::getpid() };
        msg[..4].copy_from_slice(&pid.to_ne_bytes());
        msg[4..].copy_from_slice(&(fd as i32).to_ne_bytes());
        // SAFETY: write reads CHILD_REPORT_LEN bytes from a stack buffer; a
        // pipe write this small is atomic. `report` is open: the caller keeps
        // it until `spawn` returns, and a second spawn of the `Command`
        // stops in `prepare_child`'s hook, which runs before this one.
        let n = unsafe { libc::write(report, msg.as_ptr().cast(), msg.len()) };
        if n != msg.len() as isize {
            return Err(io::Error::last_os_error());
        }
        // Our copy of the write end closed first: the parent's alone left,
        // its death or refusal reads as the end of the pipe.
        let mut byte = 0u8;
        // SAFETY: close of an fd this child inherited and nobody else here
        // uses; read of one byte into a stack variable.
        let got = unsafe {
            libc::close(taken.write);
            loop {
                let n = libc::read(taken.read, (&raw mut byte).cast(), 1);
                if n >= 0 || *libc::__errno_location() != libc::EINTR {
                    break n;
                }
            }
        };
        if got != 1 {
            // Nobody holds the listener but us: nothing would answer.
            return Err(io::Error::from_raw_os_error(libc::ECHILD));
        }
        // SAFETY: close of the listener the parent now holds a copy of.
        unsafe { libc::close(fd as i32) };
        // The exec that follows is itself brokered; it blocks until the
        // parent answers, or fails if the parent is gone.
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe syscalls (prctl, seccomp,
    // getpid, write, read, close) on memory captured before fork, and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// What the child does before its filter is loaded, prepared before fork so
/// the child only makes syscalls.
#[derive(Debug, Default)]
pub struct ChildSetup {
    /// A new session and process group: no controlling terminal to inject
    /// input into (`TIOCSTI`), and one group to signal.
    pub new_session: bool,
    /// `cgroup.procs` files to join by writing `0`.
    pub cgroup_procs: Vec<std::ffi::CString>,
    /// `(resource, value)`: soft and hard limit.
    pub rlimits: Vec<(i32, u64)>,
    /// `RLIMIT_NOFILE`, set in the filter hook after the listener is made;
    /// here only its hard limit is raised to it if it is higher (which may
    /// need privileges `--user` gives up).
    pub nofile: Option<u64>,
    /// A network namespace with only loopback.
    pub network_none: Option<NetworkNone>,
    /// An IPC namespace of its own (after the network's user namespace, if
    /// any): no SysV shared memory, semaphores or message queues, nor POSIX
    /// message queues, of processes outside the sandbox.
    pub ipc_ns: bool,
    /// `(uid, gid)` to become, from root.
    pub user: Option<(u32, u32)>,
    /// A Landlock ruleset to restrict the child with (after the user change).
    pub landlock: Option<Arc<OwnedFd>>,
}

/// How to make the network namespace: unprivileged callers first make a
/// user namespace that maps only their own ids.
#[derive(Debug)]
pub struct NetworkNone {
    pub user_ns: Option<(std::ffi::CString, std::ffi::CString)>,
}

impl NetworkNone {
    pub fn new(unprivileged: bool, uid: u32, gid: u32) -> Self {
        let map = |id: u32| std::ffi::CString::new(format!("{id} {id} 1\n")).unwrap_or_default();
        Self {
            user_ns: unprivileged.then(|| (map(uid), map(gid))),
        }
    }
}

/// Writes `data` to the file at `path` (async-signal-safe).
fn write_file(path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: open with a NUL-terminated path, write from a live slice, close
    // the fd we opened.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = if n < 0 {
            io::Error::last_os_error()
        } else {
            // A short write sets no errno.
            io::Error::from_raw_os_error(libc::EIO)
        };
        libc::close(fd);
        if n != data.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}

/// Brings `lo` up in the current network namespace.
fn loopback_up() -> io::Result<()> {
    // SAFETY: a socket we close; SIOCGIFFLAGS/SIOCSIFFLAGS read and write
    // the ifreq on our stack, which names "lo".
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        let mut ret = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req);
        if ret == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            ret = libc::ioctl(s, libc::SIOCSIFFLAGS, &req);
        }
        let err = io::Error::last_os_error();
        libc::close(s);
        if ret != 0 {
            return Err(err);
        }
    }
    Ok(())
}

/// Declares [`SetupStep`] and the list of its steps from one list of names,
/// so that a step added to the enum cannot be missing from `from_code`.
macro_rules! setup_steps {
    ($first:ident $(, $step:ident)* $(,)?) => {
        /// The steps of [`prepare_child`], reported when one fails.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(i32)]
        pub enum SetupStep {
            $first = 1,
            $($step,)*
        }

        impl SetupStep {
            const ALL: &[SetupStep] = &[SetupStep::$first, $(SetupStep::$step,)*];
        }
    };
}

setup_steps!(
    Session,
    Cgroup,
    Rlimit,
    Network,
    Ipc,
    User,
    Capabilities,
    Landlock,
    CloseRange,
    Filter,
);

impl SetupStep {
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| *s as i32 == code)
    }

    pub fn describe(self) -> &'static str {
        match self {
            SetupStep::Session => "cannot start a new session",
            SetupStep::Cgroup => "cannot join the sandbox's cgroup",
            SetupStep::Rlimit => "cannot set a resource limit",
            SetupStep::Network => "cannot make the network namespace",
            SetupStep::Ipc => "cannot make the IPC namespace",
            SetupStep::User => "cannot switch to --user",
            SetupStep::Capabilities => {
                "cannot give up the capabilities to set the clock and raise limits"
            }
            SetupStep::Landlock => "cannot apply the Landlock backstop",
            SetupStep::CloseRange => "cannot close cordon's file descriptors",
            SetupStep::Filter => "cannot install the seccomp filter",
        }
    }
}

fn apply_setup(setup: &ChildSetup, step: &mut SetupStep) -> io::Result<()> {
    *step = SetupStep::Session;
    if setup.new_session {
        // SAFETY: setsid takes no arguments.
        cvt(unsafe { libc::setsid() })?;
    }
    *step = SetupStep::Cgroup;
    for procs in &setup.cgroup_procs {
        write_file(procs, b"0")?;
    }
    *step = SetupStep::Rlimit;
    if let Some(value) = setup.nofile {
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct on our stack.
        cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) })?;
        if value > cur.rlim_max {
            cur.rlim_max = value;
            // SAFETY: setrlimit reads the struct on our stack.
            cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &cur) })?;
        }
    }
    for &(resource, value) in &setup.rlimits {
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads the struct on our stack.
        cvt(unsafe { libc::setrlimit(resource as _, &lim) })?;
    }
    *step = SetupStep::Network;
    if let Some(net) = &setup.network_none {
        if let Some((uid_map, gid_map)) = &net.user_ns {
            // A non-dumpable process (the supervisor makes itself one)
            // has root-owned /proc files: it could not write its maps.
            // The filter hook makes the child dumpable anyway.
            // SAFETY: prctl with integer arguments.
            cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) })?;
            // SAFETY: unshare with flags only.
            cvt(unsafe { libc::unshare(libc::CLONE_NEWUSER) })?;
            write_file(c"/proc/self/setgroups", b"deny")?;
            write_file(c"/proc/self/uid_map", uid_map.as_bytes())?;
            write_file(c"/proc/self/gid_map", gid_map.as_bytes())?;
        }
        // SAFETY: unshare with flags only.
        cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
        loopback_up()?;
    }
    *step = SetupStep::Ipc;
    if setup.ipc_ns {
        // SAFETY: unshare with flags only.
        cvt(unsafe { libc::unshare(libc::CLONE_NEWIPC) })?;
    }
    *step = SetupStep::User;
    if let Some((uid, gid)) = setup.user {
        // SAFETY: setgroups reads one gid from our stack; setgid and
        // setuid take integers. The gid first, while we may still.
        unsafe {
            cvt(libc::setgroups(1, &gid))?;
            cvt(libc::setgid(gid))?;
            cvt(libc::setuid(uid))?;
        }
    }
    // The host's clock is out of the tool's reach, as it is of a tool
    // without privilege: it is the audit records' time, and the change times
    // `protect` relies on. So is the network's configuration.
    *step = SetupStep::Capabilities;
    // And the limits set above (`RLIMIT_CORE` at least, from `cordon run`)
    // bind a root tool too: it could raise them again with
    // `CAP_SYS_RESOURCE` (the `RLIMIT_NOFILE` the filter hook sets only
    // lowers the hard limit raised above).
    let limited = !setup.rlimits.is_empty() || setup.nofile.is_some();
    drop_capabilities(
        CLOCK_CAPABILITY | NETWORK_CAPABILITIES | if limited { RESOURCE_CAPABILITY } else { 0 },
    )?;
    *step = SetupStep::Landlock;
    if let Some(ruleset) = &setup.landlock {
        restrict_raw(ruleset.as_raw_fd())?;
    }
    *step = SetupStep::CloseRange;
    // Nothing of cordon's reaches the tool: every inherited fd above
    // stdio closes at exec (the report pipe and listener already do).
    // SAFETY: close_range with integer arguments.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Arranges for `cmd`'s child to apply `setup` after fork, before the
/// filter hook (hooks run in the order they are added).
///
/// `spent` is set by the caller once `cmd` has been spawned: a child forked
/// after that (the same `Command` spawned again) fails with `EALREADY` before
/// any of this spawn's hooks touch the fd numbers they were given, which are
/// closed by then and may name other files.
pub fn prepare_child(
    cmd: &mut Command,
    setup: ChildSetup,
    report: RawFd,
    spent: Arc<std::sync::atomic::AtomicBool>,
) {
    let hook = move || -> io::Result<()> {
        // The child's copy of the flag is the parent's at fork time.
        if spent.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EALREADY));
        }
        // Async-signal-safe syscalls only, on memory prepared before fork.
        let mut step = SetupStep::Session;
        let result = apply_setup(&setup, &mut step);
        if let Err(e) = &result {
            // Tell the parent which step failed (a negative "pid"), so it can
            // say so rather than report an exec failure.
            let mut msg = [0u8; CHILD_REPORT_LEN];
            msg[..4].copy_from_slice(&(-(step as i32)).to_ne_bytes());
            msg[4..].copy_from_slice(&e.raw_os_error().unwrap_or(0).to_ne_bytes());
            // SAFETY: write reads CHILD_REPORT_LEN bytes from a stack buffer.
            // `report` is the write end of the report pipe, which the caller
            // (`Sandbox::spawn_planned`) keeps open until `spawn` has
            // returned; a second spawn of the `Command` stops at `spent`
            // above, before this.
            unsafe { libc::write(report, msg.as_ptr().cast(), msg.len()) };
        }
        result
    };
    // SAFETY: the hook only makes async-signal-safe syscalls (setsid, open,
    // write, close, setrlimit, unshare, socket, ioctl, setgroups, setgid,
    // setuid, capget, capset, prctl, landlock_restrict_self, close_range) on data built
    // before fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(hook);
    }
}

// --- Landlock (not wrapped by libc or nix) ---------------------------------

/// `struct landlock_ruleset_attr` (with `scoped`: zero is ignored as
/// trailing zeros by kernels that predate it).
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

/// `struct landlock_path_beneath_attr`, packed.
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// `struct landlock_net_port_attr`.
#[repr(C)]
struct NetPortAttr {
    allowed_access: u64,
    port: u64,
}

const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const LANDLOCK_RULE_PATH_BENEATH: i32 = 1;
const LANDLOCK_RULE_NET_PORT: i32 = 2;

/// The Landlock ABI version the kernel supports (0: none).
pub fn landlock_abi() -> i32 {
    // SAFETY: the version query takes a null attribute and size 0.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    v.max(0) as i32
}

/// A new ruleset handling these rights and scoping these IPCs (`scoped`:
/// Landlock ABI 6 on; 0 before).
pub fn landlock_ruleset(handled_fs: u64, handled_net: u64, scoped: u64) -> io::Result<OwnedFd> {
    let attr = RulesetAttr {
        handled_access_fs: handled_fs,
        handled_access_net: handled_net,
        scoped,
    };
    // SAFETY: the kernel reads `size_of` bytes of `attr`; it returns a new
    // fd (close-on-exec) or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // The child restricts itself with it in a hook, after its stdio set-up.
    above_stdio(ruleset)
}

/// Allows `access` beneath the file or directory `parent`.
pub fn landlock_allow_path(ruleset: &OwnedFd, parent: &OwnedFd, access: u64) -> io::Result<()> {
    let attr = PathBeneathAttr {
        allowed_access: access,
        parent_fd: parent.as_raw_fd(),
    };
    // SAFETY: the kernel reads the packed attribute from our stack.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            LANDLOCK_RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Allows `access` (bind/connect) on TCP `port`.
pub fn landlock_allow_port(ruleset: &OwnedFd, port: u16, access: u64) -> io::Result<()> {
    let attr = NetPortAttr {
        allowed_access: access,
        port: port.into(),
    };
    // SAFETY: the kernel reads the attribute from our stack.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            LANDLOCK_RULE_NET_PORT,
            &attr as *const NetPortAttr,
            0u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Restricts the calling thread (Landlock domains are per thread) with
/// `ruleset`, setting the thread's `no_new_privs` first as Landlock requires
/// of unprivileged callers.
pub fn landlock_restrict_thread(ruleset: &OwnedFd) -> io::Result<()> {
    restrict_raw(ruleset.as_raw_fd())
}

/// The body of [`landlock_restrict_thread`], async-signal-safe for the child.
fn restrict_raw(ruleset: RawFd) -> io::Result<()> {
    // SAFETY: prctl and landlock_restrict_self take integers.
    unsafe {
        cvt(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        if libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Restores the default SIGPIPE disposition (Rust starts with it ignored).
pub fn default_sigpipe() {
    // SAFETY: signal with a constant disposition, no handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Sends `sig` to the process group `pgid`.
pub fn kill_group(pgid: i32, sig: i32) {
    // SAFETY: kill with integers; a negative pid names a process group.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// The process that termination signals are relayed to (0: none).
static RELAY_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
/// The tool leads its own process group (and session): relay to the group,
/// terminal signals included, since the terminal no longer reaches it.
static RELAY_GROUP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Signals (a bit each) that came before the tool's pid was known (while it
/// was being started): relayed once it is, each of them.
static PENDING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// When each signal was first kept (`CLOCK_MONOTONIC`, ns).
static HELD_AT: [std::sync::atomic::AtomicU64; 64] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 64];
/// The process that called [`hold_signals`].
static HOLDER: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
/// The child being started (0: none yet), killed with its group if a start
/// is given up.
static STARTING: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
/// A signal again within this of its first is the same request (GNU
/// `timeout` sends SIGTERM to its child, then to its whole group).
const GIVE_UP_AFTER_NS: u64 = 1_000_000_000;

/// The child being started, for [`hold_signals`]: a start given up kills it.
pub fn starting(pid: i32) {
    STARTING.store(pid, std::sync::atomic::Ordering::Relaxed);
}

/// A directory a start given up removes if it is empty (leaked: read by the
/// signal handler, so never freed).
static GIVE_UP_RMDIR: std::sync::atomic::AtomicPtr<libc::c_char> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// See [`GIVE_UP_RMDIR`]. A path with a NUL byte is not kept.
pub fn rmdir_if_start_given_up(dir: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) {
        GIVE_UP_RMDIR.store(c.into_raw(), std::sync::atomic::Ordering::SeqCst);
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime (async-signal-safe) writes the struct on our stack.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

extern "C" fn relay(sig: libc::c_int) {
    let pid = RELAY_TO.load(std::sync::atomic::Ordering::Relaxed);
    let group = RELAY_GROUP.load(std::sync::atomic::Ordering::Relaxed);
    if pid == 0 {
        if (1..64).contains(&sig) {
            // The first time taken in one step: two deliveries of the same
            // signal (GNU `timeout` sends two) may run this on two threads
            // at once, and neither may see a time not yet stored.
            let now = monotonic_ns().max(1);
            let first = HELD_AT[sig as usize].compare_exchange(
                0,
                now,
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
            );
            PENDING.fetch_or(1 << sig, std::sync::atomic::Ordering::SeqCst);
            // SAFETY: getpid is async-signal-safe and cannot fail.
            let me = unsafe { libc::getpid() };
            // Only in the process that held them: a child being started
            // has this handler too until its exec.
            if let Err(at) = first
                && now.saturating_sub(at) >= GIVE_UP_AFTER_NS
                && me == HOLDER.load(std::sync::atomic::Ordering::Relaxed)
            {
                give_up_start(sig);
            }
        }
        return;
    }
    if pid > 0 && group {
        // SAFETY: as below; a negative pid names the tool's process group.
        unsafe {
            let saved = *libc::__errno_location();
            libc::kill(-pid, sig);
            *libc::__errno_location() = saved;
        }
    } else if pid > 0 && (sig == libc::SIGTERM || sig == libc::SIGHUP) {
        // SAFETY: __errno_location returns this thread's errno slot, valid
        // for the thread's life; kill is async-signal-safe and takes
        // integers. errno is restored so the interrupted code reads its own.
        unsafe {
            let saved = *libc::__errno_location();
            libc::kill(pid, sig);
            *libc::__errno_location() = saved;
        }
    }
    // SIGINT and SIGQUIT come from the terminal, which sends them to the tool
    // as well: the supervisor survives them and lets the tool decide.
}

/// The same signal again, a second or more after the first, while the start
/// has not ended (a store that does not open, a hung file system): the user
/// means it. The child and its group are killed (not reaped, its pid is
/// still its own); had it not run yet, its pending exec fails anyway (it
/// closed its copy of the listener: `install_filter_before_exec`), and
/// anything else finds no supervisor (`ENOSYS`).
fn give_up_start(sig: libc::c_int) -> ! {
    const SAID: &[u8] = b"cordon: stopped by a second signal while the tool was \
        being started; audit records not yet written are lost\n";
    let child = STARTING.load(std::sync::atomic::Ordering::Relaxed);
    let dir = GIVE_UP_RMDIR.load(std::sync::atomic::Ordering::SeqCst);
    // SAFETY: kill, rmdir, write and _exit are async-signal-safe and take
    // integers, a static buffer and a NUL-terminated string that is never
    // freed; a negative pid names the child's process group.
    unsafe {
        if child > 0 {
            libc::kill(-child, libc::SIGKILL);
            libc::kill(child, libc::SIGKILL);
        }
        if !dir.is_null() {
            libc::rmdir(dir);
        }
        libc::write(2, SAID.as_ptr().cast(), SAID.len());
        libc::_exit(128 + sig)
    }
}

/// Stops relaying (the tool was reaped: its pid may be reused).
pub fn stop_relaying() {
    // Not 0, which means "not started yet": a signal now is not kept.
    RELAY_TO.store(-1, std::sync::atomic::Ordering::Relaxed);
}

/// Keeps the supervisor alive through terminal and termination signals while
/// the tool runs, relaying SIGTERM and SIGHUP to it. Handlers (unlike
/// ignored dispositions) are reset by exec, so the tool starts with defaults.
pub fn relay_signals_to(pid: i32, group: bool) -> io::Result<()> {
    RELAY_GROUP.store(group, std::sync::atomic::Ordering::Relaxed);
    RELAY_TO.store(pid, std::sync::atomic::Ordering::Relaxed);
    install_relay()?;
    // Those that came while the tool was being started go to it now.
    let pending = PENDING.swap(0, std::sync::atomic::Ordering::Relaxed);
    forget_held();
    for sig in 1..64 {
        if pending & (1 << sig) != 0 {
            relay(sig);
        }
    }
    Ok(())
}

/// Catches the signals that [`relay_signals_to`] relays before there is a
/// tool to relay them to: one that comes while the tool is being started is
/// kept and relayed once it runs, instead of killing cordon then and leaving
/// the tool unsupervised; the same one again a second or more later gives
/// the start up ([`give_up_start`]).
pub fn hold_signals() -> io::Result<()> {
    // None kept from an earlier start (one that failed) reaches this tool.
    forget_held();
    HOLDER.store(
        std::process::id() as i32,
        std::sync::atomic::Ordering::Relaxed,
    );
    RELAY_TO.store(0, std::sync::atomic::Ordering::Relaxed);
    install_relay()
}

/// No signal kept, no start to give up: before a start, and once it ended
/// (its child relayed to, or reaped by a failed spawn: its pid may be
/// another's).
pub fn forget_held() {
    PENDING.store(0, std::sync::atomic::Ordering::SeqCst);
    for at in &HELD_AT {
        at.store(0, std::sync::atomic::Ordering::SeqCst);
    }
    STARTING.store(0, std::sync::atomic::Ordering::SeqCst);
}

fn install_relay() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: sigaction is all-integer plus a handler that only uses
        // atomics and calls kill, getpid, clock_gettime and (giving a start
        // up) rmdir, write and _exit, all async-signal-safe.
        let ret = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = relay as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        cvt(ret)?;
    }
    Ok(())
}

/// The signal that interrupts a helper thread's blocking call
/// (`interrupt.rs`): one glibc leaves to programs, near the top of the
/// real-time range, which programs take from the bottom.
pub fn interrupt_signal() -> i32 {
    libc::SIGRTMAX() - 1
}

extern "C" fn interrupted(_sig: libc::c_int) {}

/// Installs a handler that does nothing for [`interrupt_signal`], without
/// `SA_RESTART`, so that the signal ends a blocking call of the thread it
/// is sent to with `EINTR` (or a partial count). Not if the process already
/// has a disposition of its own for it (a library host's): `Ok(false)`.
pub fn install_interrupt_handler() -> io::Result<bool> {
    let sig = interrupt_signal();
    // SAFETY: sigaction with a zeroed struct to read into, then a handler
    // that does nothing (async-signal-safe by construction). The check and
    // the install are not atomic: a host installing its own handler for
    // this signal at the same moment is not defended against.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        cvt(libc::sigaction(sig, std::ptr::null(), &mut old))?;
        let ours = interrupted as extern "C" fn(libc::c_int) as usize;
        if old.sa_sigaction == ours {
            return Ok(true);
        }
        if old.sa_sigaction != libc::SIG_DFL {
            return Ok(false);
        }
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ours;
        sa.sa_flags = 0;
        libc::sigemptyset(&mut sa.sa_mask);
        cvt(libc::sigaction(sig, &sa, std::ptr::null_mut()))?;
    }
    Ok(true)
}

/// Lets [`interrupt_signal`] reach the calling thread (threads inherit the
/// mask of their creator, which may block everything).
pub fn unblock_interrupt_signal() -> io::Result<()> {
    interrupt_signal_mask(libc::SIG_UNBLOCK)
}

/// Keeps [`interrupt_signal`] from the calling thread again.
pub fn block_interrupt_signal() -> io::Result<()> {
    interrupt_signal_mask(libc::SIG_BLOCK)
}

fn interrupt_signal_mask(how: libc::c_int) -> io::Result<()> {
    // SAFETY: a sigset_t built with sigemptyset/sigaddset on the stack and
    // passed by pointer to pthread_sigmask, which changes this thread only.
    let ret = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, interrupt_signal());
        libc::pthread_sigmask(how, &set, std::ptr::null_mut())
    };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

/// The calling thread, for [`interrupt_thread`].
pub fn this_thread() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() }
}

/// Sends [`interrupt_signal`] to `thread`, which must still be running: the
/// caller knows it is (it is registered, and unregisters before it ends).
pub fn interrupt_thread(thread: libc::pthread_t) -> io::Result<()> {
    // SAFETY: `thread` names a live thread of this process (the caller's
    // contract above); pthread_kill takes it and an integer.
    let ret = unsafe { libc::pthread_kill(thread, interrupt_signal()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

/// For tests of reads from memory: one readable, writable page followed by
/// one that cannot be read (a string that runs past the first cannot be
/// read across). Unmapped on drop.
#[cfg(test)]
pub struct GuardedPage {
    base: *mut u8,
    page: usize,
}

#[cfg(test)]
impl GuardedPage {
    pub fn new() -> io::Result<Self> {
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a fresh anonymous private mapping of two pages, at an
        // address the kernel picks; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let guarded = GuardedPage {
            base: base.cast(),
            page,
        };
        // SAFETY: the second page of the mapping made above.
        cvt(unsafe { libc::mprotect(base.cast::<u8>().add(page).cast(), page, libc::PROT_NONE) })?;
        Ok(guarded)
    }

    pub fn len(&self) -> usize {
        self.page
    }

    /// The readable page.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the first page of our mapping is readable and writable and
        // only reachable through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.page) }
    }
}

#[cfg(test)]
impl Drop for GuardedPage {
    fn drop(&mut self) {
        // SAFETY: the whole mapping made in `new`; no slice of it outlives
        // `&mut self`.
        unsafe { libc::munmap(self.base.cast(), 2 * self.page) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ends a test's forked child with `code`, never returning into the
    /// harness.
    fn exit_child(code: i32) -> ! {
        // SAFETY: _exit takes an integer and never returns.
        unsafe { libc::_exit(code) }
    }

    /// Waits for a test's forked child, which must have exited 0.
    fn assert_child_exited_0(pid: libc::pid_t) {
        let mut status = 0;
        // SAFETY: waits for our own child, writing its status on our stack.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "{status}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "the child's exit code");
    }

    /// What the kernel says a link holds: as std reads it, a link that
    /// fills the buffer read whole all the same (a 16-byte buffer here,
    /// which a symlink can overfill), an error where there is no link.
    #[test]
    fn readlinkat_reads_links_as_std_does_a_longer_one_than_its_buffer_too() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(tmp.path()).unwrap();
        let dir = std::os::fd::AsFd::as_fd(&dir);
        let targets = [
            ("short", "/etc/hosts".to_string()),
            ("just_under", "a".repeat(15)),
            ("filling", "b".repeat(16)),
            ("over", "c/".repeat(200)),
        ];
        for (name, target) in &targets {
            std::os::unix::fs::symlink(target, tmp.path().join(name)).unwrap();
            let std_read = std::fs::read_link(tmp.path().join(name)).unwrap();
            assert_eq!(std_read.as_os_str().as_encoded_bytes(), target.as_bytes());
            assert_eq!(readlinkat(dir, *name).unwrap(), target.as_bytes(), "{name}");
            assert_eq!(
                readlinkat_within::<16, _>(dir, *name).unwrap(),
                target.as_bytes(),
                "{name}, 16-byte buffer"
            );
        }
        std::fs::write(tmp.path().join("file"), "").unwrap();
        assert_eq!(readlinkat(dir, "file"), Err(nix::errno::Errno::EINVAL));
        assert_eq!(readlinkat(dir, "missing"), Err(nix::errno::Errno::ENOENT));
        // A /proc link, as the supervisor reads them.
        let fd_dir = std::fs::File::open("/proc/self/fd").unwrap();
        let this = std::fs::File::open(tmp.path().join("file")).unwrap();
        let fd = this.as_raw_fd().to_string();
        let read = readlinkat(std::os::fd::AsFd::as_fd(&fd_dir), fd.as_str()).unwrap();
        let path = std::fs::canonicalize(tmp.path().join("file")).unwrap();
        assert_eq!(read, path.as_os_str().as_encoded_bytes());
    }

    #[test]
    fn every_setup_step_is_read_back_from_its_code() {
        for &step in SetupStep::ALL {
            assert_eq!(SetupStep::from_code(step as i32), Some(step));
        }
        assert_eq!(SetupStep::from_code(0), None);
        assert_eq!(SetupStep::from_code(SetupStep::ALL.len() as i32 + 1), None);
        assert_eq!(
            SetupStep::from_code(SetupStep::Filter as i32),
            Some(SetupStep::Filter)
        );
    }

    /// The capabilities asked for leave the effective, permitted and
    /// inheritable sets, in both words (`CAP_CHECKPOINT_RESTORE`, 40, is in
    /// the high one), and nothing else does. On a thread of its own:
    /// capabilities are per thread, and these do not come back.
    #[test]
    fn dropped_capabilities_leave_every_set_in_both_words() {
        const CHECKPOINT_RESTORE: u64 = 1 << 40;
        let before = thread_cap_data().unwrap();
        let held = |data: [u32; 6], set: usize| data[set] as u64 | (data[set + 3] as u64) << 32;
        let bits = CLOCK_CAPABILITY | RESOURCE_CAPABILITY | CHECKPOINT_RESTORE;
        if held(before, 1) & (CLOCK_CAPABILITY | CHECKPOINT_RESTORE)
            != CLOCK_CAPABILITY | CHECKPOINT_RESTORE
        {
            eprintln!("skipped: needs CAP_SYS_TIME and CAP_CHECKPOINT_RESTORE to drop");
            return;
        }
        let after = std::thread::spawn(move || {
            drop_capabilities(bits).unwrap();
            thread_cap_data().unwrap()
        })
        .join()
        .unwrap();
        for set in 0..3 {
            assert_eq!(held(after, set), held(before, set) & !bits, "set {set}");
        }
        assert_eq!(thread_cap_data().unwrap(), before, "another thread's");
    }

    /// A host that closed its stdio gets pipe ends, and a Landlock ruleset,
    /// above it: in a forked child (closing fds 0–2 here would race the
    /// other tests' opens), which exits 0 only if both ends are above 2, the
    /// low numbers they were moved from are free again, and a ruleset (where
    /// the kernel has Landlock) is above 2 too.
    #[test]
    fn the_childs_fds_are_above_stdio_when_it_is_closed() {
        // SAFETY: the child only makes system calls (close, pipe2, fcntl,
        // _exit) and allocates nothing on these paths.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: closes of this child's own stdio.
            unsafe {
                libc::close(0);
                libc::close(1);
                libc::close(2);
            }
            let code = match pipe_above_stdio() {
                Ok((r, w)) if r.as_raw_fd() > 2 && w.as_raw_fd() > 2 => {
                    // The numbers freed by the move are free again.
                    let mut fds = [0; 2];
                    // SAFETY: pipe2 writes two ints into a stack array.
                    let again = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
                    // Fds 0 and 1 taken again: the ruleset would get 2.
                    // LANDLOCK_ACCESS_FS_EXECUTE (1 << 0) handled.
                    match landlock_ruleset(1, 0, 0) {
                        _ if again != 0 || fds[0] != 0 => 2,
                        Ok(ruleset) if ruleset.as_raw_fd() > 2 => 0,
                        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => 0,
                        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => 0,
                        _ => 3,
                    }
                }
                _ => 1,
            };
            exit_child(code);
        }
        assert_child_exited_0(pid);
    }

    /// How a test makes a child that does not share its memory.
    #[derive(Clone, Copy)]
    enum Child {
        /// glibc's `fork`, which runs `pthread_atfork` handlers.
        Fork,
        /// A raw `clone(SIGCHLD)`, which runs none.
        RawClone,
    }

    /// In a child made `how` after this process kept its `/proc/self/fd`:
    /// its own incarnation, and `fd_path` naming a pipe made in the child
    /// alone as that pipe (by its inode), which the parent's table, under
    /// the same number, never holds. With the parent's fd kept, the child's
    /// `own_fd_dir` would hand it back (exit 5), or `fd_path` would name
    /// another file or none (exit 6). A lock another test holds at the fork
    /// leaves the child on the path through `/proc/self` (no kept fd to
    /// compare), which names its own pipe as well: in such a run the test
    /// passes whatever the incarnation says.
    fn child_reads_its_own_fds(how: Child) {
        // Kept here first (another test may hold the lock a moment).
        let kept = (0..1000)
            .find_map(|_| {
                crate::resolve::own_fd_dir().or_else(|| {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    None
                })
            })
            .expect("this process's fd dir");
        let before = incarnation().expect("MADV_WIPEONFORK (Linux 4.14)");
        let pid = match how {
            // SAFETY: the child makes system calls, reads atomics, and
            // allocates (glibc's fork leaves malloc usable in the child);
            // it ends with _exit, never returning into the test harness.
            Child::Fork => unsafe { libc::fork() },
            // SAFETY: as a fork without glibc's handlers (no new stack, no
            // shared memory): the child runs on a copy of this thread. Its
            // allocations are safe only with no other thread: the caller
            // runs in a test process of its own, alone.
            Child::RawClone => unsafe {
                libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) as i32
            },
        };
        assert!(pid >= 0);
        if pid == 0 {
            let code = (|| {
                if incarnation().is_none_or(|n| n == before) {
                    return 1;
                }
                let Ok((r, _w)) = nix::unistd::pipe() else {
                    return 2;
                };
                let Ok(st) = nix::sys::stat::fstat(&r) else {
                    return 3;
                };
                if crate::resolve::own_fd_dir().is_some_and(|d| d.as_raw_fd() == kept.as_raw_fd()) {
                    return 5;
                }
                let pipe = format!("pipe:[{}]", st.st_ino).into_bytes();
                match crate::resolve::fd_path(&r) {
                    Some(name) if name == pipe => 0,
                    _ => 6,
                }
            })();
            exit_child(code);
        }
        assert_child_exited_0(pid);
        assert_eq!(incarnation(), Some(before), "the parent's own");
    }

    #[test]
    fn a_forked_child_reads_its_own_fds_not_its_parents() {
        child_reads_its_own_fds(Child::Fork);
    }

    /// The same for a child of a raw `clone`, which no fork handler sees;
    /// in a process of its own (this test binary again, running only this
    /// test), alone in it, so that the child may allocate.
    #[test]
    fn a_raw_clones_child_reads_its_own_fds_not_its_parents() {
        const CHILD: &str = "CORDON_TEST_RAW_CLONE_CHILD";
        const NAME: &str = "sys::tests::a_raw_clones_child_reads_its_own_fds_not_its_parents";
        if std::env::var_os(CHILD).is_some() {
            child_reads_its_own_fds(Child::RawClone);
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", NAME, "--test-threads=1", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .expect("test binary");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }

    /// A SIGTERM that comes while the tool is being started (after
    /// `hold_signals`, before its pid is known) neither ends this process
    /// nor is lost: the tool gets it once the relay knows it.
    #[test]
    fn a_signal_while_the_tool_starts_is_relayed_once_it_runs() {
        hold_signals().unwrap();
        // SIGHUP then SIGTERM: both kept (the tool gets both; either ends
        // `sleep`, and it reports the one that came first).
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
        assert_eq!(
            PENDING.load(std::sync::atomic::Ordering::Relaxed),
            (1 << libc::SIGHUP) | (1 << libc::SIGTERM)
        );
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        relay_signals_to(child.id() as i32, false).unwrap();
        let status = child.wait().unwrap();
        stop_relaying();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGHUP)
        );
    }
}
