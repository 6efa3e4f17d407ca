//! `cordon learn`: run a tool permissively and write the policy that allows
//! what it did, with tests that replay what it did.
//!
//! The policy is a starting point for a human, so it is small and readable:
//! one rule per kind of access, and the observed paths, programs and
//! addresses as data. Paths are written relative to the sandbox where they
//! depend on it (`$WORKDIR`, `$TMPDIR`, `/proc/$PID`), so the next run of the
//! same tool, with a new temp dir and new pids, is allowed the same things.
//! A directory is collapsed into a grant of its entries only when the tool
//! used at least [`COLLAPSE_AT`] of them, and never a top-level directory
//! such as `/etc`; the grant covers neither what is below its entries nor
//! its dotfiles, so learning never grants a whole tree for a few files. The
//! sandbox's private `$TMPDIR` is granted whole.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use cordon_broker::audit::{AuditFilter, AuditRecord};
use serde_json::{Value, json};

use super::{parse_label, run};

/// Entries used in one directory before the directory becomes a prefix.
pub const COLLAPSE_AT: usize = 3;

/// Run a tool in permissive mode and write a starting policy that allows what it did.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Writes DIR/policy.rego (package cordon), DIR/data.json (what was observed) and\n\
DIR/policy_test.rego (one test per distinct observed call; policy_2_test.rego and on past ~1,500). Nothing is enforced during the run: every call\n\
is allowed and recorded. Review the result, then:\n  \
cordon policy test DIR\n  cordon run --policy DIR -- CMD\n\n\
Exit status: the tool's own (the policy is written either way); 125 if cordon failed.\n\n\
Examples:\n  cordon learn --output my-tool-policy -- python3 job.py\n  \
cordon learn --label tool=fetch --audit-db /tmp/learn-db -- curl -sS https://example.com"
)]
pub struct LearnArgs {
    /// Directory to write the policy to; must not exist or be empty.
    #[arg(long, short, value_name = "DIR", default_value = "cordon-learned")]
    output: PathBuf,
    /// Keep the run's audit records in this store (default: a temporary one, removed after).
    #[arg(long, value_name = "DIR")]
    audit_db: Option<PathBuf>,
    /// Label of the sandbox (repeatable), e.g. tool=fetch.
    #[arg(long, value_name = "K=V", value_parser = parse_label)]
    label: Vec<(String, String)>,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    command: Vec<OsString>,
}

pub fn run(args: LearnArgs) -> ExitCode {
    match learn(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cordon: {e:#}");
            if e.downcast_ref::<super::UsageError>().is_some() {
                ExitCode::from(crate::EXIT_USAGE)
            } else {
                ExitCode::from(run::EXIT_CORDON_FAILED)
            }
        }
    }
}

/// The output directory, checked and made before the tool runs, so that a
/// run is never lost to an output that cannot be written. Its links
/// (`--output` may name a link to a directory) are resolved now, before the
/// tool could change them.
fn prepare_output(dir: &Path) -> anyhow::Result<MadeDirs> {
    let mut made = made_output(dir)?;
    made.path =
        std::fs::canonicalize(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let st = std::fs::symlink_metadata(&made.path)
        .with_context(|| format!("cannot read {}", made.path.display()))?;
    made.identity = (st.dev(), st.ino());
    Ok(made)
}

/// The directory the tool ran beside is still the one made or checked, not
/// a link the tool put in its place (it may run in the same directory), and
/// still empty: the policy loader reads every `.rego` and data file under a
/// directory, so one the tool left there (written, linked or renamed in:
/// the run is permissive) would be part of the learned policy, unseen by
/// whoever reviews the three files cordon writes.
fn check_output(made: &MadeDirs) -> anyhow::Result<()> {
    let dir = &made.path;
    let st =
        std::fs::symlink_metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if !st.is_dir() || (st.dev(), st.ino()) != made.identity {
        anyhow::bail!(
            "{} was replaced while the tool ran; nothing written",
            dir.display()
        );
    }
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if let Some(entry) = entries.next() {
        let name = entry
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .unwrap_or_default();
        anyhow::bail!(
            "{} gained {name:?} while the tool ran (it would be loaded with the learned policy); \
             nothing written: run again with an --output outside the tool's reach",
            dir.display()
        );
    }
    Ok(())
}

fn made_output(dir: &Path) -> anyhow::Result<MadeDirs> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(super::usage(format!(
            "{} exists and is not a directory; choose another --output",
            dir.display()
        ))),
        Ok(_) => {
            let mut entries =
                std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
            if entries.next().is_some() {
                return Err(super::usage(format!(
                    "{} exists and is not empty; choose another --output",
                    dir.display()
                )));
            }
            Ok(MadeDirs::default())
        }
        Err(_) => {
            let missing: Vec<PathBuf> = dir
                .ancestors()
                .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
                .map(Path::to_path_buf)
                .collect();
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut made = MadeDirs::default();
            made.dirs = missing;
            Ok(made)
        }
    }
}

