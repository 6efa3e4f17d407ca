//! Loading, hot-reloading and evaluating the Rego policy (package `cordon`).
//!
//! Invariants:
//! - Evaluation never fails open: a runtime error, a timeout or an answer of the
//!   wrong shape is a denial whose reason says what went wrong. A builtin
//!   that fails is not such an error: as in OPA, its expression is undefined
//!   (see `build_engine`), so `not risky` holds when `risky` fails.
//! - A loaded policy is immutable; a reload builds a new [`LoadedPolicy`] and
//!   swaps it in only if every file parses and compiles, so a broken edit never
//!   replaces a working revision.
//! - `revision` is a hash of every loaded source and data file, so an audit
//!   record names exactly what decided it.
//!
//! On the hot path the policy runs in regorus's compiled VM (RVM) when the
//! policy compiles for it and answers the self-check inputs the same way as the
//! interpreter; otherwise in the interpreter. Evaluators are pooled per revision.

use std::{
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock, RwLock},
    time::{Duration, Instant, SystemTime},
};

use regorus::{
    Engine, Value,
    languages::rego::compiler::Compiler,
    rvm::{Program, RegoVM},
    utils::limits::ExecutionTimerConfig,
};
use sha2::{Digest, Sha256};

use crate::memo;
use crate::{errno, memo::Memo};

mod builtin;
mod conflicts;
mod input;

/// The built-in default policy, used when no policy is given.
pub const DEFAULT_POLICY: &str = include_str!("../../policies/default.rego");

/// The rule the broker evaluates: a wrapper that gathers the contract's
/// `allow`, `deny` and `errno` into one value, with the contract's defaults.
pub const WRAPPER_PATH: &str = "cordon-internal/decision.rego";
pub const WRAPPER: &str = r#"package cordon_internal

default allow := false
allow := data.cordon.allow

default deny := set()
deny := data.cordon.deny

# Only a denial has an errno: an allowed request does not evaluate the rules.
default errno := ""
errno := data.cordon.errno if true in {allow != true, count(deny) > 0}

result := {"allow": allow, "deny": deny, "errno": errno}
"#;
pub const RESULT_RULE: &str = "data.cordon_internal.result";

/// A failure to load a policy. Parse and compile errors carry
/// `file:line:col: message` as their first line.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy path {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid UTF-8")]
    NotUtf8 { path: PathBuf },
    /// A FIFO would block the read (and the watcher) until written; a
    /// device would be read until memory runs out.
    #[error("{path} is not a regular file (a {kind}): policy and data files must be")]
    NotAFile { path: PathBuf, kind: &'static str },
    /// A directory reached by a second name, through a symbolic link: a
    /// loop would be read for ever, a second name would load its files twice.
    #[error(
        "{path} is {first} again (through a symbolic link): its files would be loaded twice, or for ever; remove the link"
    )]
    SameDirectory { path: PathBuf, first: PathBuf },
    #[error("{0}")]
    Parse(String),
    /// `path` is the file, or `file:line:col` where the parser names a place.
    #[error("{path}: invalid data: {message}")]
    Data { path: PathBuf, message: String },
    #[error("no policy file declares package cordon (in {0})")]
    NoCordonPackage(String),
    /// `file:line:col: message` when regorus names a place; see
    /// [`PolicyError::compile`].
    #[error("{0}")]
    Compile(String),
    #[error(
        "the policy files changed while they were read; nothing was installed (try again once they are all in place)"
    )]
    Unsettled,
    #[error("loading the policy failed: {0}")]
    Panicked(String),
    /// `file:line:col: message`, from [`crate::lint`].
    #[error("{0} (see `cordon policy check`)")]
    DeniesEveryCall(String),
}

/// A mistake the linter finds that makes every evaluation fail (see
/// [`crate::lint::Lint::denies_every_call`]), for a broker about to install
/// the policy. A lint that fails to run finds nothing: the policy loaded.
pub fn denies_every_call(source: &PolicySource) -> Option<PolicyError> {
    let lints = crate::lint::lint(source).ok()?;
    let fatal: Vec<String> = lints
        .iter()
        .filter(|l| l.denies_every_call)
        .map(|l| l.to_string())
        .collect();
    (!fatal.is_empty()).then(|| PolicyError::DeniesEveryCall(fatal.join("; ")))
}

/// The bytes of a regular file (through symbolic links, as a ConfigMap's
/// `..data` link is read); anything else is refused, without blocking on
/// a FIFO that has no writer (`O_NONBLOCK`).
fn read_regular_file(path: &Path) -> Result<Vec<u8>, PolicyError> {
    use std::{io::Read, os::unix::fs::FileTypeExt, os::unix::fs::OpenOptionsExt};
    let io = |e| PolicyError::Io {
        path: path.into(),
        source: e,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "FIFO"
        } else if ft.is_char_device() || ft.is_block_device() {
            "device"
        } else if ft.is_socket() {
            "socket"
        } else {
            "special file"
        };
        return Err(PolicyError::NotAFile {
            path: path.into(),
            kind,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

impl PolicyError {
    /// A compile error. One that names a place is kept as
    /// `file:line:col: message`, the first thing on its line, as editors and
    /// CI annotations read it; another is "policy does not compile: message".
    pub fn compile(message: impl Into<String>) -> Self {
        let message = message.into();
        if located(&message) {
            PolicyError::Compile(message)
        } else {
            PolicyError::Compile(format!("policy does not compile: {message}"))
        }
    }
}

/// Whether `message` starts with `file:line:col: `.
fn located(message: &str) -> bool {
    let Some((place, _)) = message.split_once(": ") else {
        return false;
    };
    let mut parts = place.rsplitn(3, ':');
    let (col, line, file) = (parts.next(), parts.next(), parts.next());
    let number =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    number(col) && number(line) && file.is_some_and(|f| !f.is_empty())
}

/// Where the policy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// `policies/default.rego`, compiled into the binary.
    Builtin,
    /// Files and directories (`.rego`, `.json`, `.yaml`/`.yml`; directories
    /// are walked recursively; `*_test.rego` files, hidden entries and
    /// `cases/` or `testdata/` fixture directories are skipped).
    Paths(Vec<PathBuf>),
}

/// Which evaluator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// The compiled VM when the policy compiles for it, else the interpreter.
    #[default]
    Auto,
    Interpreter,
}

/// Settings for loading and evaluating.
#[derive(Debug, Clone)]
pub struct PolicyOptions {
    /// An evaluation that runs longer than this is a denial.
    pub eval_timeout: Duration,
    pub engine: EngineChoice,
    /// Verdicts kept per revision for inputs seen before (0: none). See [`crate::memo`].
    pub memo_capacity: usize,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        Self {
            eval_timeout: Duration::from_millis(50),
            engine: EngineChoice::Auto,
            memo_capacity: DEFAULT_MEMO_CAPACITY,
        }
    }
}

