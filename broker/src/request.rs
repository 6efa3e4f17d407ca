//! Validation of decision requests and their conversion into the Rego `input`
//! document of the contract (../shared/design.md, "Rego contract").
//!
//! Invariants: every request that reaches the policy engine has passed
//! [`validate`], so sizes are bounded (PATH_MAX paths, bounded argv and labels)
//! and exactly one subject matching its `kind` is present. Paths that are not
//! UTF-8 are shown to the policy with each invalid byte escaped as `\xNN` and
//! `path_utf8: false`.

use std::net::IpAddr;

use cordon_proto::v1::{DecideRequest, Lifecycle, Sandbox, decide_request::Subject, lifecycle};
use serde_json::Value;

/// Linux PATH_MAX, including the terminating NUL the kernel counts.
pub const PATH_MAX: usize = 4096;
/// `sizeof(sockaddr_un.sun_path)`.
pub const UNIX_PATH_MAX: usize = 108;
/// An argv at most: ARG_MAX (2 MiB by default) holds ~230,000 short
/// arguments with their pointers.
pub const MAX_ARGV: usize = 1 << 18;
/// Its bytes at most, with their NULs as the kernel counts them.
pub const MAX_ARGV_BYTES: usize = 2 * 1024 * 1024;
const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY: usize = 63;
const MAX_LABEL_VALUE: usize = 256;
const MAX_ID: usize = 128;
const MAX_FLAGS: usize = 32;

/// A request that cannot be decided because it is malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid request: {0}")]
pub struct InvalidRequest(pub String);

/// Messages quote what the client sent: cut to this many bytes, they stay
/// a line in a status and a record, however large the request.
const MAX_MESSAGE: usize = 1024;

/// A value the client sent, quoted for a message: at most 64 bytes of it.
fn quoted(value: &str) -> String {
    if value.len() <= 64 {
        format!("{value:?}")
    } else {
        format!("{:?}… ({} bytes)", cut(value, 64), value.len())
    }
}

fn invalid(msg: impl Into<String>) -> InvalidRequest {
    let msg = msg.into();
    if msg.len() <= MAX_MESSAGE {
        return InvalidRequest(msg);
    }
    InvalidRequest(format!("{}…", cut(&msg, MAX_MESSAGE)))
}

/// The syscall kinds of the contract.
pub fn kind_of(subject: &Subject) -> &'static str {
    match subject {
        Subject::File(_) => "file",
        Subject::Network(_) => "network",
        Subject::Exec(_) => "exec",
    }
}

