//! The memo key's encoding, as a serde serializer: anything that serializes
//! to JSON (a `serde_json::Value`, or the typed [`crate::input::Input`])
//! is keyed without building a tree. A key stands for one tree: two values
//! with the same key make the same tree. The converse holds only where
//! members come in the same order (a `Value`'s map is sorted, and so is
//! `Input`, whose test holds its keys to its tree's): otherwise equal trees
//! may key apart, which costs a memo miss, never a wrong verdict.
//!
//! Each value is a tag (`n`, `t`, `f`; `i` with an `i64`, `u` with a `u64`
//! past `i64::MAX`, 8 bytes each; `d`, `s` and `k` with a length and the
//! text; `a` and `o` with a length and the members), so two different trees
//! never share an encoding. Numbers are encoded as a `serde_json::Number`
//! holds them, floats as the text serde_json prints. This assumes
//! serde_json without `arbitrary_precision`, where a number would serialize
//! as a one-member map (a test checks).

use serde::ser::{self, Impossible, Serialize};
use sha2::{Digest, Sha256};

use super::MAX_MEMO_INPUT;

/// Why a value has no key: longer than [`MAX_MEMO_INPUT`], or a shape JSON
/// has no tree for (bytes, enum variants, a map key that is not a string,
/// a container whose length is not known in advance or not as announced).
#[derive(Debug)]
pub(super) struct NoKey;

impl std::fmt::Display for NoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no memo key for this value")
    }
}

impl std::error::Error for NoKey {}

impl ser::Error for NoKey {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        NoKey
    }
}

/// Writes the encoding, bounded by [`MAX_MEMO_INPUT`]; the key is its
/// SHA-256, taken once at the end: the same digest as feeding SHA-256 each
/// piece as it comes, which was one small update per tag, length and text.
pub(super) struct KeyHasher {
    encoding: Vec<u8>,
    /// Serializing a map key: only a string is one (tagged `k`).
    in_key: bool,
}

/// Room for a file request's encoding without growing it: 671 bytes for a
/// read of `/etc/ld.so.cache` by the benches' probe; long paths and labels
/// take more.
const TYPICAL_ENCODING: usize = 2048;

thread_local! {
    /// Each thread's encoding buffer, reused from key to key. A fresh one
    /// per key was a large request for glibc (over 1 KiB), at which it
    /// consolidated its fast bins: one `malloc_consolidate` per open
    /// (`perf probe`, BENCHMARKS.md session 35).
    static ENCODING: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl KeyHasher {
    pub(super) fn key<T: Serialize + ?Sized>(value: &T) -> Option<[u8; 32]> {
        // Taken out while in use (a serializer that keys another value
        // meanwhile gets a buffer of its own), put back after; emptied here
        // (its bytes stay until overwritten: the request it encoded, which
        // the memo's caller holds anyway).
        let mut encoding = ENCODING.try_with(|e| e.take()).unwrap_or_default();
        encoding.clear();
        encoding.reserve(TYPICAL_ENCODING);
        let mut hasher = KeyHasher {
            encoding,
            in_key: false,
        };
        let key = value
            .serialize(&mut hasher)
            .ok()
            .map(|()| Sha256::digest(&hasher.encoding).into());
        let _ = ENCODING.try_with(|e| e.set(hasher.encoding));
        key
    }

    fn bytes(&mut self, b: &[u8]) -> Result<(), NoKey> {
        if self.encoding.len() + b.len() > MAX_MEMO_INPUT {
            return Err(NoKey);
        }
        self.encoding.extend_from_slice(b);
        Ok(())
    }

    fn tagged(&mut self, tag: u8, len: usize) -> Result<(), NoKey> {
        self.bytes(&[tag])?;
        self.bytes(&(len as u64).to_le_bytes())
    }

    /// A value other than a string: never a map key.
    fn scalar(&mut self, tag: u8, b: &[u8]) -> Result<(), NoKey> {
        if self.in_key {
            return Err(NoKey);
        }
        self.bytes(&[tag])?;
        self.bytes(b)
    }

    fn text(&mut self, tag: u8, s: &str) -> Result<(), NoKey> {
        self.tagged(tag, s.len())?;
        self.bytes(s.as_bytes())
    }

    fn container(&mut self, tag: u8, len: Option<usize>) -> Result<Members<'_>, NoKey> {
        let (false, Some(len)) = (self.in_key, len) else {
            return Err(NoKey);
        };
        self.tagged(tag, len)?;
        Ok(Members {
            hasher: self,
            left: len,
        })
    }
}

