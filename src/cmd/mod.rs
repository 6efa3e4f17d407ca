//! The subcommands, one module each, and what they share: logging, default
//! paths, time parsing and the usage-error type (exit status 2).

pub mod audit;
pub mod learn;
pub mod policy;
pub mod run;
pub mod serve;

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// An error in how cordon was called: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr; `--log-format json` for machine consumption. The
/// filter: `--log-level` (or `CORDON_LOG`) if given, else `RUST_LOG`, else
/// `default`; one that does not parse falls back to `warn`.
pub fn init_logging(format: LogFormat, level: Option<&str>, default: &str) {
    let filter = match level {
        Some(level) => tracing_subscriber::EnvFilter::try_new(level),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .or_else(|_| tracing_subscriber::EnvFilter::try_new(default)),
    }
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only for a person at a terminal, never into files or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `${XDG_STATE_HOME:-~/.local/state}/cordon/audit`.
pub fn default_audit_db() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/".into());
            home.join(".local/state")
        });
    state.join("cordon/audit")
}

/// `unix:///run/cordon/broker.sock` for root, else under `$XDG_RUNTIME_DIR`.
pub fn default_socket() -> String {
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|_| !is_root) {
        Some(dir) => format!("unix://{}/cordon/broker.sock", PathBuf::from(dir).display()),
        None => "unix:///run/cordon/broker.sock".into(),
    }
}

/// A point in time given as a duration ago (`15m`, `2h`) or an RFC 3339 time,
/// as audit records keep it: i64 nanoseconds since 1970 (until April 2262).
/// A duration reaching back before 1970 means 1970 (every record); an
/// explicit time outside that range is a usage error, not a wrapped value.
pub fn parse_time(s: &str) -> Result<i64, anyhow::Error> {
    if let Ok(d) = humantime::parse_duration(s) {
        let ago = SystemTime::now()
            .checked_sub(d)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or(Duration::ZERO);
        // 1 ns, not 0: zero means "no bound" on the wire.
        return Ok(i64::try_from(ago.as_nanos()).unwrap_or(i64::MAX).max(1));
    }
    let not_a_time = || {
        usage(format!(
            "{s:?} is neither a duration (like 15m) nor a time (like 2026-11-22T10:00:00Z \
             or 2026-11-22T11:00:00+01:00)"
        ))
    };
    // humantime reads no offset: with a fraction it drops one unread (the
    // time taken as UTC), without one it refuses it. The offset is split
    // off here, and the rest read as UTC.
    let (utc, offset_s) = split_utc_offset(s).ok_or_else(not_a_time)?;
    let t = humantime::parse_rfc3339_weak(utc).map_err(|_| not_a_time())?;
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .and_then(|ns| ns.checked_sub(offset_s.checked_mul(1_000_000_000)?))
        .filter(|&ns| ns >= 0)
        // 1970-01-01T00:00:00Z itself: 1 ns, as zero means "no bound".
        .map(|ns| ns.max(1))
        .ok_or_else(|| {
            usage(format!(
                "{s:?} is outside the times audit records can have (1970 to 2262)"
            ))
        })
}

/// An RFC 3339 time split from its UTC offset, in seconds east of UTC:
/// `Z` (or none) is 0; `+HH:MM` and `-HH:MM` are read, after the seconds.
/// `None` for an offset that is not one.
fn split_utc_offset(s: &str) -> Option<(&str, i64)> {
    // After `YYYY-MM-DDTHH:MM:SS`, where the date's own `-`s end.
    let Some(tail) = s.get(19..) else {
        return Some((s, 0));
    };
    let Some(at) = tail.find(['+', '-']) else {
        return Some((s, 0));
    };
    let (time, offset) = s.split_at(19 + at);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let digits = &offset.as_bytes()[1..];
    let two = |d: &[u8]| -> Option<i64> {
        d.iter()
            .all(u8::is_ascii_digit)
            .then(|| i64::from(d[0] - b'0') * 10 + i64::from(d[1] - b'0'))
    };
    let (hours, minutes) = match digits {
        [h0, h1, b':', m0, m1] => (two(&[*h0, *h1])?, two(&[*m0, *m1])?),
        _ => return None,
    };
    (hours < 24 && minutes < 60).then_some((time, sign * (hours * 3600 + minutes * 60)))
}

