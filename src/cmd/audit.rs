//! `cordon audit` and `cordon audit verify`: read and check the decision log,
//! from the store directly (`--db`) or through a running broker (`--broker`).

use std::{collections::BTreeMap, io::Write, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use cordon_broker::{
    audit::{AuditFilter, AuditLog, AuditRecord, SledAudit, VerifyReport},
    client::{self, BrokerUri},
    proto::{DecisionFilter, QueryAuditRequest, VerifyAuditRequest},
};

use super::{parse_label, parse_time, usage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for reading.
    Table,
    /// One JSON object per line, with every field of the record.
    Json,
    /// A header, then one row per record; labels and argv as JSON.
    Csv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecisionArg {
    Allow,
    Deny,
    /// Allowed in permissive mode, but the policy would have denied it.
    WouldDeny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KindArg {
    File,
    Network,
    Exec,
    Lifecycle,
}

/// Where to read the audit log from.
#[derive(Debug, clap::Args)]
pub struct Source {
    /// Audit store directory (the broker must not be running on it). Default: ${XDG_STATE_HOME:-~/.local/state}/cordon/audit.
    #[arg(long, value_name = "DIR", conflicts_with = "broker", global = true)]
    db: Option<PathBuf>,
    /// Ask a running broker instead: unix:///PATH or https://HOST:PORT (mutual TLS). A unix
    /// broker must run as root, as this user, or as a uid in CORDON_BROKER_UID
    /// (mutual TLS from CORDON_TLS_CA, CORDON_TLS_CERT, CORDON_TLS_KEY; `tls` builds).
    #[arg(long, value_name = "URI", global = true)]
    broker: Option<String>,
}

/// Query the decision log; `cordon audit verify` checks its hash chain, `reindex` mends its index.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cordon audit --decision deny --since 1h\n  cordon audit --broker unix:///run/cordon/broker.sock --follow --format json\n  cordon audit --sandbox 0193f5c2-... --kind file --path-prefix /home --format csv\n  cordon audit verify --db /var/lib/cordon/audit\n  cordon audit reindex --db /var/lib/cordon/audit\n\n--format json prints one JSON object per line (JSON Lines), each with every field of the record."
)]
pub struct AuditArgs {
    #[command(subcommand)]
    verify: Option<AuditCommand>,
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    scope: Scope,
    /// Only this syscall (openat, connect, execve, ...).
    #[arg(long, value_name = "NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    syscall: Option<String>,
    #[arg(long, value_enum)]
    kind: Option<KindArg>,
    /// Only allowed or denied decisions, or those a permissive sandbox was allowed and the
    /// policy would have denied (would-deny). An allow that was denied after all (decided after
    /// the client's deadline, or, in strict mode, its record not flushed) is followed by an
    /// `override` record (deny; `overrides` = that seq).
    #[arg(long, value_enum)]
    decision: Option<DecisionArg>,
    /// Only records whose path starts with this.
    #[arg(long, value_name = "P", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    path_prefix: Option<String>,
    /// At most this many records (1 or more).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Only records after this sequence number (to resume).
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    after_seq: u64,
    /// Keep running and print new records as they are written (needs --broker).
    #[arg(long)]
    follow: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; names the first altered or missing record. Exit 1 if broken.
    #[command(
        after_help = "Examples:\n  cordon audit verify --db /var/lib/cordon/audit\n  cordon audit verify --broker unix:///run/cordon/broker.sock --format json\n  cordon audit verify --db /var/lib/cordon/audit --anchor 1042:9f86d081884c7d65...\n\nA passing verify prints an anchor, SEQ:HASH (the newest record and its hash). Whoever can\nrewrite the store can rewrite its whole chain, or cut its newest records: keep the anchor\nelsewhere, and a later verify --anchor fails unless record SEQ still has that hash."
    )]
    Verify {
        #[arg(long, value_enum, default_value_t = VerifyFormat::Text)]
        format: VerifyFormat,
        /// SEQ:HASH from an earlier verify: also check that record SEQ is still there, with
        /// that hash (so it and every record before it are unchanged).
        #[arg(long, value_name = "SEQ:HASH", value_parser = parse_anchor)]
        anchor: Option<(u64, String)>,
    },
    /// Rebuild the index (what filters read) from the records, when `verify` names an index
    /// problem. Refused when the hash chain itself is broken (keep that store as evidence);
    /// records and chain are not touched. Needs the store itself (--db), with no broker on it.
    #[command(
        after_help = "Examples:\n  cordon audit reindex --db /var/lib/cordon/audit\n  cordon audit reindex --db /var/lib/cordon/audit --format json"
    )]
    Reindex {
        #[arg(long, value_enum, default_value_t = VerifyFormat::Text)]
        format: VerifyFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyFormat {
    Text,
    Json,
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    // `--db` and `--broker` may come before the subcommand (`cordon audit
    // --db X verify`); the listing's own options may not, where they would
    // be ignored (clap's `args_conflicts_with_subcommands` refused both).
    let listing = listing_options(&args);
    if let (Some(cmd), false) = (&args.verify, listing.is_empty()) {
        let name = match cmd {
            AuditCommand::Verify { .. } => "verify",
            AuditCommand::Reindex { .. } => "reindex",
        };
        return Err(usage(format!(
            "`cordon audit {name}` does not take {}: they choose the records `cordon audit` lists \
             (options of {name} go after it, e.g. `cordon audit {name} --format json`)",
            listing.join(", ")
        )));
    }
    match args.verify {
        Some(AuditCommand::Verify { format, anchor }) => verify(&args.source, format, anchor),
        Some(AuditCommand::Reindex { format }) => reindex(&args.source, format),
        None => query(args),
    }
}

/// The store `--db` names (or the default one), refused unless it is one.
fn existing_store(db: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    let db = db.cloned().unwrap_or_else(super::default_audit_db);
    // What cannot be looked at is said so (`exists` and `is_file` take a
    // permission error for absence).
    let is_file = |p: &std::path::Path| match std::fs::metadata(p) {
        Ok(m) => Ok(m.is_file()),
        // (`--db` naming a file: its `conf` is not a directory's.)
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot examine {}", p.display()))),
    };
    match std::fs::metadata(&db) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("no audit store at {}", db.display())
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot examine {}", db.display())));
        }
    }
    // A directory that is not a store (--db ~ by mistake) would be made one,
    // empty, and pass verify: a store has sled's `conf` and `db` files.
    if !is_file(&db.join("conf"))? || !is_file(&db.join("db"))? {
        anyhow::bail!(
            "{} is not an audit store (no sled conf and db files in it)",
            db.display()
        );
    }
    Ok(db)
}

