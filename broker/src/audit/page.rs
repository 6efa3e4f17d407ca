//! How records lie in sled: a *page* is one value holding consecutive
//! records, keyed by the big-endian seq of its first one. Each record in it is
//! framed as `len: u32 BE ‖ sha256(body) ‖ body`, where `body` is the record's
//! canonical JSON, and the frames are stored LZ4-compressed:
//! `COMPRESSED ‖ raw length: u32 BE ‖ LZ4 block` (`seal`, `open`). Pages
//! written before compression (their first byte is a length's high byte, 0)
//! are read as they are.
//!
//! Why pages: a sled insert costs ~23 µs of CPU for a 1 KiB value, about the
//! same as for a 25 KiB one, and the store's work is what bounds a busy broker
//! (BENCHMARKS.md). A store of the batched queue writes its records as pages
//! of up to `MAX_RECORDS` and `MAX_BYTES` stored; strict mode stores each
//! record as a page of one. Why compressed: consecutive records repeat most
//! of their fields (sandbox, labels, process, policy revision), so 32 records
//! of ~1 KiB take ~5 KiB; uncompressed, `MAX_BYTES` held six or seven.
//!
//! Tamper evidence does not depend on the framing: every record still carries
//! its seq and its predecessor's hash inside its hashed body, and `verify`
//! checks those, not where a record sits.

use std::path::Path;

/// Records per page at most.
pub(super) const MAX_RECORDS: usize = 32;

/// Stored bytes per page at most (unless one record is larger). sled splits a leaf
/// at 17 entries whatever their size, and writes a leaf of more than a
/// quarter segment (128 KiB by default) as a separate blob file. Leaves of
/// 25–50 KiB pages took that path, on which a full disk made sled lose
/// records it had acknowledged or spin forever; 17 pages of 6 KiB stay
/// inline, as single records always did.
pub(super) const MAX_BYTES: usize = 6 * 1024;

/// The first byte of a compressed page.
const COMPRESSED: u8 = b'Z';

/// A page's frames at most, uncompressed. A page of several records is at
/// most ~255 × `MAX_BYTES` (LZ4's greatest expansion); only a page of one
/// large record (a long argv, in the record and in its input) comes near
/// this. A stored length beyond it is damage, not a reason to allocate.
const MAX_RAW: usize = 64 << 20;

/// A page's frames as stored.
pub(super) fn seal(frames: &[u8]) -> Vec<u8> {
    let block = lz4_flex::block::compress(frames);
    let mut value = Vec::with_capacity(5 + block.len());
    value.push(COMPRESSED);
    // Pages are built from at most MAX_RECORDS bounded records.
    let len = u32::try_from(frames.len()).unwrap_or(u32::MAX);
    value.extend_from_slice(&len.to_be_bytes());
    value.extend_from_slice(&block);
    value
}

/// A stored page's frames.
pub(super) fn open(value: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    match value.split_first() {
        Some((&COMPRESSED, rest)) => {
            let Some((len, block)) = rest.split_first_chunk::<4>() else {
                return Err("the page's length is truncated".into());
            };
            let len = u32::from_be_bytes(*len) as usize;
            // LZ4 expands a block at most ~255-fold: a larger claim is
            // damage, refused before allocating it.
            if len > MAX_RAW || len > block.len().saturating_mul(255).saturating_add(16) {
                return Err(format!(
                    "the page claims {len} bytes from {} compressed",
                    block.len()
                ));
            }
            let mut frames = vec![0; len];
            match lz4_flex::block::decompress_into(block, &mut frames) {
                Ok(n) if n == len => Ok(frames.into()),
                Ok(n) => Err(format!("the page holds {n} bytes, not {len}")),
                Err(e) => Err(format!("the page does not decompress: {e}")),
            }
        }
        // Written uncompressed (the first byte of a frame's length).
        Some((0, _)) => Ok(value.into()),
        Some((b, _)) => Err(format!("the page starts with an unknown byte {b:#04x}")),
        None => Err("the page is empty".into()),
    }
}

/// One record to store: its seq, hash and body.
pub(super) struct Hashed {
    pub seq: u64,
    pub hash: [u8; 32],
    pub body: Vec<u8>,
}

