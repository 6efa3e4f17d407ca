//! Performing an allowed call on the tool's behalf, on exactly the object the
//! policy saw: opens reopen the resolved `O_PATH` fd (or create the checked
//! name under the checked parent, never following a link) and are injected
//! with `SECCOMP_IOCTL_NOTIF_ADDFD`; network calls run on a `pidfd_getfd`
//! duplicate of the tool's socket with the address we decoded, rebuilt from
//! the parsed values rather than re-read from the tool.

use std::{
    ffi::OsStr,
    io::IoSlice,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    sync::atomic::{AtomicBool, Ordering},
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, open, openat},
    sys::{
        socket::{self, MsgFlags, NetlinkAddr, SockaddrIn, SockaddrIn6, SockaddrStorage, UnixAddr},
        stat::Mode,
    },
};

use crate::resolve::Found;

/// `fd`, opened with the tool's `flags` and `O_NONBLOCK`, without the
/// latter: an open added it only to learn, without waiting, that a lease on
/// the file is being broken. The tool's file shows the flags it asked for.
/// (`F_SETFL` reads only the status flags it can change from `flags`, all
/// as they were opened: one call, no `F_GETFL`.)
pub fn without_nonblock(fd: OwnedFd, flags: i32) -> Result<OwnedFd, Errno> {
    use nix::fcntl::{FcntlArg, fcntl};
    fcntl(
        &fd,
        FcntlArg::F_SETFL(OFlag::from_bits_retain(flags & !libc::O_NONBLOCK)),
    )?;
    Ok(fd)
}

/// Opens what the lookup found, with the tool's open flags. `kind` is the
/// file type of an existing file (`st_mode & S_IFMT`), as the caller read it.
pub fn open_found(
    found: &Found,
    kind: Option<u32>,
    flags: i32,
    mode: u32,
    umask: u32,
) -> Result<OwnedFd, Errno> {
    // Never let the supervisor acquire a controlling terminal; our copy is
    // closed once injected, so close-on-exec is only about our own children.
    let base = OFlag::from_bits_retain(flags) | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    match found {
        Found::Existing(fd) => {
            if flags & libc::O_CREAT != 0 && flags & libc::O_EXCL != 0 {
                return Err(Errno::EEXIST);
            }
            let kind = match kind {
                Some(kind) => kind,
                None => nix::sys::stat::fstat(fd)?.st_mode & libc::S_IFMT,
            };
            if kind == libc::S_IFLNK {
                // O_NOFOLLOW on a symlink, as the kernel says it.
                return Err(Errno::ELOOP);
            }
            if flags & libc::O_CREAT != 0 && kind == libc::S_IFDIR {
                return Err(Errno::EISDIR);
            }
            // Reopening through our O_PATH fd opens the very inode we checked.
            // (O_TMPFILE creates in that directory: it needs the mode.)
            // O_CREAT goes: nothing is created. O_EXCL stays (without O_CREAT
            // it claims a block device for this opener alone, and makes an
            // O_TMPFILE file one that can never be linked in).
            let flags = base & !(OFlag::O_CREAT | OFlag::O_NOFOLLOW);
            let name = fd.as_raw_fd().to_string();
            let reopen = |mode| match crate::resolve::own_fd_dir() {
                // Relative to the kept `/proc/self/fd`: no walk through
                // `/proc/self` per call.
                Some(dir) => openat(dir, name.as_str(), flags, mode),
                None => open(format!("/proc/self/fd/{name}").as_str(), flags, mode),
            };
            if flags.contains(OFlag::O_TMPFILE) {
                with_umask(umask, mode, reopen)
            } else {
                reopen(Mode::empty())
            }
        }
        Found::Missing { parent, name } => {
            // Create, never open: if something took the name since the check
            // (a file, a FIFO, a symlink), EEXIST, and the caller looks it up
            // and decides again, unless the tool asked for O_EXCL itself.
            // O_EXCL alone never follows a symlink at the name (and unlike
            // O_NOFOLLOW, it is not kept in the file's flags: F_GETFL shows
            // what the tool asked for).
            let created = with_umask(umask, mode, |mode| {
                openat(parent, OsStr::from_bytes(name), base | OFlag::O_EXCL, mode)
            });
            // A symlink at the name (a dangling one the lookup went through,
            // or one planted since): ELOOP, never its target created.
            if matches!(created, Err(Errno::EEXIST)) && flags & libc::O_EXCL == 0 {
                let at = nix::sys::stat::fstatat(
                    parent,
                    OsStr::from_bytes(name),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                );
                if at.is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK) {
                    return Err(Errno::ELOOP);
                }
            }
            created
        }
    }
}

thread_local! {
    /// This thread has an fs context of its own (`unshare(CLONE_FS)`).
    static OWN_FS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Says that the calling thread has an fs context of its own, with umask 0:
/// creates on it may set its umask to the tool's.
pub fn has_own_fs_context() {
    OWN_FS.with(|c| c.set(true));
}

/// Runs a create with `mode` under the tool's umask, as the kernel applies
/// it for the tool: on a thread with its own fs context by setting the
/// thread's umask for the call, so that a directory's default ACL overrides
/// it as natively; elsewhere (where the umask is the whole process's) by
/// masking the mode, which ignores default ACLs.
fn with_umask<T>(umask: u32, mode: u32, create: impl FnOnce(Mode) -> T) -> T {
    let mode = mode & 0o7777;
    if !OWN_FS.with(|c| c.get()) {
        return create(Mode::from_bits_truncate(mode & !umask));
    }
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(umask & 0o777));
    let out = create(Mode::from_bits_truncate(mode));
    nix::sys::stat::umask(old);
    out
}