/// A duration from the command line, within `[min, max]`: the options that
/// take one are deadlines, limits and intervals, where zero or an absurd
/// value would deny every call, spin, or overflow a deadline.
pub fn duration_between(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < min || d > max {
        return Err(format!(
            "{s:?} is not between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

/// A wait or a limit: at least 1 ms, at most an hour.
pub fn wait_duration(s: &str) -> Result<Duration, String> {
    duration_between(s, Duration::from_millis(1), Duration::from_secs(3600))
}

/// A flush window: zero (flush at once) to a minute.
pub fn flush_window(s: &str) -> Result<Duration, String> {
    duration_between(s, Duration::ZERO, Duration::from_secs(60))
}

/// `K=V` for labels.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// The policy from `--policy` paths (the built-in one when none are given).
pub fn load_policy(
    paths: &[PathBuf],
    eval_timeout: Duration,
    interpreter: bool,
    memo_capacity: usize,
) -> anyhow::Result<std::sync::Arc<cordon_broker::policy::PolicyEngine>> {
    use anyhow::Context;
    use cordon_broker::policy::{EngineChoice, PolicyEngine, PolicyOptions, PolicySource};
    let source = if paths.is_empty() {
        PolicySource::Builtin
    } else {
        PolicySource::Paths(paths.to_vec())
    };
    let engine = if interpreter {
        EngineChoice::Interpreter
    } else {
        EngineChoice::Auto
    };
    let opts = PolicyOptions {
        eval_timeout,
        engine,
        memo_capacity,
    };
    Ok(std::sync::Arc::new(
        PolicyEngine::new(source, opts).context("cannot load the policy")?,
    ))
}

/// The audit store at `--audit-db` (or the default), creating its parent.
pub fn open_audit(
    db: Option<&PathBuf>,
    durability: cordon_broker::audit::Durability,
) -> anyhow::Result<cordon_broker::audit::SledAudit> {
    let db = db.cloned().unwrap_or_else(default_audit_db);
    // The store makes its directory and any missing parent its owner's
    // alone (0700): the records hold every sandbox's paths, argv and labels.
    cordon_broker::audit::SledAudit::open(&db, durability).map_err(|e| audit_open_error(&db, e))
}

/// A store that cannot be opened, with a hint when another process has it.
pub fn audit_open_error(
    db: &std::path::Path,
    e: cordon_broker::audit::AuditError,
) -> anyhow::Error {
    let hint = if e.is_locked() {
        format!(
            " (another cordon is using it{}: give each embedded broker its own --audit-db, or \
             share one `cordon serve`; a `cordon audit --db` reading it holds it too)",
            lock_holder(db).map_or_else(String::new, |h| format!(", {h}"))
        )
    } else {
        String::new()
    };
    // Most of the store's errors name it and their cause in their text: as a
    // context over one, anyhow's chain said both twice.
    let text = e.to_string();
    if text.contains(&*db.to_string_lossy()) {
        anyhow::anyhow!("{text}{hint}")
    } else {
        anyhow::anyhow!("cannot open the audit store {}: {text}{hint}", db.display())
    }
}

/// The process holding the lock of the store in `db` (sled's `flock` on
/// its `db` file), as `pid N (command line)`, from /proc/locks.
pub fn lock_holder(db: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(db.join("db")).ok()?;
    let dev = meta.dev();
    let file = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF"; a waiter's
        // line has "->" after the number.
        if fields.get(1) == Some(&"->") {
            return None;
        }
        let at = fields.iter().position(|f| *f == file)?;
        // 0: a holder in another pid namespace, or one that exited while
        // a child holds the lock; -1: an OFD lock, no process.
        fields
            .get(at.checked_sub(1)?)?
            .parse::<u32>()
            .ok()
            .filter(|&p| p > 0)
    })?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut command = String::from_utf8_lossy(&cmdline)
        .split('\0')
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if command.chars().count() > 120 {
        command = command.chars().take(120).chain("…".chars()).collect();
    }
    Some(if command.is_empty() {
        format!("pid {pid}")
    } else {
        format!("pid {pid} ({})", audit::one_line(&command))
    })
}

/// A runtime for the async parts of a command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nanoseconds of a time, as `parse_time` reads it.
    fn ns(s: &str) -> i64 {
        parse_time(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn a_time_with_an_offset_names_the_same_instant_as_in_utc() {
        let utc = ns("2026-11-25T18:11:25.5Z");
        assert_eq!(ns("2026-11-25T23:41:25.5+05:30"), utc);
        assert_eq!(ns("2026-11-25 23:41:25.500000000+05:30"), utc);
        assert_eq!(ns("2026-11-25T13:11:25.5-05:00"), utc);
        assert_eq!(ns("2026-11-25T18:11:25.5+00:00"), utc);
        assert_eq!(ns("2026-11-25T18:11:25.5"), utc);
        let whole = ns("2026-11-25T18:11:25Z");
        assert_eq!(ns("2026-11-25T19:11:25+01:00"), whole);
        assert_eq!(ns("2026-11-25T17:11:25-01:00"), whole);
        assert_eq!(whole, 1_795_630_285_000_000_000);
    }

    #[test]
    fn a_time_with_an_offset_that_is_not_one_is_refused() {
        for bad in [
            "2026-11-25T18:11:25.5+5:30",
            "2026-11-25T18:11:25.5+05:60",
            "2026-11-25T18:11:25.5+24:00",
            "2026-11-25T18:11:25+0530",
            "2026-11-25T18:11:25.5+05:30junk",
            "2026-11-25T18:11:25.5junk",
            "1970-01-01T00:30:00+01:00",
        ] {
            assert!(parse_time(bad).is_err(), "{bad} was taken");
        }
    }
}
