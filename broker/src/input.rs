//! The contract's `input` document, read straight from a validated request.
//!
//! The policy, its memo and the audit record all see this one document.
//! Built as a `serde_json::Value` for every decision, it was a tree of some
//! forty allocations made on the decision path, then walked, written and
//! freed again on the audit flusher (two fifths of the flusher's time).
//! [`Input`] is the request seen as that document: it serializes to exactly
//! the JSON the tree printed, so it keys the memo and is written to the
//! record without a tree; one is built only when the policy must evaluate it.

use std::borrow::Cow;

use std::collections::HashMap;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::proto::{DecideRequest, NetworkAccess, Process, Sandbox};
use crate::request::{escape_bytes, kind_of};
use cordon_proto::v1::decide_request::Subject;

/// A request as its `input` document. Members are written in the order a
/// `serde_json` map keeps them (sorted by name), so the JSON, and the memo
/// key, are the same as the tree's.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    req: &'a DecideRequest,
}

impl<'a> Input<'a> {
    pub fn of(req: &'a DecideRequest) -> Self {
        Self { req }
    }

    /// The document as a tree (what the policy's input conversion reads).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect(INFALLIBLE)
    }
}

/// `input.sandbox` of a request with this sandbox, as a tree.
pub fn sandbox_document(sandbox: &Sandbox) -> serde_json::Value {
    serde_json::to_value(sandbox_doc(sandbox)).expect(INFALLIBLE)
}

/// Why making a tree of the document cannot fail: its members are strings,
/// numbers, booleans, lists and maps with string keys, and nothing in it
/// returns an error of its own.
const INFALLIBLE: &str =
    "an input document is strings, numbers, booleans, lists and string-keyed maps";

/// A decision record's `input`: the request it was read from, until the
/// record is written (nothing to build, walk or free but the request), or
/// the tree (evaluated, or read back from the store). Either way it is
/// written as the same JSON, and two are equal when their trees are.
#[derive(Debug, Clone)]
pub enum RecordInput {
    Request(std::sync::Arc<DecideRequest>),
    Json(serde_json::Value),
}

impl RecordInput {
    /// The document as a tree.
    pub fn json(&self) -> Cow<'_, serde_json::Value> {
        match self {
            RecordInput::Request(req) => Cow::Owned(Input::of(req).to_json()),
            RecordInput::Json(tree) => Cow::Borrowed(tree),
        }
    }
}

impl RecordInput {
    /// About what it takes in memory: glibc's chunk for each string, list
    /// and map node, and the values they hold (`broker/tests/record_memory.rs`
    /// holds it to what the allocator reports).
    pub fn approx_bytes(&self) -> usize {
        let bytes = |b: &[u8]| chunk(b.len());
        let strs = |v: &[String]| v.iter().map(|s| bytes(s.as_bytes())).sum::<usize>();
        match self {
            RecordInput::Request(req) => {
                let sandbox = req.sandbox.as_ref().map_or(0, |s| {
                    bytes(s.id.as_bytes())
                        + s.labels
                            .iter()
                            .map(|(k, v)| bytes(k.as_bytes()) + bytes(v.as_bytes()))
                            .sum::<usize>()
                        // The hash map's table: a key and a value per slot.
                        + chunk(s.labels.capacity() * 2 * std::mem::size_of::<String>())
                        + bytes(&s.workdir)
                        + bytes(&s.tmpdir)
                });
                let process = req.process.as_ref().map_or(0, |p| {
                    bytes(&p.exe) + bytes(&p.cwd) + bytes(p.comm.as_bytes())
                });
                let subject = match &req.subject {
                    Some(Subject::File(f)) => {
                        bytes(&f.path)
                            + strs(&f.access)
                            + strs(&f.flags)
                            + chunk(f.access.len() * std::mem::size_of::<String>())
                            + chunk(f.flags.len() * std::mem::size_of::<String>())
                    }
                    Some(Subject::Network(n)) => {
                        [&n.op, &n.family, &n.protocol, &n.address]
                            .iter()
                            .map(|s| bytes(s.as_bytes()))
                            .sum::<usize>()
                            + bytes(&n.path)
                    }
                    Some(Subject::Exec(e)) => {
                        bytes(&e.path)
                            + e.argv.iter().map(|a| bytes(a)).sum::<usize>()
                            + chunk(e.argv.len() * std::mem::size_of::<Vec<u8>>())
                    }
                    None => 0,
                };
                // The shared box, its two counts (sandbox and process are
                // held in it).
                chunk(2 * std::mem::size_of::<usize>() + std::mem::size_of::<DecideRequest>())
                    + bytes(req.syscall.as_bytes())
                    + sandbox
                    + process
                    + subject
            }
            RecordInput::Json(tree) => std::mem::size_of::<serde_json::Value>() + tree_heap(tree),
        }
    }
}

