//! Shared fixtures for the end-to-end tests: a real `cordon serve` process on
//! a Unix socket in a temporary directory, and request builders.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use cordon_broker::{
    client::{self, BrokerUri},
    proto::broker_client::BrokerClient,
};
use tonic::transport::Channel;

mod requests;
#[allow(unused_imports)] // each test binary uses its own subset
pub use requests::*;

/// Options for `cordon run` with its embedded broker in tests: an
/// evaluation limit a loaded machine does not reach. The default (250 ms
/// of wall time) a stalled debug build can, and the decision is then a
/// denial the test did not expect.
pub const PATIENT_EVAL: [&str; 2] = ["--eval-timeout", "10s"];

/// Policy options for an engine a test builds: an evaluation limit a
/// loaded machine does not reach (the default, 50 ms of wall time, a
/// stalled debug build can).
pub fn patient_policy() -> cordon_broker::policy::PolicyOptions {
    cordon_broker::policy::PolicyOptions {
        eval_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

/// The `cordon` binary under test.
pub fn cordon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cordon"))
}

/// A `cordon serve` child process with its own socket, policy dir and audit DB.
pub struct Serve {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub db: PathBuf,
    pub policy: PathBuf,
    pub extra: Vec<String>,
    /// Set in the broker's environment.
    pub env: Vec<(String, String)>,
}

pub const ALLOW_ALL_BUT_TMP: &str = r#"package cordon

allow if input.kind == "file"
allow if input.kind == "network"

deny contains "writes to /etc are never allowed" if {
    input.kind == "file"
    startswith(input.file.path, "/etc/")
    "write" in input.file.access
}

errno := "EPERM" if startswith(input.file.path, "/secret/")
deny contains "secret" if startswith(input.file.path, "/secret/")

"#;

impl Serve {
    /// Starts a broker with `policy` as `p.rego` in its policy directory.
    pub fn start(policy: &str, extra: &[&str]) -> Self {
        Self::start_with_env(policy, extra, &[])
    }

    /// [`Serve::start`], with `env` set in the broker's environment.
    pub fn start_with_env(policy: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let policy_dir = dir.path().join("policy");
        std::fs::create_dir(&policy_dir).unwrap();
        std::fs::write(policy_dir.join("p.rego"), policy).unwrap();
        let mut s = Serve {
            child: None,
            socket: dir.path().join("run/broker.sock"),
            db: dir.path().join("audit"),
            policy: policy_dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir,
        };
        s.spawn();
        s
    }

    pub fn uri(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        let child = cordon()
            .args(["serve", "--listen", &self.uri(), "--audit-db"])
            .arg(&self.db)
            .arg("--policy")
            .arg(&self.policy)
            .args(["--watch-interval", "100ms"])
            // Generous: a loaded 2-core machine can stall a short evaluation for
            // tens of milliseconds, and the timeout counts wall time.
            .args(if self.extra.iter().any(|a| a == "--eval-timeout") {
                &[][..]
            } else {
                &["--eval-timeout", "2s"][..]
            })
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("cordon serve exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("cordon serve did not start listening:\n{}", self.log());
    }

    /// SIGKILL: no flush, no cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let status = c.wait().unwrap();
            assert!(
                status.success(),
                "cordon serve exited with {status}:\n{}",
                self.log()
            );
        }
    }

    pub async fn client(&self) -> BrokerClient<Channel> {
        client::connect(&self.uri().parse::<BrokerUri>().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `cordon` with args and returns (exit code, stdout, stderr).
pub fn run_cordon(args: &[&str]) -> (i32, String, String) {
    let out = cordon().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a command succeeded (showing its output if not); its stdout.
#[track_caller]
pub fn assert_ok(out: &std::process::Output) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The output of `child`, which must exit within `limit`: if it does not,
/// it is killed and the test fails with `what` (a broker that should refuse
/// to start would otherwise run, and hang the test, forever).
pub fn exits_within(mut child: Child, limit: Duration, what: &str) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The CPU time process `pid` has used so far, in clock ticks (user and
/// system: fields 14 and 15 of stat(5)).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A free TCP port on 127.0.0.1 for a process the test starts to listen on,
/// taken from outside the ephemeral range (below it, or above it where the
/// range starts low). A port that `bind(0)` handed out and the test
/// released can be drawn again, before the process binds it, by another
/// test's `bind(0)` or by a connect: even by the test's own connect waiting
/// for the listener, which then connects to itself and keeps the port from
/// the listener. Each call in a test binary gets another port (a counter,
/// offset by the pid).
pub fn free_tcp_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let bounds: Vec<u32> = range
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let (low, high) = (bounds[0], bounds[1]);
    // Up to 8000 ports next to the range, on its side with more room:
    // below it (above the privileged ports), or above it.
    let (first, span) = if low.saturating_sub(1024) >= 65535 - high {
        let span = (low - 1024).min(8000);
        (low - span, span)
    } else {
        (high + 1, (65535 - high).min(8000))
    };
    assert!(
        span >= 64,
        "no room for ports outside the ephemeral range ({range})"
    );
    let offset = std::process::id().wrapping_mul(97);
    (0..span)
        .map(|_| NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        .map(|n| u16::try_from(first + offset.wrapping_add(n) % span).unwrap())
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port outside the ephemeral range")
}

/// Waits until a broker listens at `socket` (accepts a connection, not
/// only has it bound), for at most 20 s.
pub fn wait_until_listening(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "no broker listens at {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A broker out of fds, `held` connections holding them: in one second it
/// spends under 30 clock ticks of CPU (tonic accepting again at once took
/// more than a CPU, 100), says it cannot accept, and once they are dropped
/// answers a new client (`verify`, started then, and again while it is
/// refused for want of an fd) within 20 s.
pub fn assert_paced_out_of_fds<T>(mut serve: Child, held: Vec<T>, verify: impl Fn() -> Command) {
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(serve.id());
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(serve.id()) - before;
    drop(held);
    // The broker frees the dropped connections' fds as it reads their ends:
    // wait until half are free, so the new client is seldom accepted
    // before there is an fd for its check. One that is anyway is refused,
    // naming the errno, and tries again, within the 20 s.
    let give_up = Instant::now() + Duration::from_secs(20);
    let fds = format!("/proc/{}/fd", serve.id());
    while std::fs::read_dir(&fds).map_or(0, Iterator::count) > 32 && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(20));
    }
    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        loop {
            let client = verify()
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let out = exits_within(
                client,
                Duration::from_secs(20),
                "no answer: the broker accepts no more connections",
            );
            // Refused as UNAVAILABLE, naming the errno: no fd for its pidfd,
            // or for the /proc file its check reads.
            let refused_for_fds =
                String::from_utf8_lossy(&out.stderr).contains("Too many open files");
            if out.status.success() || !refused_for_fds || Instant::now() > give_up {
                break out;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }));
    let _ = serve.kill();
    let out = serve.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let answer = answer.unwrap_or_else(|_| panic!("the broker accepted no new client: {err}"));
    assert!(answer.status.success(), "{answer:?} {err}");
    assert!(spent < 30, "{spent} ticks of CPU in 1 s out of fds");
    assert!(
        err.contains("cannot accept a connection"),
        "never out of fds: {err}"
    );
}

/// Whether this test runs without root (it says so and the caller returns):
/// for tests that need root to set the scene (`chown`, `--user`, `setpriv`,
/// sysctls). `why` says what for, e.g. "needs root, for --user".
pub fn lacks_root(why: &str) -> bool {
    let lacks = !nix::unistd::geteuid().is_root();
    if lacks {
        eprintln!("skipped: {why}");
    }
    lacks
}
