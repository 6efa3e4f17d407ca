//! The connector process: the tool's allowed unix-socket connects are made
//! here, not in the supervisor.
//!
//! Why a process of its own: the kernel records who connected a unix socket
//! (`SO_PEERCRED`, `SO_PEERPIDFD`), and a broker refuses a peer any of whose
//! threads runs under a seccomp filter. Made by the supervisor, the tool's
//! connect would carry the supervisor's identity (no filter) and reach any
//! `cordon serve` a policy lets it connect to. The connector runs under a
//! filter of its own (only the calls below), so what it connects is
//! refused by every broker, whatever path the socket has.
//!
//! It is forked (raw `clone`, with a pidfd) from a thread that blocks every
//! signal and lives as long as the supervisor's pool of connectors; the
//! connector dies with that thread (`PR_SET_PDEATHSIG`), and leaves its loop
//! when its channel closes. After the fork it makes raw syscalls only, on
//! memory allocated before it: the parent may be multi-threaded.
//!
//! One request at a time over a `SOCK_SEQPACKET` pair: a header (see
//! [`HEADER`]), the tool's groups, the sockaddr; the socket (and the fd a
//! path names) as `SCM_RIGHTS`. The answer is 8 bytes: the connect's errno
//! (0 for success), then 1 if the connector retires (it could not restore
//! its own credentials and exits), else 0.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use nix::sys::socket::{self, ControlMessage, MsgFlags};

use super::{BpfProgram, set_thread_effective_caps, set_thread_fs_ids, set_thread_groups};

/// The channel's fd number in the connector; nothing else is open there
/// between requests.
const CHANNEL: RawFd = 0;
/// Where a request's socket lands in the connector (the lowest free fd).
const SOCKET_SLOT: RawFd = 1;
/// Where the fd a unix path names lands (the next): the parent writes the
/// sockaddr as `/proc/self/fd/2[/name]`.
pub const PATH_SLOT: RawFd = 2;

/// Most supplementary groups a request carries (a tool with more is denied).
pub const MAX_GROUPS: usize = 4096;
/// `sizeof(struct sockaddr_un)`.
const MAX_ADDR: usize = std::mem::size_of::<libc::sockaddr_un>();
/// The request's header, native-endian: fs uid (0..4), fs gid (4..8),
/// effective capabilities (8..16), number of groups (16..20), sockaddr
/// length (20..24), flags (24..28: [`HAS_PATH_FD`]), effective uid (28..32)
/// and gid (32..36).
const HEADER: usize = 36;
const MESSAGE: usize = HEADER + MAX_GROUPS * 4 + MAX_ADDR;
/// The most groups the connector can restore (the kernel's NGROUPS_MAX).
const OWN_GROUPS: usize = 65536;

const HAS_PATH_FD: u32 = 1;

/// The tool's credentials for a connect. The connector switches to those
/// that differ from its own (as `with_creds` does), and lowers its effective
/// capabilities to those both have.
#[derive(Debug, Clone, Copy)]
pub struct As<'a> {
    pub euid: u32,
    pub egid: u32,
    pub fsuid: u32,
    pub fsgid: u32,
    pub groups: &'a [u32],
    pub cap_eff: u64,
}

/// How a request went: the connect's errno (or none), and whether the
/// connector is to be retired (it could not restore its own state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub result: Result<(), i32>,
    pub retired: bool,
}

/// A request that failed in the connector itself.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Not sent: nothing was done (a connector that died while idle).
    #[error("the request could not be sent to the connector: {0}")]
    NotSent(io::Error),
    /// Sent, and no answer: the connect may or may not have been made.
    #[error("the connector did not answer: {0}")]
    Lost(io::Error),
    /// The wait for the answer was interrupted (`interrupt::while_blocked`):
    /// the connector may still be connecting.
    #[error("interrupted while the connector was connecting")]
    Interrupted,
}

