//! `cordon policy eval|check|test`: try, lint and test policies without a broker.

use std::{io::Read, path::PathBuf, process::ExitCode};

use anyhow::Context;
use cordon_broker::{
    audit::AuditFilter,
    lint,
    policy::{LoadedPolicy, PolicyOptions, PolicySource},
    replay::{Direction, Replayer},
    testing,
};

use super::usage;

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Evaluate one input document: decision, reason, errno, the rules that held, evaluation time. Exit 1 on a denial.
    #[command(
        after_help = "Examples:\n  cordon policy eval --policy policies/ --input policies/cases/etc-shadow/input.json\n  echo '{\"kind\":\"file\",\"file\":{\"path\":\"/etc/hosts\",\"access\":[\"read\"]}}' | cordon policy eval --input - --format json"
    )]
    Eval {
        /// Policy file or directory; repeatable. Default: the built-in policy.
        #[arg(long, value_name = "PATH")]
        policy: Vec<PathBuf>,
        /// The input document (JSON), or - for stdin.
        #[arg(long, value_name = "FILE|-")]
        input: String,
        /// Evaluation limit. Longer than a broker's (`serve --eval-timeout`, 50 ms): a stalled
        /// machine must not turn an answer into a timeout here; the time taken is printed.
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = super::wait_duration)]
        timeout: std::time::Duration,
        #[arg(long, value_enum, default_value_t = EvalFormat::Text)]
        format: EvalFormat,
    },
    /// Run the policy unit tests: every `test_` rule in *_test.rego, like `opa test`. Exit 1 if any fails.
    #[command(
        after_help = "A test passes when its rule is true; false or undefined fails, an evaluation error is an ERROR. Finding no test to run (none in the files, or none that --run selects) exits 1, as `opa test --fail-on-empty` does: a silent pass would hide a wrong path or filter.\n\nExamples:\n  cordon policy test policies/\n  cordon policy test -v --coverage policies/\n  cordon policy test --run shadow --format json policies/"
    )]
    Test {
        /// Policy directories or files (with their *_test.rego files). Default: the current directory.
        #[arg(value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Print every test, and the inputs and print() output of failing ones.
        #[arg(short, long)]
        verbose: bool,
        /// Report which rules the tests did not fully evaluate.
        #[arg(long)]
        coverage: bool,
        /// Only run tests whose name (data.PKG.test_…) contains this.
        #[arg(long, value_name = "SUBSTRING")]
        run: Option<String>,
        /// Per-test evaluation limit.
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = super::wait_duration)]
        timeout: std::time::Duration,
        #[arg(long, value_enum, default_value_t = EvalFormat::Text)]
        format: EvalFormat,
    },
    /// Re-evaluate recorded decisions under a new policy and report which would change.
    #[command(
        after_help = "Every decision record carries the input the policy saw; the new policy is asked the same\n\
question. Changes are grouped by direction (allow->deny first: what would break agents), tool label and\n\
subject, with counts. A permissive-mode record counts as what the policy said (a denial).\n\
Exit status: 0 when no decision changes, 1 when some do, so CI can gate a policy change; 2 on an\n\
error, including no decision matched, or decisions matched but none replayable (all recorded without\n\
their input).\n\n\
Examples:\n  cordon policy replay --audit-db ~/.local/state/cordon/audit --policy policies/ --since 7d\n  \
cordon policy replay --broker unix:///run/cordon/broker.sock --policy new/ --label tool=web-fetch --format json"
    )]
    Replay {
        /// The new policy: files or directories (repeatable).
        #[arg(long, required = true, value_name = "PATH")]
        policy: Vec<PathBuf>,
        /// Audit store to read (no broker may be running on it). Default:
        /// ${XDG_STATE_HOME:-~/.local/state}/cordon/audit, as `cordon run` writes it.
        #[arg(long, value_name = "DIR", conflicts_with = "broker")]
        audit_db: Option<PathBuf>,
        /// Read the records from a running broker instead.
        #[arg(long, value_name = "URI")]
        broker: Option<String>,
        #[command(flatten)]
        scope: super::audit::Scope,
        /// Evaluation limit per record. Longer than a broker's (`serve --eval-timeout`, 50 ms): a
        /// stalled machine must not show a decision as changed by a timeout.
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = super::wait_duration)]
        timeout: std::time::Duration,
        #[arg(long, value_enum, default_value_t = ReplayFormat::Table)]
        format: ReplayFormat,
    },
    /// Parse, compile and lint policies; problems as file:line:col: message. Exit 1 if any.
    #[command(
        after_help = "Lints: allow/deny/errno in a package nothing refers to (only package cordon is evaluated), a deny\n\
that is not a set of reasons, an errno that names no errno, data no policy refers to.\n\n\
Examples:\n  cordon policy check policies/\n  cordon policy check my-policy.rego data.json"
    )]
    Check {
        /// Policy files or directories.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = EvalFormat::Text)]
        format: EvalFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplayFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalFormat {
    Text,
    Json,
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Eval {
            policy,
            input,
            timeout,
            format,
        } => eval(policy, &input, timeout, format),
        PolicyCommand::Check { paths, format } => check(paths, format),
        PolicyCommand::Replay {
            policy,
            audit_db,
            broker,
            scope,
            timeout,
            format,
        } => replay(policy, audit_db, broker, &scope.filter()?, timeout, format),
        PolicyCommand::Test {
            paths,
            verbose,
            coverage,
            run,
            timeout,
            format,
        } => test(paths, verbose, run, timeout, coverage, format),
    }
}