/// The directories `prepare_output` made (deepest first): removed again,
/// if still empty, unless a policy was written in them.
#[derive(Debug, Default)]
struct MadeDirs {
    dirs: Vec<PathBuf>,
    keep: bool,
    /// The output directory, links resolved.
    path: PathBuf,
    /// Its device and inode.
    identity: (u64, u64),
}

impl Drop for MadeDirs {
    fn drop(&mut self) {
        if !self.keep {
            for d in &self.dirs {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

fn learn(args: LearnArgs) -> anyhow::Result<ExitCode> {
    // The output must be empty after the run (`check_output`): a store there
    // would be taken for a file the tool left.
    if let Some(db) = &args.audit_db
        && let (Ok(db), Ok(out)) = (std::path::absolute(db), std::path::absolute(&args.output))
        && db.starts_with(&out)
    {
        return Err(super::usage(format!(
            "--audit-db {} is inside --output {}: put the store elsewhere",
            db.display(),
            out.display()
        )));
    }
    let mut made_output = prepare_output(&args.output)?;
    let temp_db = match args.audit_db {
        Some(_) => None,
        None => Some(private_dir()?),
    };
    let db = args
        .audit_db
        .clone()
        .or(temp_db.clone())
        .unwrap_or_default();
    let command_line = args
        .command
        .iter()
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ");
    let result = (|| {
        let outcome = run::execute(&run::RunArgs::learning(
            args.command.clone(),
            db.clone(),
            args.label.clone(),
        ))?;
        // The command never ran (not found, not executable: cordon said
        // so): there is nothing to learn, and nothing is written.
        let (Some(audit), true) = (outcome.audit, outcome.started) else {
            return anyhow::Ok(Err(outcome.code));
        };
        let lost = audit.lost();
        if lost > 0 {
            anyhow::bail!(
                "{lost} audit record(s) of the run could not be stored (see the errors above): \
                 a policy learned from the rest would miss their calls; nothing written"
            );
        }
        let mut records = Vec::new();
        audit.scan(
            &AuditFilter {
                sandbox_id: Some(outcome.sandbox_id.clone()),
                ..Default::default()
            },
            &mut |r| {
                records.push(r);
                true
            },
        )?;
        anyhow::Ok(Ok((outcome.code, outcome.sandbox_id, records)))
    })();
    if let Some(t) = &temp_db {
        let _ = std::fs::remove_dir_all(t);
    }
    let (code, sandbox_id, records) = match result? {
        Ok(r) => r,
        Err(code) => return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1))),
    };
    let learned = Learned::from_records(&records);
    check_output(&made_output)?;
    made_output.keep = true;
    write_policy(
        &made_output.path,
        &learned,
        &args.label,
        &command_line,
        &sandbox_id,
    )?;
    eprintln!(
        "cordon: learned {} calls ({} distinct) from `{command_line}`; wrote {}",
        learned.calls,
        learned.tests.len(),
        args.output.display()
    );
    eprintln!(
        "cordon: next: cordon policy test {0}; cordon run --policy {0} -- {command_line}",
        args.output.display()
    );
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// A fresh directory only we can use, for the run's temporary audit store
/// (created here, never an existing one another user could have planted).
fn private_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!(
            "cordon-learn-{}-{nanos}-{attempt}",
            std::process::id()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    anyhow::bail!("cannot create a private directory in {}", base.display())
}

/// `arg` as a shell word, so the printed command can be pasted.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// What one run did, ready to be written as data.
#[derive(Debug, Default, PartialEq)]
pub struct Learned {
    read_files: BTreeSet<String>,
    read_dirs: BTreeSet<String>,
    write_files: BTreeSet<String>,
    write_dirs: BTreeSet<String>,
    exec: BTreeSet<String>,
    network: BTreeSet<String>,
    /// One recorded input per distinct call, for the tests.
    tests: Vec<Value>,
    calls: u64,
}

impl Learned {
    pub fn from_records(records: &[AuditRecord]) -> Self {
        let mut learned = Learned::default();
        let mut reads = BTreeSet::new();
        let mut writes = BTreeSet::new();
        let mut seen_calls = BTreeSet::new();
        for r in records.iter().filter(|r| r.event == "decision") {
            let Some(input) = &r.input else { continue };
            let input = &*input.json();
            learned.calls += 1;
            match input["kind"].as_str() {
                Some("file") => {
                    let Some(path) = input["file"]["path"].as_str() else {
                        continue;
                    };
                    let path = relative_to_sandbox(path, input);
                    let writes_it = input["file"]["access"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|m| m == "write"))
                        || input["file"]["create"] == true
                        || input["file"]["truncate"] == true;
                    if writes_it {
                        writes.insert(path);
                    } else {
                        reads.insert(path);
                    }
                }
                Some("exec") => {
                    if let Some(p) = input["exec"]["path"].as_str() {
                        learned.exec.insert(relative_to_sandbox(p, input));
                    }
                }
                Some("network") => {
                    let n = &input["network"];
                    let entry = if n["family"] == "unix" {
                        let path =
                            relative_to_sandbox(n["path"].as_str().unwrap_or_default(), input);
                        json!({"op": n["op"], "family": "unix", "path": path})
                    } else {
                        json!({"op": n["op"], "family": n["family"], "address": n["address"], "port": n["port"]})
                    };
                    learned.network.insert(entry.to_string());
                }
                _ => continue,
            }
            // One test per distinct question (the same call from another pid is the same question).
            let mut key = input.clone();
            if let Some(o) = key.as_object_mut() {
                o.remove("process");
                o.remove("sandbox");
            }
            if seen_calls.insert(key.to_string()) {
                learned.tests.push(input.clone());
            }
        }
        // A file both read and written needs only the write entry (it allows both).
        reads.retain(|p| !writes.contains(p));
        (learned.write_files, learned.write_dirs) = collapse(&writes);
        let (read_files, read_dirs) = collapse(&reads);
        learned.read_files = read_files
            .into_iter()
            .filter(|f| {
                !learned
                    .write_dirs
                    .iter()
                    .any(|d| !d.starts_with('$') && f.starts_with(d.as_str()))
            })
            .collect();
        learned.read_dirs = read_dirs;
        learned
    }

    /// data.json: what was learned, and the labels of the sandbox it was
    /// learned in (the sandboxes the policy is for).
    fn data(&self, labels: &[(String, String)]) -> Value {
        let network: Vec<Value> = self
            .network
            .iter()
            .filter_map(|s| serde_json::from_str(s).ok())
            .collect();
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        json!({"learned": {
            "labels": labels,
            "read": {"files": self.read_files, "dirs": self.read_dirs},
            "write": {"files": self.write_files, "dirs": self.write_dirs},
            "exec": self.exec,
            "network": network,
            "never_by_directory": NEVER_COLLAPSED
                .map(|d| format!("{d}/"))
                .into_iter()
                .chain(NEVER_BY_DIRECTORY_FILES.map(String::from))
                .collect::<Vec<_>>(),
        }})
    }
}

/// `$WORKDIR/…`, `$TMPDIR/…` and `/proc/$PID/…` for paths that depend on
/// the sandbox or the caller; others as they are.
fn relative_to_sandbox(path: &str, input: &Value) -> String {
    let under = |dir: &str| -> Option<String> {
        if dir.is_empty() || dir == "/" {
            return None;
        }
        let dir = dir.trim_end_matches('/');
        if path == dir {
            Some(String::new())
        } else {
            path.strip_prefix(dir)
                .filter(|rest| rest.starts_with('/'))
                .map(str::to_owned)
        }
    };
    // The temp dir first: it may lie inside the working directory.
    if let Some(rest) = input["sandbox"]["tmpdir"].as_str().and_then(under) {
        return format!("$TMPDIR{rest}");
    }
    if let Some(rest) = input["sandbox"]["workdir"].as_str().and_then(under) {
        return format!("$WORKDIR{rest}");
    }
    if let Some(pid) = input["process"]["pid"].as_i64()
        && let Some(rest) = under(&format!("/proc/{pid}"))
    {
        return format!("/proc/$PID{rest}");
    }
    path.to_owned()
}

/// Directories never granted whole, however many of their files the tool
/// used: homes and credential stores (a prefix there would grant the keys
/// next to the files that were read).
const NEVER_COLLAPSED: [&str; 9] = [
    "/.ssh",
    "/.aws",
    "/.gnupg",
    "/.config",
    "/.kube",
    "/.docker",
    "/.local/share/keyrings",
    "/.azure",
    "/private",
];

/// Credential files a directory grant never covers either (a learned
/// `$WORKDIR/` in a home outside `/home`, such as `/var/lib/jenkins`, would
/// otherwise grant them).
const NEVER_BY_DIRECTORY_FILES: [&str; 6] = [
    "/.netrc",
    "/.pgpass",
    "/.git-credentials",
    "/.npmrc",
    "/.pypirc",
    "/.my.cnf",
];

/// Files, and directory prefixes (ending in `/`) where at least
/// [`COLLAPSE_AT`] entries of one directory were used. Top-level directories
/// (`/etc`, `/tmp`), a home directory itself (`/root`, `/home/NAME`) and
/// credential directories ([`NEVER_COLLAPSED`]) are never collapsed; the
/// sandbox's own `$WORKDIR` and `$TMPDIR` may be, and the policy's
/// `too_broad` refuses such a grant in a run where they stand for a
/// top-level or home directory, so their files stay listed one by one too.
fn collapse(paths: &BTreeSet<String>) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut by_dir: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    let mut files = BTreeSet::new();
    for p in paths {
        match p.rsplit_once('/') {
            Some((dir, _)) => by_dir.entry(dir.to_owned()).or_default().push(p),
            // `$WORKDIR` or `$TMPDIR` itself (a listing of it).
            None => {
                files.insert(p.clone());
            }
        }
    }
    let mut dirs = BTreeSet::new();
    // The sandbox's private temp dir, fresh in every run, whole: names made
    // there (`mktemp`) differ from run to run.
    if paths.iter().any(|p| p.starts_with("$TMPDIR/")) {
        dirs.insert("$TMPDIR/".to_owned());
    }
    for (dir, entries) in by_dir {
        let depth = dir.matches('/').count();
        let home = dir == "/root" || (dir.starts_with("/home/") && depth == 2);
        let secret = NEVER_COLLAPSED.iter().any(|s| dir.contains(s));
        let collapsible = entries.len() >= COLLAPSE_AT
            && (depth >= 2 || dir.starts_with('$'))
            && !home
            && !secret;
        if collapsible {
            dirs.insert(format!("{dir}/"));
        }
        if !collapsible || dir.starts_with('$') {
            files.extend(entries.into_iter().cloned());
        }
    }
    // A file a collapsed directory grants (an entry of it, not below it,
    // not a dotfile) needs no entry of its own, unless the directory is the
    // sandbox's: the policy's `too_broad` refuses that grant in a run where
    // it stands for a home, and the files the tool used there must still be
    // allowed one by one.
    files.retain(|f: &String| {
        !dirs.iter().any(|d| {
            !d.starts_with('$')
                && f.strip_prefix(d.as_str())
                    .is_some_and(|entry| !entry.contains('/') && !entry.starts_with('.'))
        })
    });
    (files, dirs)
}