/// What glibc's malloc takes for `n` bytes: the request and its 8-byte
/// header, in 16-byte steps, 32 at least (nothing for nothing).
fn chunk(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        ((n + 8 + 15) & !15).max(32)
    }
}

/// The heap a tree's value holds (the value itself is in its parent).
fn tree_heap(tree: &serde_json::Value) -> usize {
    use serde_json::Value;
    const VALUE: usize = std::mem::size_of::<Value>();
    // A `BTreeMap<String, Value>` leaf: 11 keys and values, a parent link
    // and two counts, allocated whole however few it holds.
    const LEAF: usize = 8 + 4 + 11 * (std::mem::size_of::<String>() + VALUE);
    match tree {
        Value::String(s) => chunk(s.capacity()),
        Value::Array(items) => {
            chunk(items.capacity() * VALUE) + items.iter().map(tree_heap).sum::<usize>()
        }
        Value::Object(members) => {
            // Split leaves are half full or more.
            let leaves = if members.len() <= 11 {
                1
            } else {
                members.len().div_ceil(6)
            };
            leaves * chunk(LEAF)
                + members
                    .iter()
                    .map(|(k, v)| chunk(k.capacity()) + tree_heap(v))
                    .sum::<usize>()
        }
        _ => 0,
    }
}

impl From<serde_json::Value> for RecordInput {
    fn from(tree: serde_json::Value) -> Self {
        RecordInput::Json(tree)
    }
}

impl PartialEq for RecordInput {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

impl Eq for RecordInput {}

impl Serialize for RecordInput {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RecordInput::Request(req) => Input::of(req).serialize(s),
            RecordInput::Json(tree) => tree.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for RecordInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(d).map(RecordInput::Json)
    }
}

impl Serialize for Input<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let req = self.req;
        let subject = req.subject.as_ref();
        let empty_sandbox = Sandbox::default();
        let empty_process = Process::default();
        // Absent ones read as empty: the document has both either way.
        let sandbox = req.sandbox.as_ref().unwrap_or(&empty_sandbox);
        let p = req.process.as_ref().unwrap_or(&empty_process);
        Document {
            exec: match subject {
                Some(Subject::Exec(e)) => Some(ExecDoc {
                    argv: Argv(&e.argv),
                    path: Text(&e.path),
                    path_utf8: utf8(&e.path),
                }),
                _ => None,
            },
            file: match subject {
                Some(Subject::File(f)) => Some(FileDoc {
                    access: &f.access,
                    create: f.create,
                    flags: &f.flags,
                    path: Text(&f.path),
                    path_utf8: utf8(&f.path),
                    truncate: f.truncate,
                }),
                _ => None,
            },
            kind: subject.map(kind_of),
            network: match subject {
                Some(Subject::Network(n)) => Some(network(n)),
                _ => None,
            },
            process: ProcessDoc {
                comm: &p.comm,
                cwd: Text(&p.cwd),
                exe: Text(&p.exe),
                gid: p.gid,
                pid: p.pid,
                ppid: p.ppid,
                uid: p.uid,
            },
            sandbox: sandbox_doc(sandbox),
            syscall: &req.syscall,
        }
        .serialize(s)
    }
}

