//! `cordon run`: run a command under the sandbox, with an embedded broker
//! (default) or a running `cordon serve`.

use std::{
    ffi::OsString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use cordon_broker::{
    Broker, Permissive,
    audit::{AuditLog, Durability, Opening},
    client::BrokerUri,
};
use cordon_shim::{Decider, Embedded, Limits, Remote, Sandbox, SpawnError};

use super::{parse_label, serve::DurabilityArg};

/// Exit statuses of `cordon run` itself (like `env`, `nohup`, `timeout`).
pub const EXIT_CORDON_FAILED: u8 = 125;
pub const EXIT_CANNOT_EXECUTE: u8 = 126;
pub const EXIT_NOT_FOUND: u8 = 127;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
cordon run -- python3 script.py\n  \
cordon run --policy policies/ --label tool=web-fetch -- curl https://example.com\n  \
cordon run --broker unix:///run/cordon/broker.sock -- ./build.sh\n\n\
Every open, connect, bind, listen, datagram send to an explicit address and exec of the command and its \
descendants is decided by the policy and recorded in the audit store; see `cordon audit`. Without --broker \
the broker runs inside this process with the built-in default policy (read the system, read/write the \
current directory and a private TMPDIR, exec system binaries, no network). Whatever the policy says, the \
command cannot open cordon's own files: the embedded audit store, the client key in CORDON_TLS_KEY, and \
(for writing) the --policy paths and the CA and certificate in CORDON_TLS_CA and CORDON_TLS_CERT.\n\n\
Signals: SIGINT, SIGQUIT, SIGTERM and SIGHUP are relayed to the command. One that comes while it starts is \
kept for it; the same one again a second or more later gives the start up, killing the command.\n\n\
Exit status: the command's own (128+N if killed by signal N); 125 if cordon failed (no broker, bad \
policy, an audit store that did not open); 126 if the command could not be executed (including an \
exec the policy denied; 125 if it was denied without a decision or a verification, the broker lost or \
too slow); 127 if it was not found. A run whose audit records could not all be stored exits 125, \
whatever the command's status (which the message gives).")]
pub struct RunArgs {
    /// Policy file or directory (repeatable). Default: the built-in policy. Embedded broker
    /// only: a running broker decides with its own.
    #[arg(long, value_name = "PATH", conflicts_with = "broker")]
    policy: Vec<PathBuf>,
    /// Use a running broker instead of the embedded one: unix:///PATH, or https://HOST:PORT
    /// (mutual TLS from CORDON_TLS_CA, CORDON_TLS_CERT, CORDON_TLS_KEY; `tls` builds). A unix
    /// broker must run as root, as this user, or as a uid in CORDON_BROKER_UID (comma-separated).
    #[arg(long, value_name = "URI")]
    broker: Option<String>,
    /// Audit store of the embedded broker
    /// [default: ${XDG_STATE_HOME:-~/.local/state}/cordon/audit].
    #[arg(long, value_name = "DIR", conflicts_with = "broker")]
    audit_db: Option<PathBuf>,
    /// Label for the policy and the audit records (repeatable), e.g. tool=git.
    #[arg(long, value_name = "K=V", value_parser = parse_label)]
    label: Vec<(String, String)>,
    /// How long a brokered call waits for a remote decision before it is denied.
    /// The broker is told (less a margin for the way back): an allow it
    /// answers later is followed in its store by the denial the tool got.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = super::wait_duration)]
    deadline: Duration,
    /// Embedded broker: when an answer may be given relative to its audit flush.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Batched, conflicts_with = "broker")]
    durability: DurabilityArg,
    /// Embedded broker, batched durability: longest time a record waits for its flush.
    #[arg(long, value_name = "DURATION", default_value = "10ms", value_parser = super::flush_window, conflicts_with = "broker")]
    flush_window: Duration,
    /// Embedded broker: longest policy evaluation before the call is denied.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = super::wait_duration, conflicts_with = "broker")]
    eval_timeout: Duration,
    /// Embedded broker: verdicts kept for inputs already evaluated (a repeated call skips
    /// evaluation; every call is still recorded); 0 evaluates every call.
    #[arg(long, value_name = "N", default_value_t = cordon_broker::policy::DEFAULT_MEMO_CAPACITY, conflicts_with = "broker")]
    decision_memo: usize,
    /// Enforce nothing: allow every brokered call and record what the policy would deny as
    /// `would_deny`, with its reason (for writing policies; see `cordon learn`). Embedded broker
    /// only: a shared broker is made permissive by its operator (`cordon serve --permissive-label`).
    #[arg(long, conflicts_with = "broker")]
    permissive: bool,
    /// Memory cap for the whole tree (512M, 2G, bytes), swap off; the tool is OOM-killed past it.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, help_heading = "Limits")]
    memory: Option<u64>,
    /// CPU time cap, in CPUs (fractional: 0.5 is half of one CPU).
    #[arg(long, value_name = "N", help_heading = "Limits")]
    cpus: Option<f64>,
    /// Most processes and threads at once (a fork bomb stops here).
    #[arg(long, value_name = "N", help_heading = "Limits")]
    pids: Option<u64>,
    /// Wall-clock limit; the whole tree is killed when it runs out (exit 137).
    #[arg(long, value_name = "DURATION", value_parser = |s: &str| super::duration_between(s, Duration::from_millis(1), Duration::from_secs(10 * 31_557_600)), help_heading = "Limits")]
    timeout: Option<Duration>,
    /// Largest file the tool may write (writes past it fail with EFBIG / SIGXFSZ).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, help_heading = "Limits")]
    max_file_size: Option<u64>,
    /// Most open file descriptors per process. Neither this limit nor --max-file-size can be
    /// raised by the tool, as root neither (it gives up CAP_SYS_RESOURCE).
    #[arg(long, value_name = "N", help_heading = "Limits")]
    max_open_files: Option<u64>,
    /// `none`: a network namespace with only loopback (nothing else reachable, whatever the
    /// policy says); `brokered` (default): the host's network, every connect decided by policy.
    #[arg(long, value_enum, default_value_t = NetworkMode::Brokered, help_heading = "Isolation")]
    network: NetworkMode,
    /// Run the tool as this user (name or UID[:GID]); needs root. The supervisor's opens on the
    /// tool's behalf use the same credentials.
    #[arg(long, value_name = "USER", help_heading = "Isolation")]
    user: Option<String>,
    /// Print the kernel backstop (Landlock rules from the policy's data.cordon.backstop) that was
    /// applied, and what this kernel could not enforce, on stderr.
    #[arg(long, help_heading = "Isolation")]
    explain_backstop: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkMode {
    Brokered,
    None,
}

/// `512M`, `2G`, `1048576`: binary units (K = 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512M, 2G)"))?;
    let mult: u64 = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches('B')
        .trim_end_matches('I')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit (K, M, G, T)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `nobody`, `65534`, `65534:65534`: the uid and gid to run as.
fn parse_user(s: &str) -> anyhow::Result<(u32, u32)> {
    let (user, group) = s.split_once(':').map_or((s, None), |(u, g)| (u, Some(g)));
    let (uid, default_gid) = match user.parse::<u32>() {
        Ok(uid) => (
            uid,
            nix::unistd::User::from_uid(uid.into())
                .ok()
                .flatten()
                .map_or(uid, |u| u.gid.as_raw()),
        ),
        Err(_) => {
            let u = nix::unistd::User::from_name(user)
                .ok()
                .flatten()
                .ok_or_else(|| super::usage(format!("--user {s}: no such user")))?;
            (u.uid.as_raw(), u.gid.as_raw())
        }
    };
    let gid = match group {
        None => default_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(g) => g,
            Err(_) => nix::unistd::Group::from_name(g)
                .ok()
                .flatten()
                .ok_or_else(|| super::usage(format!("--user {s}: no such group")))?
                .gid
                .as_raw(),
        },
    };
    Ok((uid, gid))
}

/// Runs the command; errors are reported here so they map to 125/126/127.
pub fn run(args: RunArgs) -> ExitCode {
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cordon: {e:#}");
            ExitCode::from(EXIT_CORDON_FAILED)
        }
    }
}

