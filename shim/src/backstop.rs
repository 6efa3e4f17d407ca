//! The kernel backstop: a Landlock ruleset applied to the tool before exec,
//! so that even if the shim were bypassed (a kernel path it does not
//! broker, a bug in it), the tool stays inside these bounds. The same
//! ruleset restricts the supervisor thread that performs the tool's allowed
//! opens, so a policy that allows more than the backstop still cannot open
//! past it.
//!
//! Its shape comes from the policy's `data.cordon.backstop`:
//!
//! ```json
//! {"read": ["/"], "write": ["/home/agent/job", "/dev/null"],
//!  "execute": ["/usr", "/bin"], "connect_tcp": [443], "bind_tcp": []}
//! ```
//!
//! A category that is absent is not restricted; one that is present allows
//! only what it lists. The kernel's Landlock ABI is detected at start; what
//! it cannot enforce is reported ([`Applied::not_enforced`]) and the rest is
//! applied (best effort, as Landlock intends).

use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::Arc,
};

use nix::{fcntl::OFlag, sys::stat::Mode};

use crate::sys;

const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
/// REMOVE_DIR … MAKE_SYM: creating and removing entries (ABI 1).
const MAKE_AND_REMOVE: u64 = 0b1_1111_1111 << 4;
/// MAKE_CHAR and MAKE_BLOCK: handled with the write rights and never
/// granted, so no device node is made anywhere (the filter refuses them too).
const MAKE_DEVICES: u64 = (1 << 6) | (1 << 11);
const REFER: u64 = 1 << 13;
const TRUNCATE: u64 = 1 << 14;
/// Rights that apply to a file (not a directory) rule.
const FILE_RIGHTS: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE;
const BIND_TCP: u64 = 1 << 0;
const CONNECT_TCP: u64 = 1 << 1;

/// What the policy asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub read: Option<Vec<PathBuf>>,
    pub write: Option<Vec<PathBuf>>,
    pub execute: Option<Vec<PathBuf>>,
    pub connect_tcp: Option<Vec<u16>>,
    pub bind_tcp: Option<Vec<u16>>,
}

/// A backstop that cannot be built as asked.
#[derive(Debug, thiserror::Error)]
pub enum BackstopError {
    #[error("data.cordon.backstop is not valid: {0}")]
    Invalid(String),
    #[error("cannot ask the broker for data.cordon.backstop: {0}")]
    Unavailable(String),
    #[error("cannot build the Landlock ruleset: {0}")]
    Kernel(std::io::Error),
}

impl Spec {
    /// From the JSON value of `data.cordon.backstop`.
    pub fn from_json(v: &serde_json::Value) -> Result<Spec, BackstopError> {
        serde_json::from_value(v.clone()).map_err(|e| BackstopError::Invalid(e.to_string()))
    }
}

/// The ruleset built from a [`Spec`], and what it does and does not cover.
#[derive(Debug, Clone)]
pub struct Applied {
    pub abi: i32,
    /// `None` when the kernel has no Landlock: nothing is applied.
    pub ruleset: Option<Arc<OwnedFd>>,
    /// One line per rule applied.
    pub rules: Vec<String>,
    /// One line per thing asked for that the kernel cannot enforce.
    pub not_enforced: Vec<String>,
    /// The rights the ruleset handles (restricts); all others are allowed.
    pub handled_fs: u64,
    pub handled_net: u64,
}

impl Applied {
    /// Lines for `cordon run --explain-backstop`.
    pub fn explain(&self) -> String {
        let mut out = format!("Landlock ABI {}", self.abi);
        if self.ruleset.is_none() {
            out.push_str(": not available, nothing applied");
        }
        out.push('\n');
        for r in &self.rules {
            out.push_str(&format!("  applied: {r}\n"));
        }
        for r in &self.not_enforced {
            out.push_str(&format!("  NOT enforced: {r}\n"));
        }
        out.push_str(
            "  never covered: unix-socket connects, UDP and other protocols (the broker decides them)\n",
        );
        out
    }
}

fn names(access: u64) -> String {
    let mut n = Vec::new();
    for (bit, name) in [
        (READ_FILE | READ_DIR, "read"),
        (WRITE_FILE | MAKE_AND_REMOVE | TRUNCATE | REFER, "write"),
        (EXECUTE, "execute"),
    ] {
        if access & bit != 0 {
            n.push(name);
        }
    }
    n.join("+")
}

