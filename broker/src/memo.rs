//! Decision memo: the verdict of one policy revision for an input it has
//! already evaluated.
//!
//! Sound because a decision is a pure function of the input document and the
//! revision (its rules and data): the memo belongs to one [`LoadedPolicy`]
//! and dies with it on reload, and it is keyed by the whole input, which
//! holds everything the policy can see (pid, exe, cwd, labels, the path…).
//! A policy that calls a builtin whose answer depends on anything else
//! (the clock, randomness, the network) gets no memo at all. Only clean
//! evaluations are kept: a timeout or an error is evaluated again.
//!
//! [`LoadedPolicy`]: crate::policy::LoadedPolicy

use std::{collections::HashMap, sync::Mutex};

/// Builtins whose result is not determined by their arguments. The check is
/// on the policy text, so a mention in a comment also turns the memo off:
/// erring that way only costs speed.
const IMPURE_BUILTINS: &[&str] = &[
    "time.now_ns",
    "rand.intn",
    "uuid.rfc4122",
    "http.send",
    "opa.runtime",
    "net.lookup_ip_addr",
    "io.jwt.decode_verify",
    "crypto.x509.parse_and_verify_certificates",
];

/// The first impure builtin named in `text`, if any.
pub fn impure_builtin(text: &str) -> Option<&'static str> {
    IMPURE_BUILTINS.iter().copied().find(|b| text.contains(b))
}

/// A bounded map from an input document (its JSON text) to a verdict.
#[derive(Debug)]
pub struct Memo<V> {
    capacity: usize,
    entries: Mutex<HashMap<Box<str>, V>>,
}

impl<V: Clone> Memo<V> {
    /// A memo holding at most `capacity` verdicts.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(HashMap::with_capacity(capacity.min(1024))),
        }
    }

    /// The key of an input: its JSON text. Two inputs with the same content
    /// built in a different key order merely miss.
    pub fn key(input: &serde_json::Value) -> Box<str> {
        input.to_string().into_boxed_str()
    }

    pub fn get(&self, key: &str) -> Option<V> {
        self.lock().get(key).cloned()
    }

    /// Keeps `verdict` for `key`. When full, the memo starts over: a tool
    /// that touches more distinct inputs than it holds gains nothing from
    /// eviction order, and clearing is O(1) per insert, amortised.
    pub fn insert(&self, key: Box<str>, verdict: V) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(key, verdict);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, V>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impure_builtins_are_found_in_policy_text() {
        assert_eq!(
            impure_builtin("allow if { time.now_ns() > 0 }"),
            Some("time.now_ns")
        );
        assert_eq!(impure_builtin("x := http.send({})"), Some("http.send"));
        assert_eq!(impure_builtin("allow if { input.kind == \"file\" }"), None);
    }

    #[test]
    fn a_full_memo_starts_over_and_never_exceeds_its_capacity() {
        let memo = Memo::new(2);
        memo.insert("a".into(), 1);
        memo.insert("b".into(), 2);
        assert_eq!((memo.get("a"), memo.get("b")), (Some(1), Some(2)));
        memo.insert("c".into(), 3);
        assert_eq!(memo.len(), 1);
        assert_eq!((memo.get("a"), memo.get("c")), (None, Some(3)));
    }

    #[test]
    fn the_key_is_the_whole_input() {
        let a = serde_json::json!({"process": {"pid": 1}, "file": {"path": "/x"}});
        let b = serde_json::json!({"process": {"pid": 2}, "file": {"path": "/x"}});
        assert_ne!(Memo::<bool>::key(&a), Memo::<bool>::key(&b));
        assert_eq!(Memo::<bool>::key(&a), Memo::<bool>::key(&a.clone()));
    }
}