/// A running connector; killed and reaped when dropped.
#[derive(Debug)]
pub struct Connector {
    pid: i32,
    pidfd: OwnedFd,
    channel: OwnedFd,
}

impl Connector {
    /// Forks a connector that loads `program` (which must allow the calls of
    /// [`serve`]) and waits until it has. The calling thread must block every
    /// signal (the connector starts with its mask) and outlive the connector.
    /// `forked(pid, true)` is called as soon as it exists, `forked(pid,
    /// false)` once a connector that failed to start is reaped.
    pub fn spawn(program: &BpfProgram, forked: &dyn Fn(i32, bool)) -> io::Result<Connector> {
        let (ours, theirs) = socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::SeqPacket,
            None,
            socket::SockFlag::SOCK_CLOEXEC,
        )?;
        // Everything the connector uses, allocated before the fork.
        let mut message = vec![0u8; MESSAGE];
        let mut own_groups = vec![0 as libc::gid_t; OWN_GROUPS];
        let prog = libc::sock_fprog {
            len: program.0.len() as u16,
            filter: program.0.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: getpid has no arguments and cannot fail.
        let parent = unsafe { libc::getpid() };
        let mut pidfd: libc::c_int = -1;
        // SAFETY: a fork (no new stack: the child runs on a copy of ours),
        // with the new process's pidfd written to `pidfd`. The child runs
        // `serve`, which never returns and makes raw syscalls only.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_PIDFD | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                &mut pidfd as *mut libc::c_int,
                0usize,
                0usize,
            )
        };
        if pid == 0 {
            serve(
                theirs.as_raw_fd(),
                parent,
                &prog,
                &mut message,
                &mut own_groups,
            );
        }
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        drop(theirs);
        forked(pid as i32, true);
        // SAFETY: the kernel wrote a new fd there for us (CLONE_PIDFD).
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        let connector = Connector {
            pid: pid as i32,
            pidfd,
            channel: ours,
        };
        // One byte once its filter is loaded; none (EOF) if it failed.
        let mut ready = [0u8; 1];
        let started =
            match socket::recv(connector.channel.as_raw_fd(), &mut ready, MsgFlags::empty()) {
                Ok(1) if ready[0] == b'R' => Ok(()),
                Ok(_) => Err(io::Error::other("the connector failed to start")),
                Err(e) => Err(e.into()),
            };
        match started {
            Ok(()) => Ok(connector),
            Err(e) => {
                drop(connector); // killed and reaped
                forked(pid as i32, false);
                Err(e)
            }
        }
    }

    /// Its pid (the supervisor keeps the tool from its `/proc` entries and
    /// from signalling it, as it does for itself).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Connects `sock` to the sockaddr `addr` (raw `sockaddr_un` bytes) as
    /// `creds` say. The error is the connector's (it died, or the request
    /// could not be sent or answered).
    pub fn connect(
        &self,
        sock: &OwnedFd,
        path: Option<&OwnedFd>,
        addr: &[u8],
        creds: As<'_>,
    ) -> Result<Answer, ConnectError> {
        let refuse = |e| {
            Ok(Answer {
                result: Err(e),
                retired: false,
            })
        };
        if creds.groups.len() > MAX_GROUPS {
            return refuse(libc::EACCES);
        }
        if addr.len() > MAX_ADDR {
            return refuse(libc::EINVAL);
        }
        let flags = if path.is_some() { HAS_PATH_FD } else { 0 };
        let mut msg = Vec::with_capacity(HEADER + creds.groups.len() * 4 + addr.len());
        msg.extend_from_slice(&creds.fsuid.to_ne_bytes());
        msg.extend_from_slice(&creds.fsgid.to_ne_bytes());
        msg.extend_from_slice(&creds.cap_eff.to_ne_bytes());
        msg.extend_from_slice(&(creds.groups.len() as u32).to_ne_bytes());
        msg.extend_from_slice(&(addr.len() as u32).to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&creds.euid.to_ne_bytes());
        msg.extend_from_slice(&creds.egid.to_ne_bytes());
        for g in creds.groups {
            msg.extend_from_slice(&g.to_ne_bytes());
        }
        msg.extend_from_slice(addr);
        let fds: Vec<RawFd> = std::iter::once(sock.as_raw_fd())
            .chain(path.map(|p| p.as_raw_fd()))
            .collect();
        let iov = [io::IoSlice::new(&msg)];
        socket::sendmsg::<()>(
            self.channel.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| match e {
            // (Not sent: nothing was connected, which the caller finds.)
            nix::errno::Errno::EINTR => ConnectError::Interrupted,
            e => ConnectError::NotSent(e.into()),
        })?;
        let mut answer = [0u8; 8];
        let received = match socket::recv(self.channel.as_raw_fd(), &mut answer, MsgFlags::empty())
        {
            // An answer that came just before the interrupt is the answer
            // (a refusal the tool must see); none yet: interrupted.
            Err(nix::errno::Errno::EINTR) => socket::recv(
                self.channel.as_raw_fd(),
                &mut answer,
                MsgFlags::MSG_DONTWAIT,
            )
            .map_err(|_| ConnectError::Interrupted),
            other => other.map_err(|e| ConnectError::Lost(e.into())),
        };
        match received? {
            8 => Ok(Answer {
                result: match i32::from_ne_bytes(answer[..4].try_into().expect("4")) {
                    0 => Ok(()),
                    e => Err(e),
                },
                retired: answer[4] != 0,
            }),
            _ => Err(ConnectError::Lost(io::Error::other("it died"))),
        }
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        // Killed even when busy (a blocked connect): its answer is not
        // awaited any more. Reaped through the pidfd (a subreaper's sweep
        // may have reaped it already: ECHILD).
        // A helper's interrupt signal may come again meanwhile: waited for
        // whatever it ends.
        let _ = super::pidfd_kill(&self.pidfd, libc::SIGKILL);
        while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitid(
            nix::sys::wait::Id::PIDFd(std::os::fd::AsFd::as_fd(&self.pidfd)),
            nix::sys::wait::WaitPidFlag::WEXITED,
        ) {}
    }
}

