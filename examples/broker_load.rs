//! Load generator for the broker: throughput and latency of `Session` streams
//! over a Unix socket.
//!
//! Starts an in-process broker (`serve_unix` on a temporary socket, temporary
//! audit store, built-in policy), opens N client connections with one `Session`
//! stream each, and has every stream keep exactly one request in flight (send,
//! wait for its answer, send the next), like a supervisor with one notification
//! pending. Reports decisions per second and the median / p99 round trip seen
//! by the clients, in microseconds.
//!
//! ```text
//! cargo run --release --example broker_load -- --streams 16 --seconds 5 --durability batched
//! taskset -c 0 target/release/examples/broker_load --streams 1     # same-core figure
//! ```
//! Options: `--streams N` (16), `--seconds S` (5, measured), `--warmup S` (1,
//! not measured), `--durability batched|strict` (batched: 10 ms window),
//! `--server-threads N` / `--client-threads N` (tokio workers; default: the
//! number of CPUs this process may run on), `--shared-connection` (all streams
//! on one HTTP/2 connection instead of one connection each), `--memo N`
//! (the policy's decision memo; 0, the default, evaluates every request, since
//! every stream repeats one input and would otherwise measure memo hits).
//! Pin with `taskset`, not in code: scripts/bench-broker.sh does.
//!
//! The last line of output is machine-readable (`RESULT key=value ...`).

