//! A host that made itself its sandboxes' subreaper (`become_subreaper`, as
//! `cordon run` does) and runs two at once. In a test binary of its own: the
//! subreaper is the whole process's.

mod support;

use std::{process::Command, sync::Arc, time::Duration};

use cordon_broker::{
    Broker,
    audit::{Durability, SledAudit},
    policy::{PolicyEngine, PolicySource},
};
use cordon_shim::{Embedded, Sandbox};

fn sandbox(dir: &std::path::Path) -> Sandbox {
    let policy = PolicyEngine::new(PolicySource::Builtin, support::patient_policy()).unwrap();
    let audit = SledAudit::open(
        &dir.join("audit"),
        Durability::Batched {
            window: Duration::from_millis(10),
        },
    )
    .unwrap();
    let broker = Broker::new(Arc::new(policy), Arc::new(audit));
    Sandbox::new(Arc::new(Embedded(broker))).workdir(dir)
}

/// When one sandbox ends, the descendant it left behind is killed, and the
/// other sandbox's tool is not (it was: every other child of the host was
/// taken for an orphan of the one that ended).
#[test]
fn one_sandbox_ending_kills_its_orphans_and_spares_another_sandbox() {
    cordon_shim::become_subreaper().unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = sandbox(dir_a.path())
        .spawn(Command::new("/bin/sleep").arg("30"))
        .unwrap();
    let b = sandbox(dir_b.path())
        .spawn(
            Command::new("/bin/sh")
                .args(["-c", "/bin/sleep 30 & echo $! > orphan.pid"])
                .current_dir(dir_b.path()),
        )
        .unwrap();
    let status = b.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let orphan = std::fs::read_to_string(dir_b.path().join("orphan.pid")).unwrap();
    let alive = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .is_ok_and(|s| !s.contains(") Z "))
    };
    assert!(
        !alive(&orphan),
        "the orphan of the sandbox that ended lives"
    );
    assert!(
        alive(&a.id().to_string()),
        "the other sandbox's tool was killed"
    );
    drop(a);
}

/// Two sandboxes of one subreaper host, each starting tools over and over:
/// every start succeeds. One sandbox's end sweeps the host's children, and a
/// tool of the other that was still starting (forked, not yet registered)
/// was taken for an orphan, killed and reaped.
#[test]
fn a_tool_still_starting_is_not_taken_for_another_sandboxs_orphan() {
    cordon_shim::become_subreaper().unwrap();
    let starts = |_: usize| {
        std::thread::spawn(|| {
            let dir = tempfile::tempdir().unwrap();
            let sandbox = sandbox(dir.path());
            for round in 0..40 {
                let tool = sandbox
                    .spawn(&mut Command::new("/bin/true"))
                    .unwrap_or_else(|e| panic!("start {round}: {e}"));
                let status = tool.wait().unwrap();
                assert!(status.success(), "start {round}: {status:?}");
            }
        })
    };
    let threads: Vec<_> = (0..2).map(starts).collect();
    for t in threads {
        t.join().unwrap();
    }
}