/// What holds a store that is locked: a broker, a sandbox's own, or another
/// reader (sled has no shared lock: a query paged through `less` holds it).
fn in_use(db: &std::path::Path) -> String {
    format!(
        "the store is in use{}: by a `cordon serve` (query it with --broker), by a `cordon run` or \
         `cordon learn` with its embedded broker, or by another `cordon audit` (sled lets one process \
         at a time open a store, readers too): wait for it to end, or examine a copy (cp -a)",
        super::lock_holder(db).map_or_else(String::new, |h| format!(" by {h}"))
    )
}

fn open_local(db: Option<&PathBuf>) -> anyhow::Result<Arc<SledAudit>> {
    let db = existing_store(db)?;
    match SledAudit::open_read_only(&db) {
        Ok(store) => Ok(Arc::new(store)),
        // sled's lock: another process has the store open for writing.
        Err(e) if e.is_locked() => Err(anyhow::Error::new(e).context(in_use(&db))),
        Err(e) if e.is_unwritable() => Err(anyhow::Error::new(e).context(format!(
            "sled opens a store for writing even to read it, and cannot here: examine a copy \
             (cp -a {} COPY; then --db COPY)",
            db.display()
        ))),
        Err(e) => Err(e.into()),
    }
}

fn reindex(source: &Source, format: VerifyFormat) -> anyhow::Result<ExitCode> {
    if source.broker.is_some() {
        return Err(usage(
            "reindex works on the store itself: stop the broker and pass --db",
        ));
    }
    let db = existing_store(source.db.as_ref())?;
    let indexed = match SledAudit::reindex(&db) {
        Ok(n) => n,
        Err(e) if e.is_locked() => {
            return Err(anyhow::Error::new(e).context(in_use(&db)));
        }
        Err(e) => return Err(e.into()),
    };
    let text = match format {
        VerifyFormat::Json => serde_json::json!({ "records_indexed": indexed }).to_string(),
        VerifyFormat::Text => format!("index rebuilt: {indexed} records indexed"),
    };
    print_result(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn broker_uri(s: &str) -> anyhow::Result<BrokerUri> {
    s.parse::<BrokerUri>().map_err(|e| usage(e.to_string()))
}

fn parse_anchor(s: &str) -> Result<(u64, String), String> {
    let (seq, hash) = s
        .split_once(':')
        .ok_or("an anchor is SEQ:HASH, as verify prints it")?;
    let seq = seq
        .parse::<u64>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{seq:?} is not a record number"))?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{hash:?} is not a SHA-256 in hex"));
    }
    Ok((seq, hash.to_ascii_lowercase()))
}

