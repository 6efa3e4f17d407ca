//! Connecting to a broker by URI: `unix:///path/to.sock`, `http://host:port`
//! (and `https://` when built with TLS).

use std::path::PathBuf;

use cordon_proto::v1::broker_client::BrokerClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::service::{MAX_ANSWER_BYTES, MAX_MESSAGE_BYTES};

/// A failure to reach a broker.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("broker URI {0:?} is not unix:///PATH or https://HOST:PORT")]
    BadUri(String),
    #[error("cannot connect to the broker at {uri}: {message}")]
    Connect { uri: String, message: String },
}

/// A parsed broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerUri {
    Unix(PathBuf),
    Http(String),
}

impl std::fmt::Display for BrokerUri {
    /// As it is written on the command line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerUri::Unix(path) => write!(f, "unix://{}", path.display()),
            BrokerUri::Http(uri) => f.write_str(uri),
        }
    }
}

impl std::str::FromStr for BrokerUri {
    type Err = ConnectError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.starts_with('/') {
                return Ok(BrokerUri::Unix(PathBuf::from(path)));
            }
        } else if s.starts_with("https://") && s.parse::<Uri>().is_ok() {
            return Ok(BrokerUri::Http(s.to_owned()));
        }
        // (Not `http://`: no broker listens on plain TCP, and whoever could
        // relay one there would answer for it.)
        Err(ConnectError::BadUri(s.to_owned()))
    }
}

/// Opens a channel to the broker, taking answers of up to 4 MiB (decisions,
/// reports: a shim never reserves more for one).
pub async fn connect(uri: &BrokerUri) -> Result<BrokerClient<Channel>, ConnectError> {
    Ok(BrokerClient::new(channel(uri).await?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// [`connect`] for reading `QueryAudit`: one record may carry a full-size
/// argv three times, so answers of up to `MAX_ANSWER_BYTES` are taken.
pub async fn connect_for_records(uri: &BrokerUri) -> Result<BrokerClient<Channel>, ConnectError> {
    Ok(connect(uri)
        .await?
        .max_decoding_message_size(MAX_ANSWER_BYTES))
}

/// A channel to the broker, for any service it serves (health, reflection).
pub async fn channel(uri: &BrokerUri) -> Result<Channel, ConnectError> {
    let fail = |message: String| ConnectError::Connect {
        uri: match uri {
            BrokerUri::Unix(p) => format!("unix://{}", p.display()),
            BrokerUri::Http(h) => h.clone(),
        },
        message,
    };
    Ok(match uri {
        BrokerUri::Unix(path) => {
            let path = path.clone();
            // The URI is required by the API but unused: the connector dials the socket.
            Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(&path).await?;
                        trusted_peer(&stream, &path)?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(|e| fail(error_chain(&e)))?
        }
        BrokerUri::Http(h) => {
            let endpoint = Endpoint::from_shared(h.clone()).map_err(|e| fail(e.to_string()))?;
            let endpoint = if h.starts_with("https://") {
                with_client_tls(endpoint).map_err(fail)?
            } else {
                endpoint
            };
            endpoint
                .connect()
                .await
                .map_err(|e| fail(error_chain(&e)))?
        }
    })
}

/// Whether the process that answers at `path` may be the broker: it runs
/// as root, as this process's effective user, or as a user named in
/// `CORDON_BROKER_UID` (uids, comma-separated; a broker run as a user of its
/// own). Checked at every connect and reconnect: whoever could put a socket
/// at the path (a directory another user may write, a broker's restart) or
/// relay one would otherwise answer for the broker, allowing what it likes.
fn trusted_peer(stream: &tokio::net::UnixStream, path: &std::path::Path) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let me = nix::unistd::geteuid().as_raw();
    // Read once per process, as the TLS files are: a library host's own
    // `setenv` may run while a sandbox reconnects.
    static NAMED: std::sync::OnceLock<(String, Option<Vec<u32>>)> = std::sync::OnceLock::new();
    let (named, listed) = NAMED.get_or_init(|| {
        let named = std::env::var("CORDON_BROKER_UID").unwrap_or_default();
        let listed = named
            .split(',')
            .filter(|u| !u.trim().is_empty())
            .map(|u| u.trim().parse::<u32>())
            .collect::<Result<Vec<_>, _>>()
            .ok();
        (named, listed)
    });
    let Some(listed) = listed else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("CORDON_BROKER_UID={named:?} is not a comma-separated list of uids"),
        ));
    };
    if uid == 0 || uid == me || listed.contains(&uid) {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "the process at {} runs as uid {uid}: a broker must run as root or as this user \
             (uid {me}), or as a uid named in CORDON_BROKER_UID",
            path.display()
        ),
    ))
}

/// Mutual TLS from `CORDON_TLS_CA` (the CA that signed the broker's
/// certificate) and `CORDON_TLS_CERT`/`CORDON_TLS_KEY` (this client's
/// certificate and key), all PEM files, read once per process: a shim
/// reconnects while its tool runs, and a tool that may write where they are
/// could put a FIFO in their place, whose read would block past every
/// deadline.
#[cfg(feature = "tls")]
fn with_client_tls(endpoint: Endpoint) -> Result<Endpoint, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    static CONFIG: std::sync::OnceLock<ClientTlsConfig> = std::sync::OnceLock::new();
    let config = match CONFIG.get() {
        Some(config) => config.clone(),
        None => {
            let read = |var: &str| -> Result<Vec<u8>, String> {
                let path = std::env::var_os(var)
                    .ok_or_else(|| format!("https:// brokers need {var} (a PEM file)"))?;
                std::fs::read(&path)
                    .map_err(|e| format!("{var}={}: {e}", PathBuf::from(&path).display()))
            };
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read("CORDON_TLS_CA")?))
                .identity(Identity::from_pem(
                    read("CORDON_TLS_CERT")?,
                    read("CORDON_TLS_KEY")?,
                ));
            CONFIG.get_or_init(|| config).clone()
        }
    };
    endpoint.tls_config(config).map_err(|e| error_chain(&e))
}

#[cfg(not(feature = "tls"))]
fn with_client_tls(_: Endpoint) -> Result<Endpoint, String> {
    Err("this build of cordon has no TLS support (build with --features tls)".into())
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