fn exit(code: i32) -> ! {
    // SAFETY: ends this process; nothing of ours needs unwinding.
    unsafe { libc::syscall(libc::SYS_exit_group, code) };
    unreachable!("exit_group returned")
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The connector's whole life. Raw syscalls on memory allocated before the
/// fork; no allocation, no lock, no panic path in normal operation.
fn serve(
    channel: RawFd,
    parent: libc::pid_t,
    prog: &libc::sock_fprog,
    message: &mut [u8],
    own_groups: &mut [libc::gid_t],
) -> ! {
    let (n_own, own) = set_up(channel, parent, prog, own_groups);
    let own_groups = &own_groups[..n_own];
    // SAFETY: write reads one byte of a constant.
    if unsafe { libc::write(CHANNEL, b"R".as_ptr().cast(), 1) } != 1 {
        exit(1);
    }
    loop {
        let mut control = [0u64; 4]; // CMSG_SPACE for two fds, aligned
        let mut iov = libc::iovec {
            iov_base: message.as_mut_ptr().cast(),
            iov_len: message.len(),
        };
        // SAFETY: msghdr is plain data; all-zero is a valid empty one.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: recvmsg writes into `message` and `control`, both ours and
        // described by their lengths.
        let n = unsafe { libc::recvmsg(CHANNEL, &mut hdr, libc::MSG_CMSG_CLOEXEC) };
        if n == 0 {
            exit(0); // the supervisor closed the channel, or died
        }
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            exit(1);
        }
        let result = one_request(&message[..n as usize], &hdr, own, own_groups);
        // SAFETY: closing the slots (whatever the request left there).
        unsafe {
            libc::close(SOCKET_SLOT);
            libc::close(PATH_SLOT);
        }
        let (errno, go_on) = match result {
            Ok(()) => (0, true),
            Err((e, go_on)) => (e, go_on),
        };
        // Again after every request: a change of fs ids clears the death
        // signal and resets dumpability (kernel `commit_creds`).
        let go_on = go_on && guard(parent);
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&errno.to_ne_bytes());
        bytes[4] = u8::from(!go_on);
        // SAFETY: write reads eight bytes from the stack.
        if unsafe { libc::write(CHANNEL, bytes.as_ptr().cast(), 8) } != 8 || !go_on {
            exit(1);
        }
    }
}