#[path = "../tests/support/requests.rs"]
mod support;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use cordon_broker::{
    Broker,
    audit::{AuditLog, Durability, SledAudit},
    client::{BrokerUri, connect},
    policy::{PolicyEngine, PolicyOptions, PolicySource},
    service::{AccessPolicy, bind_unix, serve_unix},
};
use cordon_proto::v1::{
    DecideRequest, SessionRequest, broker_client::BrokerClient, session_request, session_response,
};
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, Clone)]
struct Args {
    streams: usize,
    seconds: f64,
    warmup: f64,
    durability: Durability,
    server_threads: usize,
    client_threads: usize,
    shared_connection: bool,
    memo: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!("broker_load: {msg}");
    eprintln!(
        "usage: broker_load [--streams N] [--seconds S] [--warmup S] [--durability batched|strict] \
         [--server-threads N] [--client-threads N] [--shared-connection] [--memo N]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut a = Args {
        streams: 16,
        seconds: 5.0,
        warmup: 1.0,
        durability: Durability::Batched {
            window: Duration::from_millis(10),
        },
        server_threads: cpus,
        client_threads: cpus,
        shared_connection: false,
        memo: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> T {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{flag}: {v:?} is not a number")))
        }
        match flag.as_str() {
            "--streams" => a.streams = num(&flag, value()),
            "--seconds" => a.seconds = num(&flag, value()),
            "--warmup" => a.warmup = num(&flag, value()),
            "--server-threads" => a.server_threads = num(&flag, value()),
            "--client-threads" => a.client_threads = num(&flag, value()),
            "--durability" => {
                a.durability = match value().as_str() {
                    "batched" => Durability::Batched {
                        window: Duration::from_millis(10),
                    },
                    "strict" => Durability::Strict,
                    other => usage(&format!("--durability {other:?} is not batched or strict")),
                }
            }
            "--shared-connection" => a.shared_connection = true,
            "--memo" => a.memo = num(&flag, value()),
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if a.streams == 0 || a.seconds <= 0.0 || a.server_threads == 0 || a.client_threads == 0 {
        usage("--streams, --seconds and thread counts must be positive");
    }
    a
}

/// The `read-system-lib` fixture request, from its own sandbox per stream.
fn file_request(request_id: u64, stream: usize) -> DecideRequest {
    let mut req = support::read_system_lib(request_id);
    if let Some(sb) = &mut req.sandbox {
        sb.id = format!("load-{stream}");
    }
    req
}

#[derive(Debug, Default)]
struct StreamResult {
    /// Round trips completed in the measured window, in nanoseconds.
    latencies_ns: Vec<u64>,
    /// Server-side policy evaluation times reported in the decisions (µs).
    eval_us: Vec<u64>,
    /// Answers that were not an allow decision for the right request.
    errors: u64,
    first_error: Option<String>,
}

async fn run_stream(
    mut client: BrokerClient<tonic::transport::Channel>,
    stream: usize,
    measure_from: Instant,
    stop_at: Instant,
) -> StreamResult {
    let mut out = StreamResult::default();
    let (tx, rx) = tokio::sync::mpsc::channel::<SessionRequest>(4);
    let mut responses = match client.session(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            out.errors += 1;
            out.first_error = Some(format!("session: {e}"));
            return out;
        }
    };
    let template = file_request(0, stream);
    let mut id = 0u64;
    loop {
        let start = Instant::now();
        if start >= stop_at {
            break;
        }
        id += 1;
        let msg = SessionRequest {
            request_id: id,
            msg: Some(session_request::Msg::Decide(DecideRequest {
                request_id: id,
                ..template.clone()
            })),
        };
        if tx.send(msg).await.is_err() {
            out.errors += 1;
            out.first_error
                .get_or_insert_with(|| "session closed by the broker".into());
            break;
        }
        let answer = responses.message().await;
        let end = Instant::now();
        let problem = match answer {
            Ok(Some(r)) if r.request_id != id => Some(format!(
                "answer for {} while waiting for {id}",
                r.request_id
            )),
            Ok(Some(r)) => match r.msg {
                Some(session_response::Msg::Decision(d)) if d.allow => {
                    if start >= measure_from {
                        out.eval_us.push(d.eval_us);
                    }
                    None
                }
                Some(session_response::Msg::Decision(d)) => Some(format!("denied: {}", d.reason)),
                other => Some(format!("unexpected answer: {other:?}")),
            },
            Ok(None) => Some("stream ended".into()),
            Err(e) => Some(format!("stream error: {e}")),
        };
        if let Some(p) = problem {
            out.errors += 1;
            out.first_error.get_or_insert(p);
            if out.errors > 100 {
                break;
            }
            continue;
        }
        if start >= measure_from && end <= stop_at {
            out.latencies_ns
                .push(end.duration_since(start).as_nanos() as u64);
        }
    }
    out
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() {
    let args = parse_args();
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket: PathBuf = dir.path().join("run/broker.sock");
    let audit_impl = Arc::new(
        SledAudit::open(&dir.path().join("audit"), args.durability).expect("open the audit store"),
    );
    let audit: Arc<dyn AuditLog> = audit_impl.clone();
    let opts = PolicyOptions {
        memo_capacity: args.memo,
        ..Default::default()
    };
    let engine = Arc::new(PolicyEngine::new(PolicySource::Builtin, opts).expect("built-in policy"));
    let engine_name = engine.current().engine_name();
    let broker = Broker::new(engine, audit.clone());

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .thread_name("load-server")
        .enable_all()
        .build()
        .expect("server runtime");
    let listener = server_rt
        .block_on(async { bind_unix(&socket) })
        .expect("bind the socket");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let durability = args.durability;
    let served = server_rt.spawn(async move {
        let shutdown = async {
            let _ = stop_rx.await;
        };
        serve_unix(
            broker,
            durability,
            AccessPolicy::default(),
            listener,
            shutdown,
        )
        .await
    });

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .thread_name("load-client")
        .enable_all()
        .build()
        .expect("client runtime");
    let uri = BrokerUri::Unix(socket.clone());
    let results: Vec<StreamResult> = client_rt.block_on(async {
        let mut clients = Vec::with_capacity(args.streams);
        for i in 0..args.streams {
            if args.shared_connection && i > 0 {
                let first: &BrokerClient<_> = &clients[0];
                clients.push(first.clone());
            } else {
                clients.push(connect(&uri).await.unwrap_or_else(|e| panic!("{e}")));
            }
        }
        let measure_from = Instant::now() + Duration::from_secs_f64(args.warmup);
        let stop_at = measure_from + Duration::from_secs_f64(args.seconds);
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, c)| tokio::spawn(run_stream(c, i, measure_from, stop_at)))
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.expect("stream task"));
        }
        results
    });
    drop(client_rt);
    let _ = stop_tx.send(());
    match server_rt.block_on(served) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("broker_load: server: {e}"),
        Err(e) => eprintln!("broker_load: server task: {e}"),
    }
    server_rt.shutdown_timeout(Duration::from_secs(2));

    let errors: u64 = results.iter().map(|r| r.errors).sum();
    let first_error = results.iter().find_map(|r| r.first_error.clone());
    let per_stream: Vec<usize> = results.iter().map(|r| r.latencies_ns.len()).collect();
    let mut lat: Vec<u64> = results
        .iter()
        .flat_map(|r| r.latencies_ns.iter().copied())
        .collect();
    let mut eval: Vec<u64> = results
        .iter()
        .flat_map(|r| r.eval_us.iter().copied())
        .collect();
    lat.sort_unstable();
    eval.sort_unstable();
    let n = lat.len();
    let rate = n as f64 / args.seconds;
    let us = |ns: u64| ns as f64 / 1000.0;
    let (p50, p90, p99, max) = (
        us(percentile(&lat, 0.50)),
        us(percentile(&lat, 0.90)),
        us(percentile(&lat, 0.99)),
        us(percentile(&lat, 1.0)),
    );
    let durability = match args.durability {
        Durability::Strict => "strict".to_owned(),
        Durability::Batched { window } => format!("batched({}ms)", window.as_millis()),
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "streams={} durability={durability} engine={engine_name} cpus_allowed={cpus} server_threads={} client_threads={} connections={}",
        args.streams,
        args.server_threads,
        args.client_threads,
        if args.shared_connection {
            1
        } else {
            args.streams
        }
    );
    println!(
        "measured {:.1} s after {:.1} s warm-up: {n} decisions, {rate:.0} decisions/s",
        args.seconds, args.warmup
    );
    println!("round trip µs: median {p50:.1}  p90 {p90:.1}  p99 {p99:.1}  max {max:.1}");
    println!(
        "server-side policy eval µs: median {}  p99 {}",
        percentile(&eval, 0.5),
        percentile(&eval, 0.99)
    );
    let (lo, hi) = (
        per_stream.iter().min().copied().unwrap_or(0),
        per_stream.iter().max().copied().unwrap_or(0),
    );
    println!(
        "per-stream decisions: min {lo}  max {hi}; audit records stored: {}",
        audit_impl.last_seq()
    );
    if errors > 0 {
        println!(
            "ERRORS: {errors} (first: {})",
            first_error.unwrap_or_default()
        );
    }
    println!(
        "RESULT streams={} durability={} cpus={cpus} decisions={n} rate={rate:.0} p50_us={p50:.1} p99_us={p99:.1} errors={errors}",
        args.streams,
        if args.durability == Durability::Strict {
            "strict"
        } else {
            "batched"
        },
    );
    drop(audit);
    drop(audit_impl);
    drop(dir);
    if errors > 0 {
        std::process::exit(1);
    }
}