/// Verdicts a revision keeps by default: a few thousand inputs of at most
/// 8 KiB each ([`memo::MAX_MEMO_INPUT`]), kept as a 32-byte hash and a verdict
/// (1–2 MiB in all).
pub const DEFAULT_MEMO_CAPACITY: usize = 4096;

/// The answer of the policy to one input.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub allow: bool,
    /// The errno name for a denial; empty when allowed.
    pub errno: String,
    pub errno_code: i32,
    pub reason: String,
    /// The members of `deny`, sorted.
    pub deny: Vec<String>,
    pub eval_time: Duration,
    pub revision: Arc<str>,
    /// Answered from the revision's memo of inputs it already evaluated.
    pub memoized: bool,
}

/// One file read from a policy source.
#[derive(Debug, Clone)]
struct SourceFile {
    /// Path as shown in errors and status.
    display: String,
    /// Directory prefix under `data` for data files (OPA's layout).
    data_prefix: Vec<String>,
    text: String,
}

/// The files of a policy source, read once.
#[derive(Debug, Clone, Default)]
pub(crate) struct SourceSet {
    rego: Vec<SourceFile>,
    data: Vec<SourceFile>,
    /// Whether `*_test.rego` files found in directories are read too.
    with_tests: bool,
}

impl SourceSet {
    pub(crate) fn read(source: &PolicySource) -> Result<Self, PolicyError> {
        Self::read_set(source, false)
    }

    /// The source with its `*_test.rego` files, for `cordon policy test`.
    pub(crate) fn read_including_tests(source: &PolicySource) -> Result<Self, PolicyError> {
        Self::read_set(source, true)
    }

    fn read_set(source: &PolicySource, with_tests: bool) -> Result<Self, PolicyError> {
        let mut set = SourceSet {
            with_tests,
            ..Default::default()
        };
        match source {
            PolicySource::Builtin => set.rego.push(SourceFile {
                display: "builtin:policies/default.rego".into(),
                data_prefix: vec![],
                text: DEFAULT_POLICY.into(),
            }),
            PolicySource::Paths(paths) => {
                for root in paths {
                    set.read_root(root)?;
                }
            }
        }
        set.rego.sort_by(|a, b| a.display.cmp(&b.display));
        set.data.sort_by(|a, b| a.display.cmp(&b.display));
        Ok(set)
    }

    fn read_root(&mut self, root: &Path) -> Result<(), PolicyError> {
        let meta = std::fs::metadata(root).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => PolicyError::NotFound { path: root.into() },
            _ => PolicyError::Io {
                path: root.into(),
                source: e,
            },
        })?;
        if meta.is_file() {
            return self.read_file(root, vec![], true);
        }
        let mut seen = std::collections::HashMap::from([(dir_id(&meta), root.to_path_buf())]);
        let mut stack = vec![(root.to_path_buf(), Vec::<String>::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| PolicyError::Io {
                path: dir.clone(),
                source: e,
            })?;
            for entry in entries {
                let entry = entry.map_err(|e| PolicyError::Io {
                    path: dir.clone(),
                    source: e,
                })?;
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let ft = std::fs::metadata(&path).map_err(|e| PolicyError::Io {
                    path: path.clone(),
                    source: e,
                })?;
                if ft.is_dir() {
                    // Test fixtures live beside policies; they are not data.
                    if matches!(name.as_str(), "cases" | "testdata") {
                        continue;
                    }
                    if let Some(first) = seen.insert(dir_id(&ft), path.clone()) {
                        return Err(PolicyError::SameDirectory { path, first });
                    }
                    let mut p = prefix.clone();
                    p.push(name);
                    stack.push((path, p));
                } else {
                    self.read_file(&path, prefix.clone(), false)?;
                }
            }
        }
        Ok(())
    }

    fn read_file(
        &mut self,
        path: &Path,
        prefix: Vec<String>,
        explicit: bool,
    ) -> Result<(), PolicyError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let is_rego = name.ends_with(".rego");
        let is_data = name.ends_with(".json") || name.ends_with(".yaml") || name.ends_with(".yml");
        if !(is_rego || is_data)
            || (is_rego && name.ends_with("_test.rego") && !explicit && !self.with_tests)
        {
            return Ok(());
        }
        let bytes = read_regular_file(path)?;
        let text =
            String::from_utf8(bytes).map_err(|_| PolicyError::NotUtf8 { path: path.into() })?;
        let file = SourceFile {
            display: path.display().to_string(),
            data_prefix: prefix,
            text,
        };
        if is_rego {
            self.rego.push(file)
        } else {
            self.data.push(file)
        }
        Ok(())
    }

    fn revision(&self) -> String {
        let mut h = Sha256::new();
        for (tag, files) in [("rego", &self.rego), ("data", &self.data)] {
            for f in files {
                h.update(tag.as_bytes());
                h.update(f.data_prefix.join("/").as_bytes());
                h.update([0]);
                h.update((f.text.len() as u64).to_le_bytes());
                h.update(f.text.as_bytes());
            }
        }
        hex::encode(&h.finalize()[..8])
    }

    /// The text of every Rego file.
    pub(crate) fn rego_texts(&self) -> impl Iterator<Item = &str> {
        self.rego.iter().map(|f| f.text.as_str())
    }

    /// The data file that provides `key` (`a` or `a.b`), for locating lints.
    pub(crate) fn data_file_for(&self, key: &str) -> String {
        let wanted: Vec<&str> = key.split('.').collect();
        for f in &self.data {
            let value: Option<serde_json::Value> = if f.display.ends_with(".json") {
                serde_json::from_str(&f.text).ok()
            } else {
                serde_yaml::from_str(&f.text).ok()
            };
            let Some(mut value) = value else { continue };
            let mut path = f.data_prefix.iter().map(String::as_str);
            let provides = wanted.iter().all(|k| match path.next() {
                Some(p) => p == *k,
                None => match value.get(*k) {
                    Some(v) => {
                        value = v.clone();
                        true
                    }
                    None => false,
                },
            });
            if provides {
                return f.display.clone();
            }
        }
        "data".into()
    }

    /// The merged data as the engine's value, straight from the JSON tree.
    pub(crate) fn data_value(&self) -> Result<Value, PolicyError> {
        to_engine_value(&self.data_document()?)
    }

    /// All data files merged into one document, each under its directory prefix.
    pub(crate) fn data_document(&self) -> Result<serde_json::Value, PolicyError> {
        let mut root = serde_json::Value::Object(Default::default());
        for f in &self.data {
            let path = PathBuf::from(&f.display);
            // `file:line:col: invalid data: message`, as for Rego.
            let at = |line: usize, col: usize, message: String| PolicyError::Data {
                path: PathBuf::from(format!("{}:{line}:{col}", f.display)),
                message,
            };
            let value: serde_json::Value = if f.display.ends_with(".json") {
                serde_json::from_str(&f.text).map_err(|e| {
                    let text = e.to_string();
                    let message = text
                        .rsplit_once(" at line ")
                        .map_or(text.as_str(), |(m, _)| m);
                    at(e.line(), e.column(), message.to_owned())
                })?
            } else {
                serde_yaml::from_str(&f.text).map_err(|e| match e.location() {
                    Some(l) => {
                        let text = e.to_string();
                        let message = text
                            .rsplit_once(" at line ")
                            .map_or(text.as_str(), |(m, _)| m);
                        at(l.line(), l.column(), message.to_owned())
                    }
                    None => PolicyError::Data {
                        path: path.clone(),
                        message: e.to_string(),
                    },
                })?
            };
            // Merged under the file's directory: only an object has keys
            // to merge (the message was "conflicts with a value from another
            // data file", with no other file).
            if !value.is_object() {
                return Err(PolicyError::Data {
                    path,
                    message: format!(
                        "the top level must be an object (keys under data), not {}",
                        json_kind(&value)
                    ),
                });
            }
            let mut slot = &mut root;
            for key in &f.data_prefix {
                slot = slot
                    .as_object_mut()
                    .ok_or_else(|| PolicyError::Data {
                        path: path.clone(),
                        message: format!("data at {key} conflicts with another file"),
                    })?
                    .entry(key.clone())
                    .or_insert_with(|| serde_json::Value::Object(Default::default()));
            }
            merge(slot, value).map_err(|message| PolicyError::Data { path, message })?;
        }
        Ok(root)
    }
}

