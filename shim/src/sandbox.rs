//! The public API: run a `std::process::Command` under the filter, with a
//! supervisor that brokers its sensitive calls.
//!
//! Launch sequence: the filter is compiled before fork. In the child, after
//! fork and before exec, `no_new_privs` is set, the filter is loaded with a
//! new listener, and the child writes its pid and the listener's fd number
//! to a pipe. A supervisor thread takes the listener with `pidfd_getfd`,
//! says so on a second pipe, and starts answering; the child closes its own
//! copy (so that the supervisor's death fails its exec) and execs. The exec
//! of the tool is the first brokered call, so the tool cannot run before its
//! supervisor does.

use std::{
    collections::BTreeMap,
    io::{self, Read},
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::{
            ffi::{OsStrExt, OsStringExt},
            process::ExitStatusExt,
        },
    },
    path::PathBuf,
    process::{Command, ExitStatus},
    sync::{Arc, mpsc},
};

use cordon_broker::proto::{
    Lifecycle, Sandbox as SandboxInfo, SandboxExited, SandboxStarted, lifecycle::Event,
};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};

use crate::{
    backstop::{Applied, BackstopError, Opener, Spec},
    client::Decider,
    exec::ExecVerifier,
    filter,
    limits::{LimitError, Limits, Plan},
    notify::{Counters, Supervisor},
    protect::{Protected, Protection},
    sys::{self, CHILD_REPORT_LEN, Listener},
};

/// `CAP_SYS_ADMIN` in a capability set: what making an IPC namespace takes.
const CAP_SYS_ADMIN: u64 = 1 << 21;

