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

mod key;

/// How a policy's text can call a builtin whose result is not determined by
/// its arguments: the name, or its namespace indexed with brackets
/// (`rand["intn"](…)` is `rand.intn` to regorus). The check is on the text,
/// so a mention in a comment or a data path named like a namespace also
/// turns the memo off: erring that way only costs speed. Of these, this
/// build compiles in only `rand.intn`; the others are listed for the day a
/// regorus feature brings them.
const IMPURE_CALLS: &[&str] = &[
    "rand.",
    "rand[",
    "time.now_ns",
    "time[",
    "uuid.",
    "uuid[",
    "http.",
    "http[",
    "opa.",
    "opa[",
    "net.lookup_ip_addr",
    "net[",
    "io.jwt.decode_verify",
    "io[",
    "jwt[",
    "crypto.x509.parse_and_verify",
    "crypto[",
    "x509[",
];

/// The bytes an entry of [`IMPURE_CALLS`] starts with.
const FIRST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < IMPURE_CALLS.len() {
        table[IMPURE_CALLS[i].as_bytes()[0] as usize] = true;
        i += 1;
    }
    table
};

/// The first way of calling an impure builtin found in `text`, if any (the
/// first in [`IMPURE_CALLS`]'s order): at the start of a name (not inside
/// `urandom.` or `my_rand.`). One pass over the text, since it runs on every
/// load, the start-up's included (a search per entry took ~0.3 ms on the
/// default policy).
pub fn impure_builtin(text: &str) -> Option<&'static str> {
    let bytes = text.as_bytes();
    let mut found = IMPURE_CALLS.len();
    for (at, &b) in bytes.iter().enumerate() {
        if !FIRST_BYTES[b as usize] {
            continue;
        }
        // Every entry starts with an ASCII byte, so `at` is a char boundary.
        let inside_a_name = text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if inside_a_name {
            continue;
        }
        if let Some(k) = IMPURE_CALLS[..found]
            .iter()
            .position(|call| bytes[at..].starts_with(call.as_bytes()))
        {
            found = k;
            if found == 0 {
                break;
            }
        }
    }
    IMPURE_CALLS.get(found).copied()
}

/// Inputs whose key encoding (9 bytes per string, key, container or number,
/// besides the strings' bytes) is longer than this are evaluated every time:
/// an exec with a long argv is rare and would make the memo large.
pub const MAX_MEMO_INPUT: usize = 8 * 1024;

/// A bounded map from an input document (the SHA-256 of its encoding, see
/// [`Memo::key`]) to a verdict.
#[derive(Debug)]
pub struct Memo<V> {
    capacity: usize,
    entries: Mutex<HashMap<[u8; 32], V>>,
}

impl<V: Clone> Memo<V> {
    /// A memo holding at most `capacity` verdicts.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(HashMap::with_capacity(capacity.min(1024))),
        }
    }

    /// The key of an input: the SHA-256 of an unambiguous encoding of the
    /// whole document ([`key`](self::key): a tag per value, lengths before
    /// strings and containers), so two different documents never share it,
    /// or none for an input whose encoding is longer than [`MAX_MEMO_INPUT`].
    /// Read as the document serializes, a typed one without building its
    /// tree; it costs a fraction of printing the JSON.
    pub fn key<T: serde::Serialize + ?Sized>(input: &T) -> Option<[u8; 32]> {
        key::KeyHasher::key(input)
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<V> {
        self.lock().get(key).cloned()
    }

    /// Keeps `verdict` for `key`. When full, the memo starts over: a tool
    /// that touches more distinct inputs than it holds gains nothing from
    /// eviction order, and clearing is O(1) per insert, amortised.
    pub fn insert(&self, key: [u8; 32], verdict: V) {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], V>> {
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
        assert_eq!(impure_builtin("x := http.send({})"), Some("http."));
        // regorus reads a bracketed namespace as the dotted name.
        assert_eq!(
            impure_builtin("x := rand[\"in\\u0074n\"](\"k\", 2)"),
            Some("rand[")
        );
        assert_eq!(impure_builtin("allow if { input.kind == \"file\" }"), None);
        // Pure builtins of the same namespaces, and names that merely end alike.
        assert_eq!(impure_builtin("net.cidr_contains(c, a)"), None);
        assert_eq!(
            impure_builtin("p in {\"/dev/urandom\"}\nmy_rand.x := 1"),
            None
        );
        // At the very start, after a multi-byte character, and the list's
        // order when a text has more than one.
        assert_eq!(impure_builtin("uuid.rfc4122(\"k\")"), Some("uuid."));
        assert_eq!(impure_builtin("é_rand.x := 1 # érand.y"), None);
        assert_eq!(impure_builtin("x := é rand.intn(\"k\", 2)"), Some("rand."));
        assert_eq!(
            impure_builtin("a := http.send({})\nb := time.now_ns()"),
            Some("time.now_ns")
        );
    }

    #[test]
    fn a_full_memo_starts_over_and_never_exceeds_its_capacity() {
        let memo = Memo::new(2);
        let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
        memo.insert(a, 1);
        memo.insert(b, 2);
        assert_eq!((memo.get(&a), memo.get(&b)), (Some(1), Some(2)));
        memo.insert(c, 3);
        assert_eq!(memo.len(), 1);
        assert_eq!((memo.get(&a), memo.get(&c)), (None, Some(3)));
    }

    #[test]
    fn the_key_is_the_whole_input_and_long_inputs_have_none() {
        let a = serde_json::json!({"process": {"pid": 1}, "file": {"path": "/x"}});
        let b = serde_json::json!({"process": {"pid": 2}, "file": {"path": "/x"}});
        assert_ne!(Memo::<bool>::key(&a), Memo::<bool>::key(&b));
        assert_eq!(Memo::<bool>::key(&a), Memo::<bool>::key(&a.clone()));
        assert!(Memo::<bool>::key(&a).is_some());
        let long = serde_json::json!({"exec": {"argv": ["x".repeat(MAX_MEMO_INPUT)]}});
        assert_eq!(Memo::<bool>::key(&long), None);
        // Documents that print alike in parts but differ in shape, type or
        // boundaries have different keys.
        let distinct = [
            serde_json::json!({"a": "bc"}),
            serde_json::json!({"ab": "c"}),
            serde_json::json!({"a": ["bc"]}),
            serde_json::json!({"a": ["b", "c"]}),
            serde_json::json!({"a": 1}),
            serde_json::json!({"a": 1.0}),
            serde_json::json!({"a": "1"}),
            serde_json::json!({"a": -1}),
            serde_json::json!({"a": u64::MAX}),
            serde_json::json!({"a": true}),
            serde_json::json!({"a": null}),
            serde_json::json!({"a": {}}),
            serde_json::json!({"a": []}),
            serde_json::json!({"a": {"b": null}}),
            serde_json::json!({"a": null, "b": null}),
            serde_json::json!(["a", null]),
        ];
        let keys: std::collections::HashSet<_> = distinct
            .iter()
            .map(|d| Memo::<bool>::key(d).unwrap())
            .collect();
        assert_eq!(keys.len(), distinct.len());
    }
}
