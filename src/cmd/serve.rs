//! `cordon serve`: the broker as a daemon.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use cordon_broker::{
    Broker, Permissive,
    audit::Durability,
    client::BrokerUri,
    service::{self, AccessPolicy},
};

use super::usage;

/// Whether this process started with SIGHUP ignored (as `nohup` leaves it):
/// from the `SigIgn` mask in `/proc/self/status`.
fn hangup_ignored() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & (1 << (nix::sys::signal::Signal::SIGHUP as i32 - 1)) != 0)
}

/// The socket files this broker bound, removed when it exits, however it
/// exits (an error after the first bind included). Only its own: a path
/// whose bind failed may be another broker's, and so may a path this one
/// bound: a broker started while this one shut down (its listener already
/// closed) replaces the socket, which is then told by its device, inode and
/// change time (a freed inode number is soon given again).
struct OwnSockets(Vec<(PathBuf, Option<SocketId>)>);

type SocketId = (u64, u64, i64, i64);

fn socket_id(path: &std::path::Path) -> Option<SocketId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

impl OwnSockets {
    fn add(&mut self, path: &std::path::Path) {
        self.0.push((path.to_path_buf(), socket_id(path)));
    }
}

impl Drop for OwnSockets {
    fn drop(&mut self) {
        for (path, id) in &self.0 {
            if id.is_some() && socket_id(path) == *id {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// How long a shutdown waits for connections to close before it closes them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DurabilityArg {
    /// Answer only after the decision's record is flushed (concurrent decisions share a flush).
    Strict,
    /// Answer once the record is queued; store and flush it about --flush-window after the oldest queued record.
    Batched,
}

/// Run the broker: answer decisions over gRPC and record them.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cordon serve --listen unix:///run/cordon/broker.sock --policy /etc/cordon/policies --audit-db /var/lib/cordon/audit\n  cordon serve --policy policies/ --durability strict --allow-uid 1000\n\nThe socket is created with mode 0660 in a directory owned by the broker. Callers must run as an allowed uid\n(default: the broker's own and root) and must not themselves run under a seccomp filter.\nPolicy files are watched and reloaded on change; an invalid edit (one that does not compile, or an `allow` that is not a boolean, which would deny every call) is refused and the previous revision kept.\nSIGINT, SIGTERM and SIGHUP (unless ignored, as under nohup) stop the broker: Session streams take no new requests, --follow queries end with UNAVAILABLE, connections get up to 5 s to close, and the audit store is flushed before exit."
)]
pub struct ServeArgs {
    /// Where to listen: unix:///PATH, or tcp://HOST:PORT with mutual TLS (needs --tls-cert,
    /// --tls-key, --tls-client-ca and a build with `--features tls`).
    #[arg(long, value_name = "URI")]
    listen: Vec<String>,
    /// Policy file or directory (.rego, .json, .yaml); repeatable. Default: the built-in policy.
    #[arg(long, value_name = "PATH")]
    policy: Vec<PathBuf>,
    /// Audit store directory. Default: ${XDG_STATE_HOME:-~/.local/state}/cordon/audit.
    #[arg(long, value_name = "DIR")]
    audit_db: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DurabilityArg::Batched)]
    durability: DurabilityArg,
    /// Longest time a batched record waits for its flush.
    #[arg(long, value_name = "DURATION", default_value = "10ms", value_parser = super::flush_window)]
    flush_window: Duration,
    /// An evaluation running longer than this is a denial.
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = super::wait_duration)]
    eval_timeout: Duration,
    /// Evaluate with the interpreter instead of the compiled VM.
    #[arg(long)]
    interpreter: bool,
    /// Verdicts each policy revision keeps for inputs it has already evaluated, so a repeated
    /// call (same process, same path, same everything) skips evaluation; 0 evaluates every call.
    /// Off by itself for a policy that calls time.now_ns, rand.intn, http.send and the like.
    #[arg(long, value_name = "N", default_value_t = cordon_broker::policy::DEFAULT_MEMO_CAPACITY)]
    decision_memo: usize,
    /// A uid allowed to call the broker; repeatable. Default: the broker's own uid and root.
    #[arg(long, value_name = "UID")]
    allow_uid: Vec<u32>,
    /// How often to look for policy file changes.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = |s: &str| super::duration_between(s, Duration::from_millis(10), Duration::from_secs(3600)))]
    watch_interval: Duration,
    /// TLS certificate (PEM) for a tcp:// listener.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for a tcp:// listener.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates a tcp:// listener accepts; required
    /// (mutual TLS: on TCP there is no uid to check).
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Enforce nothing for sandboxes with this label (repeatable): allow, and record what the
    /// policy would deny as `would_deny` with its reason. For rolling out a new tool's policy.
    /// Labels are the caller's to choose: every admitted caller can ask for this one.
    #[arg(long, value_name = "K=V", value_parser = super::parse_label)]
    permissive_label: Vec<(String, String)>,
    /// Enforce nothing for any sandbox (as --permissive-label for every label).
    #[arg(long)]
    permissive: bool,
}