/// A failure to start a sandboxed command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    #[error(transparent)]
    Filter(#[from] filter::FilterError),
    /// The command could not be started (not found, not executable, or its
    /// exec denied by policy): the `io::Error` says which.
    #[error("cannot run {program}: {source}")]
    Exec {
        program: String,
        #[source]
        source: io::Error,
    },
    /// The command's exec was denied without a decision (the broker lost or
    /// too slow) or without a verification (no ptrace): cordon's failure,
    /// not the command's.
    #[error("cannot run {program}: its exec was denied without a decision or a verification")]
    Undecided {
        program: String,
        #[source]
        source: io::Error,
    },
    /// The command's exec was denied because the broker cannot record
    /// decisions (an embedded store that did not open): cordon's failure,
    /// not the command's, and the broker's reason.
    #[error("cannot run {program}: the broker cannot record decisions: {reason}")]
    Unrecorded { program: String, reason: String },
    #[error("the supervisor could not take over the filter: {0}")]
    Supervisor(io::Error),
    #[error("the sandbox start could not be recorded: {0}")]
    Record(String),
    #[error(transparent)]
    Limits(#[from] LimitError),
    #[error(transparent)]
    Backstop(#[from] BackstopError),
    /// A step of the child's setup before the tool (cgroup, namespaces,
    /// user, Landlock…) failed: the tool never ran.
    #[error("{step}")]
    Setup {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

/// A sandbox definition: who decides, and what the policy is told about it.
///
/// In the host process, the supervisor uses `SIGRTMAX-1` (a handler that
/// does nothing, installed when the first supervisor starts) to interrupt
/// its own helper threads when the tool's handled signals would interrupt
/// the call. A host with its own disposition for that
/// signal keeps it, and the tool's blocking calls are then not interrupted.
///
/// ```no_run
/// use std::{process::Command, sync::Arc};
/// use cordon_shim::{Sandbox, client::Remote};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = Remote::connect(&"unix:///run/cordon/broker.sock".parse()?,
///                              std::time::Duration::from_secs(2))?;
/// let sandbox = Sandbox::new(Arc::new(broker)).label("tool", "web-fetch");
/// let child = sandbox.spawn(&mut Command::new("/usr/bin/curl"))?;
/// let status = child.wait()?;
/// println!("{status}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Sandbox {
    decider: Arc<dyn Decider>,
    info: SandboxInfo,
    broker_sockets: Vec<PathBuf>,
    protected: Vec<(PathBuf, Protection)>,
    limits: Limits,
    network_none: bool,
    user: Option<(u32, u32)>,
    new_session: bool,
    backstop: Option<Spec>,
    /// Whether this sandbox (or a clone of it) was spawned: a later spawn
    /// is a sandbox of its own, with a fresh id.
    spawned: Arc<std::sync::atomic::AtomicBool>,
}

impl Sandbox {
    /// A sandbox with a fresh id, working directory = the current directory.
    pub fn new(decider: Arc<dyn Decider>) -> Self {
        let workdir = std::env::current_dir()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .unwrap_or_default();
        Self {
            decider,
            info: SandboxInfo {
                id: uuid::Uuid::now_v7().to_string(),
                labels: Default::default(),
                workdir,
                tmpdir: vec![],
            },
            broker_sockets: vec![],
            protected: vec![],
            limits: Limits::default(),
            network_none: false,
            user: None,
            new_session: true,
            backstop: None,
            spawned: Arc::default(),
        }
    }

    /// A Landlock backstop (see [`crate::backstop`]) for the tool and for the
    /// supervisor's opens on its behalf. Default: the policy's
    /// `data.cordon.backstop`, asked of the broker at spawn.
    pub fn backstop(mut self, spec: Spec) -> Self {
        self.backstop = Some(spec);
        self
    }

    /// Resource limits (see [`Limits`]); memory, CPU and process caps use a
    /// cgroup where one can be made, else weaker rlimits
    /// ([`Sandboxed::warnings`] says which).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// A network namespace of its own with only loopback: nothing outside
    /// is reachable whatever the policy says (filesystem unix sockets still
    /// are, and stay brokered). Without root, a user namespace is made first.
    pub fn network_none(mut self, none: bool) -> Self {
        self.network_none = none;
        self
    }

    /// Run the tool as `uid`/`gid` (with only `gid` as group); needs root.
    /// The supervisor's emulated opens use the tool's credentials, so this
    /// also bounds what the policy can grant.
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.user = Some((uid, gid));
        self
    }

    /// Whether the tool gets a session and process group of its own
    /// (default: yes — no controlling terminal, one group to signal).
    pub fn new_session(mut self, yes: bool) -> Self {
        self.new_session = yes;
        self
    }

    /// The id of its first spawn; every later spawn of it (or of a clone)
    /// is a sandbox of its own, with a fresh id ([`Sandboxed::sandbox_id`]):
    /// its records must not mix with the first's in the audit trail.
    pub fn id(&self) -> &str {
        &self.info.id
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.info.labels.insert(key.into(), value.into());
        self
    }

    pub fn labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.info.labels.extend(labels);
        self
    }

    /// The directory the policy treats as the tool's workspace: an
    /// absolute path (`//`, `/./` and a trailing `/` are dropped; a `..`
    /// is refused by the broker, which cannot tell where it leads).
    pub fn workdir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.info.workdir = tidy(dir.into());
        self
    }

    /// The tool's private temporary directory (the caller creates it), as
    /// for [`Self::workdir`].
    pub fn tmpdir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.info.tmpdir = tidy(dir.into());
        self
    }

    /// A broker's unix socket, which the tool may never reach (repeatable).
    /// The supervisor performs a tool's unix connects itself, so a broker
    /// sees the supervisor's credentials, not the tool's, and cannot refuse
    /// it as a sandboxed peer. Brokers' default sockets
    /// ([`DEFAULT_BROKER_SOCKETS`], `$XDG_RUNTIME_DIR/cordon/broker.sock`,
    /// any user's `/run/user/UID/cordon/broker.sock`) are always refused;
    /// name here any other the tool could reach.
    pub fn broker_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.broker_sockets.push(path.into());
        self
    }

    /// A file or directory that the tool may never open, execute or
    /// connect to, whatever the policy says (repeatable): the host's own,
    /// under the tool's uid, such as an embedded broker's audit store or a
    /// client key. A directory covers everything under it. Recognised by
    /// its path, and by device and inode (see [`crate::protect`]); a
    /// refused call is `EACCES`, counted in the exit record, not decided.
    /// Calls by path that are not brokered (`unlink`, `rename`,
    /// `truncate`) are not refused.
    pub fn protect(mut self, path: impl Into<PathBuf>) -> Self {
        self.protected.push((path.into(), Protection::All));
        self
    }

    /// As [`Self::protect`], for opens that write, truncate or create only
    /// (and unix binds): the tool may read it. For policy files.
    pub fn protect_writes(mut self, path: impl Into<PathBuf>) -> Self {
        self.protected.push((path.into(), Protection::Writes));
        self
    }

    /// Starts `cmd` under the filter. Returns once the tool's exec was
    /// decided: an `Exec` error if it was refused or failed.
    ///
    /// `cmd` is spent: this adds `pre_exec` hooks that speak to this spawn's
    /// supervisor over fds that close when it returns. Build a new `Command`
    /// for every spawn; spawning this one again (here or with `Command::spawn`)
    /// fails with `EALREADY` (os error 114) before the tool runs.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Sandboxed, SpawnError> {
        use std::sync::atomic::Ordering;
        if self.spawned.swap(true, Ordering::SeqCst) {
            // Spawned before: this one is another sandbox (found by review:
            // every spawn of one `Sandbox` recorded the same id).
            let mut again = self.clone();
            again.info.id = uuid::Uuid::now_v7().to_string();
            again.spawned = Arc::new(std::sync::atomic::AtomicBool::new(true));
            return again.spawn_first(cmd);
        }
        self.spawn_first(cmd)
    }

    fn spawn_first(&self, cmd: &mut Command) -> Result<Sandboxed, SpawnError> {
        proc_is_ours()?;
        let program = filter::program()?;
        tracing::debug!("filter built");
        // The policy's backstop unless the caller gave one; an error asking
        // for it fails the start (a backstop the policy wants is not optional).
        let spec = match &self.backstop {
            Some(s) => Some(s.clone()),
            None => self
                .decider
                .backstop(&self.info)
                .map_err(|e| BackstopError::Unavailable(e.to_string()))?
                .map(|v| Spec::from_json(&v))
                .transpose()?,
        };
        let applied = spec.as_ref().map(crate::backstop::build).transpose()?;
        // Without a backstop the tool's signals are still scoped to its
        // sandbox, where the kernel can (see `backstop::signal_scope_only`).
        let scope_only = match &applied {
            Some(_) => None,
            None => crate::backstop::signal_scope_only()?,
        };
        let plan = Plan::new(&self.info.id, &self.limits)?;
        let signals_scoped_alone = scope_only.is_some();
        match self.spawn_planned(cmd, program, &plan, applied.as_ref(), scope_only) {
            Ok(mut s) => {
                s.plan = plan;
                s.backstop = applied;
                s.signals_scoped_alone = signals_scoped_alone;
                Ok(s)
            }
            Err(e) => {
                plan.kill_all();
                plan.remove();
                Err(e)
            }
        }
    }

    fn child_setup(
        &self,
        plan: &Plan,
        backstop: Option<&Applied>,
        scope_only: Option<Arc<OwnedFd>>,
    ) -> sys::ChildSetup {
        let cstring =
            |p: PathBuf| std::ffi::CString::new(p.into_os_string().into_vec()).unwrap_or_default();
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        sys::ChildSetup {
            new_session: self.new_session,
            cgroup_procs: plan.procs_files().into_iter().map(cstring).collect(),
            // RLIMIT_NOFILE is set after the listener is made. No core
            // dumps, ever: the kernel writes them itself, past the broker,
            // into the tool's working directory (or where `core_pattern`
            // says), with contents of the tool's choosing (found by review).
            // As every limit set here, the tool cannot raise it (the child
            // gives up `CAP_SYS_RESOURCE`). A `|program` core pattern runs
            // whatever the limit: the supervisor refuses writes to it
            // (`names_a_program_the_kernel_runs`).
            rlimits: plan
                .rlimits
                .iter()
                .filter(|r| r.resource != libc::RLIMIT_NOFILE as i32)
                .map(|r| (r.resource, r.value))
                .chain([(libc::RLIMIT_CORE as i32, 0)])
                .collect(),
            nofile: plan.nofile(),
            network_none: self
                .network_none
                .then(|| sys::NetworkNone::new(uid != 0, uid, gid)),
            // Wherever the child may make one: with CAP_SYS_ADMIN (root), or
            // in the user namespace `network_none` makes. Otherwise the tool
            // shares the host's (docs/threat-model.md).
            ipc_ns: self.network_none
                || match sys::thread_effective_caps() {
                    Ok(caps) => caps & CAP_SYS_ADMIN != 0,
                    Err(e) => {
                        tracing::warn!(error = %e,
                            "cannot read this thread's capabilities: the tool shares the host's IPC namespace");
                        false
                    }
                },
            user: self.user,
            landlock: backstop.and_then(|b| b.ruleset.clone()).or(scope_only),
        }
    }

    fn spawn_planned(
        &self,
        cmd: &mut Command,
        program: Arc<sys::BpfProgram>,
        plan: &Plan,
        backstop: Option<&Applied>,
        scope_only: Option<Arc<OwnedFd>>,
    ) -> Result<Sandboxed, SpawnError> {
        let backstop_for_opener = backstop.cloned();
        let (report_r, report_w) = sys::pipe_above_stdio().map_err(SpawnError::Supervisor)?;
        let (taken_r, taken_w) = sys::pipe_above_stdio().map_err(SpawnError::Supervisor)?;
        let taken = sys::TakenPipe {
            read: taken_r.as_raw_fd(),
            write: taken_w.as_raw_fd(),
        };
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<(Arc<Supervisor>, i32)>>();
        let setup_failed = Arc::new(std::sync::Mutex::new(None));
        let failed_in_thread = setup_failed.clone();
        let decider = self.decider.clone();
        let info = self.info.clone();
        let mut broker_sockets = default_broker_sockets();
        broker_sockets.extend(self.broker_sockets.iter().cloned());
        let protected = self.protected.clone();
        std::thread::Builder::new()
            .name("cordon-supervisor".into())
            .spawn(move || {
                let taken = take_listener(report_r);
                if let Ok(Report::Listener(pid, ..)) = &taken {
                    sys::starting(*pid);
                    // The child closes its own copy, then execs. Our read
                    // end is open until after: no SIGPIPE if it died.
                    let _ = nix::unistd::write(&taken_w, &[1]);
                }
                drop(taken_w);
                drop(taken_r);
                match taken {
                    Ok(Report::SetupFailed(step, errno)) => {
                        *failed_in_thread.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((step, errno));
                    }
                    Ok(Report::Listener(pid, pidfd, listener)) => {
                        let kill_child = || {
                            let _ = sys::pidfd_kill(&pidfd, libc::SIGKILL);
                        };
                        let listener = Arc::new(listener);
                        let exec = match ExecVerifier::start(listener.clone(), pid) {
                            Ok(e) => e,
                            Err(e) => {
                                // Nobody would answer the child's exec.
                                kill_child();
                                let _ = ready_tx.send(Err(e));
                                return;
                            }
                        };
                        let opener = match backstop_for_opener.as_ref().map(Opener::start).transpose() {
                            Ok(o) => o.flatten(),
                            Err(e) => {
                                kill_child();
                                let _ = ready_tx.send(Err(e));
                                return;
                            }
                        };
                        // Read at the first check, once the broker is
                        // ready: an embedded store still opening changes its
                        // own directory meanwhile. One that failed fails
                        // every decision, the exec's first.
                        let broker = decider.clone();
                        let protected = Protected::deferred(
                            &protected,
                            Box::new(move || {
                                if let Err(e) = broker.ready() {
                                    tracing::debug!(error = %e, "the broker is not ready");
                                }
                            }),
                        );
                        let sup = Arc::new(Supervisor::new(
                            listener,
                            decider,
                            info,
                            broker_sockets,
                            protected,
                            exec,
                            opener,
                        ));
                        let _ = ready_tx.send(Ok((sup.clone(), pid)));
                        let run = std::panic::AssertUnwindSafe(|| sup.run());
                        match std::panic::catch_unwind(run) {
                            Ok(Ok(())) => {}
                            // Fail closed: without its supervisor the tool must
                            // not go on (before its exec it would wait forever,
                            // after it its brokered calls would hang).
                            Ok(Err(e)) => {
                                tracing::error!(pid, error = %e, "the supervisor failed; killing the sandbox");
                                kill_child();
                            }
                            Err(_) => {
                                tracing::error!(pid, "the supervisor panicked; killing the sandbox");
                                kill_child();
                            }
                        }
                    }
                    Ok(Report::Nothing) => {} // the child failed before loading the filter
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(SpawnError::Supervisor)?;
        let spent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        sys::prepare_child(
            cmd,
            self.child_setup(plan, backstop, scope_only),
            report_w.as_raw_fd(),
            spent.clone(),
        );
        sys::install_filter_before_exec(cmd, program, report_w.as_raw_fd(), taken, plan.nofile());
        // Until the child is among the tools: `spawn` returns once its exec
        // is decided, and meanwhile another sandbox's end must not take it
        // for an orphan.
        let spawning = SPAWNING.read().unwrap_or_else(|p| p.into_inner());
        let spawned = cmd.spawn();
        spent.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(report_w);
        let program_name = String::from_utf8_lossy(cmd.get_program().as_bytes()).into_owned();
        let child = match spawned {
            Ok(c) => c,
            Err(source) => {
                // Reaped by `spawn`: nothing for a sweep to spare.
                drop(spawning);
                // Wait for the supervisor thread to read the child's report:
                // a setup step that failed is cordon's failure, not the exec's,
                // and so is an exec denied without a decision or a
                // verification (the only call the supervisor has had: each
                // is counted before the answer).
                let ready = ready_rx.recv();
                // Reaped by `spawn` (after the supervisor thread named it,
                // before its `ready`): a start given up later must not kill
                // another process by its pid.
                sys::starting(0);
                let undecided = matches!(&ready, Ok(Ok((sup, _)))
                    if sup.counters().undecided > 0 || sup.exec_refusals() > 0);
                let denied = matches!(&ready, Ok(Ok((sup, _))) if sup.counters().denied > 0);
                let failed = *setup_failed.lock().unwrap_or_else(|p| p.into_inner());
                // A store that did not open denies every call, the exec's
                // first, as an ordinary denial would. Asked only after a
                // denial, which the store's open had to end first: a spawn
                // that failed before any decision does not wait for it.
                let unrecorded = || denied.then(|| self.decider.ready().err()).flatten();
                return Err(match failed {
                    Some((step, errno)) => SpawnError::Setup {
                        step: step.describe(),
                        source: io::Error::from_raw_os_error(errno),
                    },
                    None if undecided => SpawnError::Undecided {
                        program: program_name,
                        source,
                    },
                    None if let Some(e) = unrecorded() => SpawnError::Unrecorded {
                        program: program_name,
                        reason: e.to_string(),
                    },
                    None => SpawnError::Exec {
                        program: program_name,
                        source,
                    },
                });
            }
        };
        // Registered at once: another sandbox of this host that ends
        // meanwhile must not take it for an orphan.
        let tool = ToolPid::new(child.id() as i32);
        drop(spawning);
        // From here on a failure kills and reaps the tool (not yet reaped:
        // its pid is still its own), rather than leave it unsupervised or a
        // zombie; its descendants go with the cgroup (`spawn`).
        let abandon = |mut child: std::process::Child, e: io::Error| {
            let _ = child.kill();
            let _ = child.wait();
            SpawnError::Supervisor(e)
        };
        let (supervisor, pid) = match ready_rx.recv() {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(abandon(child, e)),
            Err(_) => {
                let e = io::Error::other("supervisor thread ended");
                return Err(abandon(child, e));
            }
        };
        debug_assert_eq!(pid as u32, child.id());
        let pidfd = match sys::pidfd_open(pid) {
            Ok(p) => p,
            Err(e) => return Err(abandon(child, e)),
        };
        let argv: Vec<Vec<u8>> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.as_bytes().to_vec())
            .collect();
        tracing::debug!("tool exec'd");
        let started = self.decider.lifecycle(Lifecycle {
            sandbox: Some(self.info.clone()),
            event: Some(Event::Started(SandboxStarted { pid, argv })),
        });
        let running = Sandboxed {
            pid,
            pidfd,
            supervisor,
            decider: self.decider.clone(),
            info: self.info.clone(),
            plan: Plan::default(),
            backstop: None,
            signals_scoped_alone: false,
            timeout: self.limits.timeout,
            started: std::time::Instant::now(),
            group: self.new_session,
            reaped: std::sync::atomic::AtomicBool::new(false),
            _tool: tool,
        };
        if let Err(e) = started {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = running.reap();
            return Err(SpawnError::Record(e.to_string()));
        }
        Ok(running)
    }
}

/// What the child reported before exec.
enum Report {
    /// The child's pid, a pidfd on it (signals by pid could reach a reused
    /// one once the child is reaped), and its listener.
    Listener(i32, OwnedFd, Listener),
    /// A setup step failed with this errno; the child exits.
    SetupFailed(sys::SetupStep, i32),
    /// The child closed the pipe without reporting (its exec failed, or it
    /// died before loading the filter; spawn says why).
    Nothing,
}

/// The supervisor reads what it knows of the tool from `/proc/TID`, so
/// `/proc` must be this pid namespace's (`unshare -p` without `--mount-proc`
/// leaves the parent's, where those numbers name other processes).
fn proc_is_ours() -> Result<(), SpawnError> {
    let me = std::process::id().to_string();
    match std::fs::read_link("/proc/self") {
        Ok(p) if p.as_os_str() == me.as_str() => Ok(()),
        Ok(p) => Err(SpawnError::Setup {
            step: "/proc belongs to another pid namespace",
            source: io::Error::other(format!(
                "/proc/self is {} but this process is {me}; mount a /proc of this namespace \
                 (unshare --mount-proc)",
                p.display()
            )),
        }),
        Err(source) => Err(SpawnError::Setup {
            step: "cannot read /proc/self",
            source,
        }),
    }
}

/// Where `cordon serve` listens by default: for root, and for other users
/// under `$XDG_RUNTIME_DIR` (see [`default_broker_sockets`]).
pub const DEFAULT_BROKER_SOCKETS: [&str; 1] = ["/run/cordon/broker.sock"];

/// Every default broker socket location, `$XDG_RUNTIME_DIR`'s included.
pub fn default_broker_sockets() -> Vec<PathBuf> {
    let mut sockets: Vec<PathBuf> = DEFAULT_BROKER_SOCKETS.iter().map(PathBuf::from).collect();
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        sockets.push(PathBuf::from(dir).join("cordon/broker.sock"));
    }
    sockets
}