/// `PATH` lookup like a shell's, so "not found" is ours to report (127).
fn find_program(name: &OsString) -> Option<PathBuf> {
    if name.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(name));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The embedded broker, its store still opening ([`Opening`]): the tool's
/// fork and its supervisor's start overlap the open (~4 ms), and its first
/// exec waits for the store, in which its decision is recorded.
fn embedded(args: &RunArgs, db: &Path) -> anyhow::Result<(Embedded, Arc<Opening>)> {
    let durability = match args.durability {
        DurabilityArg::Strict => Durability::Strict,
        DurabilityArg::Batched => Durability::Batched {
            window: args.flush_window,
        },
    };
    let store = Opening::start(db, durability).map_err(|e| super::audit_open_error(db, e))?;
    let store = Arc::new(store);
    let policy = super::load_policy(&args.policy, args.eval_timeout, false, args.decision_memo);
    // A store that cannot be opened is said first, as when it was waited for
    // before the policy's compile.
    let policy = match policy {
        Ok(policy) => policy,
        Err(e) => {
            if let Some(store_error) = store.take_error() {
                return Err(super::audit_open_error(db, store_error));
            }
            return Err(e);
        }
    };
    let permissive = if args.permissive {
        Permissive::All
    } else {
        Permissive::Off
    };
    let audit: Arc<dyn AuditLog> = store.clone();
    Ok((
        Embedded(Broker::new(policy, audit).with_permissive(permissive)),
        store,
    ))
}