/// Prints a command's result on stdout. A reader gone (`| head -1`) is no
/// error: the exit status still says the result. A full disk is.
fn print_result(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write the result to stdout"))
        }
        _ => Ok(()),
    }
}

/// After a verify whose chain is intact: whether record `seq` still has
/// `hash`. A record that does means none before it changed. An anchor that
/// fails outranks a problem of the index alone: it is what the index's
/// disagreement may be the trace of.
fn check_anchor(report: &mut VerifyReport, (seq, hash): (u64, String), found: Option<String>) {
    let checked = report.records_checked;
    let problem = match found {
        _ if seq > checked => Some(if seq == checked + 1 {
            format!("record {seq} is missing: the anchor names it, the store ends at {checked}")
        } else {
            format!(
                "records {} to {seq} are missing: the anchor names record {seq}, the store ends at {checked}",
                checked + 1
            )
        }),
        Some(h) if h == hash => None,
        _ => Some(format!(
            "record {seq} does not match the anchor: the chain up to it was rewritten"
        )),
    };
    if let Some(problem) = problem {
        report.ok = false;
        report.first_bad_seq = if seq > checked { checked + 1 } else { 1 };
        report.records_checked = if seq > checked { checked } else { 0 };
        report.problem = problem;
    }
}

fn verify(
    source: &Source,
    format: VerifyFormat,
    anchor: Option<(u64, String)>,
) -> anyhow::Result<ExitCode> {
    // Record `seq`'s hash, as the store holds it.
    let one = |seq: u64| AuditFilter {
        after_seq: seq - 1,
        limit: Some(1),
        ..Default::default()
    };
    let report = match &source.broker {
        Some(uri) => {
            let uri = broker_uri(uri)?;
            super::runtime()?.block_on(async {
                let mut c = client::connect(&uri).await?;
                let r = c.verify_audit(VerifyAuditRequest {}).await?.into_inner();
                let mut report = VerifyReport {
                    ok: r.ok,
                    records_checked: r.records_checked,
                    first_bad_seq: r.first_bad_seq,
                    problem: r.problem,
                    head_hash: r.head_hash,
                };
                if let (true, Some((seq, hash))) = (report.ok || report.index_only(), anchor) {
                    if seq > report.records_checked {
                        // Past the store's end: nothing to look up (the
                        // broker refuses a resume point past its newest).
                        check_anchor(&mut report, (seq, hash), None);
                        return anyhow::Ok(report);
                    }
                    let f = one(seq);
                    let mut records = c
                        .query_audit(QueryAuditRequest {
                            after_seq: f.after_seq,
                            limit: 1,
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    let found = records
                        .message()
                        .await?
                        .filter(|r| r.seq == seq)
                        .map(|r| r.hash);
                    check_anchor(&mut report, (seq, hash), found);
                }
                anyhow::Ok(report)
            })?
        }
        None => {
            let store = match open_local(source.db.as_ref()) {
                Ok(store) => store,
                // A store sled cannot recover is the verify's answer (1, and
                // in JSON), not an error (2): it names no record, and its
                // problem says why (found by review).
                Err(e) if damaged(&e) => {
                    let report = VerifyReport {
                        ok: false,
                        records_checked: 0,
                        first_bad_seq: 0,
                        problem: format!(
                            "the store cannot be read ({}), so no record can be named",
                            crate::one_line(&e)
                        ),
                        head_hash: String::new(),
                    };
                    return print_verify(&report, format);
                }
                Err(e) => return Err(e),
            };
            let mut report = store.verify()?;
            if let (true, Some((seq, hash))) = (report.ok || report.index_only(), anchor) {
                let mut found = None;
                store.scan(&one(seq), &mut |r| {
                    found = (r.seq == seq).then_some(r.hash);
                    false
                })?;
                check_anchor(&mut report, (seq, hash), found);
            }
            report
        }
    };
    print_verify(&report, format)
}

/// Whether opening a store failed because its files are damaged (not
/// missing, locked or unreadable for want of permission).
fn damaged(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<cordon_broker::audit::AuditError>()
            .is_some_and(|e| e.is_damage())
    })
}

