//! `RecordInput::approx_bytes`, which bounds the memory of audit records not
//! yet on disk, held to what the allocator is asked for: every allocation
//! this test's thread makes is counted as glibc's chunk for it.

// The only `unsafe` here: a counting wrapper around the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;

use cordon_broker::input::{Input, RecordInput};
use cordon_broker::proto::{DecideRequest, NetworkAccess, Process, Sandbox};
use cordon_proto::v1::decide_request::Subject;
use cordon_proto::v1::{ExecAccess, FileAccess};

thread_local! {
    /// Bytes this thread holds, as glibc chunks.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

/// glibc's chunk for a request of `n` bytes: the request and an 8-byte
/// header in 16-byte steps, 32 at least.
fn chunk(n: usize) -> isize {
    ((n + 8 + 15) & !15).max(32) as isize
}

fn count(by: isize) {
    // `try_with`: nothing to count while the thread's locals are torn down.
    let _ = LIVE.try_with(|live| live.set(live.get() + by));
}

struct Counting;

// SAFETY: every call is passed to `System` unchanged; the counting only
// touches a const-initialised thread-local `Cell`, which neither allocates
// nor panics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System::alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(chunk(layout.size()));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-chunk(layout.size()));
        // SAFETY: the caller's contract is `System::dealloc`'s.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is `System::realloc`'s.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(chunk(new_size) - chunk(layout.size()));
        }
        p
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// What making `f`'s value adds to this thread's heap, and the value.
fn held<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.with(Cell::get);
    let value = f();
    let after = LIVE.with(Cell::get);
    (value, (after - before) as usize)
}

fn requests() -> Vec<(&'static str, DecideRequest)> {
    let sandbox = Sandbox {
        id: "sb-0123456789abcdef".into(),
        labels: HashMap::from([
            ("tool".into(), "python".into()),
            ("agent".into(), "coder".into()),
        ]),
        workdir: b"/home/agent/job".to_vec(),
        tmpdir: b"/tmp/cordon-abcdef".to_vec(),
    };
    let process = Process {
        pid: 4242,
        ppid: 1,
        uid: 1000,
        gid: 1000,
        exe: b"/usr/bin/python3".to_vec(),
        cwd: b"/home/agent/job".to_vec(),
        comm: "python3".into(),
    };
    let with = |syscall: &str, subject: Subject| DecideRequest {
        sandbox: Some(sandbox.clone()),
        process: Some(process.clone()),
        syscall: syscall.into(),
        subject: Some(subject),
        ..Default::default()
    };
    let many_labels = Sandbox {
        labels: (0..40)
            .map(|i| (format!("label-{i}"), format!("value-{i}")))
            .collect(),
        ..sandbox.clone()
    };
    let file = Subject::File(FileAccess {
        path: b"/usr/lib/python3.11/json/__init__.py".to_vec(),
        access: vec!["read".into()],
        create: false,
        truncate: false,
        flags: vec!["O_RDONLY".into(), "O_CLOEXEC".into()],
    });
    vec![
        ("file", with("openat", file.clone())),
        (
            "exec, 40 arguments",
            with(
                "execve",
                Subject::Exec(ExecAccess {
                    path: b"/usr/bin/gcc".to_vec(),
                    argv: (0..40)
                        .map(|i| format!("-Iinclude/dir{i}").into_bytes())
                        .collect(),
                }),
            ),
        ),
        (
            "exec, a long path",
            with(
                "execve",
                Subject::Exec(ExecAccess {
                    path: vec![b'x'; 4000],
                    argv: vec![b"x".to_vec()],
                }),
            ),
        ),
        (
            "connect",
            with(
                "connect",
                Subject::Network(NetworkAccess {
                    op: "connect".into(),
                    family: "inet6".into(),
                    protocol: "tcp".into(),
                    address: "2001:db8::1".into(),
                    port: 443,
                    path: Vec::new(),
                    v4_mapped: false,
                }),
            ),
        ),
        (
            "file, 40 labels",
            DecideRequest {
                sandbox: Some(many_labels),
                ..with("openat", file)
            },
        ),
    ]
}

#[test]
fn a_record_inputs_estimate_is_near_what_it_holds() {
    for (what, req) in requests() {
        let (tree, tree_held) = held(|| RecordInput::Json(Input::of(&req).to_json()));
        let (copy, copy_held) = held(|| RecordInput::Request(std::sync::Arc::new(req.clone())));
        for (form, input, held) in [("tree", tree, tree_held), ("request", copy, copy_held)] {
            let estimate = input.approx_bytes();
            let ratio = estimate as f64 / held as f64;
            assert!(
                (0.85..=1.15).contains(&ratio),
                "{what} as a {form}: estimated {estimate} B, holds {held} B"
            );
        }
    }
}
