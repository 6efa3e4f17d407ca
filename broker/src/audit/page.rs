//! How records lie in sled: a *page* is one value holding consecutive
//! records, keyed by the big-endian seq of its first one. Each record in it is
//! framed as `len: u32 BE ‖ sha256(body) ‖ body`, where `body` is the record's
//! canonical JSON.
//!
//! Why pages: a sled insert costs ~23 µs of CPU for a 1 KiB value, about the
//! same as for a 25 KiB one, and the store's work is what bounds a busy broker
//! (BENCHMARKS.md). A store of the batched queue writes its records as pages
//! of up to `MAX_RECORDS` and `MAX_BYTES`; strict mode stores each record as
//! a page of one.
//!
//! Tamper evidence does not depend on the framing: every record still carries
//! its seq and its predecessor's hash inside its hashed body, and `verify`
//! checks those, not where a record sits.

use std::path::Path;

/// Records per page at most.
pub(super) const MAX_RECORDS: usize = 32;

/// Bytes per page at most (unless one record is larger). sled splits a leaf
/// at 17 entries whatever their size, and writes a leaf of more than a
/// quarter segment (128 KiB by default) as a separate blob file. Leaves of
/// 25–50 KiB pages took that path, on which a full disk made sled lose
/// records it had acknowledged or spin forever; 17 pages of 6 KiB stay
/// inline, as single records always did.
pub(super) const MAX_BYTES: usize = 6 * 1024;

/// What `push` adds for a body.
pub(super) fn framed_len(body: &[u8]) -> usize {
    4 + 32 + body.len()
}

/// A record's bytes inside a page.
#[derive(Clone, Copy)]
pub(super) struct Entry<'a> {
    pub hash: &'a [u8],
    pub body: &'a [u8],
}

/// The sled key of the page whose first record is `seq` (and the index's
/// suffix for that page).
pub(super) fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The seq a page (or index) key names; `None` for a malformed key.
pub(super) fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(
        key.get(key.len().checked_sub(8)?..)?.try_into().ok()?,
    ))
}

/// Appends one framed record to a page under construction.
pub(super) fn push(page: &mut Vec<u8>, hash: &[u8; 32], body: &[u8]) {
    // Bodies are JSON of bounded requests (paths ≤ PATH_MAX, argv capped), far
    // below 4 GiB.
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    page.extend_from_slice(&len.to_be_bytes());
    page.extend_from_slice(hash);
    page.extend_from_slice(body);
}

/// The records of a page, in order; `Err` says where the framing breaks.
pub(super) fn entries(page: &[u8]) -> Result<Vec<Entry<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = page;
    while !rest.is_empty() {
        let Some((len, after)) = rest.split_first_chunk::<4>() else {
            return Err(format!("entry {} has a truncated length", out.len() + 1));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if after.len() < 32 || after.len() - 32 < len {
            return Err(format!(
                "entry {} is longer than what is left of the page",
                out.len() + 1
            ));
        }
        let (hash, after) = after.split_at(32);
        let (body, after) = after.split_at(len);
        out.push(Entry { hash, body });
        rest = after;
    }
    if out.is_empty() {
        return Err("the page is empty".into());
    }
    Ok(out)
}

/// Tools for the tests that prove tampering is caught: they edit a stored
/// store the way someone with write access to its directory could. The store
/// must not be open.
#[doc(hidden)]
pub mod tamper {
    use super::*;

    /// Calls `f` with the stored hash and body of record `seq` and stores what
    /// it leaves; `f` returning `false` removes the record from its page.
    pub fn edit_record(
        dir: &Path,
        seq: u64,
        f: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>) -> bool,
    ) -> Result<(), String> {
        let db = sled::open(dir).map_err(|e| e.to_string())?;
        let records = db.open_tree("records").map_err(|e| e.to_string())?;
        let (k, v) = records
            .range(..=key(seq))
            .next_back()
            .ok_or("no page holds that record")?
            .map_err(|e| e.to_string())?;
        let first = seq_of(&k).ok_or("malformed page key")?;
        let mut list: Vec<(Vec<u8>, Vec<u8>)> = entries(&v)?
            .into_iter()
            .map(|e| (e.hash.to_vec(), e.body.to_vec()))
            .collect();
        let at = usize::try_from(seq - first).map_err(|e| e.to_string())?;
        let Some((hash, body)) = list.get_mut(at) else {
            return Err("no page holds that record".into());
        };
        let removed = !f(hash, body);
        if removed {
            list.remove(at);
        }
        records.remove(&k).map_err(|e| e.to_string())?;
        // A page whose first record went keeps its place under the next one,
        // as a rewrite by hand would.
        if !list.is_empty() {
            let new_first = if removed && at == 0 { first + 1 } else { first };
            let mut page = Vec::new();
            for (hash, body) in &list {
                let hash: [u8; 32] = hash
                    .as_slice()
                    .try_into()
                    .map_err(|_| "hash is not 32 bytes")?;
                push(&mut page, &hash, body);
            }
            records
                .insert(key(new_first), page)
                .map_err(|e| e.to_string())?;
        }
        db.flush().map_err(|e| e.to_string())?;
        Ok(())
    }
}