fn print_verify(report: &VerifyReport, format: VerifyFormat) -> anyhow::Result<ExitCode> {
    match format {
        VerifyFormat::Json => print_result(&serde_json::to_string(report)?)?,
        VerifyFormat::Text if report.ok => {
            let mut text = format!("ok: {} records, hash chain intact", report.records_checked);
            if report.records_checked > 0 && !report.head_hash.is_empty() {
                text.push_str(&format!(
                    "\nanchor: {}:{} (keep it elsewhere; check later with --anchor)",
                    report.records_checked, report.head_hash
                ));
            }
            print_result(&text)?;
        }
        VerifyFormat::Text => {
            // The index is derived from the records: damage there is no
            // broken chain, and `reindex` repairs it.
            if report.first_bad_seq == 0 && report.problem.starts_with("the store cannot be read") {
                eprintln!("cordon: audit store damaged: {}", report.problem);
                return Ok(ExitCode::from(crate::EXIT_NEGATIVE));
            }
            if report.index_only() {
                eprintln!(
                    "cordon: audit index inconsistent at record {}: {} (the index is derived from the records; `cordon audit reindex` rebuilds it, but keep a copy first if the store is evidence: a stale index may be the trace of a rewrite, which only an anchor shows)",
                    report.first_bad_seq, report.problem
                );
                print_result(&format!(
                    "{} records, hash chain intact; the index is inconsistent at record {}",
                    report.records_checked, report.first_bad_seq
                ))?;
            } else {
                eprintln!(
                    "cordon: audit chain broken at record {}: {}",
                    report.first_bad_seq, report.problem
                );
                print_result(&format!(
                    "{} records intact before record {}",
                    report.records_checked, report.first_bad_seq
                ))?;
            }
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_NEGATIVE)
    })
}

/// Which records, by time, sandbox and label: shared by `cordon audit` and
/// `cordon policy replay`.
#[derive(Debug, clap::Args)]
pub struct Scope {
    /// Records at or after this time: a duration ago (15m, 2h) or an RFC 3339 time.
    #[arg(long, value_name = "DUR|TIME")]
    since: Option<String>,
    /// Records at or before this time.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only this sandbox.
    #[arg(long, value_name = "ID", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    sandbox: Option<String>,
    /// Only records with this label; repeatable (all must match).
    #[arg(long, value_name = "K=V", value_parser = parse_label)]
    label: Vec<(String, String)>,
}

impl Scope {
    /// A filter with these fields set and every other one open.
    pub fn filter(&self) -> anyhow::Result<AuditFilter> {
        Ok(AuditFilter {
            since_ns: self.since.as_deref().map(parse_time).transpose()?,
            until_ns: self.until.as_deref().map(parse_time).transpose()?,
            sandbox_id: self.sandbox.clone(),
            labels: self.label.iter().cloned().collect::<BTreeMap<_, _>>(),
            ..Default::default()
        })
    }
}