/// Checks a request against the contract's shapes and size bounds.
pub fn validate(req: &DecideRequest) -> Result<(), InvalidRequest> {
    let syscall = req.syscall.as_str();
    if syscall.is_empty() || syscall.len() > 32 {
        return Err(invalid("syscall must be a name of 1 to 32 characters"));
    }
    if !syscall
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(invalid(format!(
            "syscall {syscall:?} is not a syscall name"
        )));
    }
    if let Some(sandbox) = &req.sandbox {
        validate_sandbox(sandbox)?;
    }
    if let Some(process) = &req.process {
        check_normal_path("process.exe", &process.exe, true)?;
        check_normal_path("process.cwd", &process.cwd, true)?;
        if process.comm.len() > 64 {
            return Err(invalid("process.comm is longer than 64 bytes"));
        }
    }
    match &req.subject {
        None => Err(invalid("one of file, network or exec is required")),
        Some(Subject::File(file)) => {
            check_normal_path("file.path", &file.path, false)?;
            if let Some(a) = file
                .access
                .iter()
                .find(|a| !matches!(a.as_str(), "read" | "write"))
            {
                return Err(invalid(format!(
                    "file.access {} is not \"read\" or \"write\"",
                    quoted(a)
                )));
            }
            // Each at most once: the policy compares the list as a whole
            // (`access == ["read"]`), and it is copied into every record.
            if file.access.len() > 2 || (file.access.len() == 2 && file.access[0] == file.access[1])
            {
                return Err(invalid(
                    "file.access names \"read\" or \"write\" more than once",
                ));
            }
            if file.flags.len() > MAX_FLAGS || file.flags.iter().any(|f| f.len() > 32) {
                return Err(invalid("file.flags has too many or too long entries"));
            }
            Ok(())
        }
        Some(Subject::Network(net)) => {
            if !matches!(
                net.op.as_str(),
                "connect" | "sendto" | "sendmsg" | "sendmmsg" | "bind" | "listen"
            ) {
                return Err(invalid(format!(
                    "network.op {} is not a known operation",
                    quoted(&net.op)
                )));
            }
            if net.protocol.len() > 16 {
                return Err(invalid("network.protocol is longer than 16 bytes"));
            }
            match net.family.as_str() {
                "inet" | "inet6" => {
                    let ip: IpAddr = net.address.parse().map_err(|_| {
                        invalid(format!(
                            "network.address {} is not an IP address",
                            quoted(&net.address)
                        ))
                    })?;
                    if ip.is_ipv4() != (net.family == "inet") {
                        return Err(invalid(format!(
                            "network.address {} does not match family {}",
                            net.address, net.family
                        )));
                    }
                    // One spelling per address, so that a rule naming one
                    // (a metadata endpoint) cannot be passed by another
                    // (`fd00:ec2:0::254`, `::ffff:169.254.169.254`).
                    if let IpAddr::V6(v6) = ip
                        && let Some(v4) = v6.to_ipv4_mapped()
                    {
                        return Err(invalid(format!(
                            "network.address {} is IPv4-mapped: send family inet, address {v4}, v4_mapped true",
                            net.address
                        )));
                    }
                    if ip.to_string() != net.address {
                        return Err(invalid(format!(
                            "network.address {} is not in canonical form ({ip})",
                            quoted(&net.address)
                        )));
                    }
                    if net.port > u32::from(u16::MAX) {
                        return Err(invalid(format!(
                            "network.port {} is out of range",
                            net.port
                        )));
                    }
                    Ok(())
                }
                "unix" => {
                    if net.path.is_empty() && net.op != "listen" {
                        return Err(invalid("network.path is required for family unix"));
                    }
                    if net.path.first() == Some(&b'/') {
                        // A socket file, named by its resolved path: longer
                        // than sun_path when reached by a relative name from
                        // a deep directory, as the kernel allows.
                        return check_normal_path("network.path", &net.path, false);
                    }
                    if !net.path.is_empty() && net.path.first() != Some(&b'@') {
                        return Err(invalid(
                            "network.path must be absolute, or abstract (starting with '@')",
                        ));
                    }
                    if net.path.len() > UNIX_PATH_MAX + 1 {
                        return Err(invalid(format!(
                            "network.path is longer than {UNIX_PATH_MAX} bytes"
                        )));
                    }
                    Ok(())
                }
                other => Err(invalid(format!(
                    "network.family {} is not \"inet\", \"inet6\" or \"unix\"",
                    quoted(other)
                ))),
            }
        }
        Some(Subject::Exec(exec)) => {
            check_normal_path("exec.path", &exec.path, false)?;
            check_argv("exec.argv", &exec.argv)
        }
    }
}

