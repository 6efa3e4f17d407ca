//! `cordon policy eval|check`: try and lint policies without a broker.

use std::{io::Read, path::PathBuf, process::ExitCode};

use anyhow::Context;
use cordon_broker::policy::{LoadedPolicy, PolicyOptions, PolicySource};

use super::usage;

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Evaluate one input document: decision, reason, errno, evaluation time. Exit 1 on a denial.
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
        #[arg(long, value_enum, default_value_t = EvalFormat::Text)]
        format: EvalFormat,
    },
    /// Parse and compile policies; errors as file:line:col: message. Exit 1 if any.
    #[command(
        after_help = "Examples:\n  cordon policy check policies/\n  cordon policy check my-policy.rego data.json"
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
pub enum EvalFormat {
    Text,
    Json,
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Eval {
            policy,
            input,
            format,
        } => eval(policy, &input, format),
        PolicyCommand::Check { paths, format } => check(paths, format),
    }
}

fn source_of(paths: Vec<PathBuf>) -> PolicySource {
    if paths.is_empty() {
        PolicySource::Builtin
    } else {
        PolicySource::Paths(paths)
    }
}

fn eval(policy: Vec<PathBuf>, input: &str, format: EvalFormat) -> anyhow::Result<ExitCode> {
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
    let loaded = LoadedPolicy::load(&source_of(policy), &PolicyOptions::default())?;
    let v = loaded.evaluate(&doc);
    match format {
        EvalFormat::Json => println!(
            "{}",
            serde_json::json!({
                "allow": v.allow, "errno": v.errno, "errno_code": v.errno_code, "reason": v.reason,
                "deny": v.deny, "revision": v.revision.as_ref(), "engine": loaded.engine_name(),
                "eval_us": v.eval_time.as_secs_f64() * 1e6,
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
        }
    }
    Ok(if v.allow {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_NEGATIVE)
    })
}

fn check(paths: Vec<PathBuf>, format: EvalFormat) -> anyhow::Result<ExitCode> {
    match LoadedPolicy::load(&source_of(paths), &PolicyOptions::default()) {
        Ok(p) => {
            match format {
                EvalFormat::Json => println!(
                    "{}",
                    serde_json::json!({"ok": true, "files": p.files(), "revision": p.revision().as_ref(), "engine": p.engine_name()})
                ),
                EvalFormat::Text => println!(
                    "ok: {} files, revision {} ({})",
                    p.files().len(),
                    p.revision(),
                    p.engine_name()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
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
