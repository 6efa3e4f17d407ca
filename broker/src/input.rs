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

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::proto::{DecideRequest, ExecAccess, FileAccess, NetworkAccess, Process, Sandbox};
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
        // Cannot fail: every member is a string, number, bool, list or a map
        // with string keys.
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// `input.sandbox` of a request with this sandbox, as a tree.
pub fn sandbox_document(sandbox: &Sandbox) -> serde_json::Value {
    serde_json::to_value(Doc(Some(sandbox))).unwrap_or_default()
}

/// A decision record's `input`: the request it was read from, until the
/// record is written (nothing to build, walk or free but the request), or
/// the tree (evaluated, or read back from the store). Either way it is
/// written as the same JSON, and two are equal when their trees are.
#[derive(Debug, Clone)]
pub enum RecordInput {
    Request(Box<DecideRequest>),
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
        let mut m = s.serialize_map(Some(3 + if subject.is_some() { 2 } else { 0 }))?;
        match subject {
            Some(Subject::Exec(e)) => m.serialize_entry("exec", &ExecDoc(e))?,
            Some(Subject::File(f)) => m.serialize_entry("file", &FileDoc(f))?,
            _ => {}
        }
        if let Some(subject) = subject {
            m.serialize_entry("kind", kind_of(subject))?;
        }
        if let Some(Subject::Network(n)) = subject {
            m.serialize_entry("network", &NetworkDoc(n))?;
        }
        // Absent ones read as empty: the document has both either way.
        m.serialize_entry("process", &Doc(req.process.as_ref()))?;
        m.serialize_entry("sandbox", &Doc(req.sandbox.as_ref()))?;
        m.serialize_entry("syscall", &req.syscall)?;
        m.end()
    }
}

/// `input.sandbox` or `input.process`, of the request's message or an
/// empty one.
struct Doc<'a, T>(Option<&'a T>);

impl Serialize for Doc<'_, Sandbox> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let empty = Sandbox::default();
        let sb = self.0.unwrap_or(&empty);
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("id", &sb.id)?;
        // A map of the request's labels, in the order of their keys.
        let mut labels: Vec<(&String, &String)> = sb.labels.iter().collect();
        labels.sort_unstable();
        m.serialize_entry("labels", &Labels(&labels))?;
        m.serialize_entry("tmpdir", &Text(&sb.tmpdir))?;
        m.serialize_entry("workdir", &Text(&sb.workdir))?;
        m.end()
    }
}

impl Serialize for Doc<'_, Process> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let empty = Process::default();
        let p = self.0.unwrap_or(&empty);
        let mut m = s.serialize_map(Some(7))?;
        m.serialize_entry("comm", &p.comm)?;
        m.serialize_entry("cwd", &Text(&p.cwd))?;
        m.serialize_entry("exe", &Text(&p.exe))?;
        m.serialize_entry("gid", &p.gid)?;
        m.serialize_entry("pid", &p.pid)?;
        m.serialize_entry("ppid", &p.ppid)?;
        m.serialize_entry("uid", &p.uid)?;
        m.end()
    }
}

struct Labels<'a>(&'a [(&'a String, &'a String)]);

impl Serialize for Labels<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

struct FileDoc<'a>(&'a FileAccess);

impl Serialize for FileDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.0;
        let utf8 = std::str::from_utf8(&f.path).is_ok();
        let mut m = s.serialize_map(Some(5 + usize::from(!utf8)))?;
        m.serialize_entry("access", &f.access)?;
        m.serialize_entry("create", &f.create)?;
        m.serialize_entry("flags", &f.flags)?;
        path_entries(&mut m, &f.path, utf8)?;
        m.serialize_entry("truncate", &f.truncate)?;
        m.end()
    }
}

struct NetworkDoc<'a>(&'a NetworkAccess);

impl Serialize for NetworkDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.0;
        if n.family == "unix" {
            let utf8 = std::str::from_utf8(&n.path).is_ok();
            let mut m = s.serialize_map(Some(4 + usize::from(!utf8)))?;
            m.serialize_entry("family", &n.family)?;
            m.serialize_entry("op", &n.op)?;
            path_entries(&mut m, &n.path, utf8)?;
            m.serialize_entry("protocol", &n.protocol)?;
            return m.end();
        }
        let mut m = s.serialize_map(Some(5 + usize::from(n.v4_mapped)))?;
        m.serialize_entry("address", &n.address)?;
        m.serialize_entry("family", &n.family)?;
        m.serialize_entry("op", &n.op)?;
        m.serialize_entry("port", &n.port)?;
        m.serialize_entry("protocol", &n.protocol)?;
        if n.v4_mapped {
            m.serialize_entry("v4_mapped", &true)?;
        }
        m.end()
    }
}

struct ExecDoc<'a>(&'a ExecAccess);

impl Serialize for ExecDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let utf8 = std::str::from_utf8(&e.path).is_ok();
        let mut m = s.serialize_map(Some(2 + usize::from(!utf8)))?;
        m.serialize_entry("argv", &Argv(&e.argv))?;
        path_entries(&mut m, &e.path, utf8)?;
        m.end()
    }
}

/// `path`, and `path_utf8: false` after it when the bytes are not UTF-8.
fn path_entries<M: SerializeMap>(m: &mut M, path: &[u8], utf8: bool) -> Result<(), M::Error> {
    m.serialize_entry("path", &Text(path))?;
    if !utf8 {
        m.serialize_entry("path_utf8", &false)?;
    }
    Ok(())
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
    use std::collections::HashMap;

    use serde_json::{Map, Value, json};

    use super::*;
    use crate::memo::Memo;
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
            let typed = RecordInput::Request(Box::new(req.clone()));
            let read = RecordInput::Json(tree(&req));
            assert_eq!(typed, read);
            let text = serde_json::to_string(&typed).unwrap();
            assert_eq!(text, serde_json::to_string(&read).unwrap());
            let back: RecordInput = serde_json::from_str(&text).unwrap();
            assert!(matches!(&back, RecordInput::Json(t) if *t == tree(&req)));
        }
        let [a, b] = [0, 1].map(|i| RecordInput::Request(Box::new(requests()[i].clone())));
        assert_ne!(a, b);
    }
}