/// Removes the file this supervisor created at `name` in `parent` for an
/// open whose fd could not be given to the tool (its fd table full):
/// natively nothing was created (`EMFILE` comes first). Only while the name
/// still holds the file created (`created`).
pub fn undo_create(parent: &OwnedFd, name: &[u8], created: &OwnedFd) {
    let Ok(ours) = nix::sys::stat::fstat(created) else {
        return;
    };
    let name = OsStr::from_bytes(name);
    let same = nix::sys::stat::fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino));
    if same {
        let _ = nix::unistd::unlinkat(parent, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
}

/// Whether the kernel refuses an `O_CREAT` open of the existing file found
/// at `resolved` (of type `kind`, owned by `owner`, `(st_dev, st_ino)`
/// `file`), asked for as `given`, by a caller with fs uid `fsuid`, because
/// its directory is sticky and neither owns the file (`may_create_in_sticky`,
/// with this machine's `fs.protected_regular` and `fs.protected_fifos`).
///
/// The directory the kernel looks at is the one it found the last name in:
/// the file's own, reached by any path (`/proc/self/cwd/x` too), except
/// where the last name is itself one of the tool's fd entries (`/proc/PID/fd/N`,
/// `/dev/fd/N`, `/dev/stdout` → `/proc/self/fd/1`), whose directory is in
/// `/proc`, never sticky (longer link chains, and links named by a relative
/// path, are not followed here: those are checked).
///
/// The directory is read as the supervisor (the tool may reach the file from
/// a cwd it could not look up by path: that is no reason to skip the check),
/// by the canonical path's parent, which must still hold the file under its
/// name: otherwise the tool moved it meanwhile (a rename racing the open),
/// and the open is refused. One the supervisor cannot open refuses nothing. Until session 31 the directory was read again
/// by path as the tool, any `/proc` path skipped the check, and one it could
/// not read refused nothing (found by review).
pub fn refused_in_sticky(
    given: &[u8],
    resolved: &[u8],
    (kind, owner, file): (u32, u32, (u64, u64)),
    fsuid: u32,
) -> bool {
    let (parent, name) = match resolved.iter().rposition(|&b| b == b'/') {
        Some(0) => (&b"/"[..], &resolved[1..]),
        Some(i) => (&resolved[..i], &resolved[i + 1..]),
        None => return false,
    };
    let fd_entry = |p: &[u8]| {
        let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
        let parts: Vec<&[u8]> = p.split(|&b| b == b'/').collect();
        if parts.contains(&&b".."[..]) {
            return false;
        }
        match parts.as_slice() {
            [b"", b"proc", _, b"fd", n] | [b"", b"dev", b"fd", n] => digits(n),
            [b"", b"proc", _, b"task", _, b"fd", n] => digits(n),
            _ => matches!(p, b"/dev/stdin" | b"/dev/stdout" | b"/dev/stderr"),
        }
    };
    // (A relative `given` is not read: it names a file from the tool's cwd.)
    let through_link = given.first() == Some(&b'/')
        && std::fs::read_link(OsStr::from_bytes(given))
            .is_ok_and(|target| fd_entry(target.as_os_str().as_bytes()));
    if fd_entry(given) || through_link {
        return false;
    }
    let sysctl = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/fs/{name}"))
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(0)
    };
    // A directory the supervisor cannot open (a root squashed by NFS)
    // refuses nothing, as before: the check is the kernel's hardening, not
    // the policy's.
    let Ok(dir) = open(
        OsStr::from_bytes(parent),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return false;
    };
    let Ok(dir_stat) = nix::sys::stat::fstat(&dir) else {
        return false;
    };
    // It must still hold the file: else it was moved meanwhile (a rename
    // racing the open, or a sticky directory exchanged for another), and
    // what the kernel would have looked at is not known.
    let still_there = nix::sys::stat::fstatat(
        &dir,
        OsStr::from_bytes(name),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .is_ok_and(|st| (st.st_dev, st.st_ino) == file);
    if !still_there {
        return true;
    }
    // (Not sticky: no sysctl to read. Every shell `>` onto an existing file
    // comes here.)
    if dir_stat.st_mode & libc::S_ISVTX == 0 {
        return false;
    }
    sticky_refuses(
        dir_stat.st_mode,
        dir_stat.st_uid,
        kind,
        owner,
        fsuid,
        (sysctl("protected_regular"), sysctl("protected_fifos")),
    )
}

/// The kernel's rule, given the directory's mode and owner and the sysctls
/// (`protected_regular`, `protected_fifos`).
fn sticky_refuses(
    dir_mode: u32,
    dir_owner: u32,
    kind: u32,
    owner: u32,
    fsuid: u32,
    (regular, fifos): (u32, u32),
) -> bool {
    if dir_mode & libc::S_ISVTX == 0
        || kind == libc::S_IFREG && regular == 0
        || kind == libc::S_IFIFO && fifos == 0
        || owner == dir_owner
        || owner == fsuid
    {
        return false;
    }
    dir_mode & 0o002 != 0
        || dir_mode & 0o020 != 0
            && (kind == libc::S_IFIFO && fifos >= 2 || kind == libc::S_IFREG && regular >= 2)
}

/// A decoded socket address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Inet {
        addr: SocketAddr,
        /// `::ffff:a.b.c.d` given by the tool; `addr` holds the IPv6 form.
        v4_mapped: bool,
    },
    /// Filesystem path as given (relative to the tool's cwd if relative).
    UnixPath(Vec<u8>),
    /// Abstract name, without the leading NUL.
    UnixAbstract(Vec<u8>),
    /// `sun_family` only: autobind (bind) or an unnamed peer.
    UnixUnnamed,
    Netlink {
        pid: u32,
        groups: u32,
    },
    /// `AF_UNSPEC`: dissolves a datagram association.
    Unspec,
}