/// Blocks every signal on this thread, before it restricts itself: a signal
/// sent to cordon may be handled on any thread that does not block it, and
/// cordon's relay to the tool must not run on one whose Landlock domain
/// (scoped signals) keeps it from reaching the tool.
fn block_signals_here() {
    let _ = nix::sys::signal::SigSet::all().thread_block();
}

/// `LANDLOCK_SCOPE_SIGNAL` (ABI 6): the tool may signal only processes in
/// its own Landlock domain (its sandbox), never the supervisor or anything
/// else outside, whatever the id it names and whenever it was reused.
const SCOPE_SIGNAL: u64 = 1 << 1;

const SIGNAL_RULE: &str = "signals only to processes in the sandbox";

/// The scopes this kernel's Landlock can apply (none before ABI 6).
fn signal_scope(abi: i32) -> u64 {
    if abi >= 6 { SCOPE_SIGNAL } else { 0 }
}

/// The Landlock ABI this kernel has (0: none), for callers that report it.
pub fn landlock_abi() -> i32 {
    sys::landlock_abi()
}

/// For a tool without a backstop: a ruleset that only scopes its signals,
/// if the kernel can (Landlock ABI 6); `None` otherwise.
pub fn signal_scope_only() -> Result<Option<Arc<OwnedFd>>, BackstopError> {
    let scoped = signal_scope(sys::landlock_abi());
    if scoped == 0 {
        return Ok(None);
    }
    let ruleset = sys::landlock_ruleset(0, 0, scoped).map_err(BackstopError::Kernel)?;
    Ok(Some(Arc::new(ruleset)))
}

/// Builds the ruleset for `spec` on this kernel.
pub fn build(spec: &Spec) -> Result<Applied, BackstopError> {
    let abi = sys::landlock_abi();
    let mut applied = Applied {
        abi,
        ruleset: None,
        rules: vec![],
        not_enforced: vec![],
        handled_fs: 0,
        handled_net: 0,
    };
    let wants_net = spec.connect_tcp.is_some() || spec.bind_tcp.is_some();
    if abi < 1 {
        applied
            .not_enforced
            .push("the kernel has no Landlock: no filesystem or network backstop".into());
        return Ok(applied);
    }
    let mut write_rights = WRITE_FILE | (MAKE_AND_REMOVE & !MAKE_DEVICES);
    if abi >= 2 {
        write_rights |= REFER;
    } else if spec.write.is_some() {
        applied
            .not_enforced
            .push("ABI < 2: renames and links across directories are refused altogether".into());
    }
    if abi >= 3 {
        write_rights |= TRUNCATE;
    } else if spec.write.is_some() {
        applied
            .not_enforced
            .push("ABI < 3: truncate(2) is not restricted".into());
    }
    let mut handled_fs = 0;
    let mut categories: Vec<(&Vec<PathBuf>, u64)> = Vec::new();
    if let Some(r) = &spec.read {
        handled_fs |= READ_FILE | READ_DIR;
        categories.push((r, READ_FILE | READ_DIR));
    }
    if let Some(w) = &spec.write {
        handled_fs |= write_rights | MAKE_DEVICES;
        // What may be written may be read: reads are not narrowed by a write rule.
        categories.push((w, write_rights | READ_FILE | READ_DIR));
    }
    if let Some(x) = &spec.execute {
        handled_fs |= EXECUTE;
        categories.push((x, EXECUTE | READ_FILE | READ_DIR));
    }
    let mut handled_net = 0;
    if wants_net {
        if abi >= 4 {
            if spec.connect_tcp.is_some() {
                handled_net |= CONNECT_TCP;
            }
            if spec.bind_tcp.is_some() {
                handled_net |= BIND_TCP;
            }
        } else {
            applied.not_enforced.push(format!(
                "ABI {abi} < 4: TCP connect/bind ports are not restricted"
            ));
        }
    }
    let scoped = signal_scope(abi);
    if handled_fs == 0 && handled_net == 0 && scoped == 0 {
        return Ok(applied);
    }
    let ruleset =
        sys::landlock_ruleset(handled_fs, handled_net, scoped).map_err(BackstopError::Kernel)?;
    if scoped != 0 {
        applied.rules.push(SIGNAL_RULE.into());
    }
    for (paths, rights) in categories {
        for path in paths {
            match allow_path(&ruleset, path, rights & handled_fs) {
                Ok(r) => applied
                    .rules
                    .push(format!("{} {}", names(r), path.display())),
                Err(e) => applied
                    .not_enforced
                    .push(format!("{}: {e} (no rule: stays denied)", path.display())),
            }
        }
    }
    for (ports, right, name) in [
        (&spec.connect_tcp, CONNECT_TCP, "connect"),
        (&spec.bind_tcp, BIND_TCP, "bind"),
    ] {
        if let (Some(ports), true) = (ports, handled_net & right != 0) {
            for port in ports {
                sys::landlock_allow_port(&ruleset, *port, right).map_err(BackstopError::Kernel)?;
                applied.rules.push(format!("tcp {name} port {port}"));
            }
        }
    }
    applied.ruleset = Some(Arc::new(ruleset));
    applied.handled_fs = handled_fs;
    applied.handled_net = handled_net;
    Ok(applied)
}

