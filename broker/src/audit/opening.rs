//! A store that opens on a thread of its own while the caller goes on:
//! `cordon run` forks the tool and starts its supervisor meanwhile (the
//! store's open, ~4 ms, was the longest step of its start). Every call
//! waits for the open, so nothing is recorded, and so nothing is decided,
//! before it; a store that fails to open fails every call with its error.

use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

use tokio::sync::watch;

use super::{
    Access, Appended, AuditError, AuditFilter, AuditLog, AuditRecord, Durability, SledAudit,
    VerifyReport, panic_text, private_dir,
};

/// A [`SledAudit`] being opened; see the module's comment.
#[derive(Debug)]
pub struct Opening {
    path: String,
    thread: Mutex<Option<JoinHandle<Result<SledAudit, AuditError>>>>,
    /// The store, or its open's error as text (for every call to fail with).
    store: OnceLock<Result<SledAudit, String>>,
    /// The open's error itself, with its source, for [`Opening::take_error`].
    error: Mutex<Option<AuditError>>,
}

impl Opening {
    /// Makes the store's directory (at once: a caller may look at it, as
    /// the sandbox's protection of the store does) and opens the store in
    /// it, for appending, on another thread.
    pub fn start(dir: &Path, durability: Durability) -> Result<Self, AuditError> {
        let open_err = |e: std::io::Error| AuditError::Open {
            path: dir.display().to_string(),
            source: sled::Error::Io(e),
        };
        private_dir(dir).map_err(open_err)?;
        let owned = dir.to_owned();
        let thread = std::thread::Builder::new()
            .name("cordon-store".into())
            .spawn(move || SledAudit::open_made(&owned, durability, Access::Append))
            .map_err(open_err)?;
        Ok(Self {
            path: dir.display().to_string(),
            thread: Mutex::new(Some(thread)),
            store: OnceLock::new(),
            error: Mutex::new(None),
        })
    }

    /// The store once open, or why it is not.
    pub fn wait(&self) -> Result<&SledAudit, AuditError> {
        self.store
            .get_or_init(|| {
                let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
                let failed = |why: String| AuditError::Open {
                    path: self.path.clone(),
                    source: sled::Error::Io(std::io::Error::other(why)),
                };
                let opened = match thread.map(JoinHandle::join) {
                    Some(Ok(opened)) => opened,
                    // A panic is the open's failure.
                    Some(Err(panic)) => Err(failed(format!(
                        "the thread opening it panicked ({})",
                        panic_text(panic.as_ref())
                    ))),
                    // Not reached: one initialiser takes the thread.
                    None => Err(failed("the thread opening it is gone".into())),
                };
                opened.map_err(|e| {
                    let text = e.to_string();
                    *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    text
                })
            })
            .as_ref()
            .map_err(|text| AuditError::NotOpen(text.clone()))
    }

    /// Why the store did not open, once it is known (waiting for it), with
    /// the error's source: for the one caller that reports it.
    pub fn take_error(&self) -> Option<AuditError> {
        let _ = self.wait();
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl AuditLog for Opening {
    fn append(&self, record: AuditRecord) -> Result<Appended, AuditError> {
        self.wait()?.append(record)
    }

    fn scan(
        &self,
        filter: &AuditFilter,
        each: &mut dyn FnMut(AuditRecord) -> bool,
    ) -> Result<u64, AuditError> {
        self.wait()?.scan(filter, each)
    }

    fn verify(&self) -> Result<VerifyReport, AuditError> {
        self.wait()?.verify()
    }

    fn last_seq(&self) -> u64 {
        self.wait().map_or(0, |s| s.last_seq())
    }

    fn last_assigned(&self) -> u64 {
        self.wait().map_or(0, |s| s.last_assigned())
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        match self.wait() {
            Ok(s) => s.subscribe(),
            Err(_) => watch::channel(0).1,
        }
    }

    fn subscribe_durable(&self) -> watch::Receiver<u64> {
        match self.wait() {
            Ok(s) => s.subscribe_durable(),
            Err(_) => watch::channel(0).1,
        }
    }

    fn flush(&self) -> Result<(), AuditError> {
        self.wait()?.flush()
    }

    fn take_unstored(&self) -> Vec<AuditRecord> {
        self.wait().map(|s| s.take_unstored()).unwrap_or_default()
    }

    fn close(&self) {
        if let Ok(s) = self.wait() {
            s.close();
        }
    }

    fn lost(&self) -> u64 {
        self.wait().map_or(0, |s| s.lost())
    }

    fn ready(&self) -> Result<(), AuditError> {
        self.wait()?.ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision() -> AuditRecord {
        AuditRecord {
            event: "decision".into(),
            sandbox_id: "sb".into(),
            syscall: "openat".into(),
            kind: "file".into(),
            path: Some("/f".into()),
            allow: true,
            reason: "allowed".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_store_takes_records_once_open_and_one_that_failed_refuses_them_with_its_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("store");
        let store = Opening::start(&dir, Durability::Strict).unwrap();
        // Made before the open's thread runs: the sandbox reads it.
        assert!(dir.is_dir());
        assert_eq!(store.append(decision()).unwrap().seq, 1);
        store.ready().unwrap();
        assert_eq!(store.last_seq(), 1);
        assert!(store.verify().unwrap().ok);

        // Another open of the same store waits for it, then fails as sled
        // does (its lock), and so does every call.
        let second = Opening::start(&dir, Durability::Strict).unwrap();
        let err = second.append(decision()).unwrap_err().to_string();
        assert!(err.contains("could not acquire lock"), "{err}");
        assert_eq!(second.ready().unwrap_err().to_string(), err);
        assert!(second.flush().is_err());
        // Its own error, with its source, once.
        assert!(second.take_error().unwrap().is_locked());
        assert!(second.take_error().is_none());
        assert_eq!(second.last_seq(), 0);
        assert!(second.take_unstored().is_empty());
        second.close();

        // A path that is a file: no store, and the error says where.
        let file = tmp.path().join("file");
        std::fs::write(&file, "not a store").unwrap();
        let third = Opening::start(&file, Durability::Strict).unwrap();
        let err = third.append(decision()).unwrap_err().to_string();
        assert!(err.contains("cannot open the audit store at"), "{err}");
        assert!(err.contains("(os error 20)"), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
        store.close();
    }
}
