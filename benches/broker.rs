//! Broker micro-benchmarks (criterion). Run with `cargo bench --bench broker`;
//! `scripts/bench-broker.sh` runs these plus the load generator
//! (`examples/broker_load.rs`) and prints a summary. Results: BENCHMARKS.md.
//!
//! Every bench uses the built-in policy (`policies/default.rego`) and the
//! fixture `policies/cases/read-system-lib` (a read-only `openat` of libc by a
//! sandboxed python: the most common request a real tool makes), so the numbers
//! of the different layers can be subtracted from each other.
//!
//! Criterion reports time per call averaged over each sample; its "median" is
//! the median of those sample means, so rare stalls (sled I/O, flushes) are
//! included in proportion. Per-request percentiles come from the load generator.
//! Sample sizes and measurement times are kept small so that the whole suite
//! runs in about a minute on a 2-core VM (plus the build).

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use cordon_broker::{
    Broker,
    audit::{AuditLog, AuditRecord, Durability, SledAudit},
    client::{BrokerUri, connect},
    decide::decision_record,
    input::{Input, RecordInput},
    policy::{EngineChoice, LoadedPolicy, PolicyEngine, PolicyOptions, PolicySource},
    service::{AccessPolicy, bind_unix, serve_unix},
};
use cordon_proto::v1::{DecideRequest, SessionRequest, session_request, session_response};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tokio_stream::wrappers::ReceiverStream;

#[path = "../tests/support/requests.rs"]
mod support;

const BATCHED: Durability = Durability::Batched {
    window: Duration::from_millis(10),
};

/// `opts` with an evaluation limit no stall reaches: `cargo test
/// --all-targets` runs each benchmark once in a debug build, whose asserts
/// a 50 ms limit on a loaded machine could fail. (The limit's check costs
/// the same whatever its value.)
fn patient(opts: PolicyOptions) -> PolicyOptions {
    PolicyOptions {
        eval_timeout: Duration::from_secs(10),
        ..opts
    }
}

/// The built-in policy, keeping at most `memo` verdicts (0: every request is
/// evaluated, which is what a tool's first call to each path costs).
fn engine(memo: usize) -> Arc<PolicyEngine> {
    let opts = patient(PolicyOptions {
        memo_capacity: memo,
        ..Default::default()
    });
    Arc::new(PolicyEngine::new(PolicySource::Builtin, opts).expect("built-in policy loads"))
}

/// The benchmark's name suffix and memo capacity: evaluated, then memo hits.
const MEMO_VARIANTS: [(&str, usize); 2] = [
    ("", 0),
    ("/memo_hit", cordon_broker::policy::DEFAULT_MEMO_CAPACITY),
];

/// A record exactly as `Broker::decide` would append it for the fixture.
fn sample_record(engine: &PolicyEngine) -> AuditRecord {
    let req = support::read_system_lib(1);
    let verdict = engine.evaluate(&cordon_broker::request::input_document(&req));
    assert!(verdict.allow, "fixture must be allowed: {}", verdict.reason);
    decision_record(&req, &verdict, 7)
}

