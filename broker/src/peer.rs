//! Who is calling over a Unix socket, and the check every call passes.
//!
//! The kernel captures the connecting process's credentials at `connect`
//! time (`SO_PEERCRED`); the broker also keeps a pidfd of that process
//! (`SO_PEERPIDFD`, Linux 6.5). A call is allowed when the uid is allowed
//! and no thread of the process runs under a seccomp filter, so that a
//! sandboxed tool can never ask for or read decisions. The pidfd closes the
//! pid-reuse hole: `/proc/PID` is read, and then the pidfd must still name a
//! live process, so what was read was that process and not a newcomer that
//! got its pid after it exited.
//!
//! What this cannot see: a connection handed to another process (inherited
//! or passed with `SCM_RIGHTS`) keeps the credentials of the process that
//! connected. A call is checked when its headers arrive and again, if that
//! check is [`RECHECK_AFTER`] old, once its message is there and (a stream)
//! before each request after, so a process that puts itself under a filter
//! after connecting is refused from then on.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::UnixStream,
};
use tonic::{
    Status,
    transport::server::{Connected, UdsConnectInfo},
};

/// How long a `Session` stream goes on the check made at its last request.
/// A check reads one `status` file per thread of the peer (a few µs each),
/// too much for every request of a stream that carries thousands a second.
pub const RECHECK_AFTER: Duration = Duration::from_millis(100);

/// Who may call the broker over a Unix socket.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    pub allowed_uids: Vec<u32>,
}

impl Default for AccessPolicy {
    /// The broker's own uid and root.
    fn default() -> Self {
        let me = own_uid();
        let mut allowed_uids = vec![0, me];
        allowed_uids.dedup();
        Self { allowed_uids }
    }
}

/// The uid of this process, from /proc to avoid unsafe libc calls.
pub(crate) fn own_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

/// An accepted Unix connection with its peer's pidfd.
#[derive(Debug)]
pub struct PeerStream {
    stream: UnixStream,
    pidfd: Pidfd,
}

/// The connecting process's pidfd, as `SO_PEERPIDFD` gave it at accept.
#[derive(Debug, Clone)]
enum Pidfd {
    Taken(Arc<OwnedFd>),
    /// A kernel before 6.5: the check has the pid alone.
    Unsupported,
    /// Any other failure (the connector already reaped, on kernels before
    /// 6.16; no fd left): every call on the connection is refused, rather
    /// than checked by a pid that may name another process by now.
    Failed(nix::errno::Errno),
}

impl PeerStream {
    /// Takes the peer's pidfd now, as early as the connection is known.
    pub fn new(stream: UnixStream) -> Self {
        let pidfd = match nix::sys::socket::getsockopt(
            &stream,
            nix::sys::socket::sockopt::PeerPidfd,
        ) {
            Ok(fd) => Pidfd::Taken(Arc::new(fd)),
            Err(nix::errno::Errno::ENOPROTOOPT) => Pidfd::Unsupported,
            Err(e) => {
                tracing::warn!(error = %e, "no pidfd for a connecting peer; refusing its calls");
                Pidfd::Failed(e)
            }
        };
        Self { stream, pidfd }
    }
}