const POLICY: &str = r#"package cordon

import rego.v1

default allow := false

# Only for sandboxes with every label of the run it was learned from
# (`cordon learn --label tool=NAME`): loaded into a broker that serves other
# tools too, what this tool did grants them nothing. Learned without labels,
# for any sandbox.
for_this_sandbox if {
	every key, value in data.learned.labels {
		input.sandbox.labels[key] == value
	}
}

# A leading $WORKDIR or $TMPDIR stands for this sandbox's working directory or
# private temp dir, and /proc/$PID for the calling process, so that the next
# run (new temp dir, new pids) is allowed the same things. Only as a prefix: a
# "$" inside a real file name is that name.
# A sandbox without one (an empty workdir or tmpdir) has nothing they stand for:
# "$TMPDIR/" would otherwise be "/", every path.
expand(p) := concat("", [input.sandbox.workdir, substring(p, 8, -1)]) if {
	startswith(p, "$WORKDIR")
	input.sandbox.workdir != ""
}

expand(p) := concat("", [input.sandbox.tmpdir, substring(p, 7, -1)]) if {
	startswith(p, "$TMPDIR")
	input.sandbox.tmpdir != ""
}

expand(p) := concat("", [sprintf("/proc/%d", [input.process.pid]), substring(p, 10, -1)]) if startswith(p, "/proc/$PID")