/// What of a request [`validate`] refused may be stored in its audit
/// record: the index keys (syscall, sandbox id) and labels only if valid,
/// paths up to a NUL and below PATH_MAX, argv only if within bounds, an
/// address only if it is one, short fields cut to their bounds.
pub fn storable(req: &DecideRequest) -> DecideRequest {
    let syscall_ok = !req.syscall.is_empty()
        && req.syscall.len() <= 32
        && req
            .syscall
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let subject = req.subject.as_ref().map(|s| match s {
        Subject::File(f) => Subject::File(cordon_proto::v1::FileAccess {
            path: shown_path(&f.path),
            ..Default::default()
        }),
        Subject::Network(n) => Subject::Network(cordon_proto::v1::NetworkAccess {
            op: cut(&n.op, 16),
            family: cut(&n.family, 16),
            // Kept only as what readers expect of these fields.
            address: if n.address.parse::<IpAddr>().is_ok() {
                n.address.clone()
            } else {
                String::new()
            },
            port: if n.port <= u32::from(u16::MAX) {
                n.port
            } else {
                0
            },
            path: shown_path(&n.path),
            ..Default::default()
        }),
        Subject::Exec(e) => Subject::Exec(cordon_proto::v1::ExecAccess {
            path: shown_path(&e.path),
            argv: if check_argv("", &e.argv).is_ok() {
                e.argv.clone()
            } else {
                Vec::new()
            },
        }),
    });
    DecideRequest {
        request_id: req.request_id,
        syscall: if syscall_ok {
            req.syscall.clone()
        } else {
            String::new()
        },
        // The id and the labels each if valid: the id is an index key.
        sandbox: req.sandbox.as_ref().map(|s| Sandbox {
            id: if valid_sandbox_id(&s.id) {
                s.id.clone()
            } else {
                String::new()
            },
            labels: if validate_labels(&s.labels).is_ok() {
                s.labels.clone()
            } else {
                Default::default()
            },
            ..Default::default()
        }),
        process: req.process.as_ref().map(|p| cordon_proto::v1::Process {
            pid: p.pid,
            exe: shown_path(&p.exe),
            ..Default::default()
        }),
        subject,
        ..Default::default()
    }
}