/// Reads the child's report and duplicates its listener.
fn take_listener(report: OwnedFd) -> io::Result<Report> {
    let mut buf = [0u8; CHILD_REPORT_LEN];
    let mut f = std::fs::File::from(report);
    match f.read_exact(&mut buf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Report::Nothing),
        Err(e) => return Err(e),
    }
    let pid = i32::from_ne_bytes(buf[..4].try_into().expect("4"));
    let fd = i32::from_ne_bytes(buf[4..].try_into().expect("4"));
    if pid <= 0 {
        // A failed setup step (negative) or nonsense (0: `kill(0)` below
        // would hit our own group). Either way the child does not run.
        return Ok(
            match pid.checked_neg().and_then(sys::SetupStep::from_code) {
                Some(step) => Report::SetupFailed(step, fd),
                None => Report::Nothing,
            },
        );
    }
    let listener =
        sys::pidfd_open(pid).and_then(|pidfd| sys::pidfd_getfd(&pidfd, fd).map(|l| (pidfd, l)));
    match listener {
        Ok((pidfd, l)) => Ok(Report::Listener(pid, pidfd, Listener::from_fd(l))),
        Err(e) => {
            // Nobody will answer the child's exec. Without the taken byte
            // it fails its spawn (`ECHILD`); killed all the same, so that it
            // never runs unsupervised whatever it does meanwhile.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(e)
        }
    }
}