/// The listing's options given (all but where the records are read from).
/// `--format table` and `--after-seq 0`, their defaults, cannot be told
/// from their absence, and pass unnoticed (they change nothing).
fn listing_options(args: &AuditArgs) -> Vec<&'static str> {
    let s = &args.scope;
    [
        ("--since", s.since.is_some()),
        ("--until", s.until.is_some()),
        ("--sandbox", s.sandbox.is_some()),
        ("--label", !s.label.is_empty()),
        ("--syscall", args.syscall.is_some()),
        ("--kind", args.kind.is_some()),
        ("--decision", args.decision.is_some()),
        ("--path-prefix", args.path_prefix.is_some()),
        ("--limit", args.limit.is_some()),
        ("--after-seq", args.after_seq != 0),
        ("--follow", args.follow),
        ("--format", args.format != Format::Table),
    ]
    .into_iter()
    .filter_map(|(name, given)| given.then_some(name))
    .collect()
}

fn filter_of(args: &AuditArgs) -> anyhow::Result<AuditFilter> {
    Ok(AuditFilter {
        syscall: args.syscall.clone(),
        kind: args.kind.map(|k| format!("{k:?}").to_lowercase()),
        decision: match args.decision {
            Some(DecisionArg::Allow) => Some(true),
            Some(DecisionArg::Deny) => Some(false),
            Some(DecisionArg::WouldDeny) | None => None,
        },
        would_deny: args.decision == Some(DecisionArg::WouldDeny),
        path_prefix: args.path_prefix.clone(),
        limit: args.limit,
        after_seq: args.after_seq,
        ..args.scope.filter()?
    })
}

fn query(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let filter = filter_of(&args)?;
    let mut out = Printer::new(args.format);
    let result = each_record(
        args.source.db.as_ref(),
        args.source.broker.as_deref(),
        &filter,
        args.follow,
        &mut |r| out.print(&r),
    );
    if let Err(e) = result {
        return broken_pipe_ok(e);
    }
    out.finish()?;
    Ok(ExitCode::SUCCESS)
}

/// Calls `each` for every record matching `filter`, in sequence order, from
/// the store at `db` (default path when both are None) or from a broker.
pub(super) fn each_record(
    db: Option<&PathBuf>,
    broker: Option<&str>,
    filter: &AuditFilter,
    follow: bool,
    each: &mut dyn FnMut(AuditRecord) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    match broker {
        None => {
            if follow {
                return Err(usage(
                    "--follow needs --broker: only a running broker has new records",
                ));
            }
            let store = open_local(db)?;
            let mut err = None;
            store.scan(filter, &mut |r| match each(r) {
                Ok(()) => true,
                Err(e) => {
                    err = Some(e);
                    false
                }
            })?;
            // As a broker answers (OUT_OF_RANGE): a resume point past the
            // newest record names records this store does not have.
            let newest = store.last_seq();
            if err.is_none() && filter.after_seq > newest {
                anyhow::bail!(
                    "resume point {} is past the newest record, {newest}: the records after it were lost (a crash within the flush window) or this is another store; resume from {newest} or below",
                    filter.after_seq
                );
            }
            err.map_or(Ok(()), Err)
        }
        Some(uri) => {
            let uri = broker_uri(uri)?;
            let req = QueryAuditRequest {
                since_unix_ns: filter.since_ns.unwrap_or(0),
                until_unix_ns: filter.until_ns.unwrap_or(0),
                sandbox_id: filter.sandbox_id.clone().unwrap_or_default(),
                labels: filter.labels.clone().into_iter().collect(),
                syscall: filter.syscall.clone().unwrap_or_default(),
                kind: filter.kind.clone().unwrap_or_default(),
                decision: match (filter.decision, filter.would_deny) {
                    (_, true) => DecisionFilter::WouldDeny,
                    (None, false) => DecisionFilter::Any,
                    (Some(true), false) => DecisionFilter::Allow,
                    (Some(false), false) => DecisionFilter::Deny,
                } as i32,
                path_prefix: filter.path_prefix.clone().unwrap_or_default().into_bytes(),
                limit: filter.limit.unwrap_or(0),
                follow,
                after_seq: filter.after_seq,
            };
            super::runtime()?.block_on(async {
                let mut c = client::connect_for_records(&uri).await?;
                let mut stream = c.query_audit(req).await?.into_inner();
                while let Some(rec) = stream.message().await? {
                    let r: AuditRecord = serde_json::from_str(&rec.json).with_context(|| {
                        format!("record {} from the broker is not valid JSON", rec.seq)
                    })?;
                    each(r)?;
                }
                Ok(())
            })
        }
    }
}