/// What a JSON value is, for a message.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) -> Result<(), String> {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) => merge(existing, v).map_err(|e| format!("{k}.{e}"))?,
                    None => {
                        a.insert(k, v);
                    }
                }
            }
            Ok(())
        }
        (_, _) => Err("conflicts with a value from another data file".into()),
    }
}

/// A JSON tree as regorus's value, without a text round trip.
fn to_engine_value(v: &serde_json::Value) -> Result<Value, PolicyError> {
    <Value as serde::Deserialize>::deserialize(v).map_err(|e| PolicyError::compile(e.to_string()))
}

/// An engine with every policy module and the data loaded, but no input.
pub(crate) fn build_engine(
    sources: &SourceSet,
    data: &Value,
    with_wrapper: bool,
) -> Result<Engine, PolicyError> {
    let mut engine = Engine::new();
    // A builtin that fails (bad JSON, a division by zero) makes its
    // expression undefined, as in OPA by default and as in the compiled VM,
    // which has no other way (it takes any error in a rule body for the
    // body failing). The interpreter's default, an error, would make `policy
    // test` and `--interpreter` decide otherwise than the VM on the hot path.
    engine.set_strict_builtin_errors(false);
    for f in &sources.rego {
        engine
            .add_policy(f.display.clone(), f.text.clone())
            .map_err(|e| PolicyError::Parse(first_lines(&e)))?;
    }
    if with_wrapper {
        engine
            .add_policy(WRAPPER_PATH.into(), WRAPPER.into())
            .map_err(|e| PolicyError::compile(e.to_string()))?;
    }
    engine
        .add_data(data.clone())
        .map_err(|e| PolicyError::compile(e.to_string()))?;
    Ok(engine)
}

/// regorus formats errors as `--> file:line:col`, a source excerpt, then
/// `error: message`. Cordon reports them as one line, `file:line:col: message`,
/// the form editors and CI annotations understand.
pub(crate) fn first_lines(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    let location = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("--> "));
    let message = text
        .lines()
        .rev()
        .find_map(|l| l.trim_start().strip_prefix("error: "));
    match (location, message) {
        (Some(loc), Some(msg)) => format!("{}: {}", loc.trim(), msg.trim()),
        _ => text
            .trim()
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Reads a source and checks that it parses and compiles, without building
/// evaluators. Used by `cordon policy check`.
pub fn check(source: &PolicySource) -> Result<Vec<String>, PolicyError> {
    let loaded = LoadedPolicy::load(source, &PolicyOptions::default())?;
    Ok(loaded.files.clone())
}

/// A pooled evaluator and the input converter that goes with it.
struct Evaluator {
    machine: Machine,
    input: input::Converter,
}

enum Machine {
    Vm(Box<RegoVM>),
    Interpreter(Box<Engine>),
}

struct VmTemplate {
    program: Arc<Program>,
}

impl VmTemplate {
    /// Whether the program computes `data.cordon.backstop` (the built-in
    /// policy's does).
    fn has_backstop(&self) -> bool {
        self.program
            .entry_points
            .contains_key(builtin::BACKSTOP_RULE)
    }
}

/// One immutable revision of the policy, ready to evaluate.
pub struct LoadedPolicy {
    revision: Arc<str>,
    files: Vec<String>,
    loaded_at: SystemTime,
    timer: ExecutionTimerConfig,
    data: Value,
    /// Made at load, except for the built-in policy run from its compiled
    /// program ([`builtin`]): then when first needed (`policy eval`'s
    /// explanation, a backstop the program cannot give).
    interpreter: OnceLock<Result<Engine, String>>,
    vm: Option<VmTemplate>,
    /// Why the compiled VM is not used, when it is not.
    vm_unavailable: Option<String>,
    pool: Mutex<Vec<Evaluator>>,
    memo: Option<Memo<Verdict>>,
    /// Why there is no memo, when there is none.
    memo_unavailable: Option<String>,
}

impl std::fmt::Debug for LoadedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPolicy")
            .field("revision", &self.revision)
            .field("files", &self.files)
            .field("engine", &self.engine_name())
            .finish()
    }
}

/// The three values of the contract, as the policy produced them.
#[derive(Debug, Clone, PartialEq)]
pub struct RawDecision {
    pub allow: Value,
    pub deny: Value,
    pub errno: Value,
}

/// A rule definition that held for an input (see [`LoadedPolicy::explain`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldRule {
    /// `data.<package>.<rule>`.
    pub rule: String,
    pub file: String,
    pub line: u32,
    /// The comment lines just above the definition: why the rule exists.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub comment: String,
    /// What the definition produced (`true`, the deny messages, the errno).
    pub value: serde_json::Value,
}