// The document's parts, members declared in the order of their names (a
// `serde_json` map's), optional ones skipped as the tree leaves them out.

#[derive(Serialize)]
struct Document<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    exec: Option<ExecDoc<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<FileDoc<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<NetworkDoc<'a>>,
    process: ProcessDoc<'a>,
    sandbox: SandboxDoc<'a>,
    syscall: &'a str,
}

#[derive(Serialize)]
struct SandboxDoc<'a> {
    id: &'a str,
    labels: Labels<'a>,
    tmpdir: Text<'a>,
    workdir: Text<'a>,
}

#[derive(Serialize)]
struct ProcessDoc<'a> {
    comm: &'a str,
    cwd: Text<'a>,
    exe: Text<'a>,
    gid: u32,
    pid: i32,
    ppid: i32,
    uid: u32,
}

#[derive(Serialize)]
struct FileDoc<'a> {
    access: &'a [String],
    create: bool,
    flags: &'a [String],
    path: Text<'a>,
    /// Present (`false`) only for a path that is not UTF-8.
    #[serde(skip_serializing_if = "is_true")]
    path_utf8: bool,
    truncate: bool,
}

/// A unix socket's (`path`) or an inet one's (`address`, `port`).
#[derive(Serialize)]
struct NetworkDoc<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<&'a str>,
    family: &'a str,
    op: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<Text<'a>>,
    #[serde(skip_serializing_if = "is_true")]
    path_utf8: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u32>,
    protocol: &'a str,
    #[serde(skip_serializing_if = "is_false")]
    v4_mapped: bool,
}

#[derive(Serialize)]
struct ExecDoc<'a> {
    argv: Argv<'a>,
    path: Text<'a>,
    #[serde(skip_serializing_if = "is_true")]
    path_utf8: bool,
}

fn network(n: &NetworkAccess) -> NetworkDoc<'_> {
    let unix = n.family == "unix";
    NetworkDoc {
        address: (!unix).then_some(n.address.as_str()),
        family: &n.family,
        op: &n.op,
        path: unix.then_some(Text(&n.path)),
        path_utf8: !unix || utf8(&n.path),
        port: (!unix).then_some(n.port),
        protocol: &n.protocol,
        v4_mapped: !unix && n.v4_mapped,
    }
}

fn sandbox_doc(sandbox: &Sandbox) -> SandboxDoc<'_> {
    SandboxDoc {
        id: &sandbox.id,
        labels: Labels(&sandbox.labels),
        tmpdir: Text(&sandbox.tmpdir),
        workdir: Text(&sandbox.workdir),
    }
}

fn utf8(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok()
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The request's labels, in the order of their keys.
struct Labels<'a>(&'a HashMap<String, String>);

impl Serialize for Labels<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut labels: Vec<(&String, &String)> = self.0.iter().collect();
        labels.sort_unstable();
        let mut m = s.serialize_map(Some(labels.len()))?;
        for (k, v) in labels {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

struct Argv<'a>(&'a [Vec<u8>]);

impl Serialize for Argv<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for arg in self.0 {
            seq.serialize_element(&Text(arg))?;
        }
        seq.end()
    }
}