expand(p) := p if {
	not startswith(p, "$WORKDIR")
	not startswith(p, "$TMPDIR")
	not startswith(p, "/proc/$PID")
}

# Reading, or an O_PATH open (no access at all).
read_only if {
	every access in input.file.access {
		access == "read"
	}
	not input.file.create
	not input.file.truncate
}

# The path this call names, and the names a learned entry for it may have:
# the path itself, and the path with this sandbox's working directory or temp
# dir, or the caller's /proc/PID, written as the prefix expand() replaces
# (trim_prefix, not a count of characters: regorus counts UTF-16 units).
# Looked up in the learned lists, rather than each entry expanded: a run of
# thousands of files costs a scan, not thousands of calls, per decision.
subject_path := input.file.path if input.kind == "file"

subject_path := input.exec.path if input.kind == "exec"

subject_path := input.network.path if {
	input.kind == "network"
	input.network.family == "unix"
}

names contains subject_path

names contains concat("", ["$WORKDIR", trim_prefix(subject_path, input.sandbox.workdir)]) if {
	input.sandbox.workdir != ""
	startswith(subject_path, input.sandbox.workdir)
}

names contains concat("", ["$TMPDIR", trim_prefix(subject_path, input.sandbox.tmpdir)]) if {
	input.sandbox.tmpdir != ""
	startswith(subject_path, input.sandbox.tmpdir)
}