impl LoadedPolicy {
    /// Which rule definitions with a body held for `input`, in file order:
    /// the `allow` and `deny` definitions and the helpers they used. Each
    /// definition is evaluated on its own in the interpreter; for `policy
    /// eval`, not the hot path.
    pub fn explain(&self, input: &serde_json::Value) -> Vec<HeldRule> {
        use regorus::unstable::{Rule, RuleHead};
        let Ok(input) = <Value as serde::Deserialize>::deserialize(input) else {
            return vec![];
        };
        let engine = match self.interpreter() {
            Ok(engine) => engine,
            Err(e) => {
                tracing::warn!(error = %e, "cannot explain: the policy's interpreter cannot be made");
                return vec![];
            }
        };
        let mut engine = engine.clone();
        engine.set_input(input);
        let modules = engine.get_modules().clone();
        let mut held = Vec::new();
        for module in &modules {
            let package = package_name(module);
            if package == "cordon_internal" {
                continue;
            }
            for rule in &module.policy {
                let Rule::Spec { span, head, bodies } = rule.as_ref() else {
                    continue;
                };
                let refr = match head {
                    RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } => refr,
                    // Functions hold per call, not per input.
                    RuleHead::Func { .. } => continue,
                };
                if bodies.is_empty() {
                    continue;
                }
                let name = refr.span().text().to_owned();
                let Ok(data) = engine.eval_rule_in_module(module, rule, false) else {
                    continue;
                };
                let mut value = &data;
                for part in package.split('.').chain(name.split('.')) {
                    value = &value[&Value::from(part)];
                }
                let produced = match value {
                    Value::Undefined | Value::Bool(false) => false,
                    Value::Set(s) => !s.is_empty(),
                    _ => true,
                };
                if !produced {
                    continue;
                }
                let value = value
                    .to_json_str()
                    .ok()
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .unwrap_or(serde_json::Value::Null);
                held.push(HeldRule {
                    rule: format!("{package}.{name}"),
                    file: span.source.file().clone(),
                    line: span.line,
                    comment: comment_above(span.source.contents(), span.line),
                    value,
                });
            }
        }
        held
    }

    /// `data.cordon.backstop` evaluated with `input` = `{"sandbox": …}`
    /// (so it may name the sandbox's workdir and tmpdir). `None` when the
    /// policy defines none.
    pub fn backstop(
        &self,
        sandbox: &serde_json::Value,
    ) -> Result<Option<serde_json::Value>, String> {
        let input =
            <Value as serde::Deserialize>::deserialize(&serde_json::json!({"sandbox": sandbox}))
                .map_err(|e| e.to_string())?;
        // The built-in policy defines a backstop whatever the sandbox, and
        // no data can change it: an undefined answer or an error of the
        // program is asked of the interpreter again, which is strict and
        // says why. The program takes a builtin that fails inside a rule for
        // that rule's body failing, even strict: in this backstop that can
        // only leave a place out (a workdir that is not a string, which the
        // broker does not let through), never add one; a failure in the
        // backstop's own body makes it undefined, hence the interpreter's.
        if let Some(t) = self.vm.as_ref().filter(|t| t.has_backstop())
            && let Ok(mut vm) = self.new_vm(t)
        {
            vm.set_strict_builtin_errors(true);
            vm.set_input(input.clone());
            if let Ok(value) = vm.execute_entry_point_by_name(builtin::BACKSTOP_RULE)
                && value != Value::Undefined
            {
                return backstop_json(&value).map(Some);
            }
        }
        let mut engine = self.interpreter()?.clone();
        // Strict here: a builtin that fails (`array.concat` of a string
        // given for a list) must refuse the start, not leave `backstop`
        // undefined, which means no backstop at all.
        engine.set_strict_builtin_errors(true);
        engine.set_input(input);
        let results = engine
            .eval_query("data.cordon.backstop".into(), false)
            .map_err(|e| first_lines(&e))?;
        let Some(value) = results
            .result
            .first()
            .and_then(|r| r.expressions.first())
            .map(|e| e.value.clone())
        else {
            return Ok(None);
        };
        if value == Value::Undefined {
            return Ok(None);
        }
        backstop_json(&value).map(Some)
    }

    /// Reads, parses and compiles a policy source.
    pub fn load(source: &PolicySource, opts: &PolicyOptions) -> Result<Self, PolicyError> {
        let sources = SourceSet::read(source)?;
        let files: Vec<String> = sources
            .rego
            .iter()
            .chain(&sources.data)
            .map(|f| f.display.clone())
            .collect();
        if sources.rego.is_empty() {
            return Err(PolicyError::NoCordonPackage(files_or_source(source)));
        }
        let data = sources.data_value()?;
        let timer = ExecutionTimerConfig {
            limit: opts.eval_timeout,
            check_interval: NonZeroU32::new(32).unwrap_or(NonZeroU32::MIN),
        };
        // The built-in policy is fixed in the binary, and compiled ahead
        // ([`builtin`]): its interpreter is made only if asked for (parsing
        // and compiling took ~3 ms of every `cordon run`'s start), and the
        // checks below, which give the same answer on every load, are left
        // to its tests (`the_builtin_policy_passes_the_checks_its_load_skips`).
        // Compiled at load (a stale stored program), it gets them as any
        // policy does.
        let builtin = *source == PolicySource::Builtin;
        let precompiled = match opts.engine {
            EngineChoice::Auto if builtin => builtin::precompiled(),
            _ => None,
        };
        let checked_at_build = precompiled.is_some();
        let interpreter = OnceLock::new();
        let (vm, vm_unavailable) = if let Some(program) = precompiled {
            let template = VmTemplate {
                program: Arc::new(program),
            };
            (Some(template), None)
        } else {
            let mut engine = build_engine(&sources, &data, true)?;
            let packages = engine
                .get_packages()
                .map_err(|e| PolicyError::compile(e.to_string()))?;
            if !packages.iter().any(|p| p == "data.cordon") {
                return Err(PolicyError::NoCordonPackage(files_or_source(source)));
            }
            engine.set_execution_timer_config(timer);
            // Evaluate once with an empty input so that compile-time errors
            // (unknown functions, conflicting rules) surface at load, not
            // per call. Either way the template is prepared (analysed, loops
            // hoisted) here, once, not in each clone: the backstop's at
            // every sandbox's start, `explain`'s, the interpreter's
            // evaluators (0.3 ms against 0.06 ms per backstop, release
            // build).
            evaluate_empty(&mut engine)?;
            let entry_points: &[&str] = if builtin {
                &builtin::ENTRY_POINTS
            } else {
                &[RESULT_RULE]
            };
            let vm = match opts.engine {
                EngineChoice::Interpreter => (None, Some("interpreter chosen".to_owned())),
                // Not where a rule can have two outputs: there the VM
                // would not fail the evaluation as OPA does.
                EngineChoice::Auto => match conflicts::first_conflicting_rule(engine.get_modules())
                {
                    Some(why) => (None, Some(why)),
                    None => match compile_vm(&mut engine.clone(), entry_points) {
                        Ok(t) => (Some(t), None),
                        Err(e) => (None, Some(e)),
                    },
                },
            };
            let _ = interpreter.set(Ok(engine));
            vm
        };
        let impure = sources
            .rego
            .iter()
            .find_map(|f| memo::impure_builtin(&f.text).map(|b| (b, &f.display)));
        let (memo, memo_unavailable) = match impure {
            _ if opts.memo_capacity == 0 => (None, Some("memo capacity is 0".to_owned())),
            Some((builtin, file)) => (
                None,
                Some(format!(
                    "{file} has `{builtin}`: a builtin whose answer is not a function of its arguments"
                )),
            ),
            None => (Some(Memo::new(opts.memo_capacity)), None),
        };
        let policy = LoadedPolicy {
            revision: sources.revision().into(),
            files,
            loaded_at: SystemTime::now(),
            timer,
            data,
            interpreter,
            vm,
            vm_unavailable,
            pool: Mutex::new(Vec::new()),
            memo,
            memo_unavailable,
        };
        Ok(if checked_at_build {
            policy
        } else {
            policy.self_checked()
        })
    }

    /// The interpreter, made now if the load did not: the load leaves it
    /// only to the built-in policy run from its stored program, whose
    /// sources are in the binary (checked against this revision, so no
    /// other policy's interpreter could be made here).
    fn interpreter(&self) -> Result<&Engine, String> {
        self.interpreter
            .get_or_init(|| {
                let sources = SourceSet::read(&PolicySource::Builtin).map_err(|e| e.to_string())?;
                if *sources.revision() != *self.revision {
                    return Err("this revision's interpreter was not made at load".into());
                }
                let mut engine =
                    build_engine(&sources, &self.data, true).map_err(|e| e.to_string())?;
                engine.set_execution_timer_config(self.timer);
                prepare(&mut engine)?;
                Ok(engine)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A VM with `template`'s program and this revision's data and limits.
    fn new_vm(&self, template: &VmTemplate) -> Result<RegoVM, String> {
        let mut machine = RegoVM::new();
        machine.load_program(template.program.clone());
        machine
            .set_data(self.data.clone())
            .map_err(|e| e.to_string())?;
        machine.set_execution_timer_config(Some(self.timer));
        // The VM's default budget of 25,000 instructions would deny
        // legitimate large policies; the time limit bounds the cost.
        machine.set_max_instructions(usize::MAX);
        Ok(machine)
    }

    /// Drops the compiled VM if it disagrees with the interpreter on a few
    /// representative inputs, so a VM bug cannot change a decision.
    fn self_checked(mut self) -> Self {
        if self.vm.is_none() {
            return self;
        }
        for input in self_check_inputs() {
            let a = self.evaluate_with(&input, true);
            let b = self.evaluate_with(&input, false);
            if a.as_ref().ok() != b.as_ref().ok() || a.is_err() != b.is_err() {
                tracing::warn!(revision = %self.revision, "compiled policy disagrees with the interpreter; using the interpreter");
                self.vm = None;
                self.vm_unavailable =
                    Some("compiled VM disagreed with the interpreter on a self-check input".into());
                self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
                break;
            }
        }
        self
    }

    pub fn revision(&self) -> &Arc<str> {
        &self.revision
    }

    pub fn files(&self) -> &[String] {
        &self.files
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// `"rvm"` or `"interpreter"`.
    pub fn engine_name(&self) -> &'static str {
        if self.vm.is_some() {
            "rvm"
        } else {
            "interpreter"
        }
    }

    /// Why the compiled VM is not in use, if it is not.
    pub fn vm_unavailable(&self) -> Option<&str> {
        self.vm_unavailable.as_deref()
    }

    /// Why this revision keeps no memo of its verdicts, if it keeps none.
    pub fn memo_unavailable(&self) -> Option<&str> {
        self.memo_unavailable.as_deref()
    }

    /// Evaluates one input document. Never fails: every error is a denial.
    /// An input this revision evaluated cleanly before is answered from its
    /// memo (`memoized`).
    pub fn evaluate(&self, input: &serde_json::Value) -> Verdict {
        let start = Instant::now();
        let key = self.memo_key(input);
        if let Some(v) = self.memoized(key.as_ref(), start) {
            return v;
        }
        let raw = self.evaluate_with(input, self.vm.is_some());
        self.finish(raw, key, start)
    }

    /// [`LoadedPolicy::evaluate`] of a document that serializes to the
    /// input (a request's [`crate::input::Input`]): a memo hit needs no tree,
    /// so one is made only to evaluate, and handed back with the verdict.
    pub fn evaluate_document<T: serde::Serialize + ?Sized>(
        &self,
        input: &T,
    ) -> (Verdict, Option<serde_json::Value>) {
        let start = Instant::now();
        let key = self.memo_key(input);
        if let Some(v) = self.memoized(key.as_ref(), start) {
            return (v, None);
        }
        match serde_json::to_value(input) {
            Ok(tree) => {
                let raw = self.evaluate_with(&tree, self.vm.is_some());
                (self.finish(raw, key, start), Some(tree))
            }
            Err(e) => (
                self.finish(Err(format!("the input document: {e}")), None, start),
                None,
            ),
        }
    }

    fn memo_key<T: serde::Serialize + ?Sized>(&self, input: &T) -> Option<[u8; 32]> {
        self.memo.as_ref().and_then(|_| Memo::<Verdict>::key(input))
    }

    fn memoized(&self, key: Option<&[u8; 32]>, start: Instant) -> Option<Verdict> {
        let mut v = self.memo.as_ref()?.get(key?)?;
        v.eval_time = start.elapsed();
        v.memoized = true;
        Some(v)
    }

    /// The verdict of an evaluation, kept in the memo under `key` if clean.
    fn finish(
        &self,
        raw: Result<RawDecision, String>,
        key: Option<[u8; 32]>,
        start: Instant,
    ) -> Verdict {
        let clean = raw.is_ok();
        let eval_time = start.elapsed();
        let mut v = interpret(raw);
        v.eval_time = eval_time;
        v.revision = self.revision.clone();
        if clean && let (Some(memo), Some(key)) = (&self.memo, key) {
            memo.insert(key, v.clone());
        }
        v
    }

    /// Evaluates with the compiled VM (`use_vm`, when available) or the
    /// interpreter, returning the raw values. For tests and `policy eval`.
    pub fn evaluate_with(
        &self,
        input: &serde_json::Value,
        use_vm: bool,
    ) -> Result<RawDecision, String> {
        let use_vm = use_vm && self.vm.is_some();
        let mut evaluator = self.take_evaluator(use_vm)?;
        let input = match evaluator.input.convert(input) {
            Ok(input) => input,
            Err(e) => {
                self.put_back(evaluator);
                return Err(e);
            }
        };
        let result = match &mut evaluator.machine {
            Machine::Vm(vm) => {
                vm.set_input(input);
                vm.execute_entry_point_by_name(RESULT_RULE)
                    .map_err(|e| e.to_string())
            }
            Machine::Interpreter(engine) => {
                engine.set_input(input);
                engine
                    .eval_rule(RESULT_RULE.into())
                    .map_err(|e| first_lines(&e))
            }
        };
        self.put_back(evaluator);
        let result = result?;
        let field = |name: &str| result[&Value::from(name)].clone();
        Ok(RawDecision {
            allow: field("allow"),
            deny: field("deny"),
            errno: field("errno"),
        })
    }

    fn take_evaluator(&self, vm: bool) -> Result<Evaluator, String> {
        {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = pool
                .iter()
                .rposition(|e| matches!(e.machine, Machine::Vm(_)) == vm)
            {
                return Ok(pool.swap_remove(i));
            }
        }
        match (&self.vm, vm) {
            (Some(t), true) => Ok(Machine::Vm(Box::new(self.new_vm(t)?))),
            _ => Ok(Machine::Interpreter(Box::new(self.interpreter()?.clone()))),
        }
        .map(|machine| Evaluator {
            machine,
            input: input::Converter::default(),
        })
    }

    fn put_back(&self, evaluator: Evaluator) {
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(evaluator);
    }
}

/// A module's package without the `data.` prefix (`cordon`, `cordon.library.x`).
pub(crate) fn package_name(module: &regorus::unstable::Module) -> String {
    module
        .package
        .refr
        .span()
        .text()
        .trim_start_matches("data.")
        .to_owned()
}

/// The `#` comment block ending on the line above `line` (1-based), joined.
fn comment_above(text: &str, line: u32) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = line as usize - 1;
    while i > 0 {
        i -= 1;
        match lines.get(i).map(|l| l.trim()) {
            Some(l) if l.starts_with('#') => out.push(l.trim_start_matches('#').trim()),
            _ => break,
        }
    }
    out.reverse();
    out.join(" ")
}

fn files_or_source(source: &PolicySource) -> String {
    match source {
        PolicySource::Builtin => "the built-in policy".into(),
        PolicySource::Paths(p) => p
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Evaluates the decision once with an empty input: an error other than
/// the time limit is a compile error.
fn evaluate_empty(interpreter: &mut Engine) -> Result<(), PolicyError> {
    interpreter.set_input(Value::new_object());
    match interpreter.eval_rule(RESULT_RULE.into()) {
        Err(e) if !first_lines(&e).contains("time limit") => {
            Err(PolicyError::compile(first_lines(&e)))
        }
        _ => Ok(()),
    }
}

/// Prepares an interpreter's template (analysis, loop hoisting) with a
/// trivial query, so that its clones do not each do it again.
fn prepare(engine: &mut Engine) -> Result<(), String> {
    engine
        .eval_query("true".into(), false)
        .map(drop)
        .map_err(|e| first_lines(&e))
}

/// The backstop's value as JSON.
fn backstop_json(value: &Value) -> Result<serde_json::Value, String> {
    let text = value.to_json_str().map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// The VM's program for `entry_points` (the first is the decision).
fn compile_vm(engine: &mut Engine, entry_points: &[&str]) -> Result<VmTemplate, String> {
    let rule: regorus::Rc<str> = RESULT_RULE.into();
    let compiled = engine
        .compile_with_entrypoint(&rule)
        .map_err(|e| e.to_string())?;
    let program =
        Compiler::compile_from_policy(&compiled, entry_points).map_err(|e| e.to_string())?;
    Ok(VmTemplate { program })
}

/// Inputs of each kind used to cross-check the VM against the interpreter at load.
fn self_check_inputs() -> Vec<serde_json::Value> {
    let base = |kind: &str, subject: serde_json::Value| {
        let mut v = serde_json::json!({
            "sandbox": {"id": "self-check", "labels": {"tool": "self-check"}},
            "process": {"pid": 1, "ppid": 0, "uid": 1000, "gid": 1000, "exe": "/usr/bin/true", "cwd": "/tmp", "comm": "true"},
            "syscall": "openat", "kind": kind,
        });
        v[kind] = subject;
        v
    };
    vec![
        base(
            "file",
            serde_json::json!({"path": "/etc/passwd", "access": ["read"], "create": false, "truncate": false, "flags": ["O_RDONLY"]}),
        ),
        base(
            "file",
            serde_json::json!({"path": "/etc/shadow", "access": ["read", "write"], "create": true, "truncate": true, "flags": ["O_RDWR"]}),
        ),
        base(
            "file",
            serde_json::json!({"path": "/tmp/x", "access": ["write"], "create": true, "truncate": false, "flags": ["O_WRONLY", "O_CREAT"]}),
        ),
        base(
            "network",
            serde_json::json!({"op": "connect", "family": "inet", "protocol": "tcp", "address": "127.0.0.1", "port": 80}),
        ),
        base(
            "network",
            serde_json::json!({"op": "connect", "family": "inet", "protocol": "tcp", "address": "169.254.169.254", "port": 80}),
        ),
        base(
            "exec",
            serde_json::json!({"path": "/usr/bin/git", "argv": ["git", "status"]}),
        ),
    ]
}

/// Where a denial's reason is cut, in bytes (a short marker follows the
/// cut). Deny messages may quote the input
/// (an argv of up to 2 MiB, several times over), and the reason goes into the
/// answer, the audit record and the tool's log line; beyond this it is cut.
pub const MAX_REASON: usize = 4096;

/// `reason` cut to [`MAX_REASON`] bytes (on a character boundary), saying so.
pub(crate) fn capped(mut reason: String) -> String {
    if reason.len() <= MAX_REASON {
        return reason;
    }
    let total = reason.len();
    let mut cut = MAX_REASON;
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    reason.truncate(cut);
    reason.push_str(&format!("… (cut: {total} bytes in all)"));
    reason
}

/// Turns the policy's raw answer into a verdict, failing closed on any shape
/// the contract does not allow.
fn interpret(raw: Result<RawDecision, String>) -> Verdict {
    let deny_with = |reason: String| Verdict {
        allow: false,
        errno: errno::DEFAULT.into(),
        errno_code: errno::code(errno::DEFAULT).unwrap_or(13),
        reason: capped(reason),
        deny: vec![],
        eval_time: Duration::ZERO,
        revision: Arc::from(""),
        memoized: false,
    };
    let raw = match raw {
        Ok(raw) => raw,
        Err(e) if e.contains("time limit") => {
            return deny_with(format!("policy evaluation timed out: {}", one_line(&e)));
        }
        Err(e) => return deny_with(format!("policy evaluation failed: {}", one_line(&e))),
    };
    let allow = match raw.allow {
        Value::Bool(b) => b,
        other => {
            return deny_with(format!(
                "policy error: allow is {}, not a boolean",
                type_name(&other)
            ));
        }
    };
    let mut deny = Vec::new();
    let members: Vec<Value> = match &raw.deny {
        Value::Set(s) => s.iter().cloned().collect(),
        Value::Array(a) => a.iter().cloned().collect(),
        other => {
            return deny_with(format!(
                "policy error: deny is {}, not a set of strings",
                type_name(other)
            ));
        }
    };
    for m in members {
        match m {
            Value::String(s) => deny.push(s.to_string()),
            other => {
                return deny_with(format!(
                    "policy error: deny has a member that is {}, not a string",
                    type_name(&other)
                ));
            }
        }
    }
    deny.sort();
    deny.dedup();
    let allowed = allow && deny.is_empty();
    if allowed {
        return Verdict {
            allow: true,
            errno: String::new(),
            errno_code: 0,
            reason: "allowed".into(),
            deny,
            eval_time: Duration::ZERO,
            revision: Arc::from(""),
            memoized: false,
        };
    }
    let mut reason = if deny.is_empty() {
        "no rule allowed (default deny)".to_owned()
    } else {
        deny.join("; ")
    };
    let (errno_name, errno_code) = match &raw.errno {
        Value::String(s) if s.is_empty() => (errno::DEFAULT.to_owned(), 13),
        Value::String(s) => match errno::code(s) {
            Some(c) => (s.to_string(), c),
            None => {
                reason.push_str(&format!(" (unknown errno {s:?}, used EACCES)"));
                (errno::DEFAULT.to_owned(), 13)
            }
        },
        other => {
            reason.push_str(&format!(
                " (errno is {}, not a string; used EACCES)",
                type_name(other)
            ));
            (errno::DEFAULT.to_owned(), 13)
        }
    };
    Verdict {
        allow: false,
        errno: errno_name,
        errno_code,
        reason: capped(reason),
        deny,
        eval_time: Duration::ZERO,
        revision: Arc::from(""),
        memoized: false,
    }
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_owned()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Set(_) => "a set",
        Value::Object(_) => "an object",
        _ => "undefined",
    }
}

/// One file or directory as last seen: (path, size, mtime, inode, ctime in
/// ns). The inode and ctime catch a file replaced by one of the same size
/// and mtime (`cp -p`, a rename over it).
type Seen = (PathBuf, u64, SystemTime, u64, i64);

/// What the policy paths hold, as (path, size, mtime, inode, ctime): cheap
/// to compute, used to notice edits. Only the files a load reads (as
/// `SourceSet::read` picks them): a log, an editor's swap file or a `.git`
/// changing beside the policy must not look like an edit, nor keep one from
/// settling.
/// A directory's device and inode.
fn dir_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

fn fingerprint(source: &PolicySource) -> Vec<Seen> {
    use std::os::unix::fs::MetadataExt;
    let PolicySource::Paths(paths) = source else {
        return vec![];
    };
    let mut out = Vec::new();
    // Each directory listed once: a link loop (which the load refuses) must
    // not make the watcher list it for ever.
    let mut seen = std::collections::HashSet::new();
    // (path, named by the caller): what was named is read whatever its name.
    let mut stack: Vec<(PathBuf, bool)> = paths.iter().map(|p| (p.clone(), true)).collect();
    while let Some((p, named)) = stack.pop() {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !named && name.starts_with('.') {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&p) else {
            out.push((p, u64::MAX, SystemTime::UNIX_EPOCH, 0, 0));
            continue;
        };
        if meta.is_dir() {
            if !named && matches!(name.as_str(), "cases" | "testdata") {
                continue;
            }
            if !seen.insert(dir_id(&meta)) {
                continue;
            }
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| (e.path(), false)));
            }
            continue;
        }
        let policy_file = [".rego", ".json", ".yaml", ".yml"]
            .iter()
            .any(|ext| name.ends_with(ext))
            && !name.ends_with("_test.rego");
        if !named && !policy_file {
            continue;
        }
        out.push((
            p,
            meta.len(),
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.ino(),
            meta.ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
        ));
    }
    out.sort();
    out
}

