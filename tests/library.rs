//! The shim as a library, the way an agent runtime links it: an embedded
//! broker, a sandbox spawned from a host process that has children of its own.

use std::{process::Command, sync::Arc, time::Duration};

use cordon_broker::{
    Broker,
    audit::{Durability, SledAudit},
    policy::{PolicyEngine, PolicyOptions, PolicySource},
};
use cordon_shim::{Embedded, Sandbox};

#[test]
fn a_library_host_keeps_its_own_children_when_a_sandbox_ends() {
    let dir = tempfile::tempdir().unwrap();
    let policy = PolicyEngine::new(PolicySource::Builtin, PolicyOptions::default()).unwrap();
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

#[test]
fn a_command_spawned_under_a_sandbox_cannot_be_spawned_again() {
    let dir = tempfile::tempdir().unwrap();
    let policy = PolicyEngine::new(PolicySource::Builtin, PolicyOptions::default()).unwrap();
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
/// its own caps, and its own kill when it ends), not the first one's.
#[test]
fn each_spawn_of_one_sandbox_has_a_cgroup_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = with_a_cgroup(dir.path());
    let spawn = || sandbox.spawn(Command::new("/bin/sleep").arg("2")).unwrap();
    let (first, second) = (spawn(), spawn());
    let cgroup = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let (a, b) = (cgroup(first.id()), cgroup(second.id()));
    assert!(a.contains("/cordon-") && b.contains("/cordon-"), "{a}\n{b}");
    assert_ne!(a, b);
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
    let policy = PolicyEngine::new(PolicySource::Builtin, PolicyOptions::default()).unwrap();
    let audit = SledAudit::open(&dir.join("audit"), Durability::Strict).unwrap();
    let broker = Broker::new(Arc::new(policy), Arc::new(audit));
    Sandbox::new(Arc::new(Embedded(broker)))
        .workdir(dir)
        .limits(cordon_shim::Limits {
            pids: Some(32),
            ..Default::default()
        })
}
