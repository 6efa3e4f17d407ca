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
    let policy = PolicyEngine::new(PolicySource::Builtin, PolicyOptions::default()).unwrap();
    let audit = SledAudit::open(&dir.path().join("audit"), Durability::Strict).unwrap();
    let broker = Broker::new(Arc::new(policy), Arc::new(audit));
    let sandbox = Sandbox::new(Arc::new(Embedded(broker)))
        .workdir(dir.path())
        .limits(cordon_shim::Limits {
            pids: Some(32),
            ..Default::default()
        });
    let spawn = || sandbox.spawn(Command::new("/bin/sleep").arg("2")).unwrap();
    let (first, second) = (spawn(), spawn());
    let cgroup = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let (a, b) = (cgroup(first.id()), cgroup(second.id()));
    assert!(a.contains("/cordon-") && b.contains("/cordon-"), "{a}\n{b}");
    assert_ne!(a, b);
    assert!(first.wait().unwrap().success());
    assert!(second.wait().unwrap().success());
}