/// The connector's own credentials, restored after each request.
#[derive(Debug, Clone, Copy)]
struct Own {
    euid: u32,
    egid: u32,
    fsuid: u32,
    fsgid: u32,
    caps: u64,
}

/// `setresuid(-1, euid, -1)` or, with `SYS_setresgid`, the gid: the calling
/// thread's effective id alone (the real and saved stay, so one can go back).
fn set_effective(call: libc::c_long, id: u32) -> bool {
    // SAFETY: integer arguments; -1 leaves an id as it is.
    unsafe { libc::syscall(call, u32::MAX, id, u32::MAX) == 0 }
}

/// The effective uid (`SYS_getresuid`) or gid (`SYS_getresgid`).
fn effective(call: libc::c_long) -> u32 {
    let (mut r, mut e, mut saved) = (0u32, 0u32, 0u32);
    // SAFETY: the kernel writes three ids into our variables.
    if unsafe { libc::syscall(call, &mut r, &mut e, &mut saved) } < 0 {
        exit(1);
    }
    e
}

/// Dies with the thread that forked it, and is not dumpable (the tool
/// reaches neither its memory nor its `/proc` files, which hold the
/// supervisor's). False if that thread is gone already: no signal would
/// come.
fn guard(parent: libc::pid_t) -> bool {
    // Raw, with every argument a full word: the filter compares them.
    let prctl = |option: libc::c_int, value: libc::c_ulong| {
        // SAFETY: prctl with integer arguments.
        unsafe {
            libc::syscall(
                libc::SYS_prctl,
                option as libc::c_ulong,
                value,
                0u64,
                0u64,
                0u64,
            )
        }
    };
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == 0
        // SAFETY: getppid has no arguments and cannot fail.
        && unsafe { libc::getppid() } == parent
        && prctl(libc::PR_SET_DUMPABLE, 0) == 0
}

/// The connector's start: dies with its parent thread, keeps only its
/// channel, notes its own credentials (to restore after each request) and
/// loads its filter. Returns how many groups it has, and its other ids.
fn set_up(
    channel: RawFd,
    parent: libc::pid_t,
    prog: &libc::sock_fprog,
    own_groups: &mut [libc::gid_t],
) -> (usize, Own) {
    // SAFETY: prctl, getppid, dup3, close_range, getgroups, setfs*id
    // queries and seccomp take integers or memory we own (the program, kept
    // alive by the parent's `program` in our copy of its memory;
    // `own_groups`, sized to its length).
    unsafe {
        if !guard(parent) {
            exit(1);
        }
        if channel != CHANNEL && libc::syscall(libc::SYS_dup3, channel, CHANNEL, 0) < 0 {
            exit(1);
        }
        // Nothing of the supervisor's stays open here (its notification fd
        // above all: the kernel must fail the tool's calls when the
        // supervisor dies, not wait for us).
        if libc::syscall(libc::SYS_close_range, (CHANNEL + 1) as u32, u32::MAX, 0u32) < 0 {
            exit(1);
        }
        let n = libc::syscall(
            libc::SYS_getgroups,
            own_groups.len(),
            own_groups.as_mut_ptr(),
        );
        if n < 0 {
            exit(1);
        }
        let own = Own {
            euid: effective(libc::SYS_getresuid),
            egid: effective(libc::SYS_getresgid),
            fsuid: libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32,
            fsgid: libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32,
            caps: own_effective_caps(),
        };
        // `CAP_SYS_RESOURCE`, which every tool gives up with its rlimits,
        // and the network capabilities, which every tool gives up: given up
        // here once, not at every connect of a root tool (as the
        // supervisor's threads do, `Creds::of_supervisor_thread`). Where
        // they cannot be, each connect switches them off as before.
        let without = own.caps & !(super::RESOURCE_CAPABILITY | super::NETWORK_CAPABILITIES);
        let own = if without != own.caps && set_thread_effective_caps(without).is_ok() {
            Own {
                caps: own_effective_caps(),
                ..own
            }
        } else {
            own
        };
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0u32,
                prog as *const libc::sock_fprog,
            ) < 0
        {
            exit(1);
        }
        (n as usize, own)
    }
}

