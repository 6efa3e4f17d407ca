//! The audit store through real `cordon serve` processes and the `cordon audit`
//! command: durability under SIGKILL, tamper evidence, query filters, follow.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cordon_broker::proto::{ReloadPolicyRequest, VerifyAuditRequest};
use support::*;

/// Keeps 16 clients deciding until the broker is killed; returns, for every
/// decision a client received an answer for, its audit sequence number and how
/// long before the kill the answer arrived.
async fn decide_until_killed(s: &mut Serve) -> BTreeMap<u64, Duration> {
    let answered = Arc::new(Mutex::new(Vec::<(u64, Instant)>::new()));
    let denials = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop_at = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let mut c = s.client().await;
        let (answered, denials) = (answered.clone(), denials.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while let Ok(r) = c
                .decide(file_request(t * 1_000_000 + i, b"/etc/hosts", &["read"]))
                .await
            {
                let d = r.into_inner().decision.unwrap();
                if d.allow {
                    answered.lock().unwrap().push((d.audit_seq, Instant::now()));
                } else {
                    denials.lock().unwrap().push(d.reason);
                }
                i += 1;
            }
        }));
    }
    while Instant::now() < stop_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed_at = Instant::now();
    s.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let denials = denials.lock().unwrap().clone();
    assert!(
        denials.is_empty(),
        "unexpected denials: {:?}",
        &denials[..denials.len().min(3)]
    );
    let map: BTreeMap<u64, Duration> = answered
        .lock()
        .unwrap()
        .iter()
        .map(|&(seq, at)| (seq, killed_at.saturating_duration_since(at)))
        .collect();
    assert!(
        map.len() > 100,
        "only {} decisions before the kill",
        map.len()
    );
    map
}