/// Policy evaluation alone: `LoadedPolicy::evaluate` on the fixture input
/// (serde_json input -> regorus value, evaluate `data.cordon_internal.result`,
/// interpret the answer), with a pooled evaluator. Compiled VM (RVM, what the
/// broker uses by default) and the tree-walking interpreter, both with the
/// decision memo off so that every iteration evaluates; then the memo's hit
/// (the same input again, what a repeated call costs).
fn bench_policy(c: &mut Criterion) {
    let input = support::fixture_input("read-system-lib");
    let mut g = c.benchmark_group("policy_eval");
    g.sample_size(60)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (name, choice) in [
        ("rvm", EngineChoice::Auto),
        ("interpreter", EngineChoice::Interpreter),
    ] {
        let opts = patient(PolicyOptions {
            engine: choice,
            memo_capacity: 0,
            ..Default::default()
        });
        let policy =
            LoadedPolicy::load(&PolicySource::Builtin, &opts).expect("built-in policy loads");
        if choice == EngineChoice::Auto {
            assert_eq!(
                policy.engine_name(),
                "rvm",
                "VM unavailable: {:?}",
                policy.vm_unavailable()
            );
        }
        let v = policy.evaluate(&input);
        assert!(v.allow, "{}", v.reason);
        g.bench_function(format!("default_rego_file_read/{name}"), |b| {
            b.iter(|| policy.evaluate(&input))
        });
    }
    // The same policy from its file (`--policy`): compiled at load, with
    // the decision alone as entry point, where the built-in one runs its
    // stored program (`policy/builtin.rs`).
    let opts = patient(PolicyOptions {
        memo_capacity: 0,
        ..Default::default()
    });
    let file = PolicySource::Paths(vec![
        concat!(env!("CARGO_MANIFEST_DIR"), "/policies/default.rego").into(),
    ]);
    let from_file = LoadedPolicy::load(&file, &opts).expect("policies/default.rego loads");
    assert_eq!(from_file.engine_name(), "rvm");
    g.bench_function("default_rego_file_read/rvm_compiled_at_load", |b| {
        b.iter(|| from_file.evaluate(&input))
    });
    // A read under /etc, where the built-in policy's /etc denials run.
    let mut etc = input.clone();
    etc["file"]["path"] = "/etc/nsswitch.conf".into();
    let builtin = LoadedPolicy::load(&PolicySource::Builtin, &opts).expect("built-in policy loads");
    assert!(builtin.evaluate(&etc).allow);
    g.bench_function("default_rego_etc_read/rvm", |b| {
        b.iter(|| builtin.evaluate(&etc))
    });
    let memoizing = LoadedPolicy::load(&PolicySource::Builtin, &patient(PolicyOptions::default()))
        .expect("built-in policy loads");
    assert!(!memoizing.evaluate(&input).memoized);
    assert!(
        memoizing.evaluate(&input).memoized,
        "second evaluation is a memo hit"
    );
    g.bench_function("default_rego_file_read/memo_hit", |b| {
        b.iter(|| memoizing.evaluate(&input))
    });
    // Reference lines, regorus used directly (not what the broker runs): the
    // input conversion the broker does per call (regorus value deserialized
    // from the serde_json tree), and the compiled VM alone on an already
    // converted input, without the execution timer.
    g.bench_function("native/input_json_to_regorus_value", |b| {
        b.iter(|| <regorus::Value as serde::Deserialize>::deserialize(&input).expect("valid json"))
    });
    let (mut vm, value) = native_vm(&input);
    g.bench_function("native/regorus_rvm_eval", |b| {
        b.iter(|| {
            vm.set_input(value.clone());
            vm.execute_entry_point_by_name(NATIVE_RULE)
                .expect("evaluates")
        })
    });
    g.finish();
}

/// The one rule the broker evaluates (shared with broker/src/policy.rs).
const NATIVE_WRAPPER: &str = cordon_broker::policy::WRAPPER;
const NATIVE_RULE: &str = cordon_broker::policy::RESULT_RULE;

/// regorus's compiled VM for the built-in policy plus the wrapper, and the
/// fixture input already converted to a regorus value.
fn native_vm(input: &serde_json::Value) -> (regorus::rvm::RegoVM, regorus::Value) {
    let mut engine = regorus::Engine::new();
    engine
        .add_policy(
            "default.rego".into(),
            cordon_broker::policy::DEFAULT_POLICY.into(),
        )
        .expect("default.rego parses");
    engine
        .add_policy("wrapper.rego".into(), NATIVE_WRAPPER.into())
        .expect("wrapper parses");
    let rule: regorus::Rc<str> = NATIVE_RULE.into();
    let compiled = engine.compile_with_entrypoint(&rule).expect("compiles");
    let program = regorus::languages::rego::compiler::Compiler::compile_from_policy(
        &compiled,
        &[NATIVE_RULE],
    )
    .expect("compiles for the VM");
    let mut vm = regorus::rvm::RegoVM::new_with_policy(compiled);
    vm.load_program(program);
    vm.set_data(regorus::Value::new_object()).expect("data");
    let value = regorus::Value::from_json_str(&input.to_string()).expect("valid json");
    vm.set_input(value.clone());
    let out = vm
        .execute_entry_point_by_name(NATIVE_RULE)
        .expect("evaluates");
    assert_eq!(
        out[&regorus::Value::from("allow")],
        regorus::Value::from(true)
    );
    (vm, value)
}