/// The engine's options with this evaluation limit.
fn limited(eval_timeout: std::time::Duration) -> PolicyOptions {
    PolicyOptions {
        eval_timeout,
        ..PolicyOptions::default()
    }
}

fn source_of(paths: Vec<PathBuf>) -> PolicySource {
    if paths.is_empty() {
        PolicySource::Builtin
    } else {
        PolicySource::Paths(paths)
    }
}

fn eval(
    policy: Vec<PathBuf>,
    input: &str,
    timeout: std::time::Duration,
    format: EvalFormat,
) -> anyhow::Result<ExitCode> {
    let text = if input == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the input from stdin")?;
        s
    } else {
        std::fs::read_to_string(input).with_context(|| format!("cannot read {input}"))?
    };
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| usage(format!("{input}: not valid JSON: {e}")))?;
    let loaded = LoadedPolicy::load(&source_of(policy), &limited(timeout))?;
    let v = loaded.evaluate(&doc);
    let held = loaded.explain(&doc);
    match format {
        EvalFormat::Json => println!(
            "{}",
            serde_json::json!({
                "allow": v.allow, "errno": v.errno, "errno_code": v.errno_code, "reason": v.reason,
                "deny": v.deny, "revision": v.revision.as_ref(), "engine": loaded.engine_name(),
                "eval_us": v.eval_time.as_secs_f64() * 1e6, "held": held,
            })
        ),
        EvalFormat::Text => {
            println!("decision: {}", if v.allow { "allow" } else { "deny" });
            println!("reason:   {}", v.reason);
            if !v.allow {
                println!("errno:    {} ({})", v.errno, v.errno_code);
            }
            println!("revision: {} ({})", v.revision, loaded.engine_name());
            println!("eval:     {:.1} µs", v.eval_time.as_secs_f64() * 1e6);
            if held.is_empty() {
                println!("held:     no rule with a body held");
            } else {
                println!("held:");
            }
            for h in &held {
                let value = match &h.value {
                    serde_json::Value::Bool(true) => String::new(),
                    other => format!(" = {other}"),
                };
                println!("  {}:{}: {}{value}", h.file, h.line, h.rule);
                if !h.comment.is_empty() {
                    println!("      # {}", h.comment);
                }
            }
        }
    }
    Ok(if v.allow {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_NEGATIVE)
    })
}