fn stored_seqs(db: &std::path::Path) -> BTreeSet<u64> {
    let (code, out, err) = run_cordon(&["audit", "--db", path_str(db), "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

fn assert_verifies(db: &std::path::Path) {
    let (code, out, err) = run_cordon(&["audit", "verify", "--db", path_str(db)]);
    assert_eq!(code, 0, "verify failed: {out}{err}");
    assert!(out.starts_with("ok: "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_loses_no_answered_decision_on_sigkill() {
    let mut s = Serve::start(ALLOW_ALL_BUT_TMP, &["--durability", "strict"]);
    let answered = decide_until_killed(&mut s).await;
    let stored = stored_seqs(&s.db);
    let lost: Vec<_> = answered
        .keys()
        .filter(|seq| !stored.contains(seq))
        .collect();
    assert!(
        lost.is_empty(),
        "{} answered decisions are not in the store: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert_verifies(&s.db);
    eprintln!(
        "strict: {} answered, {} stored, 0 lost",
        answered.len(),
        stored.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_mode_loses_at_most_the_unflushed_tail_on_sigkill() {
    let mut s = Serve::start(
        ALLOW_ALL_BUT_TMP,
        &["--durability", "batched", "--flush-window", "10ms"],
    );
    let answered = decide_until_killed(&mut s).await;
    let stored = stored_seqs(&s.db);
    let lost: Vec<u64> = answered
        .keys()
        .filter(|seq| !stored.contains(seq))
        .copied()
        .collect();
    // What survives is a prefix of the chain: only the newest records can be lost.
    let max_stored = stored.iter().max().copied().unwrap_or(0);
    assert_eq!(
        stored.len() as u64,
        max_stored,
        "stored records are not a contiguous prefix"
    );
    assert!(lost.iter().all(|&seq| seq > max_stored));
    // Lost decisions were answered within one flush window (10 ms) plus the
    // flush itself before the kill; on a loaded 2-core machine a flush can take
    // tens of milliseconds, so the bound checked is generous.
    let oldest_lost = lost
        .iter()
        .map(|seq| answered[seq])
        .max()
        .unwrap_or_default();
    // Deciding for 3 s: a store that never flushed would lose decisions
    // answered 3 s before the kill, and store none.
    assert!(!stored.is_empty(), "nothing was stored");
    assert!(
        oldest_lost < Duration::from_secs(1),
        "a decision answered {oldest_lost:?} before the kill was lost"
    );
    assert_verifies(&s.db);
    eprintln!(
        "batched: {} answered, {} stored, {} lost, each answered at most {oldest_lost:?} before the kill",
        answered.len(),
        stored.len(),
        lost.len()
    );
}

/// Makes `n` decisions, then stops the broker cleanly.
async fn store_with_records(n: u64) -> Serve {
    let mut s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    let mut c = s.client().await;
    for i in 0..n {
        c.decide(file_request(
            i,
            format!("/data/file-{i}").as_bytes(),
            &["read"],
        ))
        .await
        .unwrap();
    }
    s.stop();
    s
}

/// Edits record `seq` in a stopped broker's store, as someone with write
/// access to its directory could; `f` returning false removes it.
fn edit_record(db: &std::path::Path, seq: u64, f: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>) -> bool) {
    cordon_broker::audit::tamper::edit_record(db, seq, f).unwrap();
}

fn verify_fails_naming(db: &std::path::Path, needle: &str) {
    let (code, out, err) = run_cordon(&["audit", "verify", "--db", path_str(db)]);
    assert_eq!(code, 1, "verify should fail: {out}{err}");
    assert!(
        err.contains(needle),
        "stderr should name the record ({needle}): {err}"
    );
    // The store named before the subcommand, as auditors also write it.
    let (code, out, _) = run_cordon(&["audit", "--db", path_str(db), "verify", "--format", "json"]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["ok"], false);
}

/// The listing's options before `verify` or `reindex` are refused, naming
/// them, rather than ignored; where the store is read from may come first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_refuses_the_listings_options_before_it() {
    let s = store_with_records(3).await;
    let db = path_str(&s.db);
    for sub in ["verify", "reindex"] {
        let (code, _, err) = run_cordon(&[
            "audit", "--db", db, "--since", "1h", "--format", "json", sub,
        ]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(&format!(
                "`cordon audit {sub}` does not take --since, --format"
            )),
            "{err}"
        );
    }
    let (code, out, err) = run_cordon(&["audit", "--db", db, "verify"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hash chain intact"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altering_a_record_is_detected_and_named() {
    let s = store_with_records(10).await;
    assert_verifies(&s.db);
    edit_record(&s.db, 3, |_, body| {
        let text = String::from_utf8(body.clone()).unwrap();
        let forged = text.replace("/data/file-2", "/data/file-X");
        assert_ne!(text, forged);
        *body = forged.into_bytes();
        true
    });
    verify_fails_naming(&s.db, "record 3 was altered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehashed_forgery_is_named_with_the_record_after_it() {
    use sha2::Digest;
    let s = store_with_records(10).await;
    edit_record(&s.db, 4, |hash, body| {
        let forged = String::from_utf8(body.clone())
            .unwrap()
            .replace("\"allow\":true", "\"allow\":false");
        assert_ne!(body.as_slice(), forged.as_bytes());
        *hash = sha2::Sha256::digest(forged.as_bytes()).to_vec();
        *body = forged.into_bytes();
        true
    });
    verify_fails_naming(
        &s.db,
        "audit chain broken at record 4: record 4 or record 5 was replaced",
    );
}

/// A rehashed newest record: verify names it (it does not match the head),
/// and a broker refuses to append to the store, which would rewrite the head
/// over it and leave nothing for verify to find.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_newest_record_is_refused_not_appended_to() {
    use sha2::Digest;
    let mut s = store_with_records(10).await;
    edit_record(&s.db, 10, |hash, body| {
        let forged = String::from_utf8(body.clone())
            .unwrap()
            .replace("/data/file-9", "/data/file-X");
        assert_ne!(body.as_slice(), forged.as_bytes());
        *hash = sha2::Sha256::digest(forged.as_bytes()).to_vec();
        *body = forged.into_bytes();
        true
    });
    verify_fails_naming(&s.db, "head");
    let mut serve = support::cordon()
        .args(["serve", "--listen"])
        .arg(format!("unix://{}", s.socket.display()))
        .arg("--audit-db")
        .arg(&s.db)
        .arg("--policy")
        .arg(&s.policy)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A serve that starts does not exit by itself: give it 20 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while serve.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = serve.kill();
    let out = serve.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve started: {err}");
    assert!(err.contains("does not match its head"), "{err}");
    // Still named by verify: nothing was appended.
    verify_fails_naming(&s.db, "head");
    s.child = None;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_record_is_detected_and_named() {
    let s = store_with_records(10).await;
    edit_record(&s.db, 5, |_, _| false);
    verify_fails_naming(&s.db, "record 5 is missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_first_record_of_a_page_is_detected_and_named() {
    let s = store_with_records(10).await;
    edit_record(&s.db, 1, |_, _| false);
    verify_fails_naming(&s.db, "record 1 is missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_newest_records_is_detected() {
    let s = store_with_records(10).await;
    edit_record(&s.db, 10, |_, _| false);
    edit_record(&s.db, 9, |_, _| false);
    verify_fails_naming(&s.db, "records 9 to 10 are missing");
}

/// `verify`'s anchor line: `SEQ:HASH`.
fn anchor_of(out: &str) -> String {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("anchor: "))
        .unwrap_or_else(|| panic!("no anchor in {out}"));
    line.split_whitespace().next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anchor_kept_elsewhere_shows_a_cut_tail_with_a_rewritten_head() {
    let s = store_with_records(10).await;
    let db = path_str(&s.db);
    let (code, out, err) = run_cordon(&["audit", "verify", "--db", db]);
    assert_eq!(code, 0, "{err}");
    let anchor = anchor_of(&out);
    assert!(anchor.starts_with("10:"), "{anchor}");
    let (code, out, err) = run_cordon(&["audit", "verify", "--db", db, "--anchor", &anchor]);
    assert_eq!(code, 0, "{out}{err}");

    // The newest two records cut, the head pointed at record 8 and the index
    // rebuilt: chain, head and index agree, so only the anchor shows it.
    cordon_broker::audit::tamper::cut_tail(&s.db, 8).unwrap();
    // Before the reindex the index still lists the cut records: verify
    // says so, with the chain intact, and the anchor's failure outranks it
    // (reindexing first would rewrite the trace; found by review).
    let (code, out, err) = run_cordon(&["audit", "verify", "--db", db]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("audit index inconsistent"), "{err}");
    assert!(
        out.contains("8 records, hash chain intact; the index is inconsistent"),
        "{out}"
    );
    let (code, out, err) = run_cordon(&["audit", "verify", "--db", db, "--anchor", &anchor]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("audit chain broken at record 9: records 9 to 10 are missing"),
        "{err}"
    );
    let (code, out, err) = run_cordon(&["audit", "reindex", "--db", db]);
    assert_eq!(code, 0, "{out}{err}");
    assert_verifies(&s.db);
    let (code, out, err) = run_cordon(&["audit", "verify", "--db", db, "--anchor", &anchor]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("audit chain broken at record 9: records 9 to 10 are missing"),
        "{err}"
    );
    // A record rewritten with the whole chain after it: its anchor differs.
    let wrong = format!("8:{}", "0".repeat(64));
    let (code, out, err) = run_cordon(&["audit", "verify", "--db", db, "--anchor", &wrong]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("record 8 does not match the anchor"), "{err}");
    let (code, _, err) = run_cordon(&["audit", "verify", "--db", db, "--anchor", "8:xyz"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a SHA-256 in hex"), "{err}");
}

/// verify and reindex print their result; a reader that went away (`|
/// head -0`) changes nothing, a full disk is an error (2), never a panic
/// (101; found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_reindex_survive_a_closed_or_full_stdout() {
    let s = store_with_records(3).await;
    let db = path_str(&s.db);
    for args in [
        &["audit", "verify", "--db", db][..],
        &["audit", "verify", "--db", db, "--format", "json"],
        &["audit", "reindex", "--db", db],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = support::cordon()
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?} {out:?}");
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = support::cordon()
            .args(args)
            .stdout(full)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {err}");
        assert!(err.contains("cannot write the result to stdout"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_verifies_against_an_anchor_too() {
    let mut s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    decide_reads(&s, 5).await;
    let uri = s.uri();
    let (code, out, err) = run_cordon(&["audit", "verify", "--broker", &uri]);
    assert_eq!(code, 0, "{err}");
    let anchor = anchor_of(&out);
    assert!(anchor.starts_with("5:"), "{anchor}");
    let (code, out, err) = run_cordon(&["audit", "verify", "--broker", &uri, "--anchor", &anchor]);
    assert_eq!(code, 0, "{out}{err}");
    let wrong = format!("5:{}", "f".repeat(64));
    let (code, _, err) = run_cordon(&["audit", "verify", "--broker", &uri, "--anchor", &wrong]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("record 5 does not match the anchor"), "{err}");
    // An anchor past the store's end: its records are missing.
    let past = format!("7:{}", "f".repeat(64));
    let (code, out, err) = run_cordon(&[
        "audit", "verify", "--broker", &uri, "--anchor", &past, "--format", "json",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(out.contains("records 6 to 7 are missing"), "{out}{err}");
    s.stop();
    // The store, read directly, gives the same anchor.
    let (code, out, err) = run_cordon(&["audit", "verify", "--db", path_str(&s.db)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(anchor_of(&out), anchor);
}

/// A store with a known mix: 4 file reads (sb-1, allowed), 2 writes to /etc
/// (sb-1, denied), 3 connects (sb-2, allowed), 2 execs (sb-3, denied).
async fn mixed_store() -> (Serve, Vec<serde_json::Value>) {
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    let mut c = s.client().await;
    for i in 0..4 {
        c.decide(file_request(
            i,
            format!("/home/agent/job/f{i}").as_bytes(),
            &["read"],
        ))
        .await
        .unwrap();
    }
    for i in 0..2 {
        c.decide(file_request(10 + i, b"/etc/passwd", &["write"]))
            .await
            .unwrap();
    }
    for i in 0..3 {
        c.decide(connect_request(20 + i, "10.1.2.3", 443))
            .await
            .unwrap();
    }
    for i in 0..2 {
        c.decide(exec_request(30 + i, "/usr/bin/curl", &["curl", "x"]))
            .await
            .unwrap();
    }
    let (code, out, err) = run_cordon(&["audit", "--broker", &s.uri(), "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let all: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(all.len(), 11);
    (s, all)
}

fn seqs(out: &str) -> Vec<u64> {
    out.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filter_selects_exactly_its_records_locally_and_through_the_broker() {
    let (mut s, all) = mixed_store().await;
    let since = all[6]["time"].as_str().unwrap().to_owned();
    let until = all[8]["time"].as_str().unwrap().to_owned();
    let cases: Vec<(Vec<&str>, Vec<u64>)> = vec![
        (vec!["--sandbox", "sb-2"], vec![7, 8, 9]),
        (vec!["--syscall", "execve"], vec![10, 11]),
        // The open family and allows are not indexed (most records): read in order.
        (vec!["--syscall", "openat"], vec![1, 2, 3, 4, 5, 6]),
        (
            vec!["--syscall", "openat", "--decision", "deny"],
            vec![5, 6],
        ),
        (
            vec!["--syscall", "connect", "--decision", "allow"],
            vec![7, 8, 9],
        ),
        (vec!["--kind", "network"], vec![7, 8, 9]),
        (vec!["--kind", "file"], vec![1, 2, 3, 4, 5, 6]),
        (vec!["--decision", "deny"], vec![5, 6, 10, 11]),
        (vec!["--decision", "allow"], vec![1, 2, 3, 4, 7, 8, 9]),
        (vec!["--label", "tool=web-fetch"], vec![7, 8, 9]),
        (vec!["--path-prefix", "/etc/"], vec![5, 6]),
        (vec!["--limit", "2"], vec![1, 2]),
        (vec!["--decision", "deny", "--limit", "3"], vec![5, 6, 10]),
        (vec!["--after-seq", "9"], vec![10, 11]),
        (vec!["--since", &since], vec![7, 8, 9, 10, 11]),
        (vec!["--since", &since, "--until", &until], vec![7, 8, 9]),
        (
            vec!["--since", "1h", "--sandbox", "sb-1", "--decision", "deny"],
            vec![5, 6],
        ),
        (vec!["--sandbox", "nope"], vec![]),
    ];
    let check = |source: &[&str], phase: &str| {
        for (args, want) in &cases {
            let mut full = vec!["audit", "--format", "json"];
            full.extend_from_slice(source);
            full.extend_from_slice(args);
            let (code, out, err) = run_cordon(&full);
            assert_eq!(code, 0, "{phase} {args:?}: {err}");
            assert_eq!(&seqs(&out), want, "{phase} {args:?}");
        }
    };
    let uri = s.uri();
    check(&["--broker", &uri], "broker");
    s.stop();
    let db = s.db.clone();
    check(&["--db", path_str(&db)], "local");
    // An empty value is a mistake, not a filter: the store and a broker
    // answered it differently (nothing, or everything).
    for empty in ["--sandbox=", "--syscall=", "--path-prefix="] {
        let (code, _, err) = run_cordon(&["audit", "--db", path_str(&db), empty]);
        assert_eq!(code, 2, "{empty}: {err}");
        assert!(err.contains("a value is required"), "{empty}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_rebuilds_a_damaged_index_and_filters_find_every_record_again() {
    let (mut s, _) = mixed_store().await;
    s.stop();
    let db = s.db.clone();
    let query = |args: &[&str]| {
        let mut full = vec!["audit", "--db", path_str(&db), "--format", "json"];
        full.extend_from_slice(args);
        let (code, out, err) = run_cordon(&full);
        assert_eq!(code, 0, "{args:?}: {err}");
        seqs(&out)
    };
    assert_eq!(query(&["--decision", "deny"]), vec![5, 6, 10, 11]);
    let removed =
        cordon_broker::audit::tamper::damage_index(&db, b"d").expect("the index is editable");
    assert!(removed > 0);
    // Damaged: a filter that reads the index misses records, and verify says why.
    assert_eq!(query(&["--decision", "deny"]), Vec::<u64>::new());
    verify_fails_naming(&db, "audit index inconsistent at record");
    verify_fails_naming(&db, "the index has");

    let (code, out, err) = run_cordon(&["audit", "reindex", "--db", path_str(&db)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "index rebuilt: 11 records indexed");
    assert_verifies(&db);
    assert_eq!(query(&["--decision", "deny"]), vec![5, 6, 10, 11]);
    assert_eq!(query(&["--sandbox", "sb-2"]), vec![7, 8, 9]);
    assert_eq!(query(&["--sandbox", "no-such-sandbox"]), Vec::<u64>::new());
    // Again, as JSON: the same count, and nothing else changes.
    let (code, out, err) = run_cordon(&[
        "audit",
        "reindex",
        "--db",
        path_str(&db),
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["records_indexed"], 11);
    assert_verifies(&db);

    // A broken chain is evidence: reindex refuses it and leaves it as it is.
    edit_record(&db, 4, |_, body| {
        let text = String::from_utf8(body.clone()).unwrap();
        *body = text
            .replace("/home/agent/job/f3", "/home/agent/job/fX")
            .into_bytes();
        true
    });
    let (code, _, err) = run_cordon(&["audit", "reindex", "--db", path_str(&db)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("chain is broken at record 4"), "{err}");
    verify_fails_naming(&db, "record 4 was altered");

    // A directory that is not a store is not made one.
    let plain = tempfile::tempdir().unwrap();
    let (code, _, err) = run_cordon(&["audit", "reindex", "--db", path_str(plain.path())]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not an audit store"), "{err}");
    assert_eq!(std::fs::read_dir(plain.path()).unwrap().count(), 0);
    // A store another user may not look into is said to be that, not
    // "not a store".
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_cordon"))
        .args(["audit", "--db", path_str(&db)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if nix::unistd::geteuid().is_root() {
        assert!(
            err.contains("cannot examine") && err.contains("Permission denied"),
            "{err}"
        );
    }

    // A store a broker has open is refused, and so is --broker.
    s.spawn();
    let (code, _, err) = run_cordon(&["audit", "reindex", "--db", path_str(&db)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the store is in use"), "{err}");
    let (code, _, err) = run_cordon(&["audit", "reindex", "--broker", &s.uri()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("stop the broker and pass --db"), "{err}");
}

#[test]
fn a_store_in_use_is_named_as_such_and_other_open_errors_are_not() {
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    let (code, _, err) = run_cordon(&["run", "--audit-db", path_str(&s.db), "--", "/bin/true"]);
    assert_eq!(code, 125, "{err}");
    // Named by its pid and command line (/proc/locks), for a writer and a
    // reader alike.
    let pid = s.child.as_ref().unwrap().id();
    assert!(
        err.contains(&format!("another cordon is using it, pid {pid} (")),
        "{err}"
    );
    assert!(err.contains(" serve --listen "), "{err}");
    let (code, _, err) = run_cordon(&["audit", "--db", path_str(&s.db)]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("the store is in use by pid {pid} (")),
        "{err}"
    );
    // A path that is no store (a file): the error, without the lock hint.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a store").unwrap();
    let (code, _, err) = run_cordon(&["run", "--audit-db", path_str(&file), "--", "/bin/true"]);
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("cannot open the audit store"), "{err}");
    assert!(!err.contains("another cordon"), "{err}");
    // The store opens while the tool is forked: one that fails denies the
    // tool's exec, which never runs, and is the only error said.
    let marker = dir.path().join("ran");
    for db in [&s.db, &file] {
        let (code, _, err) = run_cordon(&[
            "run",
            "--audit-db",
            path_str(db),
            "--",
            "/bin/sh",
            "-c",
            &format!("echo > {}", marker.display()),
        ]);
        assert_eq!(code, 125, "{err}");
        assert!(!marker.exists(), "the tool ran without its store");
        // Said once, not once more by an error chain.
        assert_eq!(
            err.matches("cannot open the audit store").count(),
            1,
            "{err}"
        );
        assert_eq!(err.matches("IO error").count(), 1, "{err}");
        assert!(!err.contains("denying"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_csv_output_parse_and_table_is_readable() {
    let (s, all) = mixed_store().await;
    for r in &all {
        for field in [
            "seq",
            "id",
            "time",
            "sandbox_id",
            "labels",
            "pid",
            "exe",
            "syscall",
            "kind",
            "allow",
            "reason",
            "policy_revision",
            "latency_us",
            "prev_hash",
            "hash",
        ] {
            assert!(r.get(field).is_some(), "record lacks {field}: {r}");
        }
    }
    assert_eq!(all[4]["errno"], "EACCES");
    assert_eq!(all[4]["reason"], "writes to /etc are never allowed");
    assert_eq!(all[6]["address"], "10.1.2.3");
    assert_eq!(all[6]["port"], 443);
    assert_eq!(all[9]["argv"], serde_json::json!(["curl", "x"]));

    let (code, out, err) = run_cordon(&["audit", "--broker", &s.uri(), "--format", "csv"]);
    assert_eq!(code, 0, "{err}");
    let mut rdr = csv::Reader::from_reader(out.as_bytes());
    let headers = rdr.headers().unwrap().clone();
    assert_eq!(&headers[0], "seq");
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 11);
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    assert_eq!(&rows[4][col("path")], "/etc/passwd");
    assert_eq!(&rows[4][col("allow")], "false");
    assert_eq!(&rows[4][col("reason")], "writes to /etc are never allowed");
    // The chain can be checked from the CSV alone.
    for (row, record) in rows.iter().zip(&all) {
        assert_eq!(
            &row[col("prev_hash")],
            record["prev_hash"].as_str().unwrap()
        );
        assert_eq!(&row[col("hash")], record["hash"].as_str().unwrap());
    }
    // No record: the header alone.
    let (code, out, err) = run_cordon(&[
        "audit",
        "--broker",
        &s.uri(),
        "--format",
        "csv",
        "--sandbox",
        "no-such-sandbox",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("seq,id,time,"), "{out}");

    let (code, out, _) = run_cordon(&["audit", "--broker", &s.uri()]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().contains("SEQ"));
    assert!(out.contains("/etc/passwd") && out.contains("10.1.2.3:443"));
    // A sandbox id whole, as `--sandbox` takes it (it was cut to 20
    // characters, which matched nothing).
    let long = "01936f7e-5a2b-7c3d-8e4f-0123456789ab";
    let mut req = file_request(40, b"/home/agent/job/long", &["read"]);
    req.sandbox = sandbox(long, "test");
    s.client().await.decide(req).await.unwrap();
    let (code, out, err) = run_cordon(&["audit", "--broker", &s.uri(), "--sandbox", long]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("  {long}  ")),
        "{long} not whole in\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_delivers_records_written_after_it_started() {
    let (s, _) = mixed_store().await;
    let mut child = cordon()
        .args([
            "audit",
            "--broker",
            &s.uri(),
            "--follow",
            "--format",
            "json",
            "--decision",
            "deny",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The existing denials first.
    let old: Vec<u64> = (0..4)
        .map(|_| seqs(&lines.next().unwrap().unwrap())[0])
        .collect();
    assert_eq!(old, vec![5, 6, 10, 11]);
    let mut c = s.client().await;
    c.decide(file_request(100, b"/tmp/ok", &["read"]))
        .await
        .unwrap(); // allowed: filtered out
    c.decide(file_request(101, b"/etc/new-denial", &["write"]))
        .await
        .unwrap();
    let line = lines.next().unwrap().unwrap();
    let r: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (r["seq"].as_u64(), r["path"].as_str()),
        (Some(13), Some("/etc/new-denial"))
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A policy reload does not queue behind audit verifications, each a walk
/// of the whole chain: it has a turn of its own (found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_does_not_wait_behind_verifications() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    decide_reads(&s, 1500).await;
    // Enough walks queued that they cannot all end before the reload is
    // asked for, however fast the build.
    const VERIFIES: usize = 40;
    let done = Arc::new(AtomicUsize::new(0));
    let mut verifies = Vec::new();
    for _ in 0..VERIFIES {
        let mut c = s.client().await;
        let done = done.clone();
        verifies.push(tokio::spawn(async move {
            let r = c.verify_audit(VerifyAuditRequest {}).await.unwrap();
            assert!(r.into_inner().ok);
            done.fetch_add(1, SeqCst);
        }));
    }
    // Let them queue.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut c = s.client().await;
    c.reload_policy(ReloadPolicyRequest {}).await.unwrap();
    let when = done.load(SeqCst);
    for v in verifies {
        v.await.unwrap();
    }
    assert!(
        when < VERIFIES - 5,
        "the reload waited for {when} of {VERIFIES} verifications"
    );
}

/// `n` allowed reads of /tmp/ok decided through `s`.
async fn decide_reads(s: &Serve, n: u64) {
    let mut c = s.client().await;
    for id in 0..n {
        c.decide(file_request(id, b"/tmp/ok", &["read"]))
            .await
            .unwrap();
    }
}

/// `cordon audit --follow --format json` through `s`, its output piped.
fn follow_json(s: &Serve) -> std::process::Child {
    cordon()
        .args([
            "audit",
            "--broker",
            &s.uri(),
            "--follow",
            "--format",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hangup_ends_followers_and_keeps_every_record() {
    let mut s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    let mut follower = follow_json(&s);
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    decide_reads(&s, 20).await;
    // The follower is reading: it has the first record.
    assert!(lines.next().unwrap().unwrap().contains("/tmp/ok"));

    // SIGHUP (a closed terminal) is a shutdown like SIGTERM: the follower's
    // stream ends with a reason instead of holding the broker open.
    let child = s.child.take().unwrap();
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "cordon serve exited with {}",
        out.status
    );
    let out = tokio::task::spawn_blocking(move || follower.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("the broker is shutting down"), "{err}");

    // Every decision is in the store (batched: flushed at the shutdown).
    let (code, stdout, err) = run_cordon(&["audit", "--format", "json", "--db", path_str(&s.db)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout.lines().count(), 20, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_is_shown_only_records_on_disk() {
    // A long window: the records below stay unflushed until the kill.
    let mut s = Serve::start(ALLOW_ALL_BUT_TMP, &["--flush-window", "20s"]);
    let follower = follow_json(&s);
    decide_reads(&s, 3).await;
    // A one-shot query sees them (the store holds them)...
    let (code, out, err) = run_cordon(&["audit", "--broker", &s.uri(), "--format", "json"]);
    assert_eq!((code, out.lines().count()), (0, 3), "{out}{err}");
    std::thread::sleep(Duration::from_millis(500));
    // ...but a crash may lose them (sled has not flushed them), so the
    // follower must not have printed them: after a restart their numbers
    // would go to other records, which it would then skip.
    s.kill9();
    let out = tokio::task::spawn_blocking(move || follower.wait_with_output().unwrap())
        .await
        .unwrap();
    // Whatever it showed survived the crash. (Usually nothing: the window
    // is long. But the query above stored the queued records, and a flusher
    // that had not yet started its wait then flushes them at once, as it
    // does for records another drain stored: on a busy machine they may
    // be on disk, and shown, before the kill.)
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, stored, err) = run_cordon(&["audit", "--db", path_str(&s.db), "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let hashes = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["hash"].to_string())
            .collect()
    };
    let stored = hashes(&stored);
    for hash in hashes(&shown) {
        assert!(
            stored.contains(&hash),
            "shown before on disk: {shown}\nstored after the crash: {stored:?}"
        );
    }
    // It was following until the broker died, not refused at the start.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("refused"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_until_a_time_waits_for_the_records_from_before_it_to_reach_disk() {
    // Flushed about a second after the first append.
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &["--flush-window", "2s"]);
    decide_reads(&s, 3).await;
    let (code, out, err) = run_cordon(&["audit", "--broker", &s.uri(), "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let until = last["time"].as_str().unwrap().to_owned();
    // The clock is past `until`, but the records are not on disk yet: the
    // follow waits for them rather than end without them.
    let (code, out, err) = follow_until(&s.uri(), &until);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    // An `until` still ahead, on a broker with nothing more to record: the
    // follow ends when the clock passes it, not never.
    let soon = humantime::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(2));
    let (code, out, err) = follow_until(&s.uri(), &soon.to_string());
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
}

/// `cordon audit --follow --until UNTIL` through the broker at `uri`, as
/// JSON lines; it must end by itself (`run_cordon_ending`).
fn follow_until(uri: &str, until: &str) -> (i32, String, String) {
    run_cordon_ending(&[
        "audit", "--broker", uri, "--follow", "--format", "json", "--until", until,
    ])
}

/// `run_cordon` for a command that must end by itself: killed, and the test
/// failed, if it still runs after 20 s.
fn run_cordon_ending(args: &[&str]) -> (i32, String, String) {
    let mut child = cordon()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cordon {args:?} still runs after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_point_past_the_store_and_a_follow_past_until_end_the_query() {
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    decide_reads(&s, 3).await;
    let uri = s.uri();
    // Records 4 and 5 were seen, then lost in a crash: following on from
    // there would skip the next two, so the broker says so.
    let (code, out, err) =
        run_cordon_ending(&["audit", "--broker", &uri, "--after-seq", "5", "--follow"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("resume point 5 is past the newest record, 3"),
        "{err}"
    );
    let (code, out, err) = run_cordon(&["audit", "--broker", &uri, "--after-seq", "3"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let (code, out, err) = run_cordon(&[
        "audit",
        "--broker",
        &uri,
        "--after-seq",
        "2",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    // Nothing newer can be before `until`: the follow ends after the scan.
    let (code, out, err) = follow_until(&uri, "2000-01-01T00:00:00Z");
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let (code, _, err) = run_cordon(&["audit", "--broker", &uri, "--limit", "0"]);
    assert_eq!(code, 2, "{err}");
}

/// The same from a store read directly (`--db`): it answered a resume point
/// past its records with nothing, as if none had been written since.
#[test]
fn a_resume_point_past_a_local_store_is_an_error_too() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit");
    let (code, _, err) = run_cordon(&["run", "--audit-db", path_str(&db), "--", "/bin/true"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run_cordon(&["audit", "--db", path_str(&db), "--after-seq", "1000"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("resume point 1000 is past the newest record"),
        "{err}"
    );
    let (code, out, err) = run_cordon(&["audit", "--db", path_str(&db), "--after-seq", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty(), "{err}");
}

/// `cordon audit | head -c1` ends quietly (exit 0) when the reader leaves,
/// also while the JSON or CSV encoder is writing a record larger than the
/// output buffer (the broken pipe then came wrapped, and was an error).
#[test]
fn a_reader_that_leaves_early_is_not_an_error() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit");
    // Twenty execs of 20 KB of arguments each: records far past 8 KiB.
    let arg = "x".repeat(200);
    let args = vec![arg.as_str(); 100].join(" ");
    let (code, _, err) = run_cordon(&[
        "run",
        "--audit-db",
        path_str(&db),
        "--",
        "/bin/sh",
        "-c",
        &format!("for i in $(seq 20); do /bin/true {args}; done"),
    ]);
    assert_eq!(code, 0, "{err}");
    for format in ["json", "csv"] {
        let mut audit = support::cordon()
            .args(["audit", "--db", path_str(&db), "--format", format])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 1];
        audit.stdout.take().unwrap().read_exact(&mut first).unwrap();
        // The pipe's read end is closed here.
        let out = audit.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{format}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn follow_without_broker_is_a_usage_error() {
    let (code, _, err) = run_cordon(&["audit", "--db", "/nonexistent", "--follow"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--follow needs --broker"), "{err}");
    let (code, _, err) = run_cordon(&["audit", "--db", "/nonexistent/db"]);
    assert_eq!(code, 2);
    assert!(err.contains("no audit store at /nonexistent/db"), "{err}");
    let (code, _, err) = run_cordon(&["audit", "--since", "yesterday-ish", "--db", "/tmp"]);
    assert_eq!(code, 2, "{err}");
    // A directory that is not a store (--db ~ by mistake) is not made one.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = run_cordon(&["audit", "verify", "--db", path_str(empty.path())]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not an audit store"), "{err}");
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
    // Nor is a file.
    let file = empty.path().join("afile");
    std::fs::write(&file, "").unwrap();
    let (code, _, err) = run_cordon(&["audit", "--db", path_str(&file)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not an audit store"), "{err}");
    // Past 2262 a time does not fit a record's nanoseconds: an error, not a
    // wrapped (negative) bound that silently matched nothing or everything
    // (asked of a real store, which would answer such a bound).
    let store = tempfile::tempdir().unwrap();
    let db = store.path().join("audit");
    let db = path_str(&db);
    let (code, out, err) = run_cordon(&["run", "--audit-db", db, "--", "/bin/true"]);
    assert_eq!(code, 0, "{out}{err}");
    for flag in ["--since", "--until"] {
        let (code, _, err) = run_cordon(&["audit", flag, "2300-01-01T00:00:00Z", "--db", db]);
        assert_eq!(code, 2, "{flag}: {err}");
        assert!(err.contains("1970 to 2262"), "{flag}: {err}");
    }
}

/// CSV cells that cannot be misread: labels as a JSON object (a value may
/// hold `,` and `=`), and the exit status of a sandbox's exit record.
#[test]
fn csv_labels_are_json_and_exit_records_carry_their_status() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit");
    let db = db.to_str().unwrap();
    let (code, out, err) = run_cordon(&[
        "run",
        "--audit-db",
        db,
        "--label",
        "team=a,b=c",
        "--label",
        "x=y",
        "--",
        "/bin/sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(code, 3, "{out}{err}");
    let (code, out, err) = run_cordon(&["audit", "--db", db, "--format", "csv"]);
    assert_eq!(code, 0, "{err}");
    let mut rdr = csv::Reader::from_reader(out.as_bytes());
    let headers = rdr.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    let exit = rows
        .iter()
        .find(|r| &r[col("event")] == "sandbox_exited")
        .expect("an exit record");
    assert_eq!(&exit[col("exit_status")], "3");
    for row in &rows {
        let labels: serde_json::Value = serde_json::from_str(&row[col("labels")]).unwrap();
        assert_eq!(labels, serde_json::json!({"team": "a,b=c", "x": "y"}));
    }
}

/// `cordon run` makes its store, and the directories it makes above it,
/// readable by their owner alone: the records hold every sandbox's paths,
/// argv and labels (sled makes its files 0644 under the usual umask).
#[test]
fn the_directories_cordon_makes_for_its_store_are_its_owners_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state/cordon/audit");
    let (code, out, err) = run_cordon(&["run", "--audit-db", path_str(&db), "--", "/bin/true"]);
    assert_eq!(code, 0, "{out}{err}");
    for made in [
        dir.path().join("state"),
        dir.path().join("state/cordon"),
        db,
    ] {
        let mode = std::fs::metadata(&made).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", made.display());
    }
}

/// A store whose sled log is damaged where sled notices (here, a byte of
/// the log an existing snapshot covers) fails `verify` as a verify does:
/// exit 1, `ok: false` in JSON, naming no record. It was an error, exit 2
/// (bad usage), with the cause said twice and no JSON (found by review).
#[test]
fn a_store_sled_cannot_read_fails_verify() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit");
    // Three runs: the later opens write sled's snapshot.
    for _ in 0..3 {
        let (code, _, err) = run_cordon(&["run", "--audit-db", path_str(&db), "--", "/bin/true"]);
        assert_eq!(code, 0, "{err}");
    }
    let log = db.join("db");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&log, bytes).unwrap();
    let (code, out, err) =
        run_cordon(&["audit", "verify", "--db", path_str(&db), "--format", "json"]);
    assert_eq!(code, 1, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], false, "{out}");
    assert!(
        report["problem"]
            .as_str()
            .unwrap()
            .contains("the store cannot be read"),
        "{out}"
    );
    let (code, _, err) = run_cordon(&["audit", "verify", "--db", path_str(&db)]);
    assert_eq!(code, 1, "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("cordon: "))
        .unwrap_or_default();
    assert!(line.starts_with("cordon: audit store damaged: "), "{err}");
    // Each cause once.
    assert_eq!(line.matches("Read corrupted data").count(), 1, "{err}");
}

/// A store directory another user owns is refused, not written: its owner
/// could read and rewrite every record (it was used as given, found by
/// review). Needs root, to make a directory that is nobody's.
#[test]
fn a_store_directory_another_user_owns_is_refused() {
    if support::lacks_root("needs root to chown") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let (code, _, err) = run_cordon(&["run", "--audit-db", path_str(&theirs), "--", "/bin/true"]);
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains("owned by uid 65534, not by this user"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0, "written");
}

/// A store directory others may write, or holding a file of another user's,
/// is refused by writers: whoever could write there could replace the files
/// and every record with them (it was accepted with a warning about reading;
/// found by review). Readers (verify) still open it.
#[test]
fn a_store_others_could_rewrite_is_refused_by_writers() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit");
    let (code, _, err) = run_cordon(&["run", "--audit-db", path_str(&db), "--", "/bin/true"]);
    assert_eq!(code, 0, "{err}");
    for mode in [0o770, 0o777, 0o1777, 0o720] {
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(mode)).unwrap();
        let (code, _, err) = run_cordon(&["run", "--audit-db", path_str(&db), "--", "/bin/true"]);
        assert_eq!(code, 125, "{mode:o}: {err}");
        assert!(
            err.contains("writable by its group or by everyone"),
            "{err}"
        );
        let (code, _, err) = run_cordon(&["audit", "verify", "--db", path_str(&db)]);
        assert_eq!(code, 0, "{mode:o}: {err}");
    }
    // Readable by others: a warning, not a refusal.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, _, err) = run_cordon(&["run", "--audit-db", path_str(&db), "--", "/bin/true"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("open to its group or to everyone"), "{err}");
    if support::lacks_root("needs root to chown, for the rest") {
        return;
    }
    std::os::unix::fs::chown(db.join("conf"), Some(65534), Some(65534)).unwrap();
    let (code, _, err) = run_cordon(&["run", "--audit-db", path_str(&db), "--", "/bin/true"]);
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("conf is owned by uid 65534"), "{err}");
    // A user's store with a file of root's in it (sled's recovery leaves a
    // snapshot behind when root reads it) stays the user's to write: root
    // could rewrite it anyway (found by review).
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    let as_nobody = |db: &std::path::Path| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_cordon"))
            .args(["run", "--audit-db"])
            .arg(db)
            .args(["--", "/bin/true"])
            .output()
            .unwrap()
    };
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody_db = theirs.join("audit");
    let out = as_nobody(&nobody_db);
    assert!(out.status.success(), "{out:?}");
    std::fs::write(nobody_db.join("left-by-root"), "").unwrap();
    let out = as_nobody(&nobody_db);
    assert!(out.status.success(), "{out:?}");
}

/// A store the auditor may only read (evidence handed over, a read-only
/// mount) cannot be opened by sled, which writes even to read: the refusal
/// says so and how to examine a copy (it said only "Permission denied").
#[test]
fn a_store_the_auditor_may_only_read_is_refused_saying_to_copy_it() {
    use std::os::unix::fs::PermissionsExt;
    if support::lacks_root("needs root to run the auditor as nobody") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.path().join("audit");
    let (code, _, err) = run_cordon(&["run", "--audit-db", path_str(&db), "--", "/bin/true"]);
    assert_eq!(code, 0, "{err}");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o755)).unwrap();
    for args in [&["audit", "--db"][..], &["audit", "verify", "--db"]] {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_cordon"))
            .args(args)
            .arg(&db)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {err}");
        assert!(err.contains("examine a copy (cp -a"), "{err}");
    }
}

/// One flipped byte early in sled's log: sled's recovery takes it for a
/// torn tail and drops every record after it, its own `head` record too,
/// and the store read as empty and intact (found by review: "ok: 0
/// records"). The head file kept outside sled names what was there: verify
/// names the missing records, and no writer numbers new ones over them.
#[test]
fn records_sled_drops_while_recovering_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit");
    let (code, _, err) = run_cordon(&["run", "--audit-db", path_str(&db), "--", "/bin/true"]);
    assert_eq!(code, 0, "{err}");
    let log = db.join("db");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&log, bytes).unwrap();
    let (code, out, err) = run_cordon(&["audit", "verify", "--db", path_str(&db)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("are missing: the head file (cordon-head) names record"),
        "{err}"
    );
    // A query goes on with what is left, and says what is missing.
    let (code, _, err) = run_cordon(&["audit", "--db", path_str(&db)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("of this audit store are missing: its head file names record"),
        "{err}"
    );
    let (code, _, err) = run_cordon(&["run", "--audit-db", path_str(&db), "--", "/bin/true"]);
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("were lost"), "{err}");
}