/// The built-in policy on the paths a tool asks for most after libraries:
/// its working directory (a file, one under `.git`), a write there, a
/// standard device, its own `/proc` entries, and a credential store (a
/// denial, errno included). Evaluated every time (memo off); the fixture's
/// sandbox and process, another path.
fn bench_policy_paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy_eval_paths");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let opts = patient(PolicyOptions {
        memo_capacity: 0,
        ..Default::default()
    });
    let policy = LoadedPolicy::load(&PolicySource::Builtin, &opts).expect("built-in policy loads");
    let base = support::fixture_input("read-system-lib");
    let workdir = base["sandbox"]["workdir"]
        .as_str()
        .expect("fixture has a workdir")
        .to_owned();
    let pid = base["process"]["pid"].as_i64().expect("fixture has a pid");
    let write = |path: &str, create: bool| {
        let mut input = base.clone();
        let flags = if create {
            vec!["O_WRONLY", "O_CREAT", "O_TRUNC"]
        } else {
            vec!["O_WRONLY"]
        };
        input["file"] = serde_json::json!({"path": path, "access": ["write"], "create": create,
            "truncate": create, "flags": flags});
        input
    };
    let read = |path: &str| {
        let mut input = base.clone();
        input["file"]["path"] = path.into();
        input
    };
    let cases = [
        (
            "workdir_read",
            read(&format!("{workdir}/src/main.py")),
            true,
        ),
        (
            "workdir_git_read",
            read(&format!("{workdir}/.git/objects/ab/cdef")),
            true,
        ),
        (
            "workdir_write",
            write(&format!("{workdir}/out.txt"), true),
            true,
        ),
        ("dev_null_write", write("/dev/null", false), true),
        ("proc_self_read", read(&format!("/proc/{pid}/status")), true),
        (
            "ssh_key_read",
            read(&format!("{workdir}/.ssh/id_ed25519")),
            false,
        ),
    ];
    for (name, input, allowed) in cases {
        let v = policy.evaluate(&input);
        assert_eq!(v.allow, allowed, "{name}: {}", v.reason);
        g.bench_function(name, |b| b.iter(|| policy.evaluate(&input)));
    }
    g.finish();
}

/// Audit append alone, as the caller pays it. Batched: number and queue the
/// record; the flusher thread seals, stores and flushes it within 10 ms. Here
/// appends outrun the flusher, so every 1024th append stores the queue itself
/// (the median is the queuing, the mean includes those). Strict: seal,
/// serialize, sled insert and flush (`sync_file_range`), one appender at a
/// time, so no group commit helps here.
fn bench_audit(c: &mut Criterion) {
    let record = sample_record(&engine(0));
    let mut g = c.benchmark_group("audit_append");
    g.sample_size(40)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = SledAudit::open(&dir.path().join("batched"), BATCHED).expect("open audit");
    g.bench_function("batched_10ms", |b| {
        b.iter_batched(
            || record.clone(),
            |r| audit.append(r).expect("append"),
            BatchSize::SmallInput,
        )
    });
    drop(audit);
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    let audit =
        SledAudit::open(&dir.path().join("strict"), Durability::Strict).expect("open audit");
    g.bench_function("strict", |b| {
        b.iter_batched(
            || record.clone(),
            |r| audit.append(r).expect("append"),
            BatchSize::SmallInput,
        )
    });
    drop(audit);
    g.finish();
}

/// The input document's share of a decision, apart: building it from the
/// request and keying the memo with it (what a memo hit costs besides the
/// lookup), and, on the audit flusher, writing a record that holds it as
/// JSON and freeing the record. `typed_…` and `record_typed` are the same
/// with the typed document (`Input`, a copy of the request in the record);
/// `record_without_input` is the record with no `input`, for the difference.
fn bench_input(c: &mut Criterion) {
    let req = support::read_system_lib(1);
    let mut g = c.benchmark_group("input");
    g.sample_size(60)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g.bench_function("build_and_key", |b| {
        b.iter(|| {
            let input = cordon_broker::request::input_document(&req);
            let key = cordon_broker::memo::Memo::<()>::key(&input);
            (input, key)
        })
    });
    // What the broker does instead since the typed document: key the
    // request as it serializes, and keep a copy of it for the record.
    g.bench_function("typed_key_and_copy", |b| {
        b.iter(|| {
            let key = cordon_broker::memo::Memo::<()>::key(&Input::of(&req));
            (key, std::sync::Arc::new(req.clone()))
        })
    });
    let mut record = sample_record(&engine(0));
    record.input = Some(cordon_broker::request::input_document(&req).into());
    let mut typed = record.clone();
    typed.input = Some(RecordInput::Request(std::sync::Arc::new(req.clone())));
    let mut bare = record.clone();
    bare.input = None;
    for (name, record) in [
        ("record", &record),
        ("record_typed", &typed),
        ("record_without_input", &bare),
    ] {
        let mut body = Vec::with_capacity(4096);
        g.bench_function(format!("{name}/write_json"), |b| {
            b.iter(|| {
                body.clear();
                serde_json::to_writer(&mut body, record).expect("serializes");
                body.len()
            })
        });
        g.bench_function(format!("{name}/drop"), |b| {
            b.iter_batched(|| record.clone(), drop, BatchSize::SmallInput)
        });
    }
    g.finish();
}