/// This thread's effective capabilities (raw `capget`).
fn own_effective_caps() -> u64 {
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = [VERSION_3, 0];
    let mut data = [0u32; 6];
    // SAFETY: capget writes two __user_cap_data_struct (6 u32) into `data`.
    if unsafe { libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr()) } < 0 {
        exit(1);
    }
    data[0] as u64 | (data[3] as u64) << 32
}

/// Takes on the tool's credentials where they differ from ours: groups,
/// effective gid and uid (what the listener sees), fs ids (what the kernel
/// checks the socket file with), then exactly the capabilities both have.
/// Any failure is `EACCES`; [`restore`] follows either way.
fn switch_to(tool: &Own, own: Own, groups: Option<(usize, &[u8])>) -> Result<(), i32> {
    if let Some((n, bytes)) = groups {
        // The groups are u32s at a 4-byte offset of a byte buffer: the
        // kernel reads them as gid_t (u32), alignment does not matter to it.
        // SAFETY: the kernel reads `n` gids from our buffer.
        if unsafe { libc::syscall(libc::SYS_setgroups, n, bytes.as_ptr()) } < 0 {
            return Err(libc::EACCES);
        }
    }
    if tool.egid != own.egid && !set_effective(libc::SYS_setresgid, tool.egid) {
        return Err(libc::EACCES);
    }
    if tool.euid != own.euid {
        if !set_effective(libc::SYS_setresuid, tool.euid) {
            return Err(libc::EACCES);
        }
        // Leaving euid 0 clears the effective capabilities; the permitted
        // stay (the real and saved uid are still ours): take them back for
        // the fs id switch, then keep only what the tool has.
        if set_thread_effective_caps(own.caps).is_err() {
            return Err(libc::EACCES);
        }
    }
    // A change of effective ids set the fs ids to them.
    if set_thread_fs_ids(tool.fsuid, tool.fsgid).is_err() {
        return Err(libc::EACCES);
    }
    if set_thread_effective_caps(tool.caps).is_err() || own_effective_caps() != tool.caps {
        return Err(libc::EACCES);
    }
    Ok(())
}

/// Back to our own credentials, whatever [`switch_to`] got to, and checked.
/// The effective ids first (ours are our real and saved ones: no capability
/// needed; going back to euid 0 raises the permitted set), then fs ids,
/// exactly our capabilities, and the groups (which need CAP_SETGID).
/// `own_groups` when they were switched (setting even the same list needs
/// CAP_SETGID, which a supervisor that is not root lacks).
fn restore(own: Own, own_groups: Option<&[libc::gid_t]>) -> bool {
    set_effective(libc::SYS_setresuid, own.euid)
        && set_effective(libc::SYS_setresgid, own.egid)
        && set_thread_fs_ids(own.fsuid, own.fsgid).is_ok()
        && set_thread_effective_caps(own.caps).is_ok()
        && own_groups.is_none_or(|g| set_thread_groups(g).is_ok())
        && own_effective_caps() == own.caps
        && effective(libc::SYS_getresuid) == own.euid
        && effective(libc::SYS_getresgid) == own.egid
}