/// For command-line front ends: make this process non-dumpable, so the
/// kernel refuses same-uid processes — the tool — access to its
/// `/proc/PID/{mem,environ,fd/…}`. The supervisor already refuses such
/// opens it performs; this also covers the ones the kernel performs after
/// a "continue" (an `O_PATH` open whose path was swapped after the check).
/// Library hosts decide for themselves: it also disables core dumps.
pub fn harden_supervisor() -> io::Result<()> {
    nix::sys::prctl::set_dumpable(false).map_err(io::Error::from)
}

/// For command-line front ends, after the sandbox is spawned (the tool keeps
/// the limit it had): raises this process's soft limit on open files to its
/// hard limit. A blocked send holds the fds it passes (up to 253) on a helper
/// thread, up to 256 of them at once, so a tool could otherwise use up the
/// supervisor's usual 1024 and have every later call fail. Returns the new
/// soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    Ok(hard.max(soft))
}

/// For command-line front ends, before [`Sandbox::spawn`]: SIGINT, SIGQUIT,
/// SIGTERM and SIGHUP that come while the tool is being started are kept,
/// and relayed to it by [`Sandboxed::relay_signals`], instead of ending this
/// process then and leaving the tool to run unsupervised. The same signal
/// again, a second or more after the first and before the relays, gives the
/// start up: the child and its group are killed and this process exits with
/// 128 + the signal from the handler (no destructor runs; see
/// [`rmdir_if_start_given_up`]).
pub fn hold_signals() -> io::Result<()> {
    sys::hold_signals()
}

