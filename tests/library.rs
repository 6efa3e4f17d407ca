//! The shim as a library, the way an agent runtime links it: an embedded
//! broker, a sandbox spawned from a host process that has children of its own,
//! an async host with a `cordon serve` as its broker.

use std::{process::Command, sync::Arc, time::Duration};

mod support;

use cordon_broker::{
    Broker,
    audit::{Durability, Opening, SledAudit},
    policy::{PolicyEngine, PolicySource},
};
use cordon_shim::{Embedded, Remote, Sandbox, SpawnError};

#[test]
fn a_library_host_keeps_its_own_children_when_a_sandbox_ends() {
    let dir = tempfile::tempdir().unwrap();
    let policy = PolicyEngine::new(PolicySource::Builtin, support::patient_policy()).unwrap();
    let audit = SledAudit::open(
        &dir.path().join("audit"),
        Durability::Batched {
            window: Duration::from_millis(10),
        },
    )
    .unwrap();
    let broker = Broker::new(Arc::new(policy), Arc::new(audit));
    // A child of the host that has nothing to do with the sandbox.
    let mut own = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let sandbox = Sandbox::new(Arc::new(Embedded(broker))).workdir(dir.path());
    let status = sandbox
        .spawn(&mut Command::new("/bin/true"))
        .unwrap()
        .wait()
        .unwrap();
    assert!(status.success());
    // Without become_subreaper the host's children are its own business.
    assert!(
        own.try_wait().unwrap().is_none(),
        "the host's own child was killed when the sandbox ended"
    );
    own.kill().unwrap();
    own.wait().unwrap();
}

/// A library host whose embedded store opens beside the spawn (`Opening`)
/// and fails to: the exec is denied, and `spawn` says it is the store's
/// doing, not the command's (it used to return `SpawnError::Exec`, as for
/// a policy's refusal).
#[test]
fn a_store_that_did_not_open_is_named_by_spawn() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "not a store").unwrap();
    let policy = PolicyEngine::new(PolicySource::Builtin, support::patient_policy()).unwrap();
    let audit = Opening::start(&not_a_dir, Durability::Strict).unwrap();
    let broker = Broker::new(Arc::new(policy), Arc::new(audit));
    let sandbox = Sandbox::new(Arc::new(Embedded(broker))).workdir(dir.path());
    match sandbox.spawn(&mut Command::new("/bin/true")) {
        Err(SpawnError::Unrecorded { program, reason }) => {
            assert_eq!(program, "/bin/true");
            assert!(reason.contains("cannot open the audit store"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

/// An agent runtime is most often async: it connects, spawns and waits on a
/// tokio runtime's thread, with a `cordon serve` as the broker. Spawning asks
/// the broker for the backstop and records the start; waiting records the
/// exit. Each blocked on the client's own runtime, which panics inside
/// another (and so lost the exit record); both kinds of runtime here.
#[test]
fn an_async_host_spawns_and_waits_with_a_remote_broker() {
    let mut serve = support::Serve::start("package cordon\nallow := true\n", &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for multi_thread in [false, true] {
        let runtime = if multi_thread {
            tokio::runtime::Builder::new_multi_thread()
        } else {
            tokio::runtime::Builder::new_current_thread()
        }
        .enable_all()
        .build()
        .unwrap();
        let uri = serve.uri().parse().unwrap();
        let (id, status) = runtime.block_on(async {
            let broker = Remote::connect(&uri, Duration::from_secs(10)).unwrap();
            let sandbox = Sandbox::new(Arc::new(broker)).workdir(dir.path());
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-c", "exit 3"]);
            let status = sandbox.spawn(&mut cmd).unwrap().wait().unwrap();
            (sandbox.id().to_owned(), status)
        });
        assert_eq!(status.code(), Some(3), "multi-thread: {multi_thread}");
        ids.push(id);
    }
    serve.stop();
    let records = exit_records(&serve.db);
    for id in &ids {
        let exits: Vec<_> = records
            .iter()
            .filter(|r| r["sandbox_id"] == id.as_str())
            .collect();
        assert_eq!(exits.len(), 1, "{id}: {records:?}");
        assert_eq!(exits[0]["exit_status"], 3, "{:?}", exits[0]);
    }
}

/// The `sandbox_exited` records of the audit store at `db`. Waits a while
/// for the store's lock: a sandbox's serving threads, which hold the
/// embedded broker and so its store, may end a moment after `wait` returns.
fn exit_records(db: &std::path::Path) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let out = loop {
        let out = support::cordon()
            .args(["audit", "--format", "json", "--db"])
            .arg(db)
            .output()
            .unwrap();
        let in_use = String::from_utf8_lossy(&out.stderr).contains("the store is in use");
        if !in_use || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    support::assert_ok(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"] == "sandbox_exited")
        .collect()
}

/// The same with the broker in process: spawned and waited on inside a
/// runtime, the exit recorded in its store. (It never panicked: the
/// embedded broker has no runtime of its own. Kept beside the remote case.)
#[test]
fn an_async_host_spawns_and_waits_with_an_embedded_broker() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("audit");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        let policy = PolicyEngine::new(PolicySource::Builtin, support::patient_policy()).unwrap();
        let audit = SledAudit::open(&store, Durability::Strict).unwrap();
        let broker = Broker::new(Arc::new(policy), Arc::new(audit));
        let sandbox = Sandbox::new(Arc::new(Embedded(broker))).workdir(dir.path());
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "exit 4"]);
        sandbox.spawn(&mut cmd).unwrap().wait().unwrap()
    });
    assert_eq!(status.code(), Some(4));
    drop(runtime);
    let exits = exit_records(&store);
    assert_eq!(exits.len(), 1, "{exits:?}");
    assert_eq!(exits[0]["exit_status"], 4, "{:?}", exits[0]);
}

#[test]
fn a_command_spawned_under_a_sandbox_cannot_be_spawned_again() {
    let dir = tempfile::tempdir().unwrap();
    let policy = PolicyEngine::new(PolicySource::Builtin, support::patient_policy()).unwrap();
    let audit = SledAudit::open(&dir.path().join("audit"), Durability::Strict).unwrap();
    let broker = Broker::new(Arc::new(policy), Arc::new(audit));
    let sandbox = Sandbox::new(Arc::new(Embedded(broker))).workdir(dir.path());
    let marker = dir.path().join("ran");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(format!("echo x >> {}", marker.display()));
    let status = sandbox.spawn(&mut cmd).unwrap().wait().unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "x\n");
    // Its hooks name fds of the first spawn, closed by now: both ways of
    // spawning it again are refused before the tool runs.
    let err = cmd.spawn().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EALREADY), "{err}");
    let Err(err) = sandbox.spawn(&mut cmd) else {
        panic!("a spent Command was spawned under a sandbox again");
    };
    assert!(err.to_string().contains("os error 114"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "x\n",
        "the tool ran again"
    );
}