impl Address {
    /// Whether `op` on this address is put to the policy. Netlink (route
    /// only: `socket()` refuses other netlink protocols) and `AF_UNSPEC`
    /// reach nobody outside the machine's routing tables or the socket
    /// itself, and an autobind names nothing.
    pub fn needs_decision(&self, op: &str) -> bool {
        !(matches!(self, Address::Netlink { .. } | Address::Unspec)
            || op == "bind" && *self == Address::UnixUnnamed)
    }
}

impl Address {
    /// The destination the kernel would reach with this address in a
    /// connect or send from a socket bound to `bound`: an unspecified IP
    /// (`0.0.0.0`, `::`, `::ffff:0.0.0.0`) is this machine (for IPv4 the
    /// socket's own bound address, else loopback; `::` from a socket bound to
    /// a mapped address is mapped loopback), so it is put to the policy, and
    /// used, as that address rather than letting a rule for "any address but
    /// local ones" allow it.
    /// `bound` is asked only for an unspecified address (a `getsockname`).
    pub fn as_destination(self, bound: impl FnOnce() -> Option<IpAddr>) -> Address {
        let unspecified = match &self {
            Address::Inet { addr, .. } => match addr.ip() {
                IpAddr::V4(ip) => ip.is_unspecified(),
                IpAddr::V6(ip) => {
                    ip.is_unspecified() || ip.to_ipv4_mapped() == Some(Ipv4Addr::UNSPECIFIED)
                }
            },
            _ => false,
        };
        if !unspecified {
            return self;
        }
        let bound = bound();
        let own_v4 = |b: Option<Ipv4Addr>| {
            b.filter(|b| !b.is_unspecified())
                .unwrap_or(Ipv4Addr::LOCALHOST)
        };
        let bound_mapped = match bound {
            Some(IpAddr::V6(b)) => b.to_ipv4_mapped(),
            _ => None,
        };
        match self {
            Address::Inet {
                addr: SocketAddr::V4(a),
                v4_mapped,
            } if a.ip().is_unspecified() => {
                let b = match bound {
                    Some(IpAddr::V4(b)) => Some(b),
                    _ => None,
                };
                Address::Inet {
                    addr: SocketAddr::V4(SocketAddrV4::new(own_v4(b), a.port())),
                    v4_mapped,
                }
            }
            Address::Inet {
                addr: SocketAddr::V6(a),
                v4_mapped,
            } if a.ip().is_unspecified()
                || a.ip().to_ipv4_mapped() == Some(Ipv4Addr::UNSPECIFIED) =>
            {
                let (ip, mapped) = if v4_mapped {
                    (own_v4(bound_mapped).to_ipv6_mapped(), true)
                } else if bound_mapped.is_some() {
                    (Ipv4Addr::LOCALHOST.to_ipv6_mapped(), true)
                } else {
                    (std::net::Ipv6Addr::LOCALHOST, false)
                };
                Address::Inet {
                    addr: SocketAddr::V6(SocketAddrV6::new(
                        ip,
                        a.port(),
                        a.flowinfo(),
                        a.scope_id(),
                    )),
                    v4_mapped: mapped,
                }
            }
            other => other,
        }
    }
}

/// The IP a socket of ours (a duplicate of the tool's) is bound to, if any.
pub fn bound_ip(sock: &OwnedFd) -> Option<IpAddr> {
    let sa: SockaddrStorage = socket::getsockname(sock.as_raw_fd()).ok()?;
    if let Some(v4) = sa.as_sockaddr_in() {
        Some(IpAddr::V4(v4.ip()))
    } else {
        sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
    }
}

/// Decodes a `struct sockaddr` of `bytes.len()` bytes as the kernel would.
pub fn parse_sockaddr(bytes: &[u8]) -> Result<Address, Errno> {
    if bytes.len() < 2 {
        return Err(Errno::EINVAL);
    }
    let family = u16::from_ne_bytes([bytes[0], bytes[1]]) as i32;
    match family {
        libc::AF_INET => {
            if bytes.len() < 16 {
                return Err(Errno::EINVAL);
            }
            let port = u16::from_be_bytes([bytes[2], bytes[3]]);
            let ip = Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
            Ok(Address::Inet {
                addr: SocketAddr::V4(SocketAddrV4::new(ip, port)),
                v4_mapped: false,
            })
        }
        libc::AF_INET6 => {
            if bytes.len() < 24 {
                return Err(Errno::EINVAL);
            }
            let port = u16::from_be_bytes([bytes[2], bytes[3]]);
            // As the tool's bytes are: the sockaddr is built again from this
            // value unconverted (nix and std keep `sin6_flowinfo` raw).
            let flowinfo = u32::from_ne_bytes(bytes[4..8].try_into().expect("4"));
            let octets: [u8; 16] = bytes[8..24].try_into().expect("16");
            let scope = if bytes.len() >= 28 {
                u32::from_ne_bytes(bytes[24..28].try_into().expect("4"))
            } else {
                0
            };
            let ip = std::net::Ipv6Addr::from(octets);
            Ok(Address::Inet {
                addr: SocketAddr::V6(SocketAddrV6::new(ip, port, flowinfo, scope)),
                v4_mapped: ip.to_ipv4_mapped().is_some(),
            })
        }
        libc::AF_UNIX => {
            let path = &bytes[2..bytes.len().min(2 + 108)];
            if path.is_empty() {
                Ok(Address::UnixUnnamed)
            } else if path[0] == 0 {
                Ok(Address::UnixAbstract(path[1..].to_vec()))
            } else {
                let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                Ok(Address::UnixPath(path[..end].to_vec()))
            }
        }
        libc::AF_NETLINK => {
            if bytes.len() < 12 {
                return Err(Errno::EINVAL);
            }
            Ok(Address::Netlink {
                pid: u32::from_ne_bytes(bytes[4..8].try_into().expect("4")),
                groups: u32::from_ne_bytes(bytes[8..12].try_into().expect("4")),
            })
        }
        libc::AF_UNSPEC => Ok(Address::Unspec),
        _ => Err(Errno::EAFNOSUPPORT),
    }
}