/// The members of an array or object, counted against the length the
/// encoding announced.
pub(super) struct Members<'a> {
    hasher: &'a mut KeyHasher,
    left: usize,
}

impl Members<'_> {
    fn member<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NoKey> {
        self.left = self.left.checked_sub(1).ok_or(NoKey)?;
        value.serialize(&mut *self.hasher)
    }

    fn key(&mut self, name: &str) -> Result<(), NoKey> {
        self.hasher.text(b'k', name)
    }

    fn end(self) -> Result<(), NoKey> {
        if self.left == 0 { Ok(()) } else { Err(NoKey) }
    }
}

impl<'a> ser::Serializer for &'a mut KeyHasher {
    type Ok = ();
    type Error = NoKey;
    type SerializeSeq = Members<'a>;
    type SerializeTuple = Members<'a>;
    type SerializeTupleStruct = Members<'a>;
    type SerializeTupleVariant = Impossible<(), NoKey>;
    type SerializeMap = Members<'a>;
    type SerializeStruct = Members<'a>;
    type SerializeStructVariant = Impossible<(), NoKey>;

    fn serialize_bool(self, v: bool) -> Result<(), NoKey> {
        self.scalar(if v { b't' } else { b'f' }, &[])
    }
    fn serialize_i8(self, v: i8) -> Result<(), NoKey> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), NoKey> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), NoKey> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), NoKey> {
        self.scalar(b'i', &v.to_le_bytes())
    }
    fn serialize_u8(self, v: u8) -> Result<(), NoKey> {
        self.serialize_i64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), NoKey> {
        self.serialize_i64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), NoKey> {
        self.serialize_i64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), NoKey> {
        match i64::try_from(v) {
            Ok(i) => self.serialize_i64(i),
            Err(_) => self.scalar(b'u', &v.to_le_bytes()),
        }
    }
    fn serialize_f32(self, v: f32) -> Result<(), NoKey> {
        // As serde_json makes a tree of it.
        match serde_json::Number::from_f64(v.into()) {
            Some(n) => self.serialize_f64(n.as_f64().unwrap_or_default()),
            None => self.serialize_unit(),
        }
    }
    fn serialize_f64(self, v: f64) -> Result<(), NoKey> {
        match serde_json::Number::from_f64(v) {
            Some(n) if !self.in_key => self.text(b'd', &n.to_string()),
            Some(_) => Err(NoKey),
            // NaN and infinities are null in a serde_json tree.
            None => self.serialize_unit(),
        }
    }
    fn serialize_char(self, v: char) -> Result<(), NoKey> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), NoKey> {
        let tag = if self.in_key { b'k' } else { b's' };
        self.text(tag, v)
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), NoKey> {
        Err(NoKey)
    }
    fn serialize_none(self) -> Result<(), NoKey> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), NoKey> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), NoKey> {
        self.scalar(b'n', &[])
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), NoKey> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), NoKey> {
        Err(NoKey)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), NoKey> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), NoKey> {
        Err(NoKey)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Members<'a>, NoKey> {
        self.container(b'a', len)
    }
    fn serialize_tuple(self, len: usize) -> Result<Members<'a>, NoKey> {
        self.container(b'a', Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Members<'a>, NoKey> {
        self.container(b'a', Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NoKey> {
        Err(NoKey)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Members<'a>, NoKey> {
        self.container(b'o', len)
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Members<'a>, NoKey> {
        self.container(b'o', Some(len))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NoKey> {
        Err(NoKey)
    }
}

/// Arrays: each member as it comes.
macro_rules! array_members {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Members<'_> {
            type Ok = ();
            type Error = NoKey;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NoKey> {
                self.member(value)
            }
            fn end(self) -> Result<(), NoKey> {
                Members::end(self)
            }
        }
    )*};
}

array_members!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field
);

impl ser::SerializeMap for Members<'_> {
    type Ok = ();
    type Error = NoKey;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), NoKey> {
        self.hasher.in_key = true;
        let keyed = key.serialize(&mut *self.hasher);
        self.hasher.in_key = false;
        keyed
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NoKey> {
        self.member(value)
    }
    fn end(self) -> Result<(), NoKey> {
        Members::end(self)
    }
}