/// The broker core in process, as `cordon run`'s embedded broker calls it:
/// validate, build the input document, evaluate (RVM) or hit the memo,
/// append (batched).
fn bench_decide(c: &mut Criterion) {
    let mut g = c.benchmark_group("broker_decide");
    g.sample_size(60)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (suffix, memo) in MEMO_VARIANTS {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit: Arc<dyn AuditLog> =
            Arc::new(SledAudit::open(dir.path(), BATCHED).expect("open audit"));
        let broker = Broker::new(engine(memo), audit);
        let req = support::read_system_lib(1);
        assert!(broker.decide(&req).expect("valid").allow);
        // Owned, as the embedded broker takes it: the copy is made outside
        // the timing (before session 34, `decide(&req)`, which copied a memo
        // hit's request for its record inside it).
        g.bench_function(format!("in_process/batched{suffix}"), |b| {
            b.iter_batched(
                || req.clone(),
                |req| broker.decide_owned(req, Instant::now()).expect("valid"),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// A broker served over a real Unix socket in its own tokio runtime.
struct Server {
    rt: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(durability: Durability, memo: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run/broker.sock");
        let audit: Arc<dyn AuditLog> =
            Arc::new(SledAudit::open(&dir.path().join("audit"), durability).expect("open audit"));
        let broker = Broker::new(engine(memo), audit);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .thread_name("bench-broker")
            .enable_all()
            .build()
            .expect("server runtime");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = rt.block_on(async { bind_unix(&socket) }).expect("bind");
        rt.spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = serve_unix(
                broker,
                durability,
                AccessPolicy::default(),
                listener,
                shutdown,
            )
            .await
            {
                eprintln!("broker failed: {e}");
            }
        });
        Server {
            rt: Some(rt),
            stop: Some(stop),
            socket,
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// One request/response on an open `Session` stream over a Unix socket, one
/// request in flight: client encode + HTTP/2 + server decode, validate,
/// evaluate (RVM), batched append, encode, and back. The client runs on the
/// bench thread (a current-thread runtime, like a supervisor's), the server on
/// its own multi-thread runtime. Run the bench pinned (`taskset -c 0`) for the
/// same-core figure.
fn bench_session(c: &mut Criterion) {
    for (suffix, memo) in MEMO_VARIANTS {
        bench_session_with(c, suffix, memo);
    }
}

fn bench_session_with(c: &mut Criterion, suffix: &str, memo: usize) {
    let server = Server::start(BATCHED, memo);
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let uri = BrokerUri::Unix(server.socket.clone());
    let (tx, mut responses) = client_rt.block_on(async {
        let mut client = connect(&uri).await.expect("connect");
        let (tx, rx) = tokio::sync::mpsc::channel::<SessionRequest>(16);
        let responses = client
            .session(ReceiverStream::new(rx))
            .await
            .expect("session")
            .into_inner();
        (tx, responses)
    });
    let mut next_id = 0u64;
    let template = support::read_system_lib(0);
    let mut round_trip = |n: u64| {
        client_rt.block_on(async {
            let start = Instant::now();
            for _ in 0..n {
                next_id += 1;
                let msg = SessionRequest {
                    request_id: next_id,
                    msg: Some(session_request::Msg::Decide(DecideRequest {
                        request_id: next_id,
                        ..template.clone()
                    })),
                };
                tx.send(msg).await.expect("send");
                let resp = responses.message().await.expect("stream").expect("answer");
                assert_eq!(resp.request_id, next_id);
                match resp.msg {
                    Some(session_response::Msg::Decision(d)) => assert!(d.allow, "{}", d.reason),
                    other => panic!("unexpected answer: {other:?}"),
                }
            }
            start.elapsed()
        })
    };
    round_trip(1000);
    let mut g = c.benchmark_group("session_round_trip");
    g.sample_size(40)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    // The id records how many CPUs the bench may use: 1 under `taskset -c 0`.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    g.bench_function(format!("unix_socket/batched/cpus={cpus}{suffix}"), |b| {
        b.iter_custom(&mut round_trip)
    });
    g.finish();
    drop(tx);
    drop(responses);
    drop(server);
}

criterion_group!(
    benches,
    bench_policy,
    bench_policy_paths,
    bench_input,
    bench_audit,
    bench_decide,
    bench_session
);
criterion_main!(benches);