/// A sockaddr of one of the families we send to.
#[derive(Debug)]
pub enum Built {
    In(SockaddrIn),
    In6(SockaddrIn6),
    Unix(UnixAddr),
    Netlink(NetlinkAddr),
}

/// Runs `$body` with `$s` bound to the concrete sockaddr inside a [`Built`].
macro_rules! with_sockaddr {
    ($built:expr, |$s:ident| $body:expr) => {
        match $built {
            Built::In($s) => $body,
            Built::In6($s) => $body,
            Built::Unix($s) => $body,
            Built::Netlink($s) => $body,
        }
    };
}

/// The address we will actually use, rebuilt from decoded values. Unix
/// paths are passed in already resolved (see [`unix_via_fd`]).
pub fn build_sockaddr(a: &Address, unix_path: Option<&[u8]>) -> Result<Built, Errno> {
    Ok(match a {
        Address::Inet {
            addr: SocketAddr::V4(v4),
            ..
        } => Built::In(SockaddrIn::from(*v4)),
        Address::Inet {
            addr: SocketAddr::V6(v6),
            ..
        } => Built::In6(SockaddrIn6::from(*v6)),
        Address::UnixPath(_) => {
            let p = unix_path.ok_or(Errno::EINVAL)?;
            Built::Unix(UnixAddr::new(OsStr::from_bytes(p))?)
        }
        Address::UnixAbstract(name) => Built::Unix(UnixAddr::new_abstract(name)?),
        Address::UnixUnnamed => Built::Unix(UnixAddr::new_unnamed()),
        Address::Netlink { pid, groups } => Built::Netlink(NetlinkAddr::new(*pid, *groups)),
        Address::Unspec => return Err(Errno::EAFNOSUPPORT),
    })
}

/// A path under `/proc/self/fd/N` naming a resolved unix socket (or, with a
/// name, an entry in a resolved directory), short enough for `sun_path`.
/// `fd` is a number in the process that connects: ours, or a connector's.
pub fn unix_via_fd(fd: std::os::fd::RawFd, name: Option<&[u8]>) -> Result<Vec<u8>, Errno> {
    let mut p = format!("/proc/self/fd/{fd}").into_bytes();
    if let Some(n) = name {
        p.push(b'/');
        p.extend_from_slice(n);
    }
    if p.len() >= 108 {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(p)
}

/// The policy's view of an address: family, address text, port, unix path.
pub fn describe(a: &Address) -> (&'static str, String, u32, bool) {
    match a {
        Address::Inet { addr, v4_mapped } => {
            let ip = match addr.ip() {
                IpAddr::V6(v6) if *v4_mapped => IpAddr::V4(v6.to_ipv4_mapped().expect("mapped")),
                ip => ip,
            };
            let family = if ip.is_ipv4() { "inet" } else { "inet6" };
            (family, ip.to_string(), addr.port() as u32, *v4_mapped)
        }
        _ => ("unix", String::new(), 0, false),
    }
}

/// Whether a socket we duplicated is a unix one (an unbound one too: its
/// name is the bare family).
pub fn is_unix(sock: &OwnedFd) -> bool {
    socket::getsockname::<SockaddrStorage>(sock.as_raw_fd())
        .is_ok_and(|a| a.as_unix_addr().is_some())
}

/// Whether a socket we duplicated has a send timeout (`SO_SNDTIMEO`, which
/// bounds its sends and connects).
pub fn has_send_timeout(sock: &OwnedFd) -> bool {
    socket::getsockopt(sock, socket::sockopt::SendTimeout)
        .is_ok_and(|t| t.tv_sec() != 0 || t.tv_usec() != 0)
}

/// `SO_TYPE` of a socket we duplicated.
pub fn socket_type(sock: &OwnedFd) -> Result<i32, Errno> {
    socket::getsockopt(sock, socket::sockopt::SockType).map(|t| t as i32)
}

pub fn protocol_name(family: &str, sock_type: i32) -> &'static str {
    match (family, sock_type) {
        ("inet" | "inet6", libc::SOCK_STREAM) => "tcp",
        ("inet" | "inet6", libc::SOCK_DGRAM) => "udp",
        (_, libc::SOCK_RAW) => "raw",
        (_, libc::SOCK_STREAM) => "stream",
        (_, libc::SOCK_SEQPACKET) => "seqpacket",
        _ => "dgram",
    }
}