impl ser::SerializeStruct for Members<'_> {
    type Ok = ();
    type Error = NoKey;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), NoKey> {
        self.key(name)?;
        self.member(value)
    }
    fn end(self) -> Result<(), NoKey> {
        Members::end(self)
    }
}

#[cfg(test)]
mod tests {
    use serde::ser::{SerializeMap, SerializeSeq, Serializer};

    use super::*;

    /// A list that announces `said` members and writes `wrote`.
    struct Miscounted {
        said: usize,
        wrote: usize,
    }

    impl Serialize for Miscounted {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(self.said))?;
            for i in 0..self.wrote {
                seq.serialize_element(&i)?;
            }
            seq.end()
        }
    }

    struct Bytes;

    impl Serialize for Bytes {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(b"x")
        }
    }

    /// A map with a key that is not a string.
    struct NumberKey;

    impl Serialize for NumberKey {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(1))?;
            m.serialize_entry(&1, "one")?;
            m.end()
        }
    }

    /// A list of its value twice, keying the value alone between the two:
    /// another key taken while its own encoding is half written.
    struct KeysInside(serde_json::Value, std::cell::Cell<Option<[u8; 32]>>);

    impl Serialize for KeysInside {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(2))?;
            seq.serialize_element(&self.0)?;
            self.1.set(KeyHasher::key(&self.0));
            seq.serialize_element(&self.0)?;
            seq.end()
        }
    }

    /// The buffer a thread reuses starts empty for every key: after a
    /// longer key, a refused one (stopped midway) and a key taken inside
    /// another's serialization, each key is the one a fresh thread gives.
    #[test]
    fn a_reused_buffer_gives_the_keys_a_fresh_one_would() {
        let short = serde_json::json!({"path": "/a", "pid": 7});
        let fresh = {
            let short = short.clone();
            std::thread::spawn(move || KeyHasher::key(&short))
                .join()
                .unwrap()
        };
        assert!(fresh.is_some());
        let long = serde_json::json!({"path": "/a".repeat(1000), "pid": 7});
        assert!(KeyHasher::key(&long).is_some());
        assert_ne!(KeyHasher::key(&long), fresh);
        assert_eq!(KeyHasher::key(&short), fresh);
        assert!(KeyHasher::key(&Miscounted { said: 1, wrote: 2 }).is_none());
        assert_eq!(KeyHasher::key(&short), fresh);
        let inside = KeysInside(short.clone(), std::cell::Cell::new(None));
        let twice = serde_json::json!([short.clone(), short.clone()]);
        let twice_fresh = std::thread::spawn(move || KeyHasher::key(&twice))
            .join()
            .unwrap();
        assert_eq!(KeyHasher::key(&inside), twice_fresh);
        assert_eq!(inside.1.get(), fresh);
        assert_eq!(KeyHasher::key(&short), fresh);
    }

    #[test]
    fn what_has_no_single_tree_has_no_key() {
        fn key<T: Serialize>(value: &T) -> Option<[u8; 32]> {
            KeyHasher::key(value)
        }
        assert!(key(&Miscounted { said: 2, wrote: 2 }).is_some());
        assert_eq!(
            key(&Miscounted { said: 2, wrote: 2 }),
            key(&serde_json::json!([0, 1]))
        );
        assert!(key(&Miscounted { said: 2, wrote: 1 }).is_none());
        assert!(key(&Miscounted { said: 1, wrote: 2 }).is_none());
        assert!(key(&NumberKey).is_none());
        assert!(key(&Bytes).is_none());
        // As serde_json makes trees of them: NaN is null, an f32 a float.
        assert_eq!(key(&f64::NAN), key(&serde_json::Value::Null));
        assert_eq!(key(&1.5f32), key(&serde_json::json!(1.5)));
        assert_eq!(key(&u64::MAX), key(&serde_json::json!(u64::MAX)));
        assert_eq!(key(&'x'), key(&serde_json::json!("x")));
        // With serde_json's `arbitrary_precision`, a number would serialize
        // as this map, and the two would share a key.
        assert_ne!(
            key(&serde_json::json!(5)),
            key(&serde_json::json!({"$serde_json::private::Number": "5"}))
        );
    }
}