fn check(paths: Vec<PathBuf>, format: EvalFormat) -> anyhow::Result<ExitCode> {
    let source = source_of(paths);
    let loaded = LoadedPolicy::load(&source, &PolicyOptions::default())
        .and_then(|p| Ok((lint::lint(&source)?, p)));
    match loaded {
        Ok((lints, p)) => {
            match format {
                EvalFormat::Json => println!(
                    "{}",
                    serde_json::json!({"ok": lints.is_empty(), "files": p.files(), "revision": p.revision().as_ref(), "engine": p.engine_name(), "vm_off": p.vm_unavailable(), "memo_off": p.memo_unavailable(), "lints": lints})
                ),
                EvalFormat::Text => {
                    for l in &lints {
                        eprintln!("{l}");
                    }
                    if lints.is_empty() {
                        println!(
                            "ok: {} files, revision {} ({})",
                            p.files().len(),
                            p.revision(),
                            p.engine_name()
                        );
                    }
                    if let Some(why) = p.vm_unavailable() {
                        eprintln!("note: evaluated by the interpreter, not the compiled VM: {why}");
                    }
                    if let Some(why) = p.memo_unavailable() {
                        eprintln!(
                            "note: every call will be evaluated afresh (no decision memo): {why}"
                        );
                    }
                }
            }
            Ok(if lints.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(crate::EXIT_NEGATIVE)
            })
        }
        // A path that is not there or cannot be read is no answer (2); a
        // policy that does not compile is the check's answer (1).
        Err(e) if unreadable(&e) => Err(e.into()),
        Err(e) => {
            match format {
                EvalFormat::Json => println!(
                    "{}",
                    serde_json::json!({"ok": false, "errors": [e.to_string()]})
                ),
                EvalFormat::Text => eprintln!("{e}"),
            }
            Ok(ExitCode::from(crate::EXIT_NEGATIVE))
        }
    }
}

/// A policy path that is missing or unreadable: an error, not a failed
/// check or test.
fn unreadable(e: &cordon_broker::policy::PolicyError) -> bool {
    matches!(
        e,
        cordon_broker::policy::PolicyError::NotFound { .. }
            | cordon_broker::policy::PolicyError::Io { .. }
    )
}

fn test(
    paths: Vec<PathBuf>,
    verbose: bool,
    filter: Option<String>,
    timeout: std::time::Duration,
    coverage: bool,
    format: EvalFormat,
) -> anyhow::Result<ExitCode> {
    let paths = if paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        paths
    };
    let opts = testing::TestOptions {
        coverage,
        filter,
        timeout,
    };
    let report = match testing::run(&paths, &opts) {
        Ok(r) => r,
        Err(e) if unreadable(&e) => return Err(e.into()),
        Err(e) => {
            eprintln!("{e}");
            // JSON readers get the failure on stdout too, as `check` gives it.
            if let EvalFormat::Json = format {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"errors": [e.to_string()], "tests": []})
                    )?
                );
            }
            return Ok(ExitCode::from(crate::EXIT_NEGATIVE));
        }
    };
    match format {
        EvalFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        EvalFormat::Text => print_tests(&report, verbose),
    }
    if report.tests.is_empty() {
        let paths = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        match &opts.filter {
            Some(run) => eprintln!("no test_ rule in {paths} has `{run}` in its name (--run)"),
            None => eprintln!("no test_ rules found in {paths}"),
        }
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_NEGATIVE)
    })
}