/// For command-line front ends that use [`hold_signals`]: a start given up
/// (the same signal again, a second or more later) ends the process from
/// the signal handler, where no destructor runs; `dir` (a private temp dir)
/// is removed then if it is empty.
pub fn rmdir_if_start_given_up(dir: &std::path::Path) {
    sys::rmdir_if_start_given_up(dir)
}

/// For command-line front ends: become the subreaper of the sandbox, so
/// descendants that detach (double fork, `setsid`) are re-parented here and
/// can be found and killed when the tool ends.
/// Only for a process whose children are all sandboxes: when a sandbox
/// ends, every other child of this process (but the tools of its other
/// sandboxes and their connectors) is taken for one of its detached
/// descendants and killed.
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)?;
    SUBREAPER.store(true, std::sync::atomic::Ordering::Relaxed);
    let leader = std::process::id();
    if let Ok(f) = std::fs::File::open(format!("/proc/self/task/{leader}/children")) {
        let _ = LEADER_CHILDREN.set(f);
    }
    Ok(())
}

/// The children of this process's main thread, opened when it became the
/// subreaper: orphans are re-parented to it. Read again in place (`pread`)
/// when listing every thread's children fails for want of an fd: a tool
/// can fill our fd table (sends that never end hold our copies of the fds
/// they pass; helpers, the task cache), and then a detached descendant
/// outlived cordon (found by review).
static LEADER_CHILDREN: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();