/// A `Sandbox` spawned twice: each tool tree gets a cgroup of its own (with
/// its own caps, and its own kill when it ends), not the first one's, and
/// an id of its own (the first's is the `Sandbox`'s): the two were recorded
/// under one id (found by review). A clone spawned after is another too.
#[test]
fn each_spawn_of_one_sandbox_has_a_cgroup_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = with_a_cgroup(dir.path());
    // Each runs until told to end (a fixed sleep could end before its
    // cgroup is read, on a loaded machine).
    let go = dir.path().join("go");
    let spawn = || {
        sandbox
            .spawn(
                Command::new("/bin/sh")
                    .arg("-c")
                    .arg("while [ ! -e \"$1\" ]; do sleep 0.05; done")
                    .arg("sh")
                    .arg(&go),
            )
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let third = sandbox
        .clone()
        .spawn(&mut Command::new("/bin/true"))
        .unwrap();
    assert_eq!(first.sandbox_id(), sandbox.id());
    assert_ne!(second.sandbox_id(), sandbox.id());
    assert_ne!(third.sandbox_id(), sandbox.id());
    assert_ne!(third.sandbox_id(), second.sandbox_id());
    assert!(third.wait().unwrap().success());
    let cgroup = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let (a, b) = (cgroup(first.id()), cgroup(second.id()));
    assert!(a.contains("/cordon-") && b.contains("/cordon-"), "{a}\n{b}");
    assert_ne!(a, b);
    std::fs::write(&go, "").unwrap();
    assert!(first.wait().unwrap().success());
    assert!(second.wait().unwrap().success());
}

/// A handle dropped without `wait` ends the sandbox: the tool is killed and
/// reaped, and its cgroup is removed.
#[test]
fn dropping_a_sandbox_handle_ends_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = with_a_cgroup(dir.path());
    let running = sandbox.spawn(Command::new("/bin/sleep").arg("30")).unwrap();
    let pid = running.id();
    let cgroups: Vec<String> = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split(':').nth(2))
        .filter(|p| p.contains("/cordon-"))
        .map(str::to_owned)
        .collect();
    assert!(!cgroups.is_empty());
    drop(running);
    // Reaped: not even a zombie of ours.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    let gone = |rel: &str| {
        !std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .any(|c| c.path().join(rel.trim_start_matches('/')).exists())
            && !std::path::Path::new("/sys/fs/cgroup")
                .join(rel.trim_start_matches('/'))
                .exists()
    };
    for c in &cgroups {
        assert!(gone(c), "{c} is still there");
    }
}

/// A sandbox with the built-in policy, a strict store in `dir`, and a pids
/// cap (so that it has a cgroup).
fn with_a_cgroup(dir: &std::path::Path) -> Sandbox {
    let policy = PolicyEngine::new(PolicySource::Builtin, support::patient_policy()).unwrap();
    let audit = SledAudit::open(&dir.join("audit"), Durability::Strict).unwrap();
    let broker = Broker::new(Arc::new(policy), Arc::new(audit));
    Sandbox::new(Arc::new(Embedded(broker)))
        .workdir(dir)
        .limits(cordon_shim::Limits {
            pids: Some(32),
            ..Default::default()
        })
}
