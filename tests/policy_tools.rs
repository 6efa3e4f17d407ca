//! The policy author's tools, end to end with real processes: `cordon policy
//! test`, permissive mode (`cordon run --permissive`, `cordon serve
//! --permissive-label`), `cordon policy replay` over a recorded run, and the
//! `cordon learn` round trip.

mod support;

use std::path::Path;

use support::*;

/// `cordon run` in `dir` with its own audit store; returns (code, stdout, stderr).
/// `cordon learn --output OUTPUT -- COMMAND…` run in `dir`.
fn learn_in(dir: &Path, output: &Path, command: &[&str]) -> std::process::Output {
    cordon()
        .current_dir(dir)
        .args(["learn", "--output", path_str(output), "--"])
        .args(command)
        .output()
        .unwrap()
}

fn run_in(dir: &Path, db: &Path, extra: &[&str], script: &str) -> (i32, String, String) {
    let out = cordon()
        .current_dir(dir)
        .args(["run", "--audit-db", path_str(db)])
        .args(support::PATIENT_EVAL)
        .args(extra)
        .args(["--", "/bin/sh", "-c", script])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn audit_json(db: &Path) -> Vec<serde_json::Value> {
    audit_query(&["--db", path_str(db)])
}

/// `cordon audit --format json` with `args` (a source and filters), parsed.
fn audit_query(args: &[&str]) -> Vec<serde_json::Value> {
    let mut full = vec!["audit", "--format", "json"];
    full.extend_from_slice(args);
    let (code, out, err) = run_cordon(&full);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn policy_test_runs_the_shipped_tests_and_reports_failures_with_their_inputs() {
    let (code, out, err) = run_cordon(&["policy", "test", "policies/"]);
    assert_eq!(code, 0, "{out}{err}");
    let pass = out.lines().find(|l| l.starts_with("PASS: ")).unwrap();
    let (passed, total) = pass["PASS: ".len()..].split_once('/').unwrap();
    assert_eq!(passed, total, "{out}");
    assert!(passed.parse::<u32>().unwrap() >= 30, "{out}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        "package cordon\n\nimport rego.v1\n\nallow if input.kind == \"exec\"\n\nallow if {\n\tinput.kind == \"network\"\n\tinput.network.port == 1\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p_test.rego"),
        "package cordon_test\n\nimport rego.v1\n\nfile(p) := {\"kind\": \"file\", \"file\": {\"path\": p}}\n\ntest_exec if data.cordon.allow with input as {\"kind\": \"exec\"}\n\ntest_file_wrongly_expected if data.cordon.allow with input as file(\"/etc/hosts\")\n\ntest_error if conflict == 1\n\nconflict := 1 if true\n\nconflict := 2 if true\n",
    )
    .unwrap();
    let d = path_str(dir.path());
    let (code, out, _) = run_cordon(&["policy", "test", "-v", "--coverage", d]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("data.cordon_test.test_exec:7: PASS"), "{out}");
    assert!(
        out.contains("data.cordon_test.test_file_wrongly_expected:9: FAIL"),
        "{out}"
    );
    // The failing test's input, evaluated from the helper call.
    assert!(
        out.contains(r#"input: {"file":{"path":"/etc/hosts"},"kind":"file"}"#),
        "{out}"
    );
    assert!(
        out.contains("data.cordon_test.test_error:11: ERROR"),
        "{out}"
    );
    assert!(
        out.contains("PASS: 1/3") && out.contains("FAIL: 1/3") && out.contains("ERROR: 1/3"),
        "{out}"
    );
    // The second allow never got past its first condition.
    assert!(
        out.contains(&format!("{d}/p.rego:7: allow not fully covered (lines 9)")),
        "{out}"
    );

    let (code, out, _) = run_cordon(&[
        "policy",
        "test",
        "--format",
        "json",
        "--run",
        "test_exec",
        d,
    ]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["tests"].as_array().unwrap().len(), 1);
    assert_eq!(report["tests"][0]["outcome"], "pass");

    // No tests at all is a failure, not a silent pass.
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("p.rego"), "package cordon\n").unwrap();
    let (code, _, err) = run_cordon(&["policy", "test", path_str(empty.path())]);
    assert_eq!(code, 1);
    assert!(err.contains("no test_ rules found"), "{err}");
    // Nor is a --run that selects none, which says so.
    std::fs::write(
        empty.path().join("p_test.rego"),
        "package cordon\ntest_a := true\n",
    )
    .unwrap();
    let (code, _, err) =
        run_cordon(&["policy", "test", "--run", "nomatch", path_str(empty.path())]);
    assert_eq!(code, 1);
    assert!(err.contains("has `nomatch` in its name (--run)"), "{err}");
    let (code, out, _) = run_cordon(&["policy", "test", "--run", "test_a", path_str(empty.path())]);
    assert_eq!(code, 0, "the test --run selects: {out}");

    // A path that is not there is an error (2), not a failed test or check.
    let missing = empty.path().join("missing");
    for verb in ["test", "check"] {
        let (code, _, err) = run_cordon(&["policy", verb, path_str(&missing)]);
        assert_eq!(code, 2, "{verb}: {err}");
        assert!(err.contains("does not exist"), "{verb}: {err}");
    }
}

#[test]
fn permissive_run_allows_and_records_what_would_be_denied() {
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("audit");
    std::fs::write(work.path().join(".env"), "TOKEN=1\n").unwrap();
    // Enforced: the default policy denies .env files.
    let (code, _, err) = run_in(work.path(), &db, &[], "cat .env");
    assert_ne!(code, 0, "{err}");
    // Permissive: allowed, and recorded as would_deny with the policy's reason.
    let (code, out, err) = run_in(work.path(), &db, &["--permissive"], "cat .env");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "TOKEN=1\n");
    assert!(err.contains("permissive mode"), "{err}");
    let records = audit_json(&db);
    let env = format!("{}/.env", work.path().canonicalize().unwrap().display());
    let for_env: Vec<_> = records
        .iter()
        .filter(|r| r["path"] == env.as_str())
        .collect();
    assert_eq!(for_env.len(), 2, "{records:?}");
    assert_eq!(for_env[0]["allow"], false);
    assert!(for_env[0].get("would_deny").is_none());
    assert_eq!(for_env[1]["allow"], true);
    assert_eq!(for_env[1]["would_deny"], true);
    assert_eq!(for_env[1]["reason"], format!("{env} is a .env file"));
    assert_eq!(for_env[1]["errno"], "EACCES");
    // The input the policy saw is in the record.
    assert_eq!(for_env[1]["input"]["file"]["path"], env.as_str());
    // `--decision would-deny` selects exactly what permissive mode let through.
    let would = audit_query(&["--db", path_str(&db), "--decision", "would-deny"]);
    assert_eq!(would.len(), 1, "{would:?}");
    assert_eq!(would[0]["seq"], for_env[1]["seq"]);
    let (code, _, _) = run_cordon(&["audit", "verify", "--db", path_str(&db)]);
    assert_eq!(code, 0);
    // Nothing is enforced: not the policy, not its kernel backstop (the
    // default's allows exec only of system programs).
    let script = work.path().join("hello.sh");
    std::fs::write(&script, "#!/bin/sh\necho hello from the workdir\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (code, _, _) = run_in(work.path(), &db, &[], "./hello.sh");
    assert_eq!(code, 126);
    let (code, out, err) = run_in(work.path(), &db, &["--permissive"], "./hello.sh");
    assert_eq!(
        (code, out.as_str()),
        (0, "hello from the workdir\n"),
        "{err}"
    );
    // --permissive cannot be asked of a shared broker.
    let (code, _, err) = run_cordon(&[
        "run",
        "--permissive",
        "--broker",
        "unix:///nonexistent",
        "--",
        "true",
    ]);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_is_permissive_only_for_the_labels_it_names() {
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &["--permissive-label", "tool=new-tool"]);
    let mut enforced = exec_request(1, "/usr/bin/git", &["git"]);
    enforced.sandbox = sandbox("sb-1", "old-tool");
    let mut trial = exec_request(2, "/usr/bin/git", &["git"]);
    trial.sandbox = sandbox("sb-2", "new-tool");
    let mut c = s.client().await;
    let d = c
        .decide(enforced)
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert!(!d.allow);
    let d = c
        .decide(trial)
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert!(d.allow);
    assert_eq!(
        d.reason,
        "permissive: the policy would deny: no rule allowed (default deny)"
    );
    let records = audit_query(&["--broker", &s.uri()]);
    let would: Vec<_> = records.iter().filter(|r| r["would_deny"] == true).collect();
    assert_eq!(would.len(), 1, "{records:?}");
    assert_eq!(would[0]["sandbox_id"], "sb-2");
    // The same selection, asked of the broker.
    let selected = audit_query(&["--broker", &s.uri(), "--decision", "would-deny"]);
    assert_eq!(selected.len(), 1, "{selected:?}");
    assert_eq!(selected[0]["seq"], would[0]["seq"]);
}

#[test]
fn replay_reports_exactly_the_decisions_a_policy_change_flips() {
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("audit");
    for f in ["a.txt", "b.txt"] {
        std::fs::write(work.path().join(f), f).unwrap();
    }
    // Recorded under the default policy: a.txt and b.txt read (allowed, with
    // the system files sh and cat need), /etc/shadow denied.
    let (code, out, err) = run_in(
        work.path(),
        &db,
        &[],
        "cat a.txt b.txt; cat /etc/shadow 2>/dev/null; echo done",
    );
    assert_eq!((code, out.as_str()), (0, "a.txtb.txtdone\n"), "{err}");

    // The new policy: the default, plus b.txt off limits, and /etc/shadow let through.
    let new = tempfile::tempdir().unwrap();
    let default = std::fs::read_to_string("policies/default.rego").unwrap();
    let changed = default.replace("\"/etc/shadow\", ", "")
        + "\ndeny contains \"b.txt is off limits\" if endswith(input.file.path, \"/b.txt\")\n\nbuiltin_allow if input.file.path == \"/etc/shadow\"\n";
    assert_ne!(changed, default);
    std::fs::write(new.path().join("p.rego"), changed).unwrap();

    let (code, out, err) = run_cordon(&[
        "policy",
        "replay",
        "--audit-db",
        path_str(&db),
        "--policy",
        path_str(new.path()),
        "--format",
        "json",
    ]);
    assert_eq!(code, 1, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let b = format!("{}/b.txt", work.path().canonicalize().unwrap().display());
    let changes = report["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{out}");
    assert_eq!(changes[0]["direction"], "allow->deny");
    assert_eq!(changes[0]["subject"], b.as_str());
    assert_eq!(changes[0]["count"], 1);
    assert_eq!(changes[0]["new_reason"], "b.txt is off limits");
    assert_eq!(changes[1]["direction"], "deny->allow");
    assert_eq!(changes[1]["subject"], "/etc/shadow");
    assert_eq!(report["allow_to_deny"], 1);
    assert_eq!(report["deny_to_allow"], 1);
    let decisions = report["decisions"].as_u64().unwrap();
    assert_eq!(report["replayed"].as_u64().unwrap(), decisions);
    assert_eq!(report["unchanged"].as_u64().unwrap(), decisions - 2);
    let b_seq = changes[0]["first_seq"].as_u64().unwrap();

    // A policy slow on b.txt alone (~1 s in a debug build, a rule that
    // never holds) changes no decision, and names b.txt's record as its
    // slowest evaluation: a broker's 50 ms would deny it.
    let slow = tempfile::tempdir().unwrap();
    std::fs::write(
        slow.path().join("p.rego"),
        default.clone()
            + "\ndeny contains \"never\" if {\n\tendswith(input.file.path, \"/b.txt\")\n\t\
               count([x | some x in numbers.range(1, 300000); x < 0]) > 0\n}\n",
    )
    .unwrap();
    let replay_slow = |format: &str| {
        run_cordon(&[
            "policy",
            "replay",
            "--audit-db",
            path_str(&db),
            "--policy",
            path_str(slow.path()),
            "--format",
            format,
        ])
    };
    let (code, out, err) = replay_slow("json");
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["slowest_eval_seq"].as_u64(), Some(b_seq), "{out}");
    assert!(report["slowest_eval_us"].as_u64().unwrap() > 0, "{out}");
    let (_, out, _) = replay_slow("table");
    assert!(
        out.contains(&format!(
            "(record {b_seq}); a broker whose --eval-timeout is shorter"
        )),
        "{out}"
    );

    // The unchanged policy changes nothing: exit 0.
    let (code, out, err) = run_cordon(&[
        "policy",
        "replay",
        "--audit-db",
        path_str(&db),
        "--policy",
        "policies/default.rego",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 allow->deny, 0 deny->allow"), "{out}");

    // A filter that matches nothing compared nothing: an error, not a pass
    // (a gate on a mistyped --sandbox passed; found by review).
    let (code, out, err) = run_cordon(&[
        "policy",
        "replay",
        "--audit-db",
        path_str(&db),
        "--policy",
        path_str(new.path()),
        "--sandbox",
        "no-such-sandbox",
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("no recorded decision matched"), "{err}");

    // An error is not a negative answer: 2, not 1.
    let (code, _, err) = run_cordon(&[
        "policy",
        "replay",
        "--audit-db",
        path_str(&work.path().join("no-store")),
        "--policy",
        path_str(new.path()),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no audit store at"), "{err}");
}

#[test]
fn a_learned_directory_grant_never_covers_a_credential_store_below_it() {
    // Learned in a directory that holds a .ssh (as a home directory does):
    // the tool's three writes make the whole working directory a grant. Its
    // own path passes through a "private" directory, which must not refuse
    // the grant itself.
    let top = tempfile::tempdir().unwrap();
    let work = top.path().join("private/job");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir(work.as_path().join(".ssh")).unwrap();
    std::fs::write(work.as_path().join(".ssh/id_ed25519"), "KEY\n").unwrap();
    std::fs::write(work.as_path().join(".netrc"), "machine x password y\n").unwrap();
    std::fs::write(work.as_path().join("notes"), "n\n").unwrap();
    let learned = work.as_path().join("learned");
    let out = learn_in(
        work.as_path(),
        &learned,
        &["/bin/sh", "-c", "echo a > a; echo b > b; echo c > c"],
    );
    assert_ok(&out);
    let data = std::fs::read_to_string(learned.join("data.json")).unwrap();
    assert!(
        data.contains("\"$WORKDIR/\""),
        "the workdir is granted whole: {data}"
    );
    let db = work.as_path().join("audit");
    let policy = ["--policy", path_str(&learned)];
    // Another file of the directory: granted by the directory rule.
    // (The shell's own redirections: only /bin/sh was learned as a program.)
    let (code, out, err) = run_in(
        work.as_path(),
        &db,
        &policy,
        "echo d > d && read l < notes && echo $l",
    );
    assert_eq!((code, out.as_str()), (0, "n\n"), "{err}");
    // The key next to it: not.
    let (code, out, err) = run_in(
        work.as_path(),
        &db,
        &policy,
        "read l < .ssh/id_ed25519 && echo $l",
    );
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("Permission denied"), "{err}");
    // Nor a credential file.
    let (code, out, err) = run_in(work.as_path(), &db, &policy, "read l < .netrc && echo $l");
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("Permission denied"), "{err}");
}

/// A learned `$WORKDIR/` grant stands for nothing in a sandbox without a
/// working directory (it stood for "/": every path), and never covers a
/// top-level or home directory, whichever directory the run is in.
#[test]
fn a_learned_directory_grant_is_never_everything_or_a_home() {
    let work = tempfile::tempdir().unwrap();
    let learned = work.path().join("learned");
    let out = learn_in(
        work.path(),
        &learned,
        &["/bin/sh", "-c", "echo a > a; echo b > b; echo c > c"],
    );
    assert_ok(&out);
    let data = std::fs::read_to_string(learned.join("data.json")).unwrap();
    assert!(data.contains("\"$WORKDIR/\""), "{data}");
    let decide = |workdir: &str, path: &str, access: &str| {
        let input = work.path().join("input.json");
        std::fs::write(
            &input,
            serde_json::json!({
                "sandbox": {"id": "s", "labels": {}, "workdir": workdir, "tmpdir": ""},
                "process": {"pid": 7, "ppid": 1, "uid": 1000, "gid": 1000, "exe": "/bin/sh", "cwd": "/", "comm": "sh"},
                "syscall": "openat", "kind": "file",
                "file": {"path": path, "access": [access], "create": false, "truncate": false, "flags": []},
            })
            .to_string(),
        )
        .unwrap();
        let (code, out, err) = run_cordon(&[
            "policy",
            "eval",
            "--policy",
            path_str(&learned),
            "--input",
            path_str(&input),
        ]);
        assert!(code == 0 || code == 1, "{out}{err}");
        code == 0
    };
    // The grant itself works where the run was.
    let here = work.path().to_str().unwrap();
    assert!(decide(here, &format!("{here}/d"), "write"));
    // No working directory: nothing, not everything.
    assert!(!decide("", "/etc/passwd", "write"));
    // Run again from /etc, or from a home directory: not the whole of it.
    assert!(!decide("/etc", "/etc/shadow", "read"));
    assert!(!decide("/home/alice", "/home/alice/.bashrc", "write"));
    assert!(!decide("/root", "/root/notes", "write"));
    assert!(decide("/home/alice/job", "/home/alice/job/x", "write"));
}

/// A learning run is permissive and the output directory exists while the
/// tool runs: a `.rego` file the tool leaves there would be loaded with the
/// learned policy, unseen by whoever reviews the files cordon writes. Such a
/// run writes nothing and says why.
#[test]
fn learn_refuses_an_output_directory_the_tool_wrote_into() {
    let work = tempfile::tempdir().unwrap();
    let learned = work.path().join("learned");
    let script = "printf 'package cordon\\nallow := true\\n' > learned/zz.rego";
    let out = learn_in(work.path(), &learned, &["/bin/sh", "-c", script]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("gained \"zz.rego\" while the tool ran"),
        "{err}"
    );
    assert!(!learned.join("policy.rego").exists(), "{err}");
    // A store inside the output would be such a file: refused before the run.
    let out = cordon()
        .current_dir(work.path())
        .args([
            "learn",
            "--output",
            "fresh",
            "--audit-db",
            "fresh/audit",
            "--",
            "/bin/true",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is inside --output"), "{err}");
    assert!(!work.path().join("fresh").exists(), "{err}");
}

/// A policy learned with a label (`--label tool=fetch`) is for sandboxes
/// with that label alone: loaded where other tools run, what this one did
/// grants them nothing (its allows applied to every sandbox).
#[test]
fn a_policy_learned_with_a_label_allows_that_tool_alone() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("in.txt"), "data\n").unwrap();
    let learned = work.path().join("learned");
    let out = cordon()
        .current_dir(work.path())
        .args([
            "learn",
            "--label",
            "tool=fetch",
            "--output",
            path_str(&learned),
        ])
        .args(["--", "/bin/cat", "in.txt"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, out, err) = run_cordon(&["policy", "test", path_str(&learned)]);
    assert_eq!(code, 0, "{out}{err}");
    let db = work.path().join("audit");
    let run = |labels: &[&str]| {
        let out = cordon()
            .current_dir(work.path())
            .args([
                "run",
                "--audit-db",
                path_str(&db),
                "--policy",
                path_str(&learned),
            ])
            .args(PATIENT_EVAL)
            .args(labels)
            .args(["--", "/bin/cat", "in.txt"])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["--label", "tool=fetch"]);
    assert_eq!((code, out.as_str()), (0, "data\n"), "{err}");
    // Another tool, or none: not even the exec is allowed.
    for labels in [&["--label", "tool=other"][..], &[]] {
        let (code, out, err) = run(labels);
        assert_eq!(code, 126, "{labels:?}: {out}{err}");
    }
}

#[test]
fn learn_writes_a_policy_that_lets_the_tool_run_again_and_nothing_else() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("in.txt"), "data\n").unwrap();
    // A "$" in a real name is that name, not a placeholder.
    std::fs::write(work.path().join("rv$PID.txt"), "").unwrap();
    let learned = work.path().join("learned");
    // A program run from the private temp dir, which is new on every run.
    // Listing the working and temp directories themselves (once dropped).
    let script = "cat in.txt > out.txt; cat /etc/hostname 'rv$PID.txt' >/dev/null; \
                  ls . \"$TMPDIR\" >/dev/null && \
                  cp /bin/true \"$TMPDIR/t\" && \"$TMPDIR/t\" && wc -l < out.txt";
    let out = learn_in(work.path(), &learned, &["/bin/sh", "-c", script]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    for f in ["policy.rego", "data.json", "policy_test.rego"] {
        assert!(learned.join(f).is_file(), "{f} missing: {err}");
    }
    // Its tests replay the observed calls, and pass.
    let (code, out, err) = run_cordon(&["policy", "test", path_str(&learned)]);
    assert_eq!(code, 0, "{out}{err}");

    // The same tool again, in a fresh sandbox (new temp dir, new pids): allowed.
    std::fs::remove_file(work.path().join("out.txt")).unwrap();
    let db = work.path().join("audit");
    let policy = ["--policy", path_str(&learned)];
    let (code, out, err) = run_in(work.path(), &db, &policy, script);
    assert_eq!((code, out.as_str()), (0, "1\n"), "{err}");
    let denied = audit_json(&db)
        .into_iter()
        .filter(|r| r["event"] == "decision" && r["allow"] == false)
        .count();
    assert_eq!(denied, 0);

    // Another tool under the learned policy: what it did not learn is denied.
    let (code, _, err) = run_in(work.path(), &db, &policy, "cat /etc/passwd");
    assert_ne!(code, 0);
    assert!(err.contains("Permission denied"), "{err}");
    let (code, _, _) = run_in(work.path(), &db, &policy, "echo x > other.txt");
    assert_ne!(code, 0);
    let (code, _, _) = run_in(work.path(), &db, &policy, "head -1 in.txt");
    assert_eq!(code, 126, "exec of head was never learned");

    // A command that does not exist: 127, as for cordon run, and nothing written.
    let out = learn_in(
        work.path(),
        Path::new("never-written"),
        &["/nonexistent/tool"],
    );
    assert_eq!(out.status.code(), Some(127));
    assert!(!work.path().join("never-written").exists());
    // Nor the parents made for it.
    let out = learn_in(work.path(), Path::new("a/b/c"), &["/nonexistent/tool"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(!work.path().join("a").exists());
    // A link the tool leaves in the output directory is not followed.
    let elsewhere = work.path().join("elsewhere.rego");
    let plant = format!("ln -s {} linked/policy.rego", elsewhere.display());
    let out = learn_in(work.path(), Path::new("linked"), &["/bin/sh", "-c", &plant]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("gained \"policy.rego\""), "{err}");
    assert!(!elsewhere.exists(), "cordon wrote through the tool's link");
    // Nor a link put in the place of the output directory itself.
    let target = work.path().join("target-dir");
    std::fs::create_dir(&target).unwrap();
    let swap = format!("rmdir swapped && ln -s {} swapped", target.display());
    let out = learn_in(work.path(), Path::new("swapped"), &["/bin/sh", "-c", &swap]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("was replaced while the tool ran"), "{err}");
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "cordon wrote through it"
    );

    // An --output that is a link to a directory is that directory (it used
    // to be taken for one the tool replaced).
    let real = work.path().join("real-dir");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, work.path().join("via-link")).unwrap();
    let out = learn_in(work.path(), Path::new("via-link"), &["/bin/true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(real.join("policy.rego").exists(), "{err}");

    // A non-empty output directory is refused.
    let out = learn_in(work.path(), &learned, &["true"]);
    assert_eq!(out.status.code(), Some(2));

    // An output that cannot be a directory is refused before the tool runs
    // (it used to run, and what it did was lost): a file is bad usage (2),
    // a directory that cannot be made is cordon's failure (125).
    let ran = work.path().join("ran");
    let touch = ["/bin/sh", "-c", "echo ran > ran"];
    let file = work.path().join("in.txt");
    let out = learn_in(work.path(), &file, &touch);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("exists and is not a directory"), "{err}");
    let out = learn_in(work.path(), &file.join("sub"), &touch);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("cannot create"), "{err}");
    assert!(!ran.exists(), "the tool ran");
}

/// Every observed call stays a test that runs: a long command line (regorus
/// refuses a line past 1024 columns) and an abstract socket name padded with
/// NULs (a NUL in a comment ends the file for the lexer) used to make the
/// test file unloadable, or cut it short without a word.
#[test]
fn learned_tests_survive_long_arguments_and_nuls_in_names() {
    let work = tempfile::tempdir().unwrap();
    let learned = work.path().join("learned");
    let script = format!(
        "import socket\n# {}\ns = socket.socket(socket.AF_UNIX)\ns.bind(b'\\0pad\\0\\0ded')\nopen('/etc/hostname').read()\n",
        "x".repeat(1500)
    );
    let out = learn_in(work.path(), &learned, &["/usr/bin/python3", "-c", &script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tests = std::fs::read(learned.join("policy_test.rego")).unwrap();
    assert!(!tests.contains(&0), "a NUL in the test file");
    let defined = String::from_utf8_lossy(&tests)
        .lines()
        .filter(|l| l.starts_with("test_observed_"))
        .count();
    // Every test defined is run (the file loads, whole). Whether each passes
    // is another matter: an open of the workdir itself is not learned yet.
    let (_, out, err) = run_cordon(&["policy", "test", path_str(&learned)]);
    let pass = out
        .lines()
        .find(|l| l.starts_with("PASS: "))
        .unwrap_or_default();
    assert_eq!(
        pass.rsplit('/').next(),
        Some(defined.to_string().as_str()),
        "{out}{err}"
    );
    assert!(defined >= 3, "{out}");
}

/// A `default allow` that is not a boolean is flagged as any `allow` of
/// the wrong type is (it was skipped), and `cordon serve` still starts on
/// it: it is not every call that it denies, only those no rule allows.
#[test]
fn a_non_boolean_default_allow_is_a_lint_not_a_refusal() {
    let d = tempfile::tempdir().unwrap();
    let policy = d.path().join("p.rego");
    std::fs::write(
        &policy,
        "package cordon\ndefault allow := \"no\"\nallow if input.ok\n",
    )
    .unwrap();
    let (code, _, err) = run_cordon(&["policy", "check", path_str(&policy)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("p.rego:2:1: allow must be a boolean, not a string"),
        "{err}"
    );
    assert!(
        cordon_broker::policy::denies_every_call(&cordon_broker::policy::PolicySource::Paths(
            vec![policy.clone()]
        ))
        .is_none()
    );
}

#[test]
fn check_names_the_broken_line_and_lints_quiet_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("p.rego"),
        "package cordon\n\nimport rego.v1\n\nallow if input.kind == \"file\"\n\ndeny if input.file.path == \"/x\"\n\nerrno := \"EWHAT\" if input.kind == \"network\"\n\nports := data.settings.ports\n",
    )
    .unwrap();
    std::fs::write(
        d.join("other.rego"),
        "package myorg.rules\n\nimport rego.v1\n\nallow if true\n",
    )
    .unwrap();
    std::fs::write(
        d.join("data.json"),
        r#"{"settings": {"ports": [1]}, "setings": {"typo": true}}"#,
    )
    .unwrap();
    let (code, out, err) = run_cordon(&["policy", "check", path_str(d)]);
    assert_eq!(code, 1, "{out}{err}");
    let dp = path_str(d);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{dp}/data.json:1:1: data.setings.typo is not used by any policy"),
            format!(
                "{dp}/other.rego:5:1: rule allow is in package myorg.rules and nothing refers to it: the broker evaluates only package cordon"
            ),
            format!(
                "{dp}/p.rego:7:1: deny must be a set of reasons: write `deny contains \"why\" if {{ … }}`"
            ),
            format!(
                "{dp}/p.rego:9:1: errno \"EWHAT\" is not an errno name (EACCES, EPERM, ECONNREFUSED, …)"
            ),
        ],
        "{err}"
    );
    let (code, out, _) = run_cordon(&["policy", "check", "--format", "json", dp]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["lints"].as_array().unwrap().len(), 4);

    // A syntax error: file:line:col of the line that breaks.
    std::fs::write(
        d.join("p.rego"),
        "package cordon\n\nallow if {\n  input.kind ==\n}\n",
    )
    .unwrap();
    std::fs::remove_file(d.join("other.rego")).unwrap();
    let (code, _, err) = run_cordon(&["policy", "check", dp]);
    assert_eq!(code, 1);
    assert!(err.starts_with(&format!("{dp}/p.rego:5:1: ")), "{err}");
    // `policy test --format json` says so on stdout too (it printed nothing).
    let (code, out, _) = run_cordon(&["policy", "test", "--format", "json", dp]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["errors"][0]
            .as_str()
            .unwrap()
            .starts_with(&format!("{dp}/p.rego:5:1: ")),
        "{report}"
    );
    assert_eq!(report["tests"], serde_json::json!([]));

    // The shipped policies are clean, and run in the compiled VM.
    let (code, out, err) = run_cordon(&["policy", "check", "policies/"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("(rvm)") && !err.contains("note:"),
        "{out}{err}"
    );

    // Contract rules whose constant value is of the wrong type (they
    // passed: every call denied, or EACCES instead of the errno meant); a
    // deny written whole as a set is one, and passes.
    std::fs::remove_file(d.join("data.json")).unwrap();
    std::fs::write(
        d.join("p.rego"),
        "package cordon\n\nallow := \"yes\"\n\nerrno := 13\n\ndeny := {\"blocked\"} if input.x\n",
    )
    .unwrap();
    let (code, out, err) = run_cordon(&["policy", "check", dp]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            format!(
                "{dp}/p.rego:3:1: allow must be a boolean, not a string: every call would be denied (`policy error`)"
            ),
            format!(
                "{dp}/p.rego:5:1: errno must be an errno name (a string such as \"EPERM\"), not a number: EACCES would be used"
            ),
        ],
        "{err}"
    );

    // A rule that can have two values: the policy is fine, and runs in the
    // interpreter, which check says.
    std::fs::write(
        d.join("p.rego"),
        "package cordon\n\nallow := true\n\nclass := \"a\" if input.a\n\nclass := \"b\" if input.b\n\ndeny contains class if class\n",
    )
    .unwrap();
    let (code, out, err) = run_cordon(&["policy", "check", dp]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("(interpreter)"), "{out}");
    assert!(
        err.contains(&format!(
            "note: evaluated by the interpreter, not the compiled VM: {dp}/p.rego:5:1: data.cordon.class can have two different values"
        )),
        "{err}"
    );
    let (_, out, _) = run_cordon(&["policy", "check", "--format", "json", dp]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["vm_off"]
            .as_str()
            .unwrap()
            .contains("data.cordon.class"),
        "{out}"
    );
}

/// `policy eval` and `policy replay` limit an evaluation to 5 s unless
/// told otherwise (`--timeout`): a broker's 50 ms, which they used, a
/// stalled machine's debug build could reach, and an answer became a
/// timeout. A policy that takes ~0.3 s in a debug build is answered; with
/// `--timeout 1ms` it times out, a denial that says so.
#[test]
fn eval_waits_for_a_slow_policy_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("slow.rego");
    std::fs::write(
        &policy,
        "package cordon\nimport rego.v1\n\
         allow if count([x | some x in numbers.range(1, 100000); x % 7 == 0]) > 0\n",
    )
    .unwrap();
    let input = dir.path().join("input.json");
    std::fs::write(
        &input,
        r#"{"kind":"file","file":{"path":"/a","access":["read"]}}"#,
    )
    .unwrap();
    let eval = |extra: &[&str]| {
        let mut args = vec!["policy", "eval", "--policy", path_str(&policy)];
        args.extend(["--input", path_str(&input), "--format", "json"]);
        args.extend(extra);
        let (code, out, err) = run_cordon(&args);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{err}"));
        (code, v)
    };
    let (code, v) = eval(&[]);
    assert_eq!((code, &v["allow"]), (0, &serde_json::json!(true)), "{v}");
    let (code, v) = eval(&["--timeout", "1ms"]);
    assert_eq!(code, 1, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("timed out"), "{v}");
}

#[test]
fn eval_explains_which_rules_held() {
    let (code, out, err) = run_cordon(&[
        "policy",
        "eval",
        "--input",
        "policies/cases/etc-shadow/input.json",
        "--format",
        "json",
    ]);
    assert_eq!(code, 1, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["allow"], false);
    let held: Vec<(String, serde_json::Value)> = v["held"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["rule"].as_str().unwrap().to_owned(), h["value"].clone()))
        .collect();
    // The system-read rule held, and the deny that overrode it, with its message.
    assert!(
        held.iter().any(|(r, _)| r == "cordon.builtin_allow"),
        "{held:?}"
    );
    assert!(
        held.contains(&(
            "cordon.deny".into(),
            serde_json::json!(["/etc/shadow holds password hashes or privileges"])
        )),
        "{held:?}"
    );
    let sys = v["held"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["rule"] == "cordon.builtin_allow")
        .unwrap();
    assert_eq!(
        sys["comment"],
        "Reading system files, including directory listings of them."
    );
}

#[test]
fn printing_into_a_closed_pipe_ends_quietly() {
    // `cordon policy eval … | head -0`: the reader is gone before cordon
    // writes. It must end as Unix tools do (SIGPIPE), not panic.
    use std::os::unix::process::ExitStatusExt;
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = cordon()
        .args([
            "policy",
            "eval",
            "--input",
            "policies/cases/etc-shadow/input.json",
        ])
        .stdout(std::process::Stdio::from(write))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.signal(), Some(13), "{:?} {err}", out.status);
}