/// The policy in force, with hot reload.
pub struct PolicyEngine {
    source: PolicySource,
    opts: PolicyOptions,
    current: RwLock<Arc<LoadedPolicy>>,
    last_error: Mutex<Option<String>>,
    seen: Mutex<Vec<Seen>>,
    /// A change the watcher saw but has not loaded: it loads once the files
    /// have stayed the same for one interval (a copy in progress is not).
    settling: Mutex<Option<Vec<Seen>>>,
    /// Held through a whole reload: the watcher and `ReloadPolicy` take
    /// turns, so the load that read the newest files is swapped in last.
    reloading: Mutex<()>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("source", &self.source)
            .finish()
    }
}

impl PolicyEngine {
    /// Loads the policy; fails if it does not load.
    pub fn new(source: PolicySource, opts: PolicyOptions) -> Result<Self, PolicyError> {
        let seen = fingerprint(&source);
        let loaded = LoadedPolicy::load(&source, &opts)?;
        tracing::info!(revision = %loaded.revision, engine = loaded.engine_name(), files = loaded.files.len(), memo_off = loaded.memo_unavailable(), "policy loaded");
        Ok(Self {
            source,
            opts,
            current: RwLock::new(Arc::new(loaded)),
            last_error: Mutex::new(None),
            seen: Mutex::new(seen),
            settling: Mutex::new(None),
            reloading: Mutex::new(()),
        })
    }