/// Set by [`become_subreaper`]: orphans re-parented here are the sandbox's.
static SUBREAPER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// For command-line front ends that print to a pipe (`cordon policy eval |
/// head`): die of SIGPIPE like other Unix tools instead of failing to print.
pub fn default_sigpipe() {
    sys::default_sigpipe();
}

/// A running sandboxed command.
#[derive(Debug)]
pub struct Sandboxed {
    pid: i32,
    pidfd: OwnedFd,
    supervisor: Arc<Supervisor>,
    decider: Arc<dyn Decider>,
    info: SandboxInfo,
    plan: Plan,
    backstop: Option<Applied>,
    /// Without a backstop, its signals were still scoped to the sandbox.
    signals_scoped_alone: bool,
    timeout: Option<std::time::Duration>,
    started: std::time::Instant,
    /// The tool leads its own process group.
    group: bool,
    /// Reaped (by `wait`, or a failed spawn): nothing is left to end.
    reaped: std::sync::atomic::AtomicBool,
    /// Its pid among the tools of this process, while the handle lives.
    _tool: ToolPid,
}

/// Held (shared) by a spawn, of a tool or a connector, from before its fork
/// until the child is named among those a subreaper's sweep spares
/// ([`TOOLS`], `connector::is_ours`); held alone by the sweep
/// (`kill_orphans`): a child forked in between would be taken for an
/// orphan, killed and reaped, and its pid, now free, used by the spawn.
pub(crate) static SPAWNING: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// The tools of the sandboxes alive in this process: a subreaper's sweep at
/// one sandbox's end (`kill_orphans`) spares the others.
static TOOLS: std::sync::Mutex<std::collections::BTreeSet<i32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