/// One connect. `Err((errno, go_on))`: `go_on` false when the connector's
/// own credentials could not be restored (it must not serve again).
fn one_request(
    msg: &[u8],
    hdr: &libc::msghdr,
    own: Own,
    own_groups: &[libc::gid_t],
) -> Result<(), (i32, bool)> {
    // The fds must be where the parent's sockaddr expects them.
    // SAFETY: CMSG_FIRSTHDR reads the header the kernel filled in.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(hdr) };
    if cmsg.is_null() || hdr.msg_flags & libc::MSG_CTRUNC != 0 || msg.len() < HEADER {
        return Err((libc::EIO, true));
    }
    // SAFETY: `cmsg` is a header inside our control buffer.
    let (level, kind, len) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
    // SAFETY: CMSG_LEN is arithmetic.
    let (one, two) = unsafe { (libc::CMSG_LEN(4) as usize, libc::CMSG_LEN(8) as usize) };
    let flags = u32_at(msg, 24);
    let expected = if flags & HAS_PATH_FD != 0 { two } else { one };
    if level != libc::SOL_SOCKET || kind != libc::SCM_RIGHTS || len != expected {
        return Err((libc::EIO, true));
    }
    // SAFETY: CMSG_DATA points inside the same header, at `len - CMSG_LEN(0)`
    // bytes the kernel wrote; read unaligned.
    let fds: [RawFd; 2] = unsafe {
        let data = libc::CMSG_DATA(cmsg) as *const RawFd;
        [
            data.read_unaligned(),
            if expected == two {
                data.add(1).read_unaligned()
            } else {
                PATH_SLOT
            },
        ]
    };
    if fds != [SOCKET_SLOT, PATH_SLOT] {
        return Err((libc::EIO, true));
    }
    let (ngroups, addr_len) = (u32_at(msg, 16) as usize, u32_at(msg, 20) as usize);
    if ngroups > MAX_GROUPS || addr_len > MAX_ADDR || msg.len() != HEADER + ngroups * 4 + addr_len {
        return Err((libc::EIO, true));
    }
    let tool = Own {
        fsuid: u32_at(msg, 0),
        fsgid: u32_at(msg, 4),
        caps: u64::from_ne_bytes(msg[8..16].try_into().unwrap_or_default()) & own.caps,
        euid: u32_at(msg, 28),
        egid: u32_at(msg, 32),
    };
    let groups_bytes = &msg[HEADER..HEADER + ngroups * 4];
    let addr = &msg[HEADER + ngroups * 4..];
    let same_groups = ngroups == own_groups.len()
        && own_groups
            .iter()
            .enumerate()
            .all(|(i, g)| u32_at(groups_bytes, i * 4) == *g);
    // The same tool as we are (a cordon and its tool of one uid, the usual
    // case): nothing to switch, nothing to restore.
    // `CAP_SYS_TIME`, which a root tool lacks (the sandbox takes it) and no
    // connect checks, does not count.
    let clock = super::CLOCK_CAPABILITY;
    let same = same_groups
        && (
            tool.euid,
            tool.egid,
            tool.fsuid,
            tool.fsgid,
            tool.caps & !clock,
        ) == (own.euid, own.egid, own.fsuid, own.fsgid, own.caps & !clock);
    let switched = if same {
        Ok(())
    } else {
        switch_to(
            &tool,
            own,
            (!same_groups).then_some((ngroups, groups_bytes)),
        )
    };
    let result = switched.and_then(|()| {
        // SAFETY: connect reads `addr_len` bytes of our buffer as a
        // sockaddr.
        let r = unsafe {
            libc::connect(
                SOCKET_SLOT,
                addr.as_ptr().cast(),
                addr.len() as libc::socklen_t,
            )
        };
        if r < 0 { Err(errno()) } else { Ok(()) }
    });
    let restored = same || restore(own, (!same_groups).then_some(own_groups));
    match result {
        Ok(()) if restored => Ok(()),
        Ok(()) => Err((0, false)),
        Err(e) => Err((e, restored)),
    }
}