fn print_tests(report: &testing::TestReport, verbose: bool) {
    let mut file = "";
    for t in &report.tests {
        let failed = t.outcome != testing::Outcome::Pass;
        if !(verbose || failed) {
            continue;
        }
        if t.file != file {
            file = &t.file;
            println!("{file}:");
        }
        let label = match t.outcome {
            testing::Outcome::Pass => "PASS",
            testing::Outcome::Fail => "FAIL",
            testing::Outcome::Error => "ERROR",
        };
        println!(
            "{}:{}: {label} ({})",
            t.name,
            t.line,
            humantime::format_duration(std::time::Duration::from_micros(
                t.duration.as_micros() as u64
            ))
        );
        if let Some(e) = &t.error {
            println!("  error: {e}");
        }
        if verbose && failed {
            for input in &t.inputs {
                println!("  input: {input}");
            }
            for p in &t.prints {
                println!("  print: {p}");
            }
        }
    }
    if let Some(c) = &report.coverage {
        println!(
            "coverage: {:.1}% of policy lines ({} of {})",
            c.percent,
            c.covered_lines,
            c.covered_lines + c.not_covered_lines
        );
        for r in c.rules.iter().filter(|r| !r.not_covered.is_empty()) {
            let lines: Vec<String> = r.not_covered.iter().map(u32::to_string).collect();
            println!(
                "  {}:{}: {} not fully covered (lines {})",
                r.file,
                r.line,
                r.rule,
                lines.join(", ")
            );
        }
    }
    let line = "-".repeat(80);
    println!("{line}");
    let total = report.tests.len();
    let (pass, fail, error) = (
        report.passed(),
        report.count(testing::Outcome::Fail),
        report.count(testing::Outcome::Error),
    );
    if pass > 0 {
        println!("PASS: {pass}/{total}");
    }
    if fail > 0 {
        println!("FAIL: {fail}/{total}");
    }
    if error > 0 {
        println!("ERROR: {error}/{total}");
    }
}

fn replay(
    policy: Vec<PathBuf>,
    audit_db: Option<PathBuf>,
    broker: Option<String>,
    filter: &AuditFilter,
    timeout: std::time::Duration,
    format: ReplayFormat,
) -> anyhow::Result<ExitCode> {
    let loaded = LoadedPolicy::load(&PolicySource::Paths(policy), &limited(timeout))?;
    let mut replayer = Replayer::new(&loaded);
    super::audit::each_record(
        audit_db.as_ref(),
        broker.as_deref(),
        filter,
        false,
        &mut |r| {
            replayer.add(&r);
            Ok(())
        },
    )?;
    let report = replayer.finish();
    match format {
        ReplayFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        ReplayFormat::Table => {
            println!(
                "replayed {} of {} decisions under revision {}: {} unchanged, {} allow->deny, {} deny->allow",
                report.replayed,
                report.decisions,
                report.new_revision,
                report.unchanged,
                report.allow_to_deny,
                report.deny_to_allow
            );
            if report.replayed > 0 {
                println!(
                    "slowest evaluation: {:.1} ms (record {}); a broker whose --eval-timeout is shorter denies that request",
                    report.slowest_eval_us as f64 / 1000.0,
                    report.slowest_eval_seq
                );
            }
            if report.without_input > 0 {
                println!(
                    "{} decisions were recorded without their input (malformed requests, requests read after their deadline) and cannot be replayed",
                    report.without_input
                );
            }
            if !report.changes.is_empty() {
                println!(
                    "{:<12}  {:>6}  {:<16}  {:<8}  {:<40}  REASON (THE DENIAL)",
                    "CHANGE", "COUNT", "TOOL", "SYSCALL", "SUBJECT"
                );
            }
            for c in &report.changes {
                let reason = match c.direction {
                    Direction::AllowToDeny => &c.new_reason,
                    Direction::DenyToAllow => &c.old_reason,
                };
                println!(
                    "{:<12}  {:>6}  {:<16}  {:<8}  {:<40}  {}",
                    c.direction.to_string(),
                    c.count,
                    c.tool,
                    c.syscall,
                    super::audit::one_line(&c.subject),
                    super::audit::one_line(reason)
                );
            }
        }
    }
    // "Nothing changes" must mean something was compared: a gate that
    // replayed nothing has not answered.
    if report.replayed == 0 && report.decisions > 0 {
        anyhow::bail!(
            "none of the {} matching decisions could be replayed (all were recorded without their input)",
            report.decisions
        );
    }
    if report.decisions == 0 {
        // A gate that compared nothing (a mistyped --sandbox or --label, an
        // empty store) must not pass.
        anyhow::bail!("no recorded decision matched: nothing was compared");
    }
    Ok(if report.changed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_NEGATIVE)
    })
}