#[derive(Debug)]
struct ToolPid(i32);

impl ToolPid {
    fn new(pid: i32) -> ToolPid {
        TOOLS.lock().unwrap_or_else(|p| p.into_inner()).insert(pid);
        ToolPid(pid)
    }
}

impl Drop for ToolPid {
    fn drop(&mut self) {
        TOOLS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}

/// A handle dropped without `wait` ends what it started: the tool and its
/// tree are killed and reaped, and the cgroup is removed (no exit record:
/// nobody waited for one). Like `std::process::Child`, but a sandbox left
/// running unwatched would keep its cgroup and supervisor for good.
impl Drop for Sandboxed {
    fn drop(&mut self) {
        if self.reaped.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        tracing::warn!(
            pid = self.pid,
            "a sandbox handle dropped without wait: killing it"
        );
        let _ = sys::pidfd_kill(&self.pidfd, libc::SIGKILL);
        if self.reap().is_ok() {
            self.plan.remove();
        }
    }
}

impl Sandboxed {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    pub fn sandbox_id(&self) -> &str {
        &self.info.id
    }

    /// For command-line front ends: survive SIGINT/SIGQUIT (the terminal
    /// delivers them to the tool too) and relay SIGTERM/SIGHUP to the tool,
    /// so the supervisor outlives the tool it guards.
    pub fn relay_signals(&self) -> io::Result<()> {
        sys::relay_signals_to(self.pid, self.group)
    }

    /// Whether, without a backstop, the tool's signals were scoped to its
    /// sandbox anyway (Landlock ABI 6 on).
    pub fn signals_scoped_alone(&self) -> bool {
        self.signals_scoped_alone
    }

    /// The kernel backstop applied, if one was asked for.
    pub fn backstop(&self) -> Option<&Applied> {
        self.backstop.as_ref()
    }

    /// Limits that could not be enforced as asked (no cgroup).
    pub fn warnings(&self) -> &[String] {
        &self.plan.warnings
    }

    /// Kills everything the sandbox started: its cgroup, its process group,
    /// and (for a subreaper) descendants that detached from both.
    fn kill_tree(&self) {
        if self.plan.has_cgroup() {
            self.plan.kill_all();
        }
        if self.group {
            sys::kill_group(self.pid, libc::SIGKILL);
        }
        kill_orphans(self.pid);
    }

    /// What the supervisor has seen so far.
    pub fn counters(&self) -> Counters {
        self.supervisor.counters()
    }