names contains concat("", ["/proc/$PID", trim_prefix(subject_path, proc)]) if {
	proc := sprintf("/proc/%d", [input.process.pid])
	startswith(subject_path, proc)
}

# Files the tool read.
allow if {
	for_this_sandbox
	input.kind == "file"
	read_only
	some n in names
	n in data.learned.read.files
}

# Directories it read many entries of (each ends in /).
allow if {
	for_this_sandbox
	input.kind == "file"
	read_only
	some d in data.learned.read.dirs
	granted_by_directory(d)
}

# Files it wrote or created (and may read).
allow if {
	for_this_sandbox
	input.kind == "file"
	some n in names
	n in data.learned.write.files
}

# Directories it wrote many entries of.
allow if {
	for_this_sandbox
	input.kind == "file"
	some d in data.learned.write.dirs
	granted_by_directory(d)
}

# A directory grant covers the names in the directory: not what is below
# them (a .git/config, a .git/hooks/ script of a project whose files the tool
# wrote), nor its dotfiles (.env, .bashrc). The sandbox's own $TMPDIR, fresh
# in every run, is granted whole.
granted_by_directory(d) if {
	dir := expand(d)
	startswith(input.file.path, dir)
	not too_broad(dir)
	not in_credential_store_below(dir)
	entry_or_own_tmpdir(d, trim_prefix(input.file.path, dir))
}

entry_or_own_tmpdir(d, _) if d == "$TMPDIR/"

entry_or_own_tmpdir(d, entry) if {
	d != "$TMPDIR/"
	not contains(entry, "/")
	not startswith(entry, ".")
}

# A directory grant never covers a top-level directory (/etc, /tmp) or a home
# directory itself (/root, /home/NAME), whatever $WORKDIR or $TMPDIR stands for
# in this run: a run learned in /etc, or run again from a home directory.
too_broad(dir) if count(split(trim_right(dir, "/"), "/")) < 3

too_broad(dir) if trim_right(dir, "/") == "/root"

too_broad(dir) if {
	parts := split(trim_right(dir, "/"), "/")
	count(parts) == 3
	parts[1] == "home"
}

# A directory grant never reaches a credential store below it: a learned
# $WORKDIR/, from a run in a home directory, must not grant ~/.ssh or
# ~/.netrc (the entries name directories with a final /, files without). Files the
# tool itself used there are granted one by one above. Only the part below
# the grant counts: one learned inside ~/.config still covers its own files.
in_credential_store_below(dir) if {
	# (Not substring with count: count counts UTF-16 units, substring
	# characters, and a name with an emoji lost the leading /.)
	rest := concat("", ["/", trim_prefix(input.file.path, dir)])
	some s in data.learned.never_by_directory
	contains(rest, s)
}

# Programs it ran.
allow if {
	for_this_sandbox
	input.kind == "exec"
	some n in names
	n in data.learned.exec
}

# Addresses it connected, sent to, bound or listened on.
allow if {
	for_this_sandbox
	input.kind == "network"
	input.network.family != "unix"
	some n in data.learned.network
	n.op == input.network.op
	n.family == input.network.family
	n.address == input.network.address
	n.port == input.network.port
}

# Unix sockets it used.
allow if {
	for_this_sandbox
	input.kind == "network"
	input.network.family == "unix"
	some name in names
	{"op": input.network.op, "family": "unix", "path": name} in data.learned.network
}
"#;

