//! `cordon serve` on TCP with mutual TLS, and `cordon run`/`cordon audit`
//! reaching it over https:// (built with `--features tls`). Certificates are
//! made for each run with the `openssl` command.
#![cfg(feature = "tls")]

mod support;

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use support::{assert_paced_out_of_fds, cordon, exits_within, free_tcp_port};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl req` with a new unencrypted P-256 key in `name.key`, then `rest`.
fn req_with_new_key(dir: &Path, name: &str, rest: &[&str]) {
    let key = format!("{name}.key");
    let mut args = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key,
    ];
    args.extend_from_slice(rest);
    openssl(dir, &args);
}

/// A self-signed CA (`ca.pem`, `ca.key`).
fn make_ca(dir: &Path, ca: &str) {
    let (pem, subj) = (format!("{ca}.pem"), format!("/CN={ca}"));
    req_with_new_key(
        dir,
        ca,
        &["-x509", "-out", &pem, "-days", "1", "-subj", &subj],
    );
}

/// A certificate signed by `ca` (`name.pem`, `name.key`), with extensions `ext`.
fn make_cert(dir: &Path, ca: &str, name: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    let (csr, subj) = (format!("{name}.csr"), format!("/CN={name}"));
    req_with_new_key(dir, name, &["-out", &csr, "-subj", &subj]);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "1",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// `cordon serve` on `listen` with the server certificate and client CA made
/// in `d`, its store in `d/AUDIT`.
fn serve_tls(d: &Path, listen: &str, audit: &str) -> Command {
    let mut c = cordon();
    c.args(["serve", "--listen", listen, "--audit-db"])
        .arg(d.join(audit))
        .arg("--tls-cert")
        .arg(d.join("server.pem"))
        .arg("--tls-key")
        .arg(d.join("server.key"))
        .arg("--tls-client-ca")
        .arg(d.join("ca.pem"));
    c
}

/// A server certificate's extensions (for 127.0.0.1 and localhost), and a
/// client's.
const SERVER_EXT: &str = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n";
const CLIENT_EXT: &str = "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n";

/// A CA `ca` in `d`, and the `server` and `client` certificates it signs.
fn make_server_and_client(d: &Path) {
    make_ca(d, "ca");
    make_cert(d, "ca", "server", SERVER_EXT);
    make_cert(d, "ca", "client", CLIENT_EXT);
}

/// A connection to 127.0.0.1:`port`, once something listens there (20 s).
fn connect_when_listening(port: u16) -> std::net::TcpStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("serve did not listen: {e}"),
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn serve_over_tcp_with_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_server_and_client(d);
    make_ca(d, "other-ca");
    make_cert(d, "other-ca", "stranger", CLIENT_EXT);
    let port = free_tcp_port();
    let listen = format!("tcp://127.0.0.1:{port}");

    // Without a client CA, TCP is refused: there would be no way to know the caller.
    let out = cordon()
        .args(["serve", "--listen", &listen, "--tls-cert"])
        .arg(d.join("server.pem"))
        .arg("--tls-key")
        .arg(d.join("server.key"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--tls-client-ca"));

    let log = std::fs::File::create(d.join("serve.log")).unwrap();
    let mut serve = serve_tls(d, &listen, "audit")
        .stderr(log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    drop(connect_when_listening(port));
    let uri = format!("https://localhost:{port}");
    let work = d.join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("in.txt"), "over tls").unwrap();
    let run = |cert: &str| -> Output {
        let mut c = cordon();
        c.args(["run", "--broker", &uri, "--", "/bin/cat", "in.txt"])
            .current_dir(&work)
            .env("CORDON_TLS_CA", d.join("ca.pem"));
        if !cert.is_empty() {
            c.env("CORDON_TLS_CERT", d.join(format!("{cert}.pem")))
                .env("CORDON_TLS_KEY", d.join(format!("{cert}.key")));
        }
        c.output().unwrap()
    };

    let out = run("client");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "over tls");

    // No client certificate, or one from another CA: no broker, no tool.
    let out = run("");
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("CORDON_TLS_CERT"),
        "{}",
        text(&out.stderr)
    );
    let out = run("stranger");
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));

    // Auditors read the decisions over the same channel.
    let out = cordon()
        .args([
            "audit",
            "--broker",
            &uri,
            "--format",
            "json",
            "--path-prefix",
        ])
        .arg(work.join("in.txt"))
        .env("CORDON_TLS_CA", d.join("ca.pem"))
        .env("CORDON_TLS_CERT", d.join("client.pem"))
        .env("CORDON_TLS_KEY", d.join("client.key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let records: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        records
            .iter()
            .any(|r| r["allow"] == true && r["syscall"] == "openat"),
        "{records:?}"
    );

    // A second broker on the same address cannot listen: it says so and
    // exits (it used to log "listening" and run without its listener).
    let second = serve_tls(d, &listen, "audit2")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = exits_within(
        second,
        Duration::from_secs(20),
        "a broker that cannot listen should exit",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("a listener failed"),
        "{}",
        text(&out.stderr)
    );

    let _ = serve.kill();
    let _ = serve.wait();
}

/// A TCP broker out of fds (connections that hold them, under a low hard
/// limit) neither spins nor stops accepting, as on a unix socket: tonic's
/// own TCP accept loop retried at once, so the listener, bound by cordon
/// now, is paced like the unix one.
#[test]
fn a_tcp_broker_out_of_fds_neither_spins_nor_stops_accepting() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_server_and_client(d);
    let port = free_tcp_port();
    let listen = format!("tcp://127.0.0.1:{port}");
    let mut limited = Command::new("prlimit");
    limited.arg("--nofile=64:64");
    let serve = serve_tls(d, &listen, "audit");
    limited
        .arg(serve.get_program())
        .args(serve.get_args())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut serve = limited.spawn().unwrap();
    drop(connect_when_listening(port));
    // Each accepted connection, waiting for its handshake, takes an fd;
    // the rest wait in the backlog.
    let mut held = Vec::new();
    for _ in 0..80 {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => held.push(c),
            Err(e) => {
                let _ = serve.kill();
                let out = serve.wait_with_output().unwrap();
                panic!(
                    "connection {} refused ({e}); serve: {}, {}",
                    held.len(),
                    out.status,
                    text(&out.stderr)
                );
            }
        }
    }
    assert_paced_out_of_fds(serve, held, || {
        let mut verify = cordon();
        verify
            .args(["audit", "verify", "--broker"])
            .arg(format!("https://localhost:{port}"))
            .env("CORDON_TLS_CA", d.join("ca.pem"))
            .env("CORDON_TLS_CERT", d.join("client.pem"))
            .env("CORDON_TLS_KEY", d.join("client.key"));
        verify
    });
}

/// A TCP peer that never starts its TLS handshake is dropped once the
/// handshake's time is up (10 s), instead of holding one of the broker's
/// fds for as long as it likes (TCP has no peer check before TLS).
#[test]
fn a_tcp_peer_that_never_shakes_hands_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_server_and_client(d);
    let port = free_tcp_port();
    let mut serve = serve_tls(d, &format!("tcp://127.0.0.1:{port}"), "audit")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut idle = connect_when_listening(port);
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = std::io::Read::read(&mut idle, &mut buf);
    let waited = started.elapsed();
    let _ = serve.kill();
    let _ = serve.wait();
    match read {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("still connected after {waited:?}: {other:?}"),
    }
    // Dropped for its handshake's time, not for something else before it
    // (the server's 10 s count from its accept, which can come well before
    // this thread started counting on a stalled machine).
    assert!(
        (Duration::from_secs(5)..Duration::from_secs(20)).contains(&waited),
        "{waited:?}"
    );
}