fn private_tmpdir(sandbox_id: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("TMPDIR")
        .filter(|t| !t.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    // The policy matches paths under it by prefix, and the tool's opens
    // arrive resolved: a TMPDIR that is relative, holds `..` or goes
    // through a symlink is named as the kernel would name the files in it.
    // Resolved before the directory is made, which is then ours by name.
    let base = std::fs::canonicalize(&base)
        .with_context(|| format!("cannot resolve TMPDIR {}", base.display()))?;
    let dir = base.join(format!("cordon-{sandbox_id}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create the private temp dir {}", dir.display()))?;
    Ok(dir)
}

fn run_inner(args: RunArgs) -> anyhow::Result<ExitCode> {
    let outcome = execute(&args)?;
    let mut code = outcome.code;
    // The sandbox flushed at its end; what a failing store still holds goes
    // to the log before this process exits without dropping the store.
    if let Some(audit) = &outcome.audit {
        audit.close();
    }
    // Decisions the tool acted on, or was refused for, without their
    // records, and (from a remote broker) lifecycle records it never took:
    // the run is cordon's failure, whatever the tool's status.
    // (An embedded decider counts its store's, closed above.)
    let lost = outcome.decider.as_ref().map_or(0, |d| d.lost());
    if lost > 0 {
        eprintln!(
            "cordon: {lost} audit record(s) of this run could not be stored (see the errors \
             above); the command's own exit status was {code}"
        );
        code = i32::from(EXIT_CORDON_FAILED);
    }
    // Everything is recorded and flushed (`wait` flushes): exit now rather
    // than wait for the store's threads to wind down in its destructor.
    tracing::debug!("exiting");
    std::process::exit(code);
}

impl RunArgs {
    /// The run `cordon learn` makes: permissive, embedded broker, default policy.
    pub(super) fn learning(
        command: Vec<OsString>,
        audit_db: PathBuf,
        label: Vec<(String, String)>,
    ) -> Self {
        Self {
            policy: vec![],
            broker: None,
            audit_db: Some(audit_db),
            label,
            deadline: Duration::from_secs(2),
            durability: DurabilityArg::Batched,
            flush_window: Duration::from_millis(10),
            eval_timeout: Duration::from_millis(250),
            decision_memo: cordon_broker::policy::DEFAULT_MEMO_CAPACITY,
            permissive: true,
            memory: None,
            cpus: None,
            pids: None,
            timeout: None,
            max_file_size: None,
            max_open_files: None,
            network: NetworkMode::Brokered,
            user: None,
            explain_backstop: false,
            command,
        }
    }
}

/// How a run ended.
pub(super) struct Outcome {
    /// The command's exit code, or cordon's 126/127.
    pub code: i32,
    pub sandbox_id: String,
    /// Whether the command started at all (its exec succeeded).
    pub started: bool,
    /// The embedded broker's audit store, flushed.
    pub audit: Option<Arc<dyn AuditLog>>,
    /// The broker, held so that its last reference (the compiled policy,
    /// the memo) is not freed on the way out: `run` exits without dropping
    /// it (~1 % of a run's CPU by profile; too little to time apart). It
    /// also counts a remote broker's lost records.
    pub decider: Option<Arc<dyn Decider>>,
}

/// Runs the command to its end.
pub(super) fn execute(args: &RunArgs) -> anyhow::Result<Outcome> {
    let Some(program) = find_program(&args.command[0]) else {
        eprintln!(
            "cordon: {}: command not found",
            Path::new(&args.command[0]).display()
        );
        return Ok(Outcome {
            code: EXIT_NOT_FOUND.into(),
            sandbox_id: String::new(),
            started: false,
            audit: None,
            decider: None,
        });
    };
    if args.permissive {
        eprintln!(
            "cordon: permissive mode: nothing is enforced; denials are recorded as would_deny"
        );
    }
    let mut audit = None;
    let mut opening: Option<Arc<Opening>> = None;
    // The embedded broker's store (protected from the tool below).
    let audit_db = args
        .audit_db
        .clone()
        .unwrap_or_else(super::default_audit_db);
    // Leaving with an error once the tool may have had answers: the records
    // of those answers must reach the store or, failing that, the log.
    let mut unstored_guard = UnstoredGuard(None);
    let (decider, broker_socket): (Arc<dyn Decider>, Option<PathBuf>) = match &args.broker {
        Some(uri) => {
            let parsed: BrokerUri = uri.parse()?;
            let socket = match &parsed {
                BrokerUri::Unix(p) => Some(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
                BrokerUri::Http(_) => None,
            };
            let remote = Remote::connect(&parsed, args.deadline)
                .context("refusing to start the tool without its broker")?;
            (Arc::new(remote), socket)
        }
        None => {
            let (e, store) = embedded(args, &audit_db)?;
            audit = Some(e.0.audit().clone());
            unstored_guard.0 = audit.clone();
            opening = Some(store);
            (Arc::new(e), None)
        }
    };
    let user = args.user.as_deref().map(parse_user).transpose()?;
    if user.is_some() && !nix::unistd::geteuid().is_root() {
        return Err(super::usage("--user needs root"));
    }
    let mut sandbox = Sandbox::new(decider.clone())
        .labels(args.label.iter().cloned().collect())
        .limits(Limits {
            memory: args.memory,
            cpus: args.cpus,
            pids: args.pids,
            timeout: args.timeout,
            max_file_size: args.max_file_size,
            max_open_files: args.max_open_files,
        })
        .network_none(args.network == NetworkMode::None);
    if let Some((uid, gid)) = user {
        sandbox = sandbox.user(uid, gid);
    }
    if let Some(s) = broker_socket {
        sandbox = sandbox.broker_socket(s);
    }
    // cordon's own files, the tool's uid's too: the embedded store (which
    // it could rewrite), the policy (read at start, so a change would
    // govern the next run) and the TLS client key (with which it could
    // speak to the broker as cordon) cannot be opened (the policy, the TLS
    // CA and certificate: for writing), whatever the policy says. Calls by path that are not
    // brokered (`unlink`, `rename`, `truncate`) are the Landlock
    // backstop's to confine.
    if args.broker.is_none() {
        sandbox = sandbox.protect(&audit_db);
        for policy in &args.policy {
            sandbox = sandbox.protect_writes(policy);
        }
    }
    if let Some(key) = std::env::var_os("CORDON_TLS_KEY").filter(|k| !k.is_empty()) {
        sandbox = sandbox.protect(key);
    }
    // The CA and client certificate are not secret, but a tool that
    // rewrote the CA would choose the broker the next run trusts.
    for var in ["CORDON_TLS_CA", "CORDON_TLS_CERT"] {
        if let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            sandbox = sandbox.protect_writes(path);
        }
    }
    let sandbox_id = sandbox.id().to_owned();
    let tmpdir = private_tmpdir(&sandbox_id)?;
    // Removed however `execute` ends, early returns included, and by the
    // signal handler if the start is given up.
    let _tmpdir_guard = RemoveOnDrop::new(tmpdir.clone());
    if let Some((uid, gid)) = user {
        nix::unistd::chown(&tmpdir, Some(uid.into()), Some(gid.into()))
            .with_context(|| format!("cannot give {} to --user", tmpdir.display()))?;
    }
    let sandbox = sandbox.tmpdir(&tmpdir);

    let mut cmd = Command::new(&program);
    cmd.arg0(&args.command[0])
        .args(&args.command[1..])
        .env("TMPDIR", &tmpdir);
    // Where cordon's own client certificate and key are: not the tool's
    // business (with a policy that let it read them, it could speak to the
    // broker as cordon).
    for var in ["CORDON_TLS_CA", "CORDON_TLS_CERT", "CORDON_TLS_KEY"] {
        cmd.env_remove(var);
    }
    tracing::debug!("spawning");
    cordon_shim::harden_supervisor().context("cannot make cordon non-dumpable")?;
    cordon_shim::become_subreaper().context("cannot become the sandbox's subreaper")?;
    // Until the relays are installed below: a SIGTERM while the tool starts
    // (with --broker that includes a round trip) would end cordon and leave
    // the tool running unsupervised.
    cordon_shim::hold_signals().context("cannot install signal handlers")?;
    let result = sandbox.spawn(&mut cmd);
    tracing::debug!("spawned");
    // A store that did not open denied the tool's exec: its error is the
    // reason, not the denial. Only then: another failed spawn does not wait
    // for a store still opening (or one that never will).
    if matches!(result, Err(SpawnError::Unrecorded { .. }))
        && let Some(e) = opening.as_ref().and_then(|o| o.take_error())
    {
        return Err(super::audit_open_error(&audit_db, e));
    }
    let started = result.is_ok();
    let code = match result {
        Ok(child) => {
            // Not fatal: the tool runs either way, and a failing call is denied.
            if let Err(e) = cordon_shim::raise_fd_limit() {
                tracing::warn!(error = %e, "cannot raise the open-file limit");
            }
            for w in child.warnings() {
                eprintln!("cordon: warning: {w}");
            }
            // What the policy's backstop asked for and this kernel cannot
            // enforce is said every time, not only on request.
            if let (Some(b), false) = (child.backstop(), args.explain_backstop) {
                for w in &b.not_enforced {
                    eprintln!("cordon: warning: backstop not enforced: {w}");
                }
            }
            if args.explain_backstop {
                match child.backstop() {
                    Some(b) => eprint!("cordon: backstop: {}", b.explain()),
                    None => eprintln!(
                        "cordon: backstop: the policy defines none (data.cordon.backstop){}",
                        if child.signals_scoped_alone() {
                            "; signals only to processes in the sandbox (Landlock)"
                        } else {
                            ""
                        }
                    ),
                }
            }
            // Not fatal either: the tool stays supervised and waited for
            // (signals to cordon then act on cordon alone, by default).
            if let Err(e) = child.relay_signals() {
                tracing::warn!(error = %e, "cannot install signal relays");
            }
            let status = child.wait().context("waiting for the command")?;
            tracing::debug!("exit recorded");
            status.code().unwrap_or_else(|| {
                128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
            })
        }
        Err(SpawnError::Exec { program, source }) => {
            let code = match source.kind() {
                std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
                _ => EXIT_CANNOT_EXECUTE,
            };
            eprintln!("cordon: cannot run {program}: {source}");
            code as i32
        }
        Err(e) => return Err(e.into()),
    };
    // The caller flushes (and logs what cannot be stored) on this path.
    unstored_guard.0 = None;
    Ok(Outcome {
        code,
        sandbox_id,
        started,
        audit,
        decider: Some(decider),
    })
}

/// A directory removed, with what is in it, on drop; if empty, also when a
/// start is given up from the signal handler, where no destructor runs.
struct RemoveOnDrop(PathBuf);

impl RemoveOnDrop {
    fn new(dir: PathBuf) -> Self {
        cordon_shim::rmdir_if_start_given_up(&dir);
        Self(dir)
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // `remove_dir_all` lists the directory first, which a root cordon
        // without CAP_DAC_OVERRIDE cannot do once it is `--user`'s (0700):
        // an empty one is still removed by name, and one that stays is said.
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
            && std::fs::remove_dir(&self.0).is_err()
        {
            eprintln!(
                "cordon: warning: cannot remove the private temp dir {}: {e}",
                self.0.display()
            );
        }
    }
}

/// On drop, closes the embedded store it holds (later decisions are denied;
/// what it cannot store goes to the log): for the paths that leave `execute`
/// early, possibly with the tool still running.
struct UnstoredGuard(Option<Arc<dyn AuditLog>>);

impl Drop for UnstoredGuard {
    fn drop(&mut self) {
        if let Some(audit) = self.0.take() {
            audit.close();
        }
    }
}

use std::os::unix::process::CommandExt;