/// `cordon audit | head` closes the pipe early: that is not an error.
fn broken_pipe_ok(e: anyhow::Error) -> anyhow::Result<ExitCode> {
    // The writer's error may come wrapped by the JSON or CSV encoder (a
    // record larger than the output buffer is written from inside it).
    let kind = e
        .downcast_ref::<std::io::Error>()
        .map(std::io::Error::kind)
        .or_else(|| {
            e.downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
        })
        .or_else(
            || match e.downcast_ref::<csv::Error>().map(csv::Error::kind) {
                Some(csv::ErrorKind::Io(io)) => Some(io.kind()),
                _ => None,
            },
        );
    match kind {
        Some(std::io::ErrorKind::BrokenPipe) => Ok(ExitCode::SUCCESS),
        _ => Err(e),
    }
}

/// The table's subject column: one line, whatever the tool put in its
/// arguments (a newline or escape sequence in argv must not forge rows or
/// drive the auditor's terminal). JSON and CSV carry the exact text.
fn subject(r: &AuditRecord) -> String {
    let s = match (&r.argv, r.kind.as_str(), &r.path) {
        // An exec: the program and the arguments it was given.
        (Some(argv), "exec", Some(_)) => format!("{} {}", r.subject(), argv.join(" ")),
        _ => r.subject(),
    };
    one_line(&s)
}