/// `records` as stored pages, `(first seq, value, records in it)`: as many
/// consecutive records per page as fit `MAX_BYTES` once compressed (a page
/// that does not is split in two).
pub(super) fn pack(records: &[Hashed]) -> Vec<(u64, Vec<u8>, usize)> {
    fn go(records: &[Hashed], out: &mut Vec<(u64, Vec<u8>, usize)>) {
        let Some(first) = records.first() else {
            return;
        };
        let mut frames = Vec::new();
        for r in records {
            push(&mut frames, &r.hash, &r.body);
        }
        let value = seal(&frames);
        drop(frames);
        if value.len() <= MAX_BYTES || records.len() == 1 {
            out.push((first.seq, value, records.len()));
        } else {
            // Halves until each fits (a record too large alone is a page of
            // its own): at most log2(MAX_RECORDS) rounds of compression.
            drop(value);
            let (a, b) = records.split_at(records.len() / 2);
            go(a, out);
            go(b, out);
        }
    }
    let mut out = Vec::new();
    for chunk in records.chunks(MAX_RECORDS) {
        go(chunk, &mut out);
    }
    out
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
fn push(page: &mut Vec<u8>, hash: &[u8; 32], body: &[u8]) {
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

    /// Opens the store's sled, waiting for the lock of one dropped just
    /// before in this process: sled lets it go when its threads end, a
    /// moment later (these tools open it several times in a row).
    fn open_db(dir: &Path) -> Result<sled::Db, String> {
        let mut tries = 0;
        loop {
            match sled::open(dir) {
                Err(e) if e.to_string().contains("could not acquire lock") && tries < 500 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other.map_err(|e| e.to_string()),
            }
        }
    }

    /// Calls `f` with the stored hash and body of record `seq` and stores what
    /// it leaves; `f` returning `false` removes the record from its page.
    pub fn edit_record(
        dir: &Path,
        seq: u64,
        f: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>) -> bool,
    ) -> Result<(), String> {
        let db = open_db(dir)?;
        let records = db.open_tree("records").map_err(|e| e.to_string())?;
        let (k, v) = records
            .range(..=key(seq))
            .next_back()
            .ok_or("no page holds that record")?
            .map_err(|e| e.to_string())?;
        let first = seq_of(&k).ok_or("malformed page key")?;
        let frames = open(&v)?;
        let mut list: Vec<(Vec<u8>, Vec<u8>)> = entries(&frames)?
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
                .insert(key(new_first), seal(&page))
                .map_err(|e| e.to_string())?;
        }
        db.flush().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Removes every record after `keep` and points the store's head, and
    /// its head file, at record `keep`, as someone hiding the newest records
    /// would: the chain and the heads agree, and only an anchor kept
    /// elsewhere shows the cut.
    pub fn cut_tail(dir: &Path, keep: u64) -> Result<(), String> {
        let last = {
            let db = open_db(dir)?;
            let records = db.open_tree("records").map_err(|e| e.to_string())?;
            let (k, v) = records
                .last()
                .map_err(|e| e.to_string())?
                .ok_or("the store is empty")?;
            let first = seq_of(&k).ok_or("malformed page key")?;
            first + entries(&open(&v)?)?.len() as u64 - 1
        };
        for seq in (keep + 1..=last).rev() {
            edit_record(dir, seq, |_, _| false)?;
        }
        let mut hash = Vec::new();
        edit_record(dir, keep, |h, _| {
            hash = h.clone();
            true
        })?;
        let db = open_db(dir)?;
        let meta = db.open_tree("meta").map_err(|e| e.to_string())?;
        meta.insert("head", [&key(keep)[..], &hash].concat())
            .map_err(|e| e.to_string())?;
        db.flush().map_err(|e| e.to_string())?;
        std::fs::write(
            dir.join(crate::audit::HEAD_FILE),
            format!("{keep} {}\n", hex::encode(&hash)),
        )
        .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Removes the index entries whose keys start with `prefix` (`b"s"`: by
    /// sandbox, `b"c"`: by syscall, `b"d"`: by decision) and adds one that no
    /// record matches. Returns how many were removed.
    pub fn damage_index(dir: &Path, prefix: &[u8]) -> Result<usize, String> {
        let db = open_db(dir)?;
        let index = db.open_tree("index").map_err(|e| e.to_string())?;
        let keys: Vec<_> = index
            .scan_prefix(prefix)
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        for k in &keys {
            index.remove(k).map_err(|e| e.to_string())?;
        }
        let bogus = [&b"sno-such-sandbox\0"[..], &key(1)].concat();
        index.insert(bogus, &key(1)).map_err(|e| e.to_string())?;
        db.flush().map_err(|e| e.to_string())?;
        Ok(keys.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, len: usize) -> Hashed {
        // Repetitive like real records, with a varying tail.
        let mut body = format!("{{\"seq\":{seq},\"path\":\"/work/file-{seq}\"").into_bytes();
        body.extend(std::iter::repeat_n(b'x', len.saturating_sub(body.len())));
        Hashed {
            seq,
            hash: [seq as u8; 32],
            body,
        }
    }

    fn frames_of(records: &[Hashed]) -> Vec<u8> {
        let mut frames = Vec::new();
        for r in records {
            push(&mut frames, &r.hash, &r.body);
        }
        frames
    }

    #[test]
    fn pages_fit_the_cap_keep_order_and_read_back() {
        for (count, len) in [(1, 100), (32, 1000), (70, 900), (5, 20_000), (40, 3000)] {
            let records: Vec<Hashed> = (1..=count).map(|s| record(s, len)).collect();
            let pages = pack(&records);
            let mut next = 0usize;
            for (first, value, n) in &pages {
                assert_eq!(*first, records[next].seq);
                assert!(*n <= MAX_RECORDS);
                assert!(
                    value.len() <= MAX_BYTES || *n == 1,
                    "{n} records in {} bytes",
                    value.len()
                );
                let frames = open(value).unwrap();
                assert_eq!(
                    frames.as_ref(),
                    frames_of(&records[next..next + n]).as_slice()
                );
                next += n;
            }
            assert_eq!(next, records.len());
        }
        // Records like a decision's: 32 of ~1 KiB in one page.
        let records: Vec<Hashed> = (1..=32).map(|s| record(s, 1000)).collect();
        assert_eq!(pack(&records).len(), 1);
    }

    #[test]
    fn uncompressed_pages_read_as_they_are_and_damage_is_named() {
        let records: Vec<Hashed> = (1..=3).map(|s| record(s, 200)).collect();
        let raw = frames_of(&records);
        assert_eq!(open(&raw).unwrap().as_ref(), raw.as_slice());
        let sealed = seal(&raw);
        // A claimed length beyond any page: refused before allocating it.
        let mut huge = sealed.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(open(&huge).unwrap_err().contains("claims"));
        let mut short = sealed.clone();
        short[1..5].copy_from_slice(&((raw.len() + 1) as u32).to_be_bytes());
        assert!(open(&short).is_err());
        assert!(open(&sealed[..sealed.len() - 3]).is_err());
        assert!(open(&[]).is_err());
        assert!(open(&[7, 1, 2]).unwrap_err().contains("unknown byte"));
    }
}