/// One path rule; a file gets only the file rights. Returns the rights given.
fn allow_path(ruleset: &OwnedFd, path: &Path, rights: u64) -> std::io::Result<u64> {
    let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())?;
    let is_dir =
        nix::sys::stat::fstat(&fd).is_ok_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR);
    let rights = if is_dir { rights } else { rights & FILE_RIGHTS };
    sys::landlock_allow_path(ruleset, &fd, rights)?;
    Ok(rights)
}

/// A thread restricted by the backstop that performs the tool's allowed
/// opens, so they stay inside it too (Landlock domains are per thread).
#[derive(Debug)]
pub struct Opener {
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
    ruleset: Arc<OwnedFd>,
    handled_fs: u64,
    handled_net: u64,
}

type Job = Box<dyn FnOnce() + Send>;

impl Opener {
    pub fn start(applied: &Applied) -> std::io::Result<Option<Opener>> {
        match &applied.ruleset {
            // A ruleset that only scopes signals governs no open.
            Some(_) if applied.handled_fs == 0 && applied.handled_net == 0 => Ok(None),
            Some(r) => {
                Self::start_with(r.clone(), applied.handled_fs, applied.handled_net).map(Some)
            }
            None => Ok(None),
        }
    }

    fn start_with(
        ruleset: Arc<OwnedFd>,
        handled_fs: u64,
        handled_net: u64,
    ) -> std::io::Result<Opener> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let rs = ruleset.clone();
        std::thread::Builder::new()
            .name("cordon-opener".into())
            .spawn(move || {
                block_signals_here();
                // Files created here take the tool's umask, set around each
                // create (as on the serving threads): our own must not.
                if nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).is_ok() {
                    nix::sys::stat::umask(Mode::empty());
                    crate::emulate::has_own_fs_context();
                }
                let restricted = sys::landlock_restrict_thread(&rs);
                let ok = restricted.is_ok();
                let _ = ready_tx.send(restricted);
                if !ok {
                    return;
                }
                // As on the serving threads: a job that panics is its call's
                // denial (its answer channel closes), not the end of the
                // thread, after which every governed call would be denied.
                for job in rx {
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!(
                            "an operation on the opener thread panicked; its call is denied"
                        );
                    }
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the opener thread ended"))??;
        Ok(Opener {
            jobs: std::sync::Mutex::new(tx),
            ruleset,
            handled_fs,
            handled_net,
        })
    }

    /// Whether Landlock could refuse an open with these flags: only rights
    /// the ruleset handles are checked, so an open that needs none of them
    /// (a read, when reads are not restricted) is the same on any thread and
    /// skips the hand-off.
    pub fn governs_open(&self, flags: i32) -> bool {
        let acc = flags & libc::O_ACCMODE;
        let mut need = 0;
        if acc != libc::O_WRONLY {
            need |= READ_FILE | READ_DIR;
        }
        let tmpfile = flags & libc::O_TMPFILE == libc::O_TMPFILE;
        if acc != libc::O_RDONLY || flags & (libc::O_CREAT | libc::O_TRUNC) != 0 || tmpfile {
            need |= WRITE_FILE | TRUNCATE | MAKE_AND_REMOVE;
        }
        need & self.handled_fs != 0
    }

    /// Whether Landlock could refuse a connect or bind: TCP port rules, or
    /// for a unix bind, the socket file it creates.
    pub fn governs_connect_or_bind(&self, unix_bind: bool) -> bool {
        self.handled_net != 0 || (unix_bind && self.handled_fs & MAKE_AND_REMOVE != 0)
    }

    /// Runs `f` on the restricted thread and returns its result.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .ok()?;
        rx.recv().ok()
    }

    /// For a thread of its own (a blocking FIFO open): restricts the calling
    /// thread the same way.
    pub fn restrict_this_thread(&self) -> std::io::Result<()> {
        block_signals_here();
        sys::landlock_restrict_thread(&self.ruleset)
    }
}