    /// Waits for the tool to exit; when the timeout runs out first, kills
    /// the whole tree. Returns the status and whether the timeout struck.
    fn reap(&self) -> io::Result<(ExitStatus, bool)> {
        // Wait for exit through the pidfd, never with waitpid on the pid: the
        // exec verifier may have the process attached, and a plain waitpid
        // would consume its ptrace stops.
        let mut timed_out = false;
        loop {
            let mut fds = [nix::poll::PollFd::new(
                self.pidfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let wait = match self.timeout {
                Some(t) if !timed_out => {
                    let left = t.saturating_sub(self.started.elapsed());
                    nix::poll::PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
                        .unwrap_or(nix::poll::PollTimeout::MAX)
                }
                _ => nix::poll::PollTimeout::NONE,
            };
            match nix::poll::poll(&mut fds, wait) {
                Ok(0) => {
                    timed_out = true;
                    self.kill_tree();
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(self.pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    // Said after the kill: a tool that stopped the terminal
                    // we share (`tcflow(TCOOFF)`) blocks this write, and so
                    // held off its own end (found by review).
                    tracing::warn!(pid = self.pid, "timeout: killed the sandbox");
                }
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // Nothing outlives the tool. Before reaping it: until then its pid,
        // which names its process group, cannot be reused. Nor may a relayed
        // signal be sent there after it (`stop_relaying` waits for none).
        self.kill_tree();
        sys::stop_relaying();
        loop {
            let reaped = || self.reaped.store(true, std::sync::atomic::Ordering::SeqCst);
            match waitid(Id::PIDFd(self.pidfd.as_fd()), WaitPidFlag::WEXITED) {
                Ok(WaitStatus::Exited(_, code)) => {
                    reaped();
                    return Ok((ExitStatus::from_raw((code & 0xff) << 8), timed_out));
                }
                Ok(WaitStatus::Signaled(_, sig, core)) => {
                    reaped();
                    return Ok((
                        ExitStatus::from_raw(sig as i32 | if core { 0x80 } else { 0 }),
                        timed_out,
                    ));
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    if e == nix::errno::Errno::ECHILD {
                        reaped();
                    }
                    return Err(e.into());
                }
            }
        }
    }

    /// Waits for the command to exit and records the exit (with the
    /// supervisor's counters) in the audit store.
    pub fn wait(self) -> io::Result<ExitStatus> {
        let (status, timed_out) = self.reap()?;
        tracing::debug!("tool exited");
        let usage = self.plan.usage();
        let limit = if timed_out {
            "timeout"
        } else if let Some(l) = self.plan.limit_hit() {
            l
        } else if status.signal() == Some(libc::SIGXFSZ) {
            "max-file-size"
        } else {
            ""
        };
        self.plan.remove();
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        let c = self.supervisor.counters();
        let mut detail = format!(
            "exited with status {code}; {} decisions, {} denied",
            c.decisions, c.denied
        );
        if c.undecided > 0 {
            detail.push_str(&format!(", {} denied without a decision", c.undecided));
        }
        if c.exec_killed > 0 {
            detail.push_str(&format!(", {} execs killed on mismatch", c.exec_killed));
        }
        if c.create_races > 0 {
            detail.push_str(&format!(
                ", {} creates decided again (the name was taken since the lookup)",
                c.create_races
            ));
        }
        if c.lease_waits > 0 {
            detail.push_str(&format!(
                ", {} opens found a lease on their file being broken",
                c.lease_waits
            ));
        }
        if !c.forbidden.is_empty() {
            let list: Vec<String> = c
                .forbidden
                .iter()
                .map(|(k, v)| format!("{k}×{v}"))
                .collect();
            detail.push_str(&format!("; forbidden by the filter: {}", list.join(", ")));
        }
        if !limit.is_empty() {
            detail.push_str(&format!("; stopped by the {limit} limit"));
        }
        let exited = SandboxExited {
            pid: self.pid,
            status: code,
            detail,
            limit: limit.into(),
            memory_peak_bytes: usage.memory_peak,
            cpu_usec: usage.cpu_usec,
            pids_peak: usage.pids_peak,
        };
        if let Err(e) = self.decider.lifecycle(Lifecycle {
            sandbox: Some(self.info.clone()),
            event: Some(Event::Exited(exited.clone())),
        }) {
            // What the record would have said, so the log keeps it.
            tracing::error!(
                error = %e,
                sandbox = %self.info.id,
                pid = exited.pid,
                status = exited.status,
                detail = %exited.detail,
                limit = %exited.limit,
                "the sandbox exit could not be recorded"
            );
        }
        // Durable before the caller moves on (or exits without dropping the
        // store, as `cordon run` does).
        if let Err(e) = self.decider.flush() {
            tracing::error!(error = %e, "the audit store could not be flushed");
        }
        Ok(status)
    }
}

/// Kills and reaps the processes re-parented to this one (as a subreaper):
/// descendants of the tool that detached. Repeats while killing one
/// re-parents its own children here. The tool itself (`tool`) is left to
/// its pidfd wait; the tools of other sandboxes of this process, and the
/// connectors, are spared.
fn kill_orphans(tool: i32) {
    // A library host's children are its own business unless it asked.
    if !SUBREAPER.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let _alone = SPAWNING.write().unwrap_or_else(|p| p.into_inner());
    for _ in 0..100 {
        let children = match own_children() {
            Ok(children) => children,
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "cannot list this process's children: descendants of the tool that detached from it may outlive it"
                );
                return;
            }
        };
        let children: Vec<i32> = {
            let tools = TOOLS.lock().unwrap_or_else(|p| p.into_inner());
            children
                .into_iter()
                .filter(|&p| p != tool && !tools.contains(&p) && !crate::connector::is_ours(p))
                .collect()
        };
        if children.is_empty() {
            return;
        }
        for pid in children {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}

/// Children of every thread of this process; with no fd left to list them,
/// the main thread's (where orphans go), from the file kept open.
fn own_children() -> io::Result<Vec<i32>> {
    match every_threads_children() {
        Err(e)
            if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE) =>
        {
            let kept = LEADER_CHILDREN.get().ok_or(e)?;
            let mut text = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = std::os::unix::fs::FileExt::read_at(kept, &mut buf, text.len() as u64)?;
                if n == 0 {
                    break;
                }
                text.extend_from_slice(&buf[..n]);
            }
            Ok(String::from_utf8_lossy(&text)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .collect())
        }
        other => other,
    }
}

/// Children of every thread of this process. A thread that ended meanwhile
/// has none; any other failure (no fd left) is an error, not an empty list.
fn every_threads_children() -> io::Result<Vec<i32>> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task")? {
        match std::fs::read_to_string(t?.path().join("children")) {
            Ok(list) => out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // ESRCH: a thread that is exiting.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// A path's bytes without repeated slashes, `.` components or a trailing
/// slash (what [`Path::components`] keeps).
fn tidy(dir: PathBuf) -> Vec<u8> {
    dir.components()
        .collect::<PathBuf>()
        .into_os_string()
        .into_vec()
}