/// A tcp:// listener's address and TLS files.
#[cfg(feature = "tls")]
fn tcp_listener(
    l: &str,
    args: &ServeArgs,
) -> anyhow::Result<(std::net::SocketAddr, service::TlsFiles)> {
    let addr = l
        .strip_prefix("tcp://")
        .and_then(|a| std::net::ToSocketAddrs::to_socket_addrs(a).ok()?.next())
        .ok_or_else(|| usage(format!("--listen {l:?}: not tcp://HOST:PORT")))?;
    let read = |p: &Option<PathBuf>| -> anyhow::Result<Vec<u8>> {
        let p = p.as_ref().expect("checked by the caller");
        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
    };
    Ok((
        addr,
        service::TlsFiles {
            cert_pem: read(&args.tls_cert)?,
            key_pem: read(&args.tls_key)?,
            client_ca_pem: read(&args.tls_client_ca)?,
        },
    ))
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let listens = if args.listen.is_empty() {
        vec![super::default_socket()]
    } else {
        args.listen.clone()
    };
    let mut sockets = Vec::new();
    #[cfg(feature = "tls")]
    let mut tcp = Vec::new();
    for l in &listens {
        if l.starts_with("tcp://") {
            if args.tls_cert.is_none() || args.tls_key.is_none() || args.tls_client_ca.is_none() {
                return Err(usage(format!(
                    "{l}: TCP listening requires --tls-cert, --tls-key and --tls-client-ca"
                )));
            }
            #[cfg(feature = "tls")]
            {
                tcp.push(tcp_listener(l, &args)?);
                continue;
            }
            #[cfg(not(feature = "tls"))]
            anyhow::bail!(
                "{l}: this build of cordon has no TLS support (build with --features tls); \
                 listen on a unix:// socket"
            );
        }
        match l.parse::<BrokerUri>() {
            Ok(BrokerUri::Unix(p)) => sockets.push(p),
            _ => {
                return Err(usage(format!(
                    "--listen {l:?} is not unix:///PATH or tcp://HOST:PORT"
                )));
            }
        }
    }
    let policy = super::load_policy(
        &args.policy,
        args.eval_timeout,
        args.interpreter,
        args.decision_memo,
    )?;
    // A policy that loads but denies every call is refused here as a reload
    // would refuse it: a broker that starts on one answers every client no.
    // (`cordon run` skips the lint: its own tool shows the mistake at once.)
    if !args.policy.is_empty()
        && let Some(e) = cordon_broker::policy::denies_every_call(
            &cordon_broker::policy::PolicySource::Paths(args.policy.clone()),
        )
    {
        return Err(anyhow::Error::new(e).context("cannot load the policy"));
    }
    policy.watch(args.watch_interval);
    let durability = match args.durability {
        DurabilityArg::Strict => Durability::Strict,
        DurabilityArg::Batched => Durability::Batched {
            window: args.flush_window,
        },
    };
    let db = args
        .audit_db
        .clone()
        .unwrap_or_else(super::default_audit_db);
    let audit = Arc::new(super::open_audit(Some(&db), durability)?);
    let permissive = if args.permissive {
        tracing::warn!("permissive mode: nothing is enforced; denials are recorded as would_deny");
        Permissive::All
    } else if args.permissive_label.is_empty() {
        Permissive::Off
    } else {
        tracing::warn!(labels = ?args.permissive_label, "permissive mode for sandboxes with these labels");
        Permissive::Labels(args.permissive_label.clone())
    };
    let broker = Broker::new(policy.clone(), audit.clone()).with_permissive(permissive);
    let access = if args.allow_uid.is_empty() {
        AccessPolicy::default()
    } else {
        AccessPolicy {
            allowed_uids: args.allow_uid.clone(),
        }
    };
    // Two fds per client connection (it and the peer's pidfd), and sandboxes
    // keep two connections each: the soft limit of 1,024 ran out at a few
    // hundred sandboxes.
    if let Err(e) = cordon_shim::raise_fd_limit() {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    let rt = super::runtime()?;
    // Whatever ends the serving (a signal, a listener that failed, an error
    // here), the store is flushed and closed below before cordon exits.
    let served = rt.block_on(async move {
        let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut servers = tokio::task::JoinSet::new();
        // Every socket bound before any is served: a second one that cannot
        // be bound ends the broker with the first one removed.
        let mut own = OwnSockets(Vec::new());
        let mut listeners = Vec::new();
        for path in &sockets {
            listeners.push((path, service::bind_unix(path)?));
            own.add(path);
        }
        for (path, listener) in listeners {
            tracing::info!(socket = %path.display(), audit_db = %db.display(), revision = %policy.current().revision(),
                durability = ?durability, uids = ?access.allowed_uids, "broker listening");
            let mut stop = stop_tx.subscribe();
            servers.spawn(service::serve_unix(
                broker.clone(),
                durability,
                access.clone(),
                listener,
                async move {
                    let _ = stop.recv().await;
                },
            ));
        }
        #[cfg(feature = "tls")]
        for (addr, tls) in tcp {
            tracing::info!(%addr, "broker listening with mutual TLS");
            let mut stop = stop_tx.subscribe();
            servers.spawn(service::serve_tcp_tls(
                broker.clone(),
                durability,
                addr,
                tls,
                async move {
                    let _ = stop.recv().await;
                },
            ));
        }
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        // A closed terminal too: the default action would lose what the
        // batched store has not flushed.
        // Unless it was ignored (`nohup`): then it stays ignored.
        let mut hangup = if hangup_ignored() {
            None
        } else {
            Some(signal(SignalKind::hangup())?)
        };
        let hung_up = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        // A listener serves until told to stop: one that ends first failed
        // (a TCP address in use, a certificate that does not load), and the
        // broker shuts down saying so rather than serve without it.
        let mut failed = None;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
            _ = hung_up => {},
            Some(ended) = servers.join_next() => {
                failed = Some(match ended {
                    Ok(Ok(())) => anyhow::anyhow!("a listener stopped"),
                    Ok(Err(e)) => anyhow::Error::from(e).context("a listener failed"),
                    Err(e) => anyhow::Error::from(e).context("a listener's task failed"),
                });
            },
        }
        tracing::info!("shutting down");
        let _ = stop_tx.send(());
        // Session streams and follow queries end at once; a connection that
        // still does not close (a client that stopped reading) is not waited
        // for past the grace period: the store is flushed either way.
        let stopped = async {
            while let Some(ended) = servers.join_next().await {
                ended??;
            }
            anyhow::Ok(())
        };
        let stopped = match tokio::time::timeout(SHUTDOWN_GRACE, stopped).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(
                    grace = ?SHUTDOWN_GRACE,
                    "connections still open after the grace period; closing them"
                );
                Ok(())
            }
        };
        drop(own);
        match failed {
            Some(e) => Err(e),
            None => stopped,
        }
    });
    // The runtime's blocking tasks (queries) are not waited for.
    rt.shutdown_timeout(Duration::from_millis(100));
    use cordon_broker::audit::AuditLog;
    let flushed = audit.flush();
    // Refuses later appends; what could not be flushed goes to the log.
    audit.close();
    if let (Err(_), Err(e)) = (&flushed, &served) {
        // Only one error can be returned: the other is logged.
        tracing::error!(error = %format!("{e:#}"), "serving failed");
    }
    flushed.context("final audit flush failed")?;
    served?;
    Ok(ExitCode::SUCCESS)
}