/// Whether an operation on `sock` may block (the socket is in blocking mode).
pub fn is_blocking(sock: &OwnedFd) -> bool {
    nix::fcntl::fcntl(sock, nix::fcntl::FcntlArg::F_GETFL)
        .map(|f| f & libc::O_NONBLOCK == 0)
        .unwrap_or(true)
}

pub fn connect(sock: &OwnedFd, addr: &Address, unix_path: Option<&[u8]>) -> Result<i64, Errno> {
    if *addr == Address::Unspec {
        return disconnect(sock);
    }
    let sa = build_sockaddr(addr, unix_path)?;
    with_sockaddr!(&sa, |s| socket::connect(sock.as_raw_fd(), s)).map(|_| 0)
}

/// A connect to a named unix socket (a path or an abstract name), made in a
/// connector so that the listener's peer is under a seccomp filter (see
/// [`crate::connector`]). `unix_path` names the resolved socket by
/// [`crate::connector::PATH_SLOT`], where the connector has `path_fd`.
pub fn connect_unix(
    connectors: &crate::connector::Connectors,
    sock: &OwnedFd,
    addr: &Address,
    unix_path: Option<&[u8]>,
    path_fd: Option<&OwnedFd>,
    tool: &crate::process::Creds,
) -> Result<i64, Errno> {
    let raw = unix_sockaddr(addr, unix_path)?;
    connectors.connect(sock, path_fd, &raw, tool)
}

