//! The cost of a brokered call as the sandboxed process sees it: `openat`,
//! `connect` and `execve` made by a C probe (tests/support/probe.c) natively,
//! under `cordon run` (embedded broker) and under `cordon run --broker` (a
//! `cordon serve` on a Unix socket), with the built-in policy and its
//! backstop. Run with `cargo bench --bench sandboxed`.
//!
//! Each criterion iteration is one call inside one sandbox: `iter_custom`
//! starts the probe (under its wrapper) for `iters` calls and takes the time
//! the probe measured around the calls alone, so the sandbox's start-up is not
//! counted. Results: BENCHMARKS.md.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};

const CORDON: &str = env!("CARGO_BIN_EXE_cordon");

struct Fixture {
    dir: tempfile::TempDir,
    probe: PathBuf,
    target: PathBuf,
    port: u16,
    socket: PathBuf,
    serve: Child,
    _listener: std::thread::JoinHandle<()>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let probe = bin.join("probe");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let status = Command::new("cc")
            .args(["-O2", "-pthread", "-o"])
            .arg(&probe)
            .arg(root.join("tests/support/probe.c"))
            .status()
            .unwrap();
        assert!(status.success(), "cc failed");
        let target = dir.path().join("target.txt");
        std::fs::write(&target, "x").unwrap();
        // A TCP listener that accepts and drops every connection.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = std::thread::spawn(move || {
            for c in listener.incoming() {
                drop(c);
            }
        });
        let policy = dir.path().join("policy");
        std::fs::create_dir(&policy).unwrap();
        std::fs::copy(
            root.join("policies/default.rego"),
            policy.join("default.rego"),
        )
        .unwrap();
        std::fs::write(
            policy.join("bench.rego"),
            format!(
                "package cordon\nimport rego.v1\nallow if {{\n  input.kind == \"exec\"\n  startswith(input.exec.path, \"{}/\")\n}}\n",
                bin.display()
            ),
        )
        .unwrap();
        std::fs::write(
            policy.join("bench.json"),
            serde_json::json!({"cordon": {
                "network": {"allow": [{"cidr": "127.0.0.1/32", "ports": [port]}]},
                "backstop_extra": {"execute": [bin]},
            }})
            .to_string(),
        )
        .unwrap();
        let socket = dir.path().join("run/broker.sock");
        let serve = Command::new(CORDON)
            .args(["serve", "--eval-timeout", "10s", "--listen"])
            .arg(format!("unix://{}", socket.display()))
            .arg("--audit-db")
            .arg(dir.path().join("serve-audit"))
            .arg("--policy")
            .arg(&policy)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Fixture {
            dir,
            probe,
            target,
            port,
            socket,
            serve,
            _listener: accept,
        }
    }

    fn wrapper(&self, variant: &str) -> Vec<String> {
        let d = self.dir.path();
        match variant {
            "native" => vec![],
            "cordon_run" => vec![
                CORDON.into(),
                "run".into(),
                // No stall of a loaded machine's debug build (`cargo test
                // --all-targets` runs each benchmark once) reaches it; its
                // check costs the same whatever its value.
                "--eval-timeout".into(),
                "10s".into(),
                "--audit-db".into(),
                d.join("audit").display().to_string(),
                "--policy".into(),
                d.join("policy").display().to_string(),
                "--".into(),
            ],
            _ => vec![
                CORDON.into(),
                "run".into(),
                "--broker".into(),
                format!("unix://{}", self.socket.display()),
                "--".into(),
            ],
        }
    }

    /// Runs `iters` calls of `call` in one probe under `variant`; the time
    /// the probe measured around the calls.
    fn measure(&self, variant: &str, call: &str, iters: u64) -> Duration {
        let n = iters.max(1).to_string();
        let probe = self.probe.display().to_string();
        let args: Vec<String> = match call {
            "openat" => vec![
                probe,
                "open-loop".into(),
                self.target.display().to_string(),
                n,
            ],
            "connect" => vec![
                probe,
                "connect-loop".into(),
                "127.0.0.1".into(),
                self.port.to_string(),
                n,
            ],
            _ => vec![probe, "exec-loop".into(), "/bin/true".into(), n],
        };
        let wrapper = self.wrapper(variant);
        let argv: Vec<&String> = wrapper.iter().chain(&args).collect();
        let out = Command::new(argv[0])
            .args(&argv[1..])
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let total = text
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("total_ns="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{variant} {call}: no total in {text:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        Duration::from_nanos(total)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.serve.kill();
        let _ = self.serve.wait();
    }
}

fn sandboxed(c: &mut Criterion) {
    let f = Fixture::new();
    for call in ["openat", "connect", "execve"] {
        let mut g = c.benchmark_group(format!("sandboxed_{call}"));
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(if call == "execve" { 8 } else { 4 }));
        g.warm_up_time(Duration::from_secs(1));
        for variant in ["native", "cordon_run", "cordon_run_broker"] {
            g.bench_function(variant, |b| {
                b.iter_custom(|iters| f.measure(variant, call, iters))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, sandboxed);
criterion_main!(benches);