fn write_policy(
    dir: &Path,
    learned: &Learned,
    labels: &[(String, String)],
    command_line: &str,
    sandbox_id: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let header = format!(
        "# Learned by `cordon learn` from one run of: {}\n# (sandbox {sandbox_id}). A starting point: review it, tighten it, keep the tests passing.\n",
        command_line.replace('\n', " ")
    );
    // New files only: the directory existed while the tool ran, and a link
    // it left there must not take cordon's writes elsewhere.
    let write = |name: &str, text: String| -> anyhow::Result<()> {
        use std::io::Write;
        let path: PathBuf = dir.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write("policy.rego", format!("{header}{POLICY}"))?;
    write(
        "data.json",
        serde_json::to_string_pretty(&learned.data(labels))? + "\n",
    )?;
    // The tests in as many files as regorus's limits on one file need
    // (`TEST_FILE_BYTES`, `TEST_FILE_LINES`): policy_test.rego,
    // policy_2_test.rego, ...
    let head = format!(
        "{header}# Each test replays one call the tool made; all must stay allowed.\npackage cordon_learned_test\n\nimport data.cordon\nimport rego.v1\n"
    );
    let lines = |t: &str| t.bytes().filter(|&b| b == b'\n').count();
    let mut files = vec![head.clone()];
    let mut file_lines = lines(&head);
    for (i, input) in learned.tests.iter().enumerate() {
        // The comment with its control characters escaped: a NUL (an
        // abstract socket's padding) ends the file for the Rego lexer, and
        // every test after it would vanish. The input without an exec's
        // argv (the learned policy never reads it).
        let mut input = input.clone();
        if let Some(exec) = input.get_mut("exec").and_then(Value::as_object_mut) {
            exec.remove("argv");
        }
        let test = format!(
            "\n# {}\ntest_observed_{i} if cordon.allow with input as {}\n",
            describe(&input).escape_debug(),
            rego_term(&input, 0)
        );
        let current = files.last().expect("one file at least");
        let test_lines = lines(&test);
        if current.len() > head.len()
            && (current.len() + test.len() > TEST_FILE_BYTES
                || file_lines + test_lines > TEST_FILE_LINES)
        {
            files.push(head.clone());
            file_lines = lines(&head);
        }
        file_lines += test_lines;
        files.last_mut().expect("one file at least").push_str(&test);
    }
    for (n, text) in files.into_iter().enumerate() {
        let name = match n {
            0 => "policy_test.rego".to_owned(),
            n => format!("policy_{}_test.rego", n + 1),
        };
        write(&name, text)?;
    }
    Ok(())
}

/// What one test file may hold: regorus refuses a file over 1 MiB or
/// 20,000 lines (and a line over 1024 columns: see [`rego_term`]).
const TEST_FILE_BYTES: usize = 900 * 1024;
const TEST_FILE_LINES: usize = 18_000;

/// A JSON value as a Rego term whose lines stay within regorus's 1024
/// columns: on one line where it fits, else one member per line, and a
/// string too long for a line as `concat("", [...])` of short pieces (a
/// piece of 100 characters is at most 600 bytes escaped).
fn rego_term(v: &Value, depth: usize) -> String {
    const INLINE: usize = 700;
    const PIECE: usize = 100;
    let compact = v.to_string();
    if compact.len() <= INLINE {
        return compact;
    }
    let inner = "\t".repeat(depth + 1);
    let close = "\t".repeat(depth);
    match v {
        Value::Object(o) => {
            let members: Vec<String> = o
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{inner}{}: {}",
                        Value::from(k.as_str()),
                        rego_term(v, depth + 1)
                    )
                })
                .collect();
            format!("{{\n{}\n{close}}}", members.join(",\n"))
        }
        Value::Array(a) => {
            let items: Vec<String> = a
                .iter()
                .map(|v| format!("{inner}{}", rego_term(v, depth + 1)))
                .collect();
            format!("[\n{}\n{close}]", items.join(",\n"))
        }
        Value::String(s) => {
            let chars: Vec<char> = s.chars().collect();
            let pieces: Vec<String> = chars
                .chunks(PIECE)
                .map(|c| format!("{inner}{}", Value::from(c.iter().collect::<String>())))
                .collect();
            format!("concat(\"\", [\n{}\n{close}])", pieces.join(",\n"))
        }
        // Numbers and booleans are short.
        _ => compact,
    }
}