/// The bytes of a `sockaddr_un` (family, then the path and its NUL, or a NUL
/// and the abstract name), as long as the kernel is to read.
fn unix_sockaddr(addr: &Address, unix_path: Option<&[u8]>) -> Result<Vec<u8>, Errno> {
    let mut raw = (libc::AF_UNIX as libc::sa_family_t).to_ne_bytes().to_vec();
    match (addr, unix_path) {
        (Address::UnixPath(_), Some(p)) => {
            raw.extend_from_slice(p);
            raw.push(0);
        }
        (Address::UnixAbstract(name), _) => {
            raw.push(0);
            raw.extend_from_slice(name);
        }
        _ => return Err(Errno::EINVAL),
    }
    if raw.len() > std::mem::size_of::<libc::sockaddr_un>() {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(raw)
}

/// `connect(AF_UNSPEC)` (nix has no sockaddr type for it).
fn disconnect(sock: &OwnedFd) -> Result<i64, Errno> {
    crate::sys::connect_unspec(sock)
        .map(|_| 0)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

pub fn bind(sock: &OwnedFd, addr: &Address, unix_path: Option<&[u8]>) -> Result<i64, Errno> {
    let sa = build_sockaddr(addr, unix_path)?;
    with_sockaddr!(&sa, |s| socket::bind(sock.as_raw_fd(), s)).map(|_| 0)
}

pub fn listen(sock: &OwnedFd, backlog: i32) -> Result<i64, Errno> {
    crate::sys::listen(sock, backlog)
        .map(|_| 0)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// One message, sent on the duplicate with the checked address (or the
/// connected peer when `addr` is `None`), carrying `fds` (ours, duplicated
/// from the tool's) as `SCM_RIGHTS`, and `sender` as `SCM_CREDENTIALS`
/// when given.
pub fn send(
    sock: &OwnedFd,
    iov: &[Vec<u8>],
    fds: &[OwnedFd],
    sender: Option<libc::ucred>,
    flags: i32,
    addr: Option<(&Address, Option<&[u8]>)>,
) -> Result<i64, Errno> {
    let slices: Vec<IoSlice<'_>> = iov.iter().map(|b| IoSlice::new(b)).collect();
    let raw: Vec<std::os::fd::RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let sender = sender.map(socket::UnixCredentials::from);
    let mut cmsgs = Vec::with_capacity(2);
    if !raw.is_empty() {
        cmsgs.push(socket::ControlMessage::ScmRights(&raw));
    }
    if let Some(c) = &sender {
        cmsgs.push(socket::ControlMessage::ScmCredentials(c));
    }
    // Never let a broken pipe signal the supervisor; the caller relays
    // SIGPIPE to the tool when the tool asked for it.
    let flags = MsgFlags::from_bits_retain(flags) | MsgFlags::MSG_NOSIGNAL;
    match addr {
        Some((a, unix)) => {
            let sa = build_sockaddr(a, unix)?;
            with_sockaddr!(&sa, |s| socket::sendmsg(
                sock.as_raw_fd(),
                &slices,
                &cmsgs,
                flags,
                Some(s)
            ))
        }
        None => socket::sendmsg::<SockaddrStorage>(sock.as_raw_fd(), &slices, &cmsgs, flags, None),
    }
    .map(|n| n as i64)
}

/// What a send's control buffer asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// Fd numbers passed as `SCM_RIGHTS`.
    pub fds: Vec<i32>,
    /// Each `SCM_CREDENTIALS` (on a unix socket): the pid and ids the
    /// sender names. The kernel checks each in order ([`may_name`]), and
    /// the last one is what it sends.
    pub creds: Vec<libc::ucred>,
}

/// The control buffer of a send, if it holds nothing but `SCM_RIGHTS`, and
/// `SCM_CREDENTIALS` on a unix socket (anything else, such as IP options
/// that choose the source address, we do not send for the tool).
pub fn control_data(control: &[u8], unix: bool) -> Result<Control, Errno> {
    const HDR: usize = 16; // cmsg_len (8), cmsg_level (4), cmsg_type (4)
    const UCRED: usize = std::mem::size_of::<libc::ucred>();
    let mut out = Control::default();
    let mut at = 0;
    while at + HDR <= control.len() {
        let len = u64::from_ne_bytes(control[at..at + 8].try_into().expect("8")) as usize;
        let level = i32::from_ne_bytes(control[at + 8..at + 12].try_into().expect("4"));
        let kind = i32::from_ne_bytes(control[at + 12..at + 16].try_into().expect("4"));
        // `len` comes from the tool: compare without overflowing.
        if len < HDR || len > control.len() - at {
            return Err(Errno::EINVAL);
        }
        let body = &control[at + HDR..at + len];
        match (level, kind) {
            (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                for c in body.chunks_exact(4) {
                    out.fds.push(i32::from_ne_bytes(c.try_into().expect("4")));
                }
            }
            (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) if unix => {
                // Exactly one ucred, or EINVAL (`__scm_send`).
                if body.len() != UCRED {
                    return Err(Errno::EINVAL);
                }
                let word = |i: usize| body[i..i + 4].try_into().expect("4");
                out.creds.push(libc::ucred {
                    pid: i32::from_ne_bytes(word(0)),
                    uid: u32::from_ne_bytes(word(4)),
                    gid: u32::from_ne_bytes(word(8)),
                });
            }
            _ => return Err(Errno::EOPNOTSUPP),
        }
        // Aligned to 8; `len` ≤ control.len() so this cannot overflow.
        at += len.next_multiple_of(8);
    }
    Ok(out)
}

const CAP_SETGID: u64 = 1 << 6;
const CAP_SETUID: u64 = 1 << 7;
const CAP_SYS_ADMIN: u64 = 1 << 21;
const CAP_SYS_RESOURCE: u64 = 1 << 24;

/// Set once the kernel refused us a pid, or ids, that our capabilities
/// said we could name (a user namespace that does not own our pid
/// namespace, an LSM): from then on we name only what is left.
static PIDS_REFUSED: AtomicBool = AtomicBool::new(false);
static IDS_REFUSED: AtomicBool = AtomicBool::new(false);

/// What we may put in `SCM_CREDENTIALS` when we send for the tool.
#[derive(Debug, Clone, Copy)]
pub struct Naming {
    tgid: i32,
    uids: [u32; 3],
    gids: [u32; 3],
    /// Other pids: `CAP_SYS_ADMIN`, which would also lift the kernel's
    /// limit on fds in flight (`too_many_unix_fds`), so not for a call
    /// that passes fds unless the tool could pass that limit itself.
    pids: bool,
    /// Other uids and gids: `CAP_SETUID`, `CAP_SETGID`.
    uid: bool,
    gid: bool,
}

impl Naming {
    /// For a call by a tool with capabilities `tool_caps`, made by us (the
    /// process: `tgid`, real, effective and saved ids) with `caps`.
    pub fn new(
        tgid: i32,
        (uids, gids): ([u32; 3], [u32; 3]),
        caps: u64,
        tool_caps: u64,
        passes_fds: bool,
    ) -> Naming {
        let fd_limit_ok = !passes_fds || tool_caps & (CAP_SYS_ADMIN | CAP_SYS_RESOURCE) != 0;
        let ids_ok = !IDS_REFUSED.load(Ordering::Relaxed);
        Naming {
            tgid,
            uids,
            gids,
            pids: caps & CAP_SYS_ADMIN != 0 && fd_limit_ok && !PIDS_REFUSED.load(Ordering::Relaxed),
            uid: caps & CAP_SETUID != 0 && ids_ok,
            gid: caps & CAP_SETGID != 0 && ids_ok,
        }
    }

    /// What to send for `wanted` (already checked against the tool): itself
    /// if we may name it; else with our own pid (the receiver still learns
    /// the tool's ids); else nothing, and the kernel names us.
    pub fn adapt(&self, wanted: libc::ucred) -> Option<libc::ucred> {
        let mut c = wanted;
        if c.pid != self.tgid && !self.pids {
            c.pid = self.tgid;
        }
        let needs = naming_needs(&c, self.tgid, self.uids, self.gids).ok()?;
        let ok = (needs & CAP_SETUID == 0 || self.uid) && (needs & CAP_SETGID == 0 || self.gid);
        ok.then_some(c)
    }

    /// The capabilities sending `c` takes (from [`Naming::adapt`]).
    pub fn needs(&self, c: &libc::ucred) -> u64 {
        naming_needs(c, self.tgid, self.uids, self.gids).unwrap_or(0)
    }

    /// What to send instead of `sent`, which the kernel refused with
    /// `EPERM`, in case our capabilities were not what it asks (a user
    /// namespace that does not own the pid namespace, an LSM): with our
    /// own pid if it named another, else with no credentials if it named
    /// ids not ours. `None`: nothing less to try (the `EPERM` was about
    /// something else). Nothing is remembered until [`Naming::learn`].
    pub fn less(&self, sent: &libc::ucred) -> Option<(Option<libc::ucred>, Refused)> {
        if sent.pid != self.tgid && self.pids {
            let mut less = *self;
            less.pids = false;
            return Some((less.adapt(*sent), Refused::Pids));
        }
        let needs = self.needs(sent);
        if needs & (CAP_SETUID | CAP_SETGID) != 0 {
            return Some((None, Refused::Ids));
        }
        None
    }

    /// The send with less went through where the fuller one was refused:
    /// from now on this process names less (every sandbox in it: the
    /// refusal comes from what the process is, not from the tool).
    pub fn learn(&mut self, refused: Refused) {
        match refused {
            Refused::Pids => {
                PIDS_REFUSED.store(true, Ordering::Relaxed);
                self.pids = false;
            }
            Refused::Ids => {
                IDS_REFUSED.store(true, Ordering::Relaxed);
                (self.uid, self.gid) = (false, false);
            }
        }
    }
}

/// What the kernel refused us to name, found by [`Naming::less`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Pids,
    Ids,
}

/// The capabilities a sender with `tgid`, ids `uids` and `gids` (real,
/// effective, saved) needs to name `creds` in `SCM_CREDENTIALS`, as the
/// kernel's `scm_check_creds` asks: `CAP_SYS_ADMIN` for a pid not its own,
/// `CAP_SETUID` and `CAP_SETGID` for ids not among its own. `EINVAL` for
/// an id that is none (-1), as there.
pub fn naming_needs(
    creds: &libc::ucred,
    tgid: i32,
    uids: [u32; 3],
    gids: [u32; 3],
) -> Result<u64, Errno> {
    if creds.uid == u32::MAX || creds.gid == u32::MAX {
        return Err(Errno::EINVAL);
    }
    let mut needed = 0;
    if creds.pid != tgid {
        needed |= CAP_SYS_ADMIN;
    }
    if !uids.contains(&creds.uid) {
        needed |= CAP_SETUID;
    }
    if !gids.contains(&creds.gid) {
        needed |= CAP_SETGID;
    }
    Ok(needed)
}

/// Whether a sender whose effective capabilities are `caps` may name
/// `creds` (see [`naming_needs`]): `EPERM` if not, as the kernel answers.
pub fn may_name(
    creds: &libc::ucred,
    tgid: i32,
    uids: [u32; 3],
    gids: [u32; 3],
    caps: u64,
) -> Result<(), Errno> {
    let needed = naming_needs(creds, tgid, uids, gids)?;
    if caps & needed == needed {
        Ok(())
    } else {
        Err(Errno::EPERM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_directories_refuse_creates_on_others_files_as_the_kernel_does() {
        let (reg, fifo, chr) = (libc::S_IFREG, libc::S_IFIFO, libc::S_IFCHR);
        let tmp = 0o1777 | libc::S_IFDIR;
        let group_tmp = 0o1770 | libc::S_IFDIR;
        // Directory owned by root (0), file by 1000, caller 2000.
        let refuses = |dir, kind, sysctls| sticky_refuses(dir, 0, kind, 1000, 2000, sysctls);
        assert!(!refuses(tmp, reg, (0, 0)));
        assert!(refuses(tmp, reg, (1, 0)));
        assert!(!refuses(tmp, fifo, (1, 0)));
        assert!(refuses(tmp, fifo, (0, 1)));
        // Other types: the sysctls do not spare them.
        assert!(refuses(tmp, chr, (0, 0)));
        // Group-writable only: level 2.
        assert!(!refuses(group_tmp, reg, (1, 1)));
        assert!(refuses(group_tmp, reg, (2, 0)));
        assert!(refuses(group_tmp, fifo, (0, 2)));
        // Not sticky, or the caller or the directory's owner owns the file.
        assert!(!refuses(0o777 | libc::S_IFDIR, reg, (2, 2)));
        assert!(!sticky_refuses(tmp, 0, reg, 2000, 2000, (2, 2)));
        assert!(!sticky_refuses(tmp, 1000, reg, 1000, 2000, (2, 2)));
    }

    #[test]
    fn an_unspecified_destination_is_this_machine() {
        let dest = |a: &str, bound: Option<&str>| {
            let a: SocketAddr = a.parse().unwrap();
            let v4_mapped = matches!(a, SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some());
            let bound = bound.map(|b| b.parse().unwrap());
            describe(&Address::Inet { addr: a, v4_mapped }.as_destination(|| bound))
        };
        assert_eq!(dest("0.0.0.0:80", None).1, "127.0.0.1");
        assert_eq!(dest("0.0.0.0:80", Some("0.0.0.0")).1, "127.0.0.1");
        assert_eq!(dest("0.0.0.0:80", Some("127.0.0.5")).1, "127.0.0.5");
        assert_eq!(dest("[::]:80", None), ("inet6", "::1".into(), 80, false));
        assert_eq!(
            dest("[::]:80", Some("::")),
            ("inet6", "::1".into(), 80, false)
        );
        assert_eq!(
            dest("[::]:80", Some("::ffff:10.0.0.5")),
            ("inet", "127.0.0.1".into(), 80, true)
        );
        assert_eq!(
            dest("[::ffff:0.0.0.0]:80", None),
            ("inet", "127.0.0.1".into(), 80, true)
        );
        assert_eq!(
            dest("[::ffff:0.0.0.0]:80", Some("::ffff:10.0.0.5")),
            ("inet", "10.0.0.5".into(), 80, true)
        );
        assert_eq!(dest("10.0.0.1:80", Some("127.0.0.5")).1, "10.0.0.1");
        assert_eq!(dest("[::1]:80", None).1, "::1");
    }

    fn cmsg(kind: i32, body: &[u8]) -> Vec<u8> {
        let mut c = Vec::new();
        c.extend_from_slice(&(16 + body.len() as u64).to_ne_bytes());
        c.extend_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        c.extend_from_slice(&kind.to_ne_bytes());
        c.extend_from_slice(body);
        c.resize(c.len().next_multiple_of(8), 0);
        c
    }

    #[test]
    fn control_data_is_rights_and_unix_credentials_or_refused() {
        let fds = [3i32, 7].map(i32::to_ne_bytes).concat();
        let mut c = cmsg(libc::SCM_RIGHTS, &fds);
        assert_eq!(control_data(&c, false).unwrap().fds, vec![3, 7]);
        // Credentials: on unix sockets only, exactly one ucred each, all kept.
        let ucred =
            |pid: i32, id: u32| [pid.to_ne_bytes(), id.to_ne_bytes(), id.to_ne_bytes()].concat();
        c.extend(cmsg(libc::SCM_CREDENTIALS, &ucred(10, 1)));
        c.extend(cmsg(libc::SCM_CREDENTIALS, &ucred(11, 2)));
        let got = control_data(&c, true).unwrap();
        assert_eq!(got.fds, vec![3, 7]);
        let creds: Vec<_> = got.creds.iter().map(|c| (c.pid, c.uid, c.gid)).collect();
        assert_eq!(creds, [(10, 1, 1), (11, 2, 2)]);
        assert_eq!(control_data(&c, false), Err(Errno::EOPNOTSUPP));
        let short = cmsg(libc::SCM_CREDENTIALS, &ucred(10, 1)[..8]);
        assert_eq!(control_data(&short, true), Err(Errno::EINVAL));
        // Other kinds, bad lengths.
        let mut c = cmsg(libc::SCM_RIGHTS, &fds);
        c[12..16].copy_from_slice(&libc::SO_TIMESTAMP.to_ne_bytes());
        assert_eq!(control_data(&c, true), Err(Errno::EOPNOTSUPP));
        c[..8].copy_from_slice(&400u64.to_ne_bytes());
        assert_eq!(control_data(&c, true), Err(Errno::EINVAL));
        assert_eq!(control_data(&[], true), Ok(Control::default()));
        // A second header whose length would wrap the offset.
        let mut wrap = cmsg(libc::SCM_RIGHTS, &[]);
        wrap.extend_from_slice(&(u64::MAX - 15).to_ne_bytes());
        wrap.extend_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        wrap.extend_from_slice(&libc::SCM_RIGHTS.to_ne_bytes());
        assert_eq!(control_data(&wrap, true), Err(Errno::EINVAL));
    }

    #[test]
    fn naming_credentials_needs_what_the_kernel_asks() {
        let c = |pid, uid, gid| libc::ucred { pid, uid, gid };
        let (uids, gids) = ([1000, 1000, 0], [100, 100, 100]);
        let needs = |creds| naming_needs(&creds, 42, uids, gids);
        assert_eq!(needs(c(42, 1000, 100)), Ok(0));
        // The saved uid counts as one's own.
        assert_eq!(needs(c(42, 0, 100)), Ok(0));
        assert_eq!(needs(c(43, 1000, 100)), Ok(CAP_SYS_ADMIN));
        assert_eq!(needs(c(42, 5, 6)), Ok(CAP_SETUID | CAP_SETGID));
        assert_eq!(needs(c(42, u32::MAX, 100)), Err(Errno::EINVAL));
        assert_eq!(
            may_name(&c(43, 1000, 100), 42, uids, gids, CAP_SETUID),
            Err(Errno::EPERM)
        );
        assert_eq!(
            may_name(&c(43, 5, 100), 42, uids, gids, CAP_SYS_ADMIN | CAP_SETUID),
            Ok(())
        );
    }

    #[test]
    fn sockaddrs_decode_like_the_kernel() {
        let mut v4 = vec![0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&443u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[10, 1, 2, 3]);
        let a = parse_sockaddr(&v4).unwrap();
        assert_eq!(describe(&a), ("inet", "10.1.2.3".into(), 443, false));

        let mut v6 = vec![0u8; 28];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&80u16.to_be_bytes());
        v6[8..24].copy_from_slice(
            &"::ffff:127.0.0.2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        let a = parse_sockaddr(&v6).unwrap();
        assert_eq!(describe(&a), ("inet", "127.0.0.2".into(), 80, true));
        // The flow label and traffic class reach the kernel as the tool
        // wrote them (network order), not swapped.
        v6[4..8].copy_from_slice(&[0x01, 0x02, 0x03, 0x04]);
        let Built::In6(built) = build_sockaddr(&parse_sockaddr(&v6).unwrap(), None).unwrap() else {
            panic!("not an inet6 sockaddr");
        };
        let raw: &libc::sockaddr_in6 = built.as_ref();
        assert_eq!(raw.sin6_flowinfo.to_ne_bytes(), [0x01, 0x02, 0x03, 0x04]);

        let mut un = vec![0u8; 2];
        un[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(parse_sockaddr(&un).unwrap(), Address::UnixUnnamed);
        un.extend_from_slice(b"\0abc");
        assert_eq!(
            parse_sockaddr(&un).unwrap(),
            Address::UnixAbstract(b"abc".to_vec())
        );

        assert_eq!(parse_sockaddr(&[1]), Err(Errno::EINVAL));
        assert_eq!(parse_sockaddr(&[17, 0, 0, 0]), Err(Errno::EAFNOSUPPORT));
        assert_eq!(parse_sockaddr(&v4[..8]), Err(Errno::EINVAL));
    }
}