/// A path as it may be stored: up to its first NUL (where the kernel's
/// copy of it would end), cut below PATH_MAX, and not in the middle of a
/// UTF-8 character (which would make the rest read as invalid bytes).
fn shown_path(path: &[u8]) -> Vec<u8> {
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    let mut out = &path[..end.min(PATH_MAX - 1)];
    if out.len() < end
        && let Err(e) = std::str::from_utf8(out)
        && e.error_len().is_none()
    {
        out = &out[..e.valid_up_to()];
    }
    out.to_vec()
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn check_argv(field: &str, argv: &[Vec<u8>]) -> Result<(), InvalidRequest> {
    if argv.len() > MAX_ARGV {
        return Err(invalid(format!("{field} has more than {MAX_ARGV} entries")));
    }
    let total: usize = argv.iter().map(|a| a.len() + 1).sum();
    if total > MAX_ARGV_BYTES {
        return Err(invalid(format!(
            "{field} is larger than {MAX_ARGV_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Checks a sandbox's id, labels and directories (every message that
/// names one: decisions, lifecycle events, backstop queries).
pub fn validate_sandbox(sandbox: &Sandbox) -> Result<(), InvalidRequest> {
    if !valid_sandbox_id(&sandbox.id) {
        return Err(invalid(format!(
            "sandbox.id must be at most {MAX_ID} letters, digits, '.', '_', ':' or '-'"
        )));
    }
    validate_labels(&sandbox.labels)?;
    for (field, dir) in [
        ("sandbox.workdir", &sandbox.workdir),
        ("sandbox.tmpdir", &sandbox.tmpdir),
    ] {
        // Policies match paths under these by prefix: `//` or `/x/../`
        // would name a directory the prefix does not (`//` trimmed of its
        // slashes is every path).
        check_normal_path(field, dir, true)?;
    }
    Ok(())
}

/// [`check_path`], and normalized: no empty, `.` or `..` component and no
/// trailing `/` (but `/` itself). The contract's paths are resolved, and
/// policies match them by prefix: `/home/a/job/../../../etc/passwd` is under
/// the working directory to a prefix rule.
fn check_normal_path(field: &str, path: &[u8], may_be_empty: bool) -> Result<(), InvalidRequest> {
    check_path(field, path, may_be_empty)?;
    let normal = path.is_empty()
        || path == b"/"
        || (!path.ends_with(b"/")
            && path[1..]
                .split(|&b| b == b'/')
                .all(|c| !c.is_empty() && c != b"." && c != b".."));
    if !normal {
        return Err(invalid(format!(
            "{field} {} is not a normalized absolute path (resolve it: no `//`, `.` or `..`, no \
             trailing `/`)",
            quoted(&escape_bytes(path).0)
        )));
    }
    Ok(())
}

/// Checks a lifecycle event against the same bounds as a decision: it is
/// recorded as it comes.
pub fn validate_lifecycle(event: &Lifecycle) -> Result<(), InvalidRequest> {
    if let Some(sandbox) = &event.sandbox {
        validate_sandbox(sandbox)?;
    }
    match &event.event {
        None => Err(invalid("lifecycle event is empty")),
        Some(lifecycle::Event::Started(s)) => check_argv("started.argv", &s.argv),
        Some(lifecycle::Event::Exited(e)) => {
            // The detail is cut when recorded (it lists what the tool did,
            // so the tool could make it long): the exit is never refused.
            // A name ("memory", "pids", "timeout", "max-file-size"); not a
            // closed list, so that a newer shim's exit is still recorded.
            if e.limit.len() > 32 || !e.limit.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
                return Err(invalid(
                    "exited.limit must be a name of at most 32 lowercase letters and '-'",
                ));
            }
            Ok(())
        }
    }
}

/// The id is an index key, ended by a NUL: no NUL, nothing odd.
pub(crate) fn valid_sandbox_id(id: &str) -> bool {
    id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

fn validate_labels(
    labels: &std::collections::HashMap<String, String>,
) -> Result<(), InvalidRequest> {
    if labels.len() > MAX_LABELS {
        return Err(invalid(format!("more than {MAX_LABELS} labels")));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > MAX_LABEL_KEY {
            return Err(invalid(format!(
                "label key {} must have 1 to {MAX_LABEL_KEY} bytes",
                quoted(k)
            )));
        }
        if v.len() > MAX_LABEL_VALUE {
            return Err(invalid(format!(
                "label {k:?} is longer than {MAX_LABEL_VALUE} bytes"
            )));
        }
    }
    Ok(())
}

fn check_path(field: &str, path: &[u8], may_be_empty: bool) -> Result<(), InvalidRequest> {
    if path.is_empty() {
        return if may_be_empty {
            Ok(())
        } else {
            Err(invalid(format!("{field} is empty")))
        };
    }
    if path.len() >= PATH_MAX {
        return Err(invalid(format!(
            "{field} is {} bytes, longer than PATH_MAX ({PATH_MAX})",
            path.len()
        )));
    }
    if path[0] != b'/' {
        return Err(invalid(format!("{field} is not absolute")));
    }
    if path.contains(&0) {
        return Err(invalid(format!("{field} contains a NUL byte")));
    }
    Ok(())
}

/// Text form of bytes that may not be UTF-8: each invalid byte becomes
/// `\xNN`, and the rest is as it is. Returns the text and whether the input
/// was valid UTF-8. A backslash stays one, so that a directory's text is a
/// prefix of the text of every path under it (prefix rules hold for
/// non-UTF-8 names too); the price is that four typed characters `\xFF` in
/// a non-UTF-8 path read the same as the byte 0xFF.
pub fn escape_bytes(bytes: &[u8]) -> (String, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), true),
        Err(_) => {
            let mut out = String::with_capacity(bytes.len() + 8);
            for chunk in bytes.utf8_chunks() {
                out.push_str(chunk.valid());
                for b in chunk.invalid() {
                    out.push_str(&format!("\\x{b:02X}"));
                }
            }
            (out, false)
        }
    }
}

/// The escaped text form alone (see [`escape_bytes`]).
pub fn display_bytes(bytes: &[u8]) -> String {
    escape_bytes(bytes).0
}

/// `input.sandbox` of a request with this sandbox.
pub fn sandbox_document(sandbox: &crate::proto::Sandbox) -> Value {
    crate::input::sandbox_document(sandbox)
}

/// The contract's `input` document of a validated request, as a tree; see
/// [`crate::input::Input`] for the document without one.
pub fn input_document(req: &DecideRequest) -> Value {
    crate::input::Input::of(req).to_json()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cordon_proto::v1::{FileAccess, NetworkAccess};

    fn unix(path: &[u8]) -> DecideRequest {
        DecideRequest {
            syscall: "connect".into(),
            subject: Some(Subject::Network(NetworkAccess {
                op: "connect".into(),
                family: "unix".into(),
                path: path.to_vec(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn file_req(path: &[u8]) -> DecideRequest {
        DecideRequest {
            syscall: "openat".into(),
            subject: Some(Subject::File(FileAccess {
                path: path.to_vec(),
                access: vec!["read".into()],
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn sandbox_directories_are_normalized_paths() {
        let with = |workdir: &[u8]| {
            validate_sandbox(&Sandbox {
                id: "sb".into(),
                workdir: workdir.to_vec(),
                ..Default::default()
            })
        };
        for ok in [&b""[..], b"/", b"/home/agent/job", b"/srv/x.y/..z"] {
            assert!(with(ok).is_ok(), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"//"[..],
            b"/home/",
            b"/home//x",
            b"/a/./b",
            b"/a/../b",
            b"/a/..",
        ] {
            let e = with(bad).unwrap_err().0;
            assert!(e.contains("not a normalized absolute path"), "{e}");
        }
    }

    /// The subject's paths and the process's are resolved ones, as the
    /// sandbox's are: a `..` would pass a prefix rule for the working
    /// directory while naming a file outside it.
    #[test]
    fn subject_and_process_paths_are_normalized() {
        let exec = |path: &[u8]| DecideRequest {
            syscall: "execve".into(),
            subject: Some(Subject::Exec(cordon_proto::v1::ExecAccess {
                path: path.to_vec(),
                argv: vec![b"x".to_vec()],
            })),
            ..Default::default()
        };
        let cwd = |path: &[u8]| DecideRequest {
            process: Some(cordon_proto::v1::Process {
                cwd: path.to_vec(),
                ..Default::default()
            }),
            ..file_req(b"/etc/hosts")
        };
        type Maker = fn(&[u8]) -> DecideRequest;
        let makers: [(&str, Maker); 4] = [
            ("file.path", file_req),
            ("exec.path", exec),
            ("network.path", unix),
            ("process.cwd", cwd),
        ];
        for (field, make) in makers {
            for ok in [&b"/"[..], b"/home/a/job/notes.txt", b"/memfd:x (deleted)"] {
                assert!(validate(&make(ok)).is_ok(), "{field} {ok:?}");
            }
            for bad in [
                &b"/home/a/job/../../../etc/passwd"[..],
                b"//etc/passwd",
                b"/etc/./passwd",
                b"/etc/",
            ] {
                let e = validate(&make(bad)).unwrap_err().0;
                assert!(
                    e.starts_with(field) && e.contains("not a normalized absolute path"),
                    "{field}: {e}"
                );
            }
        }
    }

    #[test]
    fn escapes_non_utf8_paths() {
        let doc = input_document(&file_req(b"/tmp/a\xffb"));
        assert_eq!(doc["file"]["path"], "/tmp/a\\xFFb");
        assert_eq!(doc["file"]["path_utf8"], false);
        // A directory's text is a prefix of its non-UTF-8 entries' text,
        // backslash and all (so prefix rules hold for them).
        let dir = input_document(&file_req(b"/srv/x\\y"));
        let entry = input_document(&file_req(b"/srv/x\\y/\xff"));
        assert_eq!(entry["file"]["path"], "/srv/x\\y/\\xFF");
        assert!(
            entry["file"]["path"]
                .as_str()
                .unwrap()
                .starts_with(dir["file"]["path"].as_str().unwrap())
        );
        let doc = input_document(&file_req(b"/tmp/ok"));
        assert_eq!(doc["file"]["path"], "/tmp/ok");
        assert!(doc["file"].get("path_utf8").is_none());
        assert_eq!(doc["kind"], "file");
        assert!(doc.get("network").is_none());
    }

    #[test]
    fn rejects_malformed_requests() {
        assert!(validate(&file_req(b"/etc/passwd")).is_ok());
        assert!(
            validate(&file_req(b"relative"))
                .unwrap_err()
                .0
                .contains("not absolute")
        );
        assert!(validate(&file_req(b"")).is_err());
        let long = [b"/".as_slice(), &vec![b'a'; PATH_MAX]].concat();
        assert!(
            validate(&file_req(&long))
                .unwrap_err()
                .0
                .contains("PATH_MAX")
        );
        assert!(validate(&file_req(b"/a\0b")).is_err());
        let with_access = |access: &[&str]| {
            let mut req = file_req(b"/x");
            if let Some(Subject::File(f)) = &mut req.subject {
                f.access = access.iter().map(|a| a.to_string()).collect();
            }
            validate(&req)
        };
        assert!(with_access(&["read", "write"]).is_ok());
        assert!(with_access(&["write"]).is_ok());
        assert!(with_access(&["read", "read"]).is_err());
        assert!(with_access(&["read", "write", "read"]).is_err());
        assert!(with_access(&["read"; 1000]).is_err());
        let mut no_subject = file_req(b"/x");
        no_subject.subject = None;
        assert!(validate(&no_subject).is_err());
        let mut bad_syscall = file_req(b"/x");
        bad_syscall.syscall = "Open At".into();
        assert!(validate(&bad_syscall).is_err());
        let net = |family: &str, address: &str| DecideRequest {
            syscall: "connect".into(),
            subject: Some(Subject::Network(NetworkAccess {
                op: "connect".into(),
                family: family.into(),
                address: address.into(),
                port: 443,
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(validate(&net("inet", "10.0.0.1")).is_ok());
        assert!(validate(&net("inet", "::1")).is_err());
        assert!(validate(&net("inet", "example.com")).is_err());
        assert!(validate(&net("netlink", "1.2.3.4")).is_err());
        // One spelling per address: a rule on fd00:ec2::254 holds for it.
        assert!(validate(&net("inet6", "fd00:ec2::254")).is_ok());
        for other in ["fd00:ec2:0::254", "FD00:EC2::254", "fd00:0ec2::254"] {
            let e = validate(&net("inet6", other)).unwrap_err().0;
            assert!(e.contains("canonical form (fd00:ec2::254)"), "{e}");
        }
        assert!(validate(&net("inet", "010.0.0.1")).is_err());
        let e = validate(&net("inet6", "::ffff:169.254.169.254"))
            .unwrap_err()
            .0;
        assert!(
            e.contains("send family inet, address 169.254.169.254"),
            "{e}"
        );
        // A socket file's resolved path may exceed sun_path; PATH_MAX bounds it.
        let deep = [b"/".as_slice(), &vec![b'd'; 300]].concat();
        assert!(validate(&unix(&deep)).is_ok());
        assert!(validate(&unix(&long)).is_err());
        assert!(validate(&unix(b"/a\0b")).is_err());
        assert!(validate(&unix(b"relative.sock")).is_err());
        // An abstract name is bounded by sun_path.
        assert!(validate(&unix(&[b"@".as_slice(), &[b'x'; 107]].concat())).is_ok());
        assert!(validate(&unix(&[b"@".as_slice(), &[b'x'; 300]].concat())).is_err());
    }
}