/// One line saying what a call was, for the test's comment.
fn describe(input: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match input["kind"].as_str() {
        Some("file") => format!("{} {}", s(&input["syscall"]), s(&input["file"]["path"])),
        Some("exec") => format!("{} {}", s(&input["syscall"]), s(&input["exec"]["path"])),
        Some("network") => {
            let n = &input["network"];
            if n["family"] == "unix" {
                format!("{} unix {}", s(&n["op"]), s(&n["path"]))
            } else {
                format!(
                    "{} {} {}:{}",
                    s(&n["op"]),
                    s(&n["family"]),
                    s(&n["address"]),
                    n["port"]
                )
            }
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// Thousands of tests, and paths too long for one line (with control
    /// characters, which grow sixfold escaped): every test file loads and
    /// every test passes. Regorus refuses a file over 20,000 lines or 1 MiB
    /// and a line over 1024 columns.
    #[test]
    fn learned_tests_load_however_many_and_however_long() {
        let mut learned = Learned::default();
        let mut paths: Vec<String> = (0..2500).map(|i| format!("/data/file-{i}")).collect();
        paths.push(format!("/data/{}", "\u{1}é".repeat(1500)));
        paths.push(format!("/data/{}", "a".repeat(4000)));
        let cwd = format!("/work/{}", "d".repeat(300));
        for p in &paths {
            learned.read_files.insert(p.clone());
            learned.tests.push(json!({
                "kind": "file",
                "syscall": "openat",
                "file": {"path": p, "access": ["read"], "create": false, "truncate": false, "flags": ["O_RDONLY"]},
                "process": {"pid": 7, "ppid": 1, "uid": 0, "gid": 0, "comm": "t", "exe": "/bin/t", "cwd": cwd},
                "sandbox": {"id": "s", "labels": {}, "workdir": cwd, "tmpdir": "/tmp/s"},
            }));
        }
        let dir = tempfile::tempdir().unwrap();
        write_policy(dir.path(), &learned, &[], "t", "s").unwrap();
        assert!(dir.path().join("policy_2_test.rego").exists());
        let report = cordon_broker::testing::run(
            &[dir.path().to_path_buf()],
            &cordon_broker::testing::TestOptions::default(),
        )
        .unwrap();
        assert!(report.ok());
        assert_eq!(report.passed(), paths.len());
    }

    /// The learned names of a path are exact whatever the sandbox's
    /// directories are called: one with a character outside the Basic
    /// Multilingual Plane (two UTF-16 units) gets its own files, not its
    /// sibling's.
    #[test]
    fn learned_names_hold_for_any_directory_name() {
        let mut learned = Learned::default();
        learned.read_files.insert("$WORKDIR/secret".into());
        let dir = tempfile::tempdir().unwrap();
        write_policy(dir.path(), &learned, &[], "t", "s").unwrap();
        let policy = cordon_broker::policy::LoadedPolicy::load(
            &cordon_broker::policy::PolicySource::Paths(vec![dir.path().into()]),
            &Default::default(),
        )
        .unwrap();
        let read = |path: &str| {
            let input = json!({
                "kind": "file",
                "syscall": "openat",
                "file": {"path": path, "access": ["read"], "create": false, "truncate": false, "flags": []},
                "process": {"pid": 7, "ppid": 1, "uid": 0, "gid": 0, "comm": "t", "exe": "/bin/t", "cwd": "/"},
                "sandbox": {"id": "s", "labels": {}, "workdir": "/w\u{1F600}", "tmpdir": "/tmp/s"},
            });
            policy.evaluate(&input).allow
        };
        assert!(read("/w\u{1F600}/secret"));
        assert!(!read("/w\u{1F600}x/secret"));
    }

    #[test]
    fn collapses_busy_directories_only() {
        let (files, dirs) = collapse(&set(&[
            "/usr/lib/locale/C.utf8/LC_CTYPE",
            "/usr/lib/locale/C.utf8/LC_TIME",
            "/usr/lib/locale/C.utf8/LC_NUMERIC",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/etc/ld.so.cache",
            "/etc/hostname",
            "/etc/passwd",
            "$WORKDIR/a",
            "$WORKDIR/b",
            "$WORKDIR/c",
        ]));
        assert_eq!(dirs, set(&["/usr/lib/locale/C.utf8/", "$WORKDIR/"]));
        // Three files in /etc do not grant /etc (and so /etc/shadow). The
        // files in $WORKDIR stay listed: that grant may be refused in a run
        // where $WORKDIR is a home (`too_broad`).
        assert_eq!(
            files,
            set(&[
                "$WORKDIR/a",
                "$WORKDIR/b",
                "$WORKDIR/c",
                "/etc/hostname",
                "/etc/ld.so.cache",
                "/etc/passwd",
                "/usr/lib/x86_64-linux-gnu/libc.so.6"
            ])
        );
    }

    /// The sandbox's directories themselves stay listed; a name made in its
    /// private temp dir grants that directory whole (`mktemp` names differ
    /// from run to run: the learned run could not be run again).
    #[test]
    fn the_sandbox_directories_themselves_are_kept() {
        let (files, dirs) = collapse(&set(&["$WORKDIR", "$TMPDIR", "$TMPDIR/x"]));
        assert_eq!(files, set(&["$WORKDIR", "$TMPDIR", "$TMPDIR/x"]));
        assert_eq!(dirs, set(&["$TMPDIR/"]));
        let (_, dirs) = collapse(&set(&["$WORKDIR/a"]));
        assert!(dirs.is_empty());
    }

    /// A directory grant covers the names in the directory only: not
    /// what is below them, not its dotfiles, and never a credential store,
    /// whatever the directory is called (a name with a character outside
    /// the Basic Multilingual Plane made the store's check look at the wrong
    /// part of the path: found by review). The sandbox's temp dir is whole.
    #[test]
    fn a_directory_grant_is_its_entries_and_the_temp_dir_whole() {
        let mut learned = Learned::default();
        (learned.write_files, learned.write_dirs) = collapse(&set(&[
            "$WORKDIR/a",
            "$WORKDIR/b",
            "$WORKDIR/c",
            "$TMPDIR/tmp.abc",
        ]));
        let dir = tempfile::tempdir().unwrap();
        write_policy(dir.path(), &learned, &[], "t", "s").unwrap();
        let data = std::fs::read_to_string(dir.path().join("data.json")).unwrap();
        assert!(
            data.contains("\"$WORKDIR/\"") && data.contains("\"$TMPDIR/\""),
            "{data}"
        );
        let policy = cordon_broker::policy::LoadedPolicy::load(
            &cordon_broker::policy::PolicySource::Paths(vec![dir.path().into()]),
            &Default::default(),
        )
        .unwrap();
        let work = "/home/alice/w\u{1F600}";
        let may = |path: &str, access: &str| {
            let input = json!({
                "kind": "file",
                "syscall": "openat",
                "file": {"path": path, "access": [access], "create": false, "truncate": false, "flags": []},
                "process": {"pid": 7, "ppid": 1, "uid": 0, "gid": 0, "comm": "t", "exe": "/bin/t", "cwd": work},
                "sandbox": {"id": "s", "labels": {}, "workdir": work, "tmpdir": "/tmp/cordon-s"},
            });
            policy.evaluate(&input).allow
        };
        assert!(may(&format!("{work}/d"), "write"));
        assert!(may(&format!("{work}/d"), "read"));
        for denied in [
            ".ssh/id_rsa",
            ".netrc",
            ".git/config",
            ".git/hooks/pre-commit",
            "sub/x",
            ".env",
        ] {
            assert!(!may(&format!("{work}/{denied}"), "write"), "{denied}");
            assert!(!may(&format!("{work}/{denied}"), "read"), "{denied}");
        }
        assert!(may("/tmp/cordon-s/tmp.xyz", "write"));
        assert!(may("/tmp/cordon-s/sub/dir/f", "write"));
        assert!(!may("/tmp/cordon-other/f", "write"));
    }

    #[test]
    fn homes_and_credential_stores_are_never_granted_whole() {
        let (files, dirs) = collapse(&set(&[
            "/root/a",
            "/root/b",
            "/root/c",
            "/home/alice/.ssh/config",
            "/home/alice/.ssh/known_hosts",
            "/home/alice/.ssh/id_ed25519.pub",
            "$WORKDIR/.aws/x",
            "$WORKDIR/.aws/y",
            "$WORKDIR/.aws/z",
        ]));
        assert!(dirs.is_empty(), "{dirs:?}");
        assert_eq!(files.len(), 9);
    }

    #[test]
    fn paths_are_made_relative_to_the_sandbox() {
        let input = json!({"sandbox": {"workdir": "/w", "tmpdir": "/w/tmp/cordon-x"}, "process": {"pid": 42}});
        assert_eq!(
            relative_to_sandbox("/w/out.txt", &input),
            "$WORKDIR/out.txt"
        );
        assert_eq!(relative_to_sandbox("/w", &input), "$WORKDIR");
        assert_eq!(relative_to_sandbox("/w2/x", &input), "/w2/x");
        assert_eq!(
            relative_to_sandbox("/w/tmp/cordon-x/f", &input),
            "$TMPDIR/f"
        );
        assert_eq!(
            relative_to_sandbox("/proc/42/maps", &input),
            "/proc/$PID/maps"
        );
        assert_eq!(
            relative_to_sandbox("/proc/420/maps", &input),
            "/proc/420/maps"
        );
    }

    #[test]
    fn writes_subsume_reads_and_tests_are_distinct_calls() {
        let rec = |pid: i64, path: &str, access: &str| {
            let input = json!({
                "sandbox": {"workdir": "/w", "tmpdir": "/t"}, "process": {"pid": pid},
                "syscall": "openat", "kind": "file",
                "file": {"path": path, "access": [access], "create": access == "write", "truncate": false},
            });
            AuditRecord {
                event: "decision".into(),
                input: Some(input.into()),
                ..Default::default()
            }
        };
        let learned = Learned::from_records(&[
            rec(1, "/w/out", "read"),
            rec(1, "/w/out", "write"),
            rec(2, "/w/out", "write"),
            rec(1, "/etc/hosts", "read"),
        ]);
        assert_eq!(learned.write_files, set(&["$WORKDIR/out"]));
        assert_eq!(learned.read_files, set(&["/etc/hosts"]));
        assert_eq!(learned.calls, 4);
        assert_eq!(learned.tests.len(), 3);
    }
}
