//! `cordon`: run untrusted tools under a syscall broker. This file only parses
//! arguments, sets up logging and maps results to exit codes; the work is in
//! the `cordon-broker` and `cordon-shim` libraries.

#![forbid(unsafe_code)]

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status for a negative answer, and only for that: a denial, a
/// failed check, test or verification, a replay that changes decisions.
pub const EXIT_NEGATIVE: u8 = 1;
/// Exit status for bad usage and for any error (a missing file, a broker
/// that refuses us), as grep and diff do: a script that asks "denied?"
/// must not take "could not tell" for "yes".
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "cordon",
    version,
    about = "Run untrusted tools under a seccomp syscall broker with Rego policies and a tamper-evident audit log",
    long_about = "Cordon stops a sandboxed tool's sensitive syscalls (opens, connects, sends, execs) in the kernel, \
asks a broker that evaluates Rego policies, and records every decision in a hash-chained audit store.",
    after_help = "Examples:\n  cordon run -- python3 -c 'print(open(\"/etc/hostname\").read())'\n  cordon serve --listen unix:///run/cordon/broker.sock --policy policies/ --audit-db /var/lib/cordon/audit\n  cordon audit --decision deny --since 1h\n  cordon policy eval --policy policies/ --input request.json"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = cmd::LogFormat::Text)]
    log_format: cmd::LogFormat,
    /// Log filter, e.g. `info` or `cordon_broker=debug`. Default: RUST_LOG if set, else `warn`
    /// (`info` for serve).
    #[arg(long, global = true, env = "CORDON_LOG")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command under the sandbox.
    Run(cmd::run::RunArgs),
    Serve(cmd::serve::ServeArgs),
    Audit(cmd::audit::AuditArgs),
    /// Evaluate, check, test and replay policies without a broker.
    #[command(
        subcommand,
        after_help = "Examples:\n  cordon policy check policies/\n  cordon policy test -v --coverage policies/\n  cordon policy eval --policy policies/ --input policies/cases/etc-shadow/input.json\n  cordon policy replay --audit-db ~/.local/state/cordon/audit --policy policies/ --since 1d"
    )]
    Policy(cmd::policy::PolicyCommand),
    /// Run a command permissively and write a starting policy that allows what it did.
    Learn(cmd::learn::LearnArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A broker says what it serves; other commands speak only of trouble.
    let default = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    cmd::init_logging(cli.log_format, cli.log_level.as_deref(), default);
    // Where root may: the audit store's first open outruns sled's spinning
    // pool (a short-lived thread, made fair again after 10 ms), and the
    // batched flusher keeps its window while the tool's calls take its CPU.
    cordon_broker::audit::allow_raised_priority(true);
    let result = match cli.command {
        Command::Run(args) => return cmd::run::run(args),
        Command::Learn(args) => return cmd::learn::run(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Audit(args) => cmd::audit::run(args),
        Command::Policy(c) => {
            cordon_shim::default_sigpipe();
            cmd::policy::run(c)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cordon: {}", one_line(&e));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// An error and its causes on one line, each said once: an error whose
/// message already holds its source's (`thiserror`'s `{source}`) would say
/// it twice in `{:#}`.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