/// What the service knows of a Unix peer (in each request's extensions).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub uds: UdsConnectInfo,
    pidfd: Pidfd,
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        PeerInfo {
            uds: self.stream.connect_info(),
            pidfd: self.pidfd.clone(),
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A request's peer, if it came over a Unix socket.
pub fn of<T>(req: &tonic::Request<T>) -> Option<&PeerInfo> {
    req.extensions().get::<PeerInfo>()
}

impl PeerInfo {
    /// Allowed when the uid is allowed, no thread of the peer process runs
    /// under a seccomp filter, and (where the kernel gave a pidfd) that
    /// process is still the one that connected.
    pub fn check(&self, access: &AccessPolicy) -> Result<(), Status> {
        let cred = self
            .uds
            .peer_cred
            .ok_or_else(|| Status::permission_denied("peer credentials are unavailable"))?;
        if !access.allowed_uids.contains(&cred.uid()) {
            return Err(Status::permission_denied(format!(
                "uid {} is not allowed to use this broker",
                cred.uid()
            )));
        }
        // The pid as this /proc numbers it: the pidfd's (its fdinfo is
        // in the /proc mount's pid namespace, which need not be ours). 0:
        // in a pid namespace this broker cannot see into; -1: exited.
        let pid = match &self.pidfd {
            Pidfd::Taken(fd) => pid_in_proc(fd)?,
            Pidfd::Unsupported => cred.pid().unwrap_or(0),
            Pidfd::Failed(e) => {
                return Err(refusal(
                    "the process that opened this connection cannot be identified \
                     (SO_PEERPIDFD); its calls are refused",
                    io::Error::from(*e),
                ));
            }
        };
        if pid == -1 {
            return Err(gone(cred.pid().unwrap_or(0)));
        }
        if pid <= 0 {
            return Err(Status::permission_denied("peer pid is unavailable"));
        }
        match filtered_thread(pid) {
            Ok(None) => {}
            Ok(Some((tid, mode))) => {
                let who = if tid == pid {
                    format!("process {pid}")
                } else {
                    format!("thread {tid} of process {pid}")
                };
                return Err(Status::permission_denied(format!(
                    "{who} runs under a seccomp filter (mode {mode}); sandboxed processes may \
                     not use the broker"
                )));
            }
            Err(e) => return Err(refusal(&format!("cannot check process {pid}"), e)),
        }
        // After the read: a live pidfd means /proc/PID was still the process
        // that connected (a pid is not reused while its process exists).
        if let Pidfd::Taken(pidfd) = &self.pidfd
            && exited(pidfd)?
        {
            return Err(gone(pid));
        }
        Ok(())
    }
}

/// The refusal of a call whose peer could not be checked: `UNAVAILABLE`
/// where the broker itself is short of fds or memory (the caller may try
/// again, on a new connection if the pidfd is what is missing), else
/// `PERMISSION_DENIED`. Either way the call is refused.
fn refusal(what: &str, e: io::Error) -> Status {
    use nix::errno::Errno;
    let short = [Errno::EMFILE, Errno::ENFILE, Errno::ENOMEM]
        .iter()
        .any(|&n| e.raw_os_error() == Some(n as i32));
    if short {
        Status::unavailable(format!(
            "{what}: {e}; the broker is short of resources, try again"
        ))
    } else {
        Status::permission_denied(format!("{what}: {e}"))
    }
}

/// The refusal of a connection whose opener has exited.
fn gone(pid: i32) -> Status {
    Status::permission_denied(format!(
        "process {pid}, which opened this connection, has exited; a connection may be used only \
         by a live process that opened it"
    ))
}

/// The first thread of `pid` found under seccomp, with its mode (1 strict,
/// 2 filter). A thread that exits while the list is read is skipped.
fn filtered_thread(pid: i32) -> io::Result<Option<(i32, u32)>> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        match seccomp_mode(pid, tid) {
            Ok(0) => {}
            Ok(mode) => return Ok(Some((tid, mode))),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(nix::errno::Errno::ESRCH as i32) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The seccomp mode of one thread, from its `status`.
fn seccomp_mode(pid: i32, tid: i32) -> io::Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Seccomp line"))
}

/// The `Pid:` of a pidfd's fdinfo: the process's pid in the pid namespace
/// of the /proc mount, 0 if it has none there, -1 once it has exited.
fn pid_in_proc(pidfd: &OwnedFd) -> Result<i32, Status> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd());
    let what = format!("cannot read the peer's pid from {path}");
    let info = std::fs::read_to_string(&path).map_err(|e| refusal(&what, e))?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Status::permission_denied(format!("{what}: no Pid line")))
}

/// Whether the process behind `pidfd` has exited (its pidfd is readable).
fn exited(pidfd: &OwnedFd) -> Result<bool, Status> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    let ready = poll(&mut fds, PollTimeout::ZERO)
        .map_err(|e| refusal("cannot check the peer's pidfd", e.into()))?;
    Ok(ready > 0)
}

/// When the interceptor checked a call's peer (in the call's extensions).
/// It runs when the call's headers arrive: its message may come much later,
/// after the peer put itself under a filter or handed the connection on.
#[derive(Debug, Clone, Copy)]
pub struct Checked(pub std::time::Instant);

/// The peer of a call, checked again before a request that comes
/// [`RECHECK_AFTER`] or more after the last check: a stream's next request,
/// or a unary call's message once it has arrived.
#[derive(Debug)]
pub struct PeerWatch {
    peer: PeerInfo,
    access: Arc<AccessPolicy>,
    checked: Option<std::time::Instant>,
}

impl PeerWatch {
    /// Watches the peer of a Unix call, which the interceptor checked when
    /// [`Checked`] says (not at all without it: checked at the first
    /// [`PeerWatch::recheck`]).
    pub fn of<T>(req: &tonic::Request<T>, access: Arc<AccessPolicy>) -> Option<Self> {
        Some(Self {
            peer: of(req)?.clone(),
            access,
            checked: req.extensions().get::<Checked>().map(|c| c.0),
        })
    }

    /// Checks the peer again if the last check is [`RECHECK_AFTER`] old.
    pub fn recheck(&mut self) -> Result<(), Status> {
        if self.checked.is_some_and(|t| t.elapsed() < RECHECK_AFTER) {
            return Ok(());
        }
        self.peer.check(&self.access)?;
        self.checked = Some(std::time::Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;

    #[test]
    fn a_check_the_broker_lacks_resources_for_is_unavailable_else_denied() {
        for errno in [Errno::EMFILE, Errno::ENFILE, Errno::ENOMEM] {
            let s = refusal("cannot check", io::Error::from(errno));
            assert_eq!(s.code(), tonic::Code::Unavailable, "{errno}");
            assert!(s.message().contains("try again"), "{}", s.message());
        }
        let s = refusal("cannot check", io::Error::from(Errno::EACCES));
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert!(s.message().starts_with("cannot check: "), "{}", s.message());
    }
}