/// Bytes as the document's text ([`escape_bytes`]); UTF-8 as it is,
/// without a copy.
struct Text<'a>(&'a [u8]);

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.serialize_str(&escape_bytes(self.0).0),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};

    use super::*;
    use crate::memo::Memo;
    use crate::proto::{ExecAccess, FileAccess};
    use crate::request::display_bytes;

    /// The document as the broker built it before [`Input`]: a tree,
    /// member by member. The reference the typed document must match.
    fn tree(req: &DecideRequest) -> Value {
        let mut input = Map::new();
        let default_sandbox = Sandbox::default();
        let sandbox = req.sandbox.as_ref().unwrap_or(&default_sandbox);
        let labels: Map<String, Value> = sandbox
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        input.insert(
            "sandbox".into(),
            json!({
                "id": sandbox.id, "labels": labels,
                "workdir": display_bytes(&sandbox.workdir), "tmpdir": display_bytes(&sandbox.tmpdir),
            }),
        );
        let default_process = Process::default();
        let p = req.process.as_ref().unwrap_or(&default_process);
        input.insert(
            "process".into(),
            json!({
                "pid": p.pid, "ppid": p.ppid, "uid": p.uid, "gid": p.gid,
                "exe": display_bytes(&p.exe), "cwd": display_bytes(&p.cwd), "comm": p.comm,
            }),
        );
        input.insert("syscall".into(), Value::String(req.syscall.clone()));
        let Some(subject) = &req.subject else {
            return Value::Object(input);
        };
        input.insert("kind".into(), Value::String(kind_of(subject).into()));
        let path = |obj: &mut Map<String, Value>, path: &[u8]| {
            let (text, utf8) = escape_bytes(path);
            obj.insert("path".into(), Value::String(text));
            if !utf8 {
                obj.insert("path_utf8".into(), Value::Bool(false));
            }
        };
        match subject {
            Subject::File(f) => {
                let mut file = Map::new();
                path(&mut file, &f.path);
                file.insert("access".into(), json!(f.access));
                file.insert("create".into(), json!(f.create));
                file.insert("truncate".into(), json!(f.truncate));
                file.insert("flags".into(), json!(f.flags));
                input.insert("file".into(), Value::Object(file));
            }
            Subject::Network(n) => {
                let mut net = Map::new();
                net.insert("op".into(), json!(n.op));
                net.insert("family".into(), json!(n.family));
                net.insert("protocol".into(), json!(n.protocol));
                if n.family == "unix" {
                    path(&mut net, &n.path);
                } else {
                    net.insert("address".into(), json!(n.address));
                    net.insert("port".into(), json!(n.port));
                    if n.v4_mapped {
                        net.insert("v4_mapped".into(), json!(true));
                    }
                }
                input.insert("network".into(), Value::Object(net));
            }
            Subject::Exec(e) => {
                let mut exec = Map::new();
                path(&mut exec, &e.path);
                let argv: Vec<String> = e.argv.iter().map(|a| display_bytes(a)).collect();
                exec.insert("argv".into(), json!(argv));
                input.insert("exec".into(), Value::Object(exec));
            }
        }
        Value::Object(input)
    }

    fn requests() -> Vec<DecideRequest> {
        let sandbox = Sandbox {
            id: "sb-1".into(),
            labels: HashMap::from([
                ("tool".into(), "python".into()),
                ("agent".into(), "a\"b\\c".into()),
                ("zz".into(), String::new()),
                ("Émoji".into(), "🦀".into()),
            ]),
            workdir: b"/home/agent/job".to_vec(),
            tmpdir: b"/tmp/cordon-\xff".to_vec(),
        };
        let process = Process {
            pid: 4242,
            ppid: -1,
            uid: u32::MAX,
            gid: 1000,
            exe: b"/usr/bin/python3".to_vec(),
            cwd: b"/home/\xfe\xffagent".to_vec(),
            comm: "python3".into(),
        };
        let with = |syscall: &str, subject: Option<Subject>| DecideRequest {
            sandbox: Some(sandbox.clone()),
            process: Some(process.clone()),
            syscall: syscall.into(),
            subject,
            ..Default::default()
        };
        let file = |path: &[u8], access: &[&str], flags: &[&str]| {
            Some(Subject::File(FileAccess {
                path: path.to_vec(),
                access: access.iter().map(|a| a.to_string()).collect(),
                create: flags.contains(&"O_CREAT"),
                truncate: flags.contains(&"O_TRUNC"),
                flags: flags.iter().map(|f| f.to_string()).collect(),
            }))
        };
        let net = |family: &str, address: &str, path: &[u8], v4_mapped: bool| {
            Some(Subject::Network(NetworkAccess {
                op: "connect".into(),
                family: family.into(),
                protocol: "tcp".into(),
                address: address.into(),
                port: 443,
                path: path.to_vec(),
                v4_mapped,
            }))
        };
        let exec = |path: &[u8], argv: &[&[u8]]| {
            Some(Subject::Exec(ExecAccess {
                path: path.to_vec(),
                argv: argv.iter().map(|a| a.to_vec()).collect(),
            }))
        };
        vec![
            with(
                "openat",
                file(b"/usr/lib/libc.so.6", &["read"], &["O_RDONLY"]),
            ),
            with(
                "openat",
                file(
                    b"/tmp/a\xffb",
                    &["read", "write"],
                    &["O_RDWR", "O_CREAT", "O_TRUNC"],
                ),
            ),
            with("creat", file(b"/", &[], &[])),
            with("connect", net("inet", "10.0.0.1", b"", false)),
            with("sendto", net("inet6", "::ffff:1.2.3.4", b"", true)),
            with("connect", net("unix", "", b"/run/x.sock", false)),
            with("bind", net("unix", "", b"@abstract\xff", false)),
            with(
                "execve",
                exec(b"/bin/sh", &[b"sh", b"-c", b"echo \xff\"q\""]),
            ),
            with("execveat", exec(b"/memfd:x (deleted)", &[])),
            with("openat", None),
            DecideRequest {
                syscall: "openat".into(),
                subject: file(b"/etc/hosts", &["read"], &["O_RDONLY"]),
                ..Default::default()
            },
            DecideRequest::default(),
        ]
    }

    #[test]
    fn the_typed_document_is_the_tree_the_broker_built_byte_for_byte() {
        for req in requests() {
            let reference = tree(&req);
            let typed = Input::of(&req);
            // Same tree, same text (so member order too), same memo key.
            assert_eq!(typed.to_json(), reference, "{req:?}");
            assert_eq!(
                serde_json::to_string(&typed).unwrap(),
                serde_json::to_string(&reference).unwrap()
            );
            let key = Memo::<()>::key(&typed);
            assert!(key.is_some());
            assert_eq!(key, Memo::<()>::key(&reference), "{req:?}");
        }
        let sandbox = requests()[0].sandbox.clone().unwrap();
        assert_eq!(sandbox_document(&sandbox), tree(&requests()[0])["sandbox"]);
    }

    #[test]
    fn a_record_input_is_written_and_compared_as_its_tree() {
        for req in requests() {
            let typed = RecordInput::Request(std::sync::Arc::new(req.clone()));
            let read = RecordInput::Json(tree(&req));
            assert_eq!(typed, read);
            let text = serde_json::to_string(&typed).unwrap();
            assert_eq!(text, serde_json::to_string(&read).unwrap());
            let back: RecordInput = serde_json::from_str(&text).unwrap();
            assert!(matches!(&back, RecordInput::Json(t) if *t == tree(&req)));
        }
        let [a, b] =
            [0, 1].map(|i| RecordInput::Request(std::sync::Arc::new(requests()[i].clone())));
        assert_ne!(a, b);
    }

    #[test]
    fn a_record_inputs_size_counts_every_path_it_holds() {
        let long = |c: u8| [b"/".as_slice(), &vec![c; 4000]].concat();
        let mut req = requests()[0].clone();
        let sandbox = req.sandbox.as_mut().unwrap();
        (sandbox.workdir, sandbox.tmpdir) = (long(b'w'), long(b't'));
        req.process.as_mut().unwrap().cwd = long(b'c');
        let paths = 3 * 4001;
        for input in [
            RecordInput::Request(std::sync::Arc::new(req.clone())),
            RecordInput::Json(tree(&req)),
        ] {
            let size = input.approx_bytes();
            // The paths, and not wildly more (the rest: a few hundred
            // bytes as a request, a tree's five maps ~650 bytes each;
            // `tests/record_memory.rs` holds the estimate to the heap).
            assert!(
                (paths..paths + 6144).contains(&size),
                "{size} for {input:?}"
            );
        }
    }
}
