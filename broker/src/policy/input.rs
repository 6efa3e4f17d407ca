//! Converting an input document (JSON) to the value regorus evaluates.
//!
//! The conversion is a fifth of an evaluation of the built-in policy, and most
//! of it is spent on members that do not change between requests: `sandbox`
//! is the same in every request of a sandbox, `process` in every request of a
//! process. A [`Converter`] keeps its last conversion of each and reuses it
//! while the member is equal, so the result is always exactly what converting
//! the whole document would give.

use std::collections::BTreeMap;

use regorus::Value;

/// Top-level members worth keeping: stable across a sandbox's requests.
const KEPT_MEMBERS: [&str; 2] = ["sandbox", "process"];

/// One per pooled evaluator (used by one evaluation at a time).
#[derive(Default)]
pub(crate) struct Converter {
    kept: [Option<(serde_json::Value, Value)>; KEPT_MEMBERS.len()],
}

impl Converter {
    pub(crate) fn convert(&mut self, input: &serde_json::Value) -> Result<Value, String> {
        let serde_json::Value::Object(members) = input else {
            return convert(input);
        };
        let mut object = BTreeMap::new();
        for (name, member) in members {
            let value = match KEPT_MEMBERS.iter().position(|kept| kept == name) {
                Some(slot) => self.kept(slot, member)?,
                None => convert(member)?,
            };
            object.insert(Value::from(name.as_str()), value);
        }
        Ok(Value::from(object))
    }

    fn kept(&mut self, slot: usize, member: &serde_json::Value) -> Result<Value, String> {
        if let Some((json, value)) = &self.kept[slot]
            && json == member
        {
            return Ok(value.clone());
        }
        let value = convert(member)?;
        self.kept[slot] = Some((member.clone(), value.clone()));
        Ok(value)
    }
}

/// Straight from the JSON tree: no text round trip.
fn convert(json: &serde_json::Value) -> Result<Value, String> {
    <Value as serde::Deserialize>::deserialize(json).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(sandbox: &str, pid: u32, path: &str) -> serde_json::Value {
        json!({
            "sandbox": {"id": sandbox, "labels": {"tool": "t"}, "workdir": "/w", "tmpdir": "/t"},
            "process": {"pid": pid, "ppid": 1, "uid": 1000, "gid": 1000, "exe": "/usr/bin/python3",
                        "cwd": "/w", "comm": "python3"},
            "syscall": "openat", "kind": "file",
            "file": {"path": path, "access": ["read"], "create": false, "truncate": false,
                     "flags": ["O_RDONLY"]},
        })
    }

    #[test]
    fn converts_as_the_whole_document_would_while_members_change() {
        let mut converter = Converter::default();
        let inputs = [
            request("s1", 10, "/a"),
            request("s1", 10, "/b"), // both kept members reused
            request("s1", 11, "/b"), // another process
            request("s2", 11, "/b"), // another sandbox
            request("s1", 10, "/a"), // back to the first
            json!({"sandbox": 1, "process": [1, 2], "extra": {"x": null}}),
            json!({"process": {"pid": 10}}), // no sandbox at all
            json!("not an object"),
            json!([{"sandbox": {}}]),
        ];
        for input in &inputs {
            assert_eq!(
                converter.convert(input).unwrap(),
                convert(input).unwrap(),
                "{input}"
            );
        }
    }

    #[test]
    fn a_kept_member_is_reused_only_while_equal() {
        let mut converter = Converter::default();
        let first = converter.convert(&request("s1", 10, "/a")).unwrap();
        let second = converter.convert(&request("s1", 10, "/b")).unwrap();
        let sandbox = |v: &Value| v[&Value::from("sandbox")].clone();
        // The same allocation: reused, not converted again.
        let (Value::Object(a), Value::Object(b)) = (sandbox(&first), sandbox(&second)) else {
            panic!("sandbox is an object");
        };
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        let third = converter.convert(&request("s2", 10, "/b")).unwrap();
        assert_eq!(
            third[&Value::from("sandbox")][&Value::from("id")],
            Value::from("s2")
        );
    }
}
