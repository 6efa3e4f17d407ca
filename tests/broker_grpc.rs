//! A real `cordon serve` on a Unix socket: decisions, malformed requests, the
//! Session stream, peer credential checks and hot reload.

mod support;

use std::{
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use cordon_broker::client::{self, BrokerUri};
use cordon_broker::proto::{
    DecideRequest, PolicyStatusRequest, QueryAuditRequest, ReloadPolicyRequest, SessionRequest,
    session_request, session_response,
};
use support::*;
use tokio_stream::StreamExt;

async fn decide(s: &Serve, req: DecideRequest) -> cordon_broker::proto::Decision {
    s.client()
        .await
        .decide(req)
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap()
}

/// Every record in the broker's store, read through `QueryAudit`.
async fn records(s: &Serve) -> Vec<cordon_broker::proto::AuditRecord> {
    s.client()
        .await
        .query_audit(QueryAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap())
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decides_allow_deny_errno_and_override() {
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    let d = decide(&s, file_request(1, b"/etc/hosts", &["read"])).await;
    assert!(d.allow, "{}", d.reason);
    assert_eq!((d.reason.as_str(), d.errno.as_str()), ("allowed", ""));
    assert!(d.audit_seq > 0);

    // allow holds (kind == file) but deny overrides it.
    let d = decide(&s, file_request(2, b"/etc/hosts", &["read", "write"])).await;
    assert!(!d.allow);
    assert_eq!(d.reason, "writes to /etc are never allowed");
    assert_eq!((d.errno.as_str(), d.errno_code), ("EACCES", 13));

    // The policy names its errno.
    let d = decide(&s, file_request(3, b"/secret/key", &["read"])).await;
    assert!(!d.allow);
    assert_eq!(
        (d.errno.as_str(), d.errno_code, d.reason.as_str()),
        ("EPERM", 1, "secret")
    );

    // Default deny: no allow rule for exec.
    let d = decide(&s, exec_request(4, "/usr/bin/git", &["git", "status"])).await;
    assert!(!d.allow);
    assert_eq!(d.reason, "no rule allowed (default deny)");

    // Network is allowed by its own rule.
    assert!(decide(&s, connect_request(6, "10.0.0.1", 80)).await.allow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reason_quoting_a_huge_argv_is_cut_in_the_answer_and_the_record() {
    // Two messages that each quote the whole argv: ~2 MiB of reason uncut.
    let policy = "package cordon\n\
        deny contains concat(\" \", input.exec.argv) if input.kind == \"exec\"\n\
        deny contains concat(\",\", input.exec.argv) if input.kind == \"exec\"\n";
    let s = Serve::start(policy, &[]);
    // 1001 bytes: 'a' and 500 two-byte characters, so that byte MAX_REASON
    // falls inside a character.
    let arg = format!("a{}", "é".repeat(500));
    let argv: Vec<&str> = std::iter::repeat_n(arg.as_str(), 1000).collect();
    let d = decide(&s, exec_request(1, "/usr/bin/env", &argv)).await;
    assert!(!d.allow);
    let mut messages = [argv.join(" "), argv.join(",")];
    messages.sort();
    let uncut = messages.join("; ");
    let cap = cordon_broker::policy::MAX_REASON;
    assert!(!uncut.is_char_boundary(cap));
    assert_eq!(
        d.reason,
        format!("{}… (cut: {} bytes in all)", &uncut[..cap - 1], uncut.len())
    );
    let rec = &records(&s).await[0];
    assert_eq!(rec.reason, d.reason, "the record holds the answer's reason");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_of_a_full_size_argv_is_served_to_auditors() {
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    // ~1.9 MB of control bytes, each stored as \u0001 (six bytes), twice in
    // the record and once more in the wire record's argv: over 20 MiB.
    let arg = "\u{1}".repeat(1900);
    let argv: Vec<&str> = std::iter::repeat_n(arg.as_str(), 1000).collect();
    let d = decide(&s, exec_request(1, "/usr/bin/env", &argv)).await;
    assert!(d.audit_seq > 0, "{}", d.reason);
    let (code, out, err) = run_cordon(&["audit", "--broker", &s.uri(), "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1);
    assert!(out.len() > 20 << 20, "{} bytes", out.len());
    let got = records[0]["argv"].as_array().unwrap();
    assert_eq!(got.len(), 1000);
    assert!(got.iter().all(|a| a.as_str() == Some(arg.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluation_timeout_denies() {
    // 400 million iterations: far past the 100 ms limit on any machine.
    let policy = "package cordon\nallow if {\n  some i in numbers.range(1, 20000)\n  some j in numbers.range(1, 20000)\n  i * j == -1\n}\n";
    let s = Serve::start(policy, &["--eval-timeout", "100ms"]);
    let started = std::time::Instant::now();
    let d = decide(&s, file_request(1, b"/anything", &["read"])).await;
    assert!(!d.allow);
    assert!(
        d.reason.starts_with("policy evaluation timed out"),
        "{}",
        d.reason
    );
    assert_eq!(d.errno, "EACCES");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The timeout is recorded like any decision.
    let rec = &records(&s).await[0];
    assert!(!rec.allow && rec.reason.starts_with("policy evaluation timed out"));
}

/// Time a request spent before the broker read it counts: with a deadline
/// by the shared clock that has passed, a request whose relative wait is
/// still long is recorded as the denial its client applied, not evaluated
/// (and not allowed). Without it the same request is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_clock_deadline_when_read_is_a_denial() {
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    let now = cordon_broker::decide::unix_now_ns();
    let mut late = file_request(1, b"/etc/hosts", &["read"]);
    late.timeout_ns = 10_000_000_000;
    late.deadline_unix_ns = now - 1_000_000_000;
    let d = decide(&s, late).await;
    assert!(!d.allow, "{d:?}");
    assert!(
        d.reason.contains("after the client's deadline"),
        "{}",
        d.reason
    );
    let mut fine = file_request(2, b"/etc/hosts", &["read"]);
    fine.timeout_ns = 10_000_000_000;
    fine.deadline_unix_ns = now + 10_000_000_000;
    assert!(decide(&s, fine).await.allow);
}

/// A decision slower than the caller's gRPC deadline is followed by a record
/// of the denial the caller saw (its call failed): the policy's allow is not
/// the last word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_decision_past_its_grpc_deadline_is_recorded_as_a_denial() {
    // ~0.3-0.8 s of evaluation for this path (the broker's start-up checks
    // evaluate others), within the 60 s limit, then allow.
    let policy = "package cordon\nimport rego.v1\n\
        allow if {\n  input.file.path == \"/slow\"\n  count([x | some x in numbers.range(1, 400000); x % 3 == 0]) > 0\n}\n";
    let s = Serve::start(policy, &["--eval-timeout", "60s"]);
    let mut req = tonic::Request::new(file_request(1, b"/slow", &["read"]));
    req.set_timeout(Duration::from_millis(50));
    let status = s.client().await.decide(req).await.unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{status:?}"
    );
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    let all = loop {
        let all = records(&s).await;
        if all.len() >= 2 || std::time::Instant::now() > give_up {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all[0].allow, "{:?}", all[0]);
    assert!(!all[1].allow, "{:?}", all[1]);
    assert_eq!(all[1].overrides, all[0].seq);
    assert!(
        all[1].reason.contains("after the client's deadline"),
        "{}",
        all[1].reason
    );
    // Without a deadline the same request is allowed.
    assert!(decide(&s, file_request(2, b"/slow", &["read"])).await.allow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_invalid_argument() {
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    let mut c = s.client().await;
    let cases: Vec<(DecideRequest, &str)> = vec![
        (file_request(1, b"relative/path", &["read"]), "not absolute"),
        (
            file_request(2, &[b"/".as_slice(), &[b'a'; 5000]].concat(), &["read"]),
            "PATH_MAX",
        ),
        (file_request(3, b"/x", &["execute"]), "file.access"),
        (
            DecideRequest {
                syscall: "openat".into(),
                ..Default::default()
            },
            "one of file, network or exec",
        ),
        (connect_request(5, "not-an-ip", 80), "not an IP address"),
        (connect_request(6, "10.0.0.1", 70000), "out of range"),
        (
            {
                let mut r = file_request(7, b"/etc/hosts", &["read"]);
                r.sandbox.as_mut().unwrap().id = "bad\0id".into();
                r
            },
            "sandbox.id",
        ),
        (file_request(8, b"/etc/ho\0sts", &["read"]), "NUL"),
        (
            connect_request(9, &"\x7f".repeat(100_000), 80),
            "not an IP address",
        ),
    ];
    let needles: Vec<&str> = cases.iter().map(|(_, n)| *n).collect();
    for (i, (req, needle)) in cases.into_iter().enumerate() {
        let err = c.decide(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(needle),
            "{:?} should mention {needle:?}",
            err.message()
        );
        assert!(
            err.message()
                .ends_with(&format!("(recorded as audit record {})", i + 1)),
            "{:?}",
            err.message()
        );
    }
    // Each is a denial in the store (the client denies the call), with what
    // of it may be stored: a valid syscall, a path cut below PATH_MAX, no
    // sandbox id that is not one.
    let recs = records(&s).await;
    assert_eq!(recs.len(), needles.len());
    for (r, needle) in recs.iter().zip(&needles) {
        assert!(!r.allow, "{r:?}");
        assert_eq!(r.errno, "EACCES");
        assert!(
            r.reason.starts_with("invalid request: ") && r.reason.contains(needle),
            "{r:?}"
        );
    }
    // Nothing of them can be replayed: the gate cannot answer (2), where
    // "no decision changes" (0) would pass it.
    let out = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(["policy", "replay", "--broker", &s.uri()])
        .args(["--policy", "policies/default.rego"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "none of the {} matching decisions could be replayed",
            needles.len()
        )),
        "{err}"
    );
    assert_eq!(recs[0].path, "relative/path");
    assert_eq!(recs[1].path.len(), 4095);
    assert_eq!(recs[3].syscall, "openat");
    assert_eq!((recs[5].address.as_str(), recs[5].port), ("10.0.0.1", 0));
    // An invalid id is left out, the valid labels beside it are kept.
    assert_eq!(recs[6].sandbox_id, "");
    assert_eq!(recs[6].labels.get("tool").map(String::as_str), Some("test"));
    assert_eq!(recs[6].path, "/etc/hosts");
    // A path ends at its NUL, as the kernel would read it.
    assert_eq!(recs[7].path, "/etc/ho");
    // What the client sent is quoted cut short, in the answer and the record.
    assert_eq!(recs[8].address, "");
    assert!(recs[8].reason.len() < 1200, "{}", recs[8].reason.len());
    // The chain holds.
    let (code, out, err) = run_cordon(&["audit", "verify", "--broker", &s.uri()]);
    assert_eq!(code, 0, "{out}{err}");
}

/// `DecideRequest` as a client with a broken encoder might send it: field 4
/// (`syscall`, a string) holding bytes that are not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct UndecodableDecide {
    #[prost(uint64, tag = "1")]
    request_id: u64,
    #[prost(bytes = "vec", tag = "4")]
    syscall: Vec<u8>,
}

/// `SessionRequest` carrying it (`decide` is field 2).
#[derive(Clone, PartialEq, prost::Message)]
struct UndecodableSession {
    #[prost(uint64, tag = "1")]
    request_id: u64,
    #[prost(message, optional, tag = "2")]
    decide: Option<UndecodableDecide>,
}

/// `SessionRequest` with its `decide` as raw bytes (wire-compatible with the
/// message): a stream can then mix valid and undecodable requests.
#[derive(Clone, PartialEq, prost::Message)]
struct RawSession {
    #[prost(uint64, tag = "1")]
    request_id: u64,
    #[prost(bytes = "vec", tag = "2")]
    decide: Vec<u8>,
}

/// On a strict broker, requests answered before an undecodable one on the
/// same stream still get their answers before the stream ends with
/// INVALID_ARGUMENT (the status used to overtake answers still flushing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_error_comes_after_the_answers_before_it() {
    use prost::Message;
    use tonic::codegen::http::uri::PathAndQuery;
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &["--durability", "strict"]);
    let channel = cordon_broker::client::channel(&s.uri().parse().unwrap())
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut requests: Vec<RawSession> = (1..=50u64)
        .map(|i| RawSession {
            request_id: i,
            decide: file_request(i, b"/etc/hosts", &["read"]).encode_to_vec(),
        })
        .collect();
    requests.push(RawSession {
        request_id: 51,
        decide: UndecodableDecide {
            request_id: 51,
            syscall: b"open\xffat".to_vec(),
        }
        .encode_to_vec(),
    });
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .streaming::<_, _, cordon_broker::proto::SessionResponse, _>(
            tonic::Request::new(tokio_stream::iter(requests)),
            PathAndQuery::from_static("/cordon.v1.Broker/Session"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut answered = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(answer)) => {
                assert!(answer.request_id <= 50, "{answer:?}");
                answered += 1;
            }
            Ok(None) => panic!("the stream ended with OK after {answered} answers"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(answered, 50, "answers before the error");
    assert_eq!(records(&s).await.len(), 50);
}

/// A request that does not decode is INVALID_ARGUMENT, on `Decide` and on a
/// `Session` stream (it was INTERNAL, and the stream ended with OK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_do_not_decode_are_invalid_argument() {
    use tonic::codegen::http::uri::PathAndQuery;
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    let channel = cordon_broker::client::channel(&s.uri().parse().unwrap())
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    let bad = UndecodableDecide {
        request_id: 1,
        syscall: b"open\xffat".to_vec(),
    };
    grpc.ready().await.unwrap();
    let err = grpc
        .unary::<_, cordon_broker::proto::DecideResponse, _>(
            tonic::Request::new(bad.clone()),
            PathAndQuery::from_static("/cordon.v1.Broker/Decide"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("malformed message"), "{err:?}");

    grpc.ready().await.unwrap();
    let requests = tokio_stream::iter([UndecodableSession {
        request_id: 2,
        decide: Some(bad),
    }]);
    let response = grpc
        .streaming::<_, _, cordon_broker::proto::SessionResponse, _>(
            tonic::Request::new(requests),
            PathAndQuery::from_static("/cordon.v1.Broker/Session"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let status = match response {
        Err(status) => status,
        Ok(mut stream) => match stream.get_mut().message().await {
            Ok(Some(answer)) => panic!("an answer to an undecodable request: {answer:?}"),
            Ok(None) => panic!("the stream ended with OK"),
            Err(status) => status,
        },
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(records(&s).await.len(), 0);
}

/// In strict mode a client that sends requests and never reads the answers
/// must not take the broker's blocking threads: each decision used to hold
/// one until its answer was sent, and once they were all waiting, every
/// other client's strict decision waited behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_never_reads_does_not_starve_other_clients() {
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &["--durability", "strict"]);
    let mut flood = s.client().await;
    let requests = tokio_stream::iter((0..20_000u64).map(|i| SessionRequest {
        request_id: i,
        msg: Some(session_request::Msg::Decide(file_request(
            i,
            b"/etc/hosts",
            &["read"],
        ))),
    }));
    // The answers are never read.
    let _unread = flood.session(requests).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut other = s.client().await;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        other.decide(file_request(1, b"/etc/passwd", &["read"])),
    )
    .await
    .expect("another client's decision waited more than 10 s")
    .unwrap();
    assert!(answer.into_inner().decision.unwrap().allow);
}

/// A policy whose evaluation of a path under `/slow` runs to the broker's
/// limit (200 ms), and which allows `/etc/hosts` at once; served with two
/// async workers whatever the machine (tokio reads the variable), so that
/// two slow clients could hold them all.
fn slow_policy_broker() -> Serve {
    let policy = "package cordon\nimport rego.v1\n\
                  allow if input.file.path == \"/etc/hosts\"\n\
                  deny if {\n  startswith(input.file.path, \"/slow\")\n  \
                  some i in numbers.range(1, 20000)\n  some j in numbers.range(1, 20000)\n  \
                  i * j == -1\n}\n";
    Serve::start_with_env(
        policy,
        &["--eval-timeout", "200ms"],
        &[("TOKIO_WORKER_THREADS", "2")],
    )
}

/// The same for unary `Decide` calls, which have no session: a sandbox
/// whose calls are slow has its next ones answered off the async workers.
/// Two sandboxes with thirty slow calls in flight each used to hold both
/// workers for all sixty evaluations (about 6 s), and another sandbox's
/// call waited behind them (allowed here: 3 s, on a loaded machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_with_slow_evaluations_do_not_hold_up_other_sandboxes() {
    let s = slow_policy_broker();
    const SLOW: u64 = 30;
    let mut slow = Vec::new();
    for sandbox_no in 0..2u64 {
        let client = s.client().await;
        for i in 0..SLOW {
            let mut c = client.clone();
            let mut req = file_request(i, format!("/slow/{sandbox_no}/{i}").as_bytes(), &["read"]);
            req.sandbox = sandbox(&format!("slow-{sandbox_no}"), "test");
            slow.push(tokio::spawn(async move {
                c.decide(req).await.unwrap().into_inner().decision.unwrap()
            }));
        }
    }
    // Both sandboxes' calls are being evaluated by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let d = decide(&s, file_request(1, b"/etc/hosts", &["read"])).await;
    let waited = started.elapsed();
    assert!(d.allow, "{}", d.reason);
    for call in slow {
        let d = call.await.unwrap();
        assert!(!d.allow && d.reason.contains("timed out"), "{}", d.reason);
    }
    assert!(
        waited < Duration::from_secs(3),
        "a decision waited {waited:?} behind other sandboxes' slow evaluations"
    );
}

/// A session whose evaluations are slow (a tool that found a costly path
/// through the policy, each evaluation running to its time limit) must not
/// hold the broker's async workers: with two sessions doing so on a
/// two-worker broker, another client's decision used to wait for all of
/// their evaluations (about 6 s here), and now waits for two at most (the
/// second slow answer in a row moves a session off the workers; allowed
/// here: 3 s, on a loaded machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_with_slow_evaluations_do_not_hold_up_other_clients() {
    let s = slow_policy_broker();
    const SLOW: u64 = 30;
    let mut slow = Vec::new();
    for session in 0..2u64 {
        // Distinct paths: no answer comes from the memo.
        let requests = tokio_stream::iter((0..SLOW).map(move |i| SessionRequest {
            request_id: i,
            msg: Some(session_request::Msg::Decide(file_request(
                i,
                format!("/slow/{session}/{i}").as_bytes(),
                &["read"],
            ))),
        }));
        let mut answers = s
            .client()
            .await
            .session(requests)
            .await
            .unwrap()
            .into_inner();
        slow.push(tokio::spawn(async move {
            // Answered in order, off the workers or not.
            let mut ids = Vec::new();
            while let Some(answer) = answers.next().await {
                ids.push(answer.unwrap().request_id);
                if ids.len() as u64 == SLOW {
                    break;
                }
            }
            ids
        }));
    }
    // Both sessions are evaluating by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let d = decide(&s, file_request(1, b"/etc/hosts", &["read"])).await;
    let waited = started.elapsed();
    assert!(d.allow, "{}", d.reason);
    for task in slow {
        assert_eq!(task.await.unwrap(), (0..SLOW).collect::<Vec<_>>());
    }
    assert!(
        waited < Duration::from_secs(3),
        "a decision waited {waited:?} behind other sessions' slow evaluations"
    );
}

/// At most MAX_OPEN_QUERIES audit queries are open at once (each holds a
/// blocking thread); one more is RESOURCE_EXHAUSTED, and a query that ends
/// frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_audit_queries_are_bounded() {
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    let mut c = s.client().await;
    let follow = QueryAuditRequest {
        follow: true,
        ..Default::default()
    };
    let mut open = Vec::new();
    for _ in 0..cordon_broker::service::MAX_OPEN_QUERIES {
        open.push(c.query_audit(follow.clone()).await.unwrap());
    }
    let err = c.query_audit(follow.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    drop(open.pop());
    // The broker notices the closed stream when it next looks: retry a while.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match c.query_audit(follow.clone()).await {
            Ok(stream) => {
                open.push(stream);
                break;
            }
            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no place freed: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lifecycle_and_backstop_messages_are_invalid_argument() {
    use cordon_broker::proto::{Lifecycle, SandboxExited, SandboxStarted, lifecycle::Event};
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    let started = |id: &str, argv: Vec<Vec<u8>>| {
        session_request::Msg::Lifecycle(Lifecycle {
            sandbox: sandbox(id, "shell"),
            event: Some(Event::Started(SandboxStarted { pid: 7, argv })),
        })
    };
    let exited = |detail: String, limit: &str| {
        session_request::Msg::Lifecycle(Lifecycle {
            sandbox: sandbox("sb-1", "shell"),
            event: Some(Event::Exited(SandboxExited {
                pid: 7,
                status: 1,
                detail,
                limit: limit.into(),
                ..Default::default()
            })),
        })
    };
    let mut many_labels = sandbox("sb-1", "shell");
    if let Some(sb) = many_labels.as_mut() {
        sb.labels = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
    }
    let cases: Vec<(session_request::Msg, &str)> = vec![
        // A NUL would end the id early in the index's keys.
        (started("sb\0other", vec![b"sh".to_vec()]), "sandbox.id"),
        (
            started("sb-1", vec![vec![b'a']; (1 << 18) + 1]),
            "started.argv has more than 262144",
        ),
        (
            started("sb-1", vec![vec![b'a'; 3 << 20]]),
            "started.argv is larger",
        ),
        (exited(String::new(), "Memory\n"), "exited.limit"),
        (
            session_request::Msg::Lifecycle(Lifecycle {
                sandbox: sandbox("sb-1", "shell"),
                event: None,
            }),
            "lifecycle event is empty",
        ),
        (
            session_request::Msg::Backstop(many_labels.unwrap()),
            "more than 64 labels",
        ),
    ];
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut answers = s
        .client()
        .await
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for (i, (msg, needle)) in cases.into_iter().enumerate() {
        tx.send(SessionRequest {
            request_id: i as u64,
            msg: Some(msg),
        })
        .await
        .unwrap();
        let answer = answers.next().await.unwrap().unwrap();
        assert_eq!(answer.request_id, i as u64);
        match answer.msg.unwrap() {
            session_response::Msg::Error(e) => {
                assert_eq!(
                    e.code,
                    tonic::Code::InvalidArgument as i32,
                    "{needle}: {e:?}"
                );
                assert!(
                    e.message.contains(needle),
                    "{:?} should mention {needle:?}",
                    e.message
                );
            }
            other => panic!("{needle}: {other:?}"),
        }
    }
    // Well-formed, both are recorded (a long exit detail is cut, never
    // refused); the malformed ones were not.
    for (i, msg) in [
        started("sb-1", vec![b"sh".to_vec()]),
        exited("x".repeat(5000), "timeout"),
    ]
    .into_iter()
    .enumerate()
    {
        tx.send(SessionRequest {
            request_id: 100 + i as u64,
            msg: Some(msg),
        })
        .await
        .unwrap();
        let answer = answers.next().await.unwrap().unwrap();
        assert!(
            matches!(answer.msg, Some(session_response::Msg::RecordedSeq(_))),
            "{answer:?}"
        );
    }
    let events: Vec<(String, String)> = records(&s)
        .await
        .into_iter()
        .map(|r| (r.kind, r.reason))
        .collect();
    let lifecycle = |reason: &str| ("lifecycle".to_string(), reason.to_string());
    let cut = format!("{}… (cut: 5000 bytes in all)", "x".repeat(4096));
    assert_eq!(events, [lifecycle("started"), lifecycle(&cut)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_stream_answers_by_request_id() {
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut answers = s
        .client()
        .await
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..50u64 {
        let req = if i % 2 == 0 {
            file_request(i, b"/etc/hosts", &["read"])
        } else {
            file_request(i, b"/etc/passwd", &["write"])
        };
        tx.send(SessionRequest {
            request_id: i,
            msg: Some(session_request::Msg::Decide(req)),
        })
        .await
        .unwrap();
    }
    // A malformed request gets an error answer, not a broken stream.
    tx.send(SessionRequest {
        request_id: 999,
        msg: Some(session_request::Msg::Decide(file_request(
            999,
            b"x",
            &["read"],
        ))),
    })
    .await
    .unwrap();
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < 51 {
        let r = answers.next().await.unwrap().unwrap();
        seen.insert(r.request_id, r.msg.unwrap());
    }
    for i in 0..50u64 {
        match &seen[&i] {
            session_response::Msg::Decision(d) => {
                assert_eq!(d.allow, i % 2 == 0, "request {i}: {}", d.reason)
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    match &seen[&999] {
        session_response::Msg::Error(e) => {
            assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
            assert!(e.message.contains("not absolute"));
        }
        other => panic!("{other:?}"),
    }
}

/// Whoever may write the socket's directory may replace the socket and
/// answer every client: `serve` refuses a directory writable by its group or
/// by everyone, and starts in one only the broker writes.
#[test]
fn serve_refuses_a_socket_directory_others_may_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit");
    for mode in [0o770, 0o777, 0o1777] {
        let sockets = dir.path().join(format!("run-{mode:o}"));
        std::fs::create_dir(&sockets).unwrap();
        std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(mode)).unwrap();
        serve_refuses(&sockets, &db, "writable by its group or by everyone");
    }
}

/// `cordon serve` with its socket in `socket_dir` exits with an error that
/// says `needle` (one that starts never exits by itself: given 20 s).
fn serve_refuses(socket_dir: &std::path::Path, db: &std::path::Path, needle: &str) {
    let uri = format!("unix://{}/b.sock", socket_dir.display());
    let serve = cordon()
        .args(["serve", "--listen", &uri, "--audit-db"])
        .arg(db)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = exits_within(serve, Duration::from_secs(20), "serve on an unsafe path");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(needle),
        "{}: {:?} {err}",
        socket_dir.display(),
        out.status
    );
}

/// A policy that loads but denies every call (an `allow` that is not a
/// boolean) is refused at the start, as a reload refuses it: a broker that
/// started on it answered every client no.
#[test]
fn serve_refuses_a_policy_that_denies_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.rego");
    std::fs::write(&policy, "package cordon\nallow := 5\n").unwrap();
    let uri = format!("unix://{}/run/b.sock", dir.path().display());
    let serve = cordon()
        .args(["serve", "--listen", &uri, "--audit-db"])
        .arg(dir.path().join("audit"))
        .arg("--policy")
        .arg(&policy)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = exits_within(
        serve,
        Duration::from_secs(20),
        "serve on a policy that denies all",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("p.rego:2:1: allow must be a boolean, not a number"),
        "{err}"
    );
}

/// A broker that runs as another user (one who could put a socket where
/// the broker's was, or relay one) is not trusted by `cordon run`: it would
/// answer for the broker, allowing what it likes (found by review: a
/// permissive broker run by nobody let a root tool read /etc/shadow). One
/// named in CORDON_BROKER_UID is; `http://` is refused outright.
#[test]
fn run_trusts_a_broker_of_another_user_only_when_named() {
    if support::lacks_root("needs root, to start a broker as nobody") {
        return;
    }
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let policy = dir.path().join("allow.rego");
    std::fs::write(&policy, "package cordon\nallow := true\n").unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let uri = format!("unix://{}/run/b.sock", theirs.display());
    let mut serve = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_cordon"))
        .args(["serve", "--allow-uid", "0", "--listen", &uri, "--audit-db"])
        .arg(theirs.join("audit"))
        .arg("--policy")
        .arg(&policy)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until_listening(&theirs.join("run/b.sock"));
    let run = |trusted: Option<&str>| {
        let mut c = cordon();
        c.args(["run", "--broker", &uri, "--", "/bin/echo", "ran"]);
        if let Some(uids) = trusted {
            c.env("CORDON_BROKER_UID", uids);
        }
        c.output().unwrap()
    };
    let refused = run(None);
    let named = run(Some("1, 65534"));
    let _ = serve.kill();
    let _ = serve.wait();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(125), "{err}");
    assert!(err.contains("runs as uid 65534"), "{err}");
    assert_eq!(String::from_utf8_lossy(&refused.stdout), "");
    assert_eq!(
        String::from_utf8_lossy(&named.stdout),
        "ran\n",
        "{}",
        String::from_utf8_lossy(&named.stderr)
    );
    let out = cordon()
        .args(["run", "--broker", "http://127.0.0.1:9", "--", "/bin/true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("is not unix:///PATH or https://HOST:PORT"),
        "{err}"
    );
}

/// A remote broker that dies while the tool runs never records the
/// sandbox's exit: `cordon run --broker` says so and exits 125, not with
/// the tool's status (it exited 0; found by review).
#[test]
fn a_run_whose_exit_the_broker_never_recorded_exits_125() {
    use std::io::{BufRead, Write};
    let mut s = Serve::start("package cordon\nallow := true\n", &[]);
    // The shell says it is running (its exec decided), then waits on its
    // stdin with builtins alone: nothing left to decide once the broker is
    // gone.
    let mut run = cordon()
        .args(["run", "--deadline", "500ms", "--broker", &s.uri(), "--"])
        .args(["/bin/sh", "-c", "echo ready; read x"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(run.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready, "ready\n");
    // Killed once the sandbox's start is recorded: on a loaded machine the
    // start record can still be on its way after the exec's decision, and
    // the run then ends on the start it could not record instead.
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = cordon()
            .args(["audit", "--format", "json", "--broker", &s.uri()])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("\"event\":\"sandbox_started\"") {
            break;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "the start was never recorded: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s.kill9();
    run.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = exits_within(
        run,
        Duration::from_secs(20),
        "cordon run without its broker",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("the sandbox exit could not be recorded")
            && err.contains("1 audit record(s) of this run could not be stored")
            && err.contains("the command's own exit status was 0"),
        "{err}"
    );
}

/// A second broker started on the socket of a running one refuses to start
/// rather than unlink it (which left the first unreachable); a socket left
/// by a broker that is gone is replaced.
#[test]
fn a_live_brokers_socket_is_not_taken_over() {
    let mut s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    let second = cordon()
        .args(["serve", "--listen", &s.uri(), "--audit-db"])
        .arg(s.dir.path().join("audit2"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = exits_within(
        second,
        Duration::from_secs(20),
        "the second broker started on a live broker's socket",
    );
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a broker is already listening there"), "{err}");
    let (code, out, err) = run_cordon(&["audit", "verify", "--broker", &s.uri()]);
    assert_eq!(code, 0, "the first broker still answers: {out}{err}");
    // A broker that cannot bind its second socket does not leave its first.
    let first = s.dir.path().join("first.sock");
    let out = cordon()
        .args(["serve", "--listen"])
        .arg(format!("unix://{}", first.display()))
        .args(["--listen", &s.uri(), "--audit-db"])
        .arg(s.dir.path().join("audit3"))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a broker is already listening there"), "{err}");
    assert!(!first.exists(), "the socket it did bind was left behind");
    // Killed, it leaves its socket behind: the next broker takes the path.
    s.kill9();
    assert!(s.socket.exists());
    s.spawn();
    let (code, out, err) = run_cordon(&["audit", "verify", "--broker", &s.uri()]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A broker out of fds (connections that hold them, under a low hard limit)
/// neither spins nor stops accepting: tonic tries the next accept at once
/// after an error and the listener stays readable, so its workers took more
/// than a CPU until an fd was freed. It now waits 100 ms after such an error,
/// and accepts again once fds are freed.
#[test]
fn a_broker_out_of_fds_neither_spins_nor_stops_accepting() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("b.sock");
    let serve = Command::new("prlimit")
        .arg("--nofile=64:64")
        .arg(env!("CARGO_BIN_EXE_cordon"))
        .args(["serve", "--listen"])
        .arg(format!("unix://{}", socket.display()))
        .arg("--audit-db")
        .arg(dir.path().join("audit"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_listening(&socket);
    // Each accepted connection takes two of its fds; the rest wait.
    let held: Vec<_> = (0..60)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    let uri = format!("unix://{}", socket.display());
    support::assert_paced_out_of_fds(serve, held, || {
        let mut verify = cordon();
        verify.args(["audit", "verify", "--broker", &uri]);
        verify
    });
}

/// A broker removes its socket when it exits, but not one that has replaced
/// it at the same path since (another broker's, started while this one shut
/// down): told apart by device and inode.
#[test]
fn a_stopping_broker_leaves_a_socket_that_replaced_its_own() {
    let mut s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    std::fs::remove_file(&s.socket).unwrap();
    let other = std::os::unix::net::UnixListener::bind(&s.socket).unwrap();
    s.stop();
    assert!(s.socket.exists(), "the other socket was removed");
    drop(other);
    // Its own it removes.
    std::fs::remove_file(&s.socket).unwrap();
    s.spawn();
    s.stop();
    assert!(!s.socket.exists(), "its own socket was left");
}

/// A socket directory reached through a symlink that someone else may
/// re-point, or under a directory others may write, is refused: they could
/// put their own socket in its place.
#[test]
fn serve_refuses_a_socket_path_others_may_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit");
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o750)).unwrap();
    // A symlink owned by nobody, in place of the socket's directory.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
    // A directory others may write, above the socket's own.
    let open = dir.path().join("open");
    std::fs::create_dir_all(open.join("run")).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(open.join("run"), std::fs::Permissions::from_mode(0o750)).unwrap();
    serve_refuses(&link, &db, "owned by uid 65534");
    // A link to a link in a directory others may write: met only on the way,
    // neither on the path as named nor on where it ends.
    let mid = dir.path().join("mid");
    std::fs::create_dir(&mid).unwrap();
    std::fs::set_permissions(&mid, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::symlink(&real, mid.join("l2")).unwrap();
    let l1 = dir.path().join("l1");
    std::os::unix::fs::symlink(mid.join("l2"), &l1).unwrap();
    serve_refuses(&l1, &db, "mid is writable by its group or by everyone");
    serve_refuses(
        &open.join("run"),
        &db,
        "writable by its group or by everyone",
    );
}

#[test]
fn socket_is_0660_and_sandboxed_or_foreign_callers_are_refused() {
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    let mode = std::fs::metadata(&s.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);

    // The broker's own uid, not under seccomp: fine.
    let (code, out, err) = run_cordon(&["audit", "verify", "--broker", &s.uri()]);
    assert_eq!(code, 0, "{out}{err}");

    // The same client under a seccomp filter is refused.
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/under_seccomp.py"
        ))
        .arg(env!("CARGO_BIN_EXE_cordon"))
        .args(["audit", "verify", "--broker", &s.uri()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("runs under a seccomp filter"), "{err}");

    // `nobody` cannot even reach the socket as created (0660 in a 0700 directory) ...
    let as_nobody = |extra: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_cordon"))
            .args(["audit", "verify", "--broker", &s.uri()])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = as_nobody(&[]);
    assert_ne!(out.status.code(), Some(0));
    // ... and with the file permissions opened up, the uid check still refuses it.
    for p in [s.dir.path(), s.socket.parent().unwrap()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&s.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("uid 65534 is not allowed"), "{err}");
}

#[test]
fn allow_uid_admits_another_user() {
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &["--allow-uid", "65534"]);
    for p in [s.dir.path(), s.socket.parent().unwrap()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&s.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_cordon"))
        .args(["audit", "verify", "--broker", &s.uri()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_refuses_broken_edit_and_applies_good_one() {
    let s = Serve::start("package cordon\nallow := true\n", &[]);
    let mut c = s.client().await;
    let rev1 = c
        .policy_status(PolicyStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision;
    let d1 = decide(&s, file_request(1, b"/a", &["read"])).await;
    assert!(d1.allow);
    assert_eq!(d1.policy_revision, rev1);

    // A broken edit: refused with file:line:col, the old revision keeps serving.
    std::fs::write(
        s.policy.join("p.rego"),
        "package cordon\nallow := true\ndeny contains x if {\n  x := \n}\n",
    )
    .unwrap();
    let err = c.reload_policy(ReloadPolicyRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let want = format!("{}:4:5:", s.policy.join("p.rego").display());
    assert!(
        err.message().starts_with(&want),
        "{} should start with {want}",
        err.message()
    );
    let status = c
        .policy_status(PolicyStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.revision, rev1);
    assert!(
        status.last_error.contains("p.rego:4:5"),
        "{}",
        status.last_error
    );
    assert!(decide(&s, file_request(2, b"/a", &["read"])).await.allow);

    // A good edit, picked up by the file watcher without a ReloadPolicy call.
    std::fs::write(
        s.policy.join("p.rego"),
        "package cordon\nallow if input.file.path != \"/a\"\n",
    )
    .unwrap();
    let mut rev2 = rev1.clone();
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        rev2 = c
            .policy_status(PolicyStatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .revision;
        if rev2 != rev1 {
            break;
        }
    }
    assert_ne!(rev2, rev1, "the watcher did not reload the policy");
    let d3 = decide(&s, file_request(3, b"/a", &["read"])).await;
    assert!(!d3.allow);
    assert_eq!(d3.policy_revision, rev2);
    // New audit records carry the new revision, old ones the old.
    let revs: Vec<String> = records(&s)
        .await
        .into_iter()
        .map(|r| r.policy_revision)
        .collect();
    assert_eq!(revs, vec![rev1.clone(), rev1, rev2]);
}

#[test]
fn health_is_served() {
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    let r = health_of(&s, |mut health| async move {
        health.check(broker_health_request()).await
    })
    .unwrap()
    .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

/// What `ask` gets from the broker's health service.
fn health_of<T, F: std::future::Future<Output = T>>(
    s: &Serve,
    ask: impl FnOnce(tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>) -> F,
) -> T {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = cordon_broker::client::channel(&s.uri().parse().unwrap())
            .await
            .unwrap();
        ask(tonic_health::pb::health_client::HealthClient::new(channel)).await
    })
}

fn broker_health_request() -> tonic_health::pb::HealthCheckRequest {
    tonic_health::pb::HealthCheckRequest {
        service: "cordon.v1.Broker".into(),
    }
}

/// A caller the peer check refuses gets no health answer either (health and
/// reflection answered it, found by review), and cannot hold a `Watch`
/// stream open. (Reflection is wrapped the same way; not tested here: the
/// tests have no reflection client.)
#[test]
fn health_refuses_a_caller_the_broker_refuses() {
    // Root, running the test, is not among the allowed uids.
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &["--allow-uid", "12345"]);
    let (check, watch) = health_of(&s, |mut health| async move {
        let check = health.check(broker_health_request()).await.map(drop);
        let watch = health.watch(broker_health_request()).await.map(drop);
        (check, watch)
    });
    for (what, answer) in [("check", check), ("watch", watch)] {
        let err = answer.expect_err(what);
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{what}: {err}");
    }
}

/// A relay (`tests/support/relay.py`) that connects to a broker's socket
/// as a peer set up by `mode`, and listens at `listen` for one client.
/// Killed and reaped when dropped.
struct Relay {
    child: Child,
    listen: PathBuf,
}

impl Relay {
    fn start(s: &Serve, mode: &str) -> Self {
        let listen = s.dir.path().join(format!("relay-{mode}.sock"));
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/relay.py"
            ))
            .arg(&s.socket)
            .arg(&listen)
            .arg(mode)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !listen.exists() {
            // `connector-exits` exits at once, by design; any other ending
            // before the socket appears is a failure to start.
            if mode != "connector-exits"
                && let Some(status) = child.try_wait().unwrap()
            {
                panic!("relay {mode} exited before listening: {status}");
            }
            assert!(Instant::now() < deadline, "relay {mode} did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Relay { child, listen }
    }

    fn uri(&self) -> String {
        format!("unix://{}", self.listen.display())
    }

    /// Puts a thread of a `filter-on-signal` relay under its filter, and
    /// waits until the kernel shows it.
    async fn filter_now(&self) {
        let pid = self.child.id();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .unwrap();
        let filtered = || {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("status")).ok())
                .any(|st| st.lines().any(|l| l == "Seccomp:\t2"))
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !filtered() {
            assert!(
                Instant::now() < deadline,
                "the relay's thread never got its filter"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A later relay of the same mode waits for its socket to appear.
        let _ = std::fs::remove_file(&self.listen);
    }
}

/// The broker checks the process that connected, whoever sends through its
/// connection: every thread of it (a seccomp filter is per thread), and,
/// through the pidfd taken at accept, that it is still alive. A zombie's
/// `/proc` entry still reads as unfiltered, as would a process that reused
/// an exited connector's pid.
#[test]
fn every_thread_of_the_connecting_process_and_its_liveness_are_checked() {
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    for (mode, refusal) in [
        ("plain", None),
        ("filtered-thread", Some("runs under a seccomp filter")),
        (
            "connector-exits",
            Some("which opened this connection, has exited"),
        ),
    ] {
        let relay = Relay::start(&s, mode);
        let (code, out, err) = run_cordon(&["audit", "verify", "--broker", &relay.uri()]);
        match refusal {
            None => assert_eq!(code, 0, "{mode}: {out}{err}"),
            Some(needle) => {
                assert_eq!(code, 2, "{mode}: {out}{err}");
                assert!(err.contains(needle), "{mode}: {err}");
            }
        }
        if mode == "filtered-thread" {
            assert!(err.contains("thread "), "{err}");
        }
        // Reaped only now (dropped): until here the connector of
        // `connector-exits` is a zombie.
        drop(relay);
    }
}

/// A `Session` stream is checked when it opens and again as it goes: once
/// its peer puts a thread under a filter, a request that comes more than
/// `RECHECK_AFTER` (100 ms) later ends the stream with PERMISSION_DENIED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_peer_comes_under_seccomp_is_ended() {
    let s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    let relay = Relay::start(&s, "filter-on-signal");
    let mut c = client::connect(&relay.uri().parse::<BrokerUri>().unwrap())
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = c
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let ask = |i: u64| SessionRequest {
        request_id: i,
        msg: Some(session_request::Msg::Decide(file_request(
            i,
            b"/etc/hosts",
            &["read"],
        ))),
    };
    tx.send(ask(1)).await.unwrap();
    match answers.next().await.unwrap().unwrap().msg {
        Some(session_response::Msg::Decision(d)) => assert!(d.allow, "{}", d.reason),
        other => panic!("{other:?}"),
    }
    relay.filter_now().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    tx.send(ask(2)).await.unwrap();
    let end = answers.next().await.unwrap();
    let status = end.expect_err("the stream should end with a refusal");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("runs under a seccomp filter"),
        "{status:?}"
    );
}

/// A call's message may come long after its headers, which is when the
/// interceptor checks the peer: by then the peer may have put itself under a
/// filter. Each call is checked again once its message is there (unary and
/// server-streaming calls alike), so the late message is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_message_sent_after_its_peer_came_under_seccomp_is_refused() {
    use cordon_broker::proto::{
        AuditRecord, DecideResponse, PolicyStatusResponse, ReloadPolicyResponse,
        VerifyAuditRequest, VerifyAuditResponse,
    };
    use tonic::codegen::http::uri::PathAndQuery;

    /// Sends `path`'s headers, puts the relay under a filter, then sends the
    /// message: what the call ends with.
    async fn late<M, R>(s: &Serve, path: &'static str, message: M) -> tonic::Status
    where
        M: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + std::fmt::Debug + Send + 'static,
    {
        let relay = Relay::start(s, "filter-on-signal");
        let channel = client::channel(&relay.uri().parse::<BrokerUri>().unwrap())
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<M>(1);
        let call = tokio::spawn(async move {
            let response = grpc
                .streaming::<_, _, R, _>(
                    tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                    PathAndQuery::from_static(path),
                    tonic_prost::ProstCodec::default(),
                )
                .await;
            match response {
                Err(status) => status,
                Ok(mut stream) => match stream.get_mut().message().await {
                    Ok(answer) => panic!("{path}: answered {answer:?}"),
                    Err(status) => status,
                },
            }
        });
        // The headers are through and checked.
        tokio::time::sleep(Duration::from_millis(300)).await;
        relay.filter_now().await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        tx.send(message).await.unwrap();
        drop(tx);
        call.await.unwrap()
    }

    let s = Serve::start(ALLOW_ALL_BUT_TMP, &[]);
    let statuses = [
        (
            "Decide",
            late::<_, DecideResponse>(
                &s,
                "/cordon.v1.Broker/Decide",
                file_request(1, b"/etc/hosts", &["read"]),
            )
            .await,
        ),
        (
            "QueryAudit",
            late::<_, AuditRecord>(
                &s,
                "/cordon.v1.Broker/QueryAudit",
                QueryAuditRequest::default(),
            )
            .await,
        ),
        (
            "VerifyAudit",
            late::<_, VerifyAuditResponse>(
                &s,
                "/cordon.v1.Broker/VerifyAudit",
                VerifyAuditRequest {},
            )
            .await,
        ),
        (
            "PolicyStatus",
            late::<_, PolicyStatusResponse>(
                &s,
                "/cordon.v1.Broker/PolicyStatus",
                PolicyStatusRequest {},
            )
            .await,
        ),
        (
            "ReloadPolicy",
            late::<_, ReloadPolicyResponse>(
                &s,
                "/cordon.v1.Broker/ReloadPolicy",
                ReloadPolicyRequest {},
            )
            .await,
        ),
    ];
    for (method, status) in statuses {
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{method}: {status:?}"
        );
        assert!(
            status.message().contains("runs under a seccomp filter"),
            "{method}: {status:?}"
        );
    }
}