    /// The revision in force.
    pub fn current(&self) -> Arc<LoadedPolicy> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The error of the last refused reload, while the files on disk stay invalid.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Evaluates against the revision in force.
    pub fn evaluate(&self, input: &serde_json::Value) -> Verdict {
        self.current().evaluate(input)
    }

    /// [`LoadedPolicy::evaluate_document`] against the revision in force.
    pub fn evaluate_document<T: serde::Serialize + ?Sized>(
        &self,
        input: &T,
    ) -> (Verdict, Option<serde_json::Value>) {
        self.current().evaluate_document(input)
    }

    /// Re-reads the source. On error the previous revision stays in force and
    /// the error is kept for [`PolicyEngine::last_error`]. Returns whether the
    /// revision changed.
    pub fn reload(&self) -> Result<bool, PolicyError> {
        let _turn = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        // Taken before reading: a file changed during the load is seen as a
        // change by the next look.
        let before = fingerprint(&self.source);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = before.clone();
        // A panic in the compiler is a refused reload, not the end of the
        // watcher thread (and of every later reload).
        let loaded = std::panic::catch_unwind(|| LoadedPolicy::load(&self.source, &self.opts))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Err(PolicyError::Panicked(what))
            })
            // Files that changed while they were read may be a set that was
            // never meant to be (half a copy): not installed.
            .and_then(|new| {
                if fingerprint(&self.source) == before {
                    Ok(new)
                } else {
                    Err(PolicyError::Unsettled)
                }
            })
            // Nor is one that compiles but denies every call.
            .and_then(|new| match denies_every_call(&self.source) {
                Some(e) => Err(e),
                None => Ok(new),
            });
        match loaded {
            Ok(new) => {
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
                let changed = cur.revision != new.revision;
                if changed {
                    tracing::info!(old = %cur.revision, new = %new.revision, engine = new.engine_name(), memo_off = new.memo_unavailable(), "policy reloaded");
                    *cur = Arc::new(new);
                }
                Ok(changed)
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload refused; keeping revision {}", self.current().revision);
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Reloads if any file behind the source changed since the last look.
    /// A change is loaded once the files look the same at two looks in a
    /// row, so that a deploy copying them one by one is not loaded halfway.
    pub fn reload_if_changed(&self) -> Option<Result<bool, PolicyError>> {
        let now = fingerprint(&self.source);
        let mut settling = self.settling.lock().unwrap_or_else(|p| p.into_inner());
        if *self.seen.lock().unwrap_or_else(|p| p.into_inner()) == now {
            *settling = None;
            return None;
        }
        if settling.as_ref() != Some(&now) {
            *settling = Some(now);
            return None;
        }
        *settling = None;
        drop(settling);
        Some(self.reload())
    }

    /// Polls the policy files for changes every `interval` on a background
    /// thread, for as long as the engine is alive.
    pub fn watch(self: &Arc<Self>, interval: Duration) {
        if self.source == PolicySource::Builtin {
            return;
        }
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("cordon-policy-watch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    let _ = engine.reload_if_changed();
                    drop(engine);
                    std::thread::sleep(interval);
                }
            })
            .map(drop)
            .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the policy watcher"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_policy_passes_the_checks_its_load_skips() {
        // Agreement, not speed: a debug build's interpreter on a busy machine.
        let opts = PolicyOptions {
            eval_timeout: Duration::from_secs(30),
            ..PolicyOptions::default()
        };
        let policy = LoadedPolicy::load(&PolicySource::Builtin, &opts).unwrap();
        assert!(
            policy.interpreter.get().is_none(),
            "the stored program is stale (see policy/builtin.rs)"
        );
        let mut engine = policy.interpreter().unwrap().clone();
        evaluate_empty(&mut engine).unwrap();
        assert_eq!(
            conflicts::first_conflicting_rule(engine.get_modules()),
            None
        );
        let checked = policy.self_checked();
        assert_eq!(
            checked.engine_name(),
            "rvm",
            "{:?}",
            checked.vm_unavailable()
        );
    }

    /// The built-in program gives every sandbox's backstop itself, and the
    /// same as the interpreter.
    #[test]
    fn the_builtin_programs_backstop_is_the_interpreters() {
        let opts = |engine| PolicyOptions {
            eval_timeout: Duration::from_secs(30),
            engine,
            ..PolicyOptions::default()
        };
        let program =
            LoadedPolicy::load(&PolicySource::Builtin, &opts(EngineChoice::Auto)).unwrap();
        let interpreter =
            LoadedPolicy::load(&PolicySource::Builtin, &opts(EngineChoice::Interpreter)).unwrap();
        assert_eq!(interpreter.engine_name(), "interpreter");
        let template = program.vm.as_ref().unwrap();
        for sandbox in [
            serde_json::json!({"id": "a", "labels": {}, "workdir": "/home/u/job", "tmpdir": "/tmp/cordon-a"}),
            serde_json::json!({"id": "b", "labels": {"tool": "x"}, "workdir": "/", "tmpdir": "/tmp/cordon-b"}),
            serde_json::json!({"id": "c", "labels": {}, "workdir": "/usr/src/app", "tmpdir": ""}),
            serde_json::json!({}),
        ] {
            let mut vm = program.new_vm(template).unwrap();
            vm.set_input(
                <Value as serde::Deserialize>::deserialize(
                    &serde_json::json!({"sandbox": sandbox}),
                )
                .unwrap(),
            );
            let own = vm
                .execute_entry_point_by_name(builtin::BACKSTOP_RULE)
                .unwrap();
            assert_ne!(own, Value::Undefined, "{sandbox}");
            let from_program = program.backstop(&sandbox).unwrap();
            assert_eq!(from_program, Some(backstop_json(&own).unwrap()));
            assert_eq!(
                from_program,
                interpreter.backstop(&sandbox).unwrap(),
                "{sandbox}"
            );
        }
        assert!(
            program.interpreter.get().is_none(),
            "the backstop needed the interpreter"
        );
        // A workdir that is not a string (the broker validates it, so only
        // here): the interpreter refuses the start; the program, which takes
        // a builtin that fails for a body that fails, strict or not, leaves
        // the workdir out of the writable places. Never more than the
        // interpreter would allow.
        let odd = serde_json::json!({"workdir": 5, "tmpdir": "/tmp/cordon-d"});
        assert!(interpreter.backstop(&odd).is_err());
        let from_program = program.backstop(&odd).unwrap().unwrap();
        let writable = from_program["write"].as_array().unwrap();
        assert_eq!(writable[0], "/tmp/cordon-d", "{from_program}");
        assert!(
            writable[1..]
                .iter()
                .all(|w| w.as_str().is_some_and(|w| w.starts_with("/dev/")))
        );
    }

    /// A directory that links back to itself, twice: the load names the
    /// link, and the watcher's fingerprint lists each directory once (it
    /// walked 2^40 paths down to the kernel's link limit).
    #[test]
    fn a_link_loop_is_refused_and_not_walked_for_ever() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("p");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("p.rego"), "package cordon\nallow := true\n").unwrap();
        std::os::unix::fs::symlink(".", root.join("a")).unwrap();
        std::os::unix::fs::symlink(".", root.join("b")).unwrap();
        std::os::unix::fs::symlink("..", root.join("sub/up")).unwrap();
        let source = PolicySource::Paths(vec![root.clone()]);
        let err = LoadedPolicy::load(&source, &PolicyOptions::default()).unwrap_err();
        assert!(matches!(err, PolicyError::SameDirectory { .. }), "{err}");
        assert!(err.to_string().contains("through a symbolic link"), "{err}");
        let seen = fingerprint(&source);
        assert_eq!(seen.len(), 1, "{seen:?}");
    }
}
