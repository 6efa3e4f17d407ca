//! Request builders shared by the end-to-end tests, the benchmarks and the
//! load generator (included by path from `benches/` and `examples/`).
#![allow(dead_code)]

use std::path::Path;

use cordon_broker::proto::{
    DecideRequest, ExecAccess, FileAccess, NetworkAccess, Process, Sandbox, decide_request::Subject,
};

pub fn sandbox(id: &str, tool: &str) -> Option<Sandbox> {
    Some(Sandbox {
        id: id.into(),
        labels: [("tool".to_string(), tool.to_string())]
            .into_iter()
            .collect(),
        workdir: b"/home/agent/job".to_vec(),
        tmpdir: b"/tmp/cordon-test".to_vec(),
    })
}

pub fn process() -> Option<Process> {
    Some(Process {
        pid: 4242,
        ppid: 4241,
        uid: 1000,
        gid: 1000,
        exe: b"/usr/bin/python3".to_vec(),
        cwd: b"/home/agent/job".to_vec(),
        comm: "python3".into(),
    })
}

pub fn file_request(id: u64, path: &[u8], access: &[&str]) -> DecideRequest {
    DecideRequest {
        request_id: id,
        sandbox: sandbox("sb-1", "test"),
        process: process(),
        syscall: "openat".into(),
        subject: Some(Subject::File(FileAccess {
            path: path.to_vec(),
            access: access.iter().map(|s| s.to_string()).collect(),
            create: access.contains(&"write"),
            truncate: false,
            flags: vec!["O_RDONLY".into()],
        })),
        timeout_ns: 0,
        deadline_unix_ns: 0,
    }
}

/// The wire form of the `policies/cases/read-system-lib` fixture: a read-only
/// `openat` of libc by a sandboxed python, the most common request a real tool
/// makes (allowed). Benchmarks and the load generator measure this request.
pub fn read_system_lib(id: u64) -> DecideRequest {
    let mut req = file_request(id, b"/usr/lib/x86_64-linux-gnu/libc.so.6", &["read"]);
    if let Some(Subject::File(f)) = &mut req.subject {
        f.flags = vec!["O_RDONLY".into(), "O_CLOEXEC".into()];
    }
    req
}

/// A fixture's `input.json` from `policies/cases/<case>/`.
pub fn fixture_input(case: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("policies/cases")
        .join(case)
        .join("input.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn connect_request(id: u64, address: &str, port: u32) -> DecideRequest {
    DecideRequest {
        request_id: id,
        sandbox: sandbox("sb-2", "web-fetch"),
        process: process(),
        syscall: "connect".into(),
        subject: Some(Subject::Network(NetworkAccess {
            op: "connect".into(),
            family: if address.contains(':') {
                "inet6"
            } else {
                "inet"
            }
            .into(),
            protocol: "tcp".into(),
            address: address.into(),
            port,
            ..Default::default()
        })),
        timeout_ns: 0,
        deadline_unix_ns: 0,
    }
}

pub fn exec_request(id: u64, path: &str, argv: &[&str]) -> DecideRequest {
    DecideRequest {
        request_id: id,
        sandbox: sandbox("sb-3", "shell"),
        process: process(),
        syscall: "execve".into(),
        subject: Some(Subject::Exec(ExecAccess {
            path: path.as_bytes().to_vec(),
            argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        })),
        timeout_ns: 0,
        deadline_unix_ns: 0,
    }
}