/// Control characters as `\n`, `\t`, `\x1b`…, and the invisible ones that
/// reorder or hide text (bidirectional overrides and isolates, zero-width
/// characters) as `\u{202e}`: a name the tool chose must not drive the
/// auditor's terminal, nor read as another name (`x\u{202e}gnp.sh`).
pub(super) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if invisible(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Characters a terminal shows as nothing, or as a line break, that change
/// how the text around them reads: every format character (Unicode 15's
/// `Cf`: bidirectional marks, embeddings, overrides and isolates, zero-width
/// spaces and joiners, invisible operators, the byte-order mark,
/// interlinear annotations, tag characters…), and the line and paragraph
/// separators, variation selectors, the combining grapheme joiner and the
/// Hangul and Khmer fillers that render blank (found by review).
fn invisible(c: char) -> bool {
    matches!(c as u32,
        // Cf
        0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x890..=0x891 | 0x8e2 | 0x180e
            | 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f | 0xfeff
            | 0xfff9..=0xfffb | 0x110bd | 0x110cd | 0x13430..=0x1343f | 0x1bca0..=0x1bca3
            | 0x1d173..=0x1d17a | 0xe0001 | 0xe0020..=0xe007f
            // Not Cf, as blank or as a line break
            | 0x34f | 0x115f..=0x1160 | 0x17b4..=0x17b5 | 0x180b..=0x180f | 0x2028..=0x2029
            | 0x3164 | 0xfe00..=0xfe0f | 0xffa0 | 0xe0100..=0xe01ef)
}

struct Printer {
    format: Format,
    out: std::io::BufWriter<std::io::Stdout>,
    csv: Option<csv::Writer<std::io::Stdout>>,
    header_done: bool,
}

/// The columns of `--format csv`. `labels` and `argv` hold JSON (an object
/// and an array): label values and arguments may contain any character.
/// New columns go at the end, so that readers that count columns still work.
const CSV_HEADER: [&str; 25] = [
    "seq",
    "id",
    "time",
    "event",
    "sandbox_id",
    "labels",
    "pid",
    "exe",
    "syscall",
    "kind",
    "path",
    "address",
    "port",
    "argv",
    "allow",
    "would_deny",
    "errno",
    "reason",
    "policy_revision",
    "latency_us",
    "hash",
    "overrides",
    "exit_status",
    "limit",
    "prev_hash",
];

impl Printer {
    fn new(format: Format) -> Self {
        Self {
            format,
            out: std::io::BufWriter::new(std::io::stdout()),
            csv: (format == Format::Csv).then(|| csv::Writer::from_writer(std::io::stdout())),
            header_done: false,
        }
    }

    fn print(&mut self, r: &AuditRecord) -> anyhow::Result<()> {
        match self.format {
            Format::Json => {
                serde_json::to_writer(&mut self.out, r)?;
                self.out.write_all(b"\n")?;
                self.out.flush()?;
            }
            Format::Csv => {
                let w = self.csv.as_mut().context("csv writer")?;
                if !self.header_done {
                    w.write_record(CSV_HEADER)?;
                    self.header_done = true;
                }
                let labels = if r.labels.is_empty() {
                    String::new()
                } else {
                    serde_json::to_string(&r.labels)?
                };
                w.write_record([
                    r.seq.to_string(),
                    r.id.clone(),
                    r.time.clone(),
                    r.event.clone(),
                    r.sandbox_id.clone(),
                    labels,
                    r.pid.to_string(),
                    r.exe.clone(),
                    r.syscall.clone(),
                    r.kind.clone(),
                    r.path.clone().unwrap_or_default(),
                    r.address.clone().unwrap_or_default(),
                    r.port.map(|p| p.to_string()).unwrap_or_default(),
                    r.argv
                        .as_ref()
                        .map(|a| serde_json::to_string(a).unwrap_or_default())
                        .unwrap_or_default(),
                    r.allow.to_string(),
                    r.would_deny.to_string(),
                    r.errno.clone(),
                    r.reason.clone(),
                    r.policy_revision.clone(),
                    r.latency_us.to_string(),
                    r.hash.clone(),
                    r.overrides.map(|s| s.to_string()).unwrap_or_default(),
                    r.exit_status.map(|s| s.to_string()).unwrap_or_default(),
                    r.limit.clone().unwrap_or_default(),
                    r.prev_hash.clone(),
                ])?;
                w.flush()?;
            }
            Format::Table => {
                if !self.header_done {
                    writeln!(
                        self.out,
                        "{:>6}  {:<30}  {:<36}  {:>7}  {:<9}  {:<10}  {:<6}  SUBJECT / REASON",
                        "SEQ", "TIME", "SANDBOX", "PID", "SYSCALL", "ALLOW", "ERRNO"
                    )?;
                    self.header_done = true;
                }
                // Whole (a UUID's 36 characters): `--sandbox` takes it as
                // it is printed here.
                let sandbox = one_line(&r.sandbox_id);
                let syscall = if r.syscall.is_empty() {
                    r.event.as_str()
                } else {
                    r.syscall.as_str()
                };
                writeln!(
                    self.out,
                    "{:>6}  {:<30}  {:<36}  {:>7}  {:<9}  {:<10}  {:<6}  {}  ({})",
                    r.seq,
                    r.time,
                    sandbox,
                    r.pid,
                    syscall,
                    match (r.allow, r.would_deny) {
                        (true, true) => "would-deny",
                        (true, false) => "allow",
                        (false, _) => "deny",
                    },
                    r.errno,
                    subject(r),
                    one_line(&r.reason)
                )?;
                self.out.flush()?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        // No record: still the header, so a reader sees an empty table
        // rather than no output at all.
        if let (Some(w), false) = (self.csv.as_mut(), self.header_done) {
            w.write_record(CSV_HEADER)?;
            w.flush()?;
            self.header_done = true;
        }
        self.out.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_cells_stay_on_one_line() {
        assert_eq!(one_line("a\nb\tc\u{1b}[2J"), "a\\nb\\tc\\x1b[2J");
        assert_eq!(one_line("plain /path ü"), "plain /path ü");
        // Read as "xhs.png" in a terminal, shown as it is.
        assert_eq!(one_line("x\u{202e}gnp.sh"), "x\\u{202e}gnp.sh");
        assert_eq!(
            one_line("a\u{200b}b\u{2066}c\u{feff}"),
            "a\\u{200b}b\\u{2066}c\\u{feff}"
        );
        // A tag character, a line separator, a variation selector, a filler.
        assert_eq!(
            one_line("\u{e0041}\u{2028}\u{fe0f}\u{3164}"),
            "\\u{e0041}\\u{2028}\\u{fe0f}\\u{3164}"
        );
        // Visible text of other scripts stays as it is.
        assert_eq!(one_line("файл 文件 ملف"), "файл 文件 ملف");
    }
}
