//! The broker core: validate, evaluate, record, answer. Shared by the gRPC
//! service and the embedded broker of `cordon run`.
//!
//! Invariant: an answer is an allow only if the policy allowed it *and* its
//! audit record was stored (per the durability mode). Every failure on this
//! path is a denial with a reason that says what failed.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use cordon_proto::v1::{
    DecideRequest, Decision, Lifecycle, decide_request::Subject, lifecycle::Event,
};

use crate::{
    audit::{AuditError, AuditLog, AuditRecord, log_unstored},
    errno,
    input::{Input, RecordInput},
    policy::{PolicyEngine, Verdict},
    request::{self, InvalidRequest, display_bytes},
};

/// Decides requests against the policy in force and records each decision.
#[derive(Debug, Clone)]
pub struct Broker {
    policy: Arc<PolicyEngine>,
    audit: Arc<dyn AuditLog>,
    permissive: Permissive,
}

/// Which sandboxes run in permissive mode: every call is allowed, and what
/// the policy would have denied is recorded as `would_deny` with its reason.
/// For writing policies (`cordon learn`), never for enforcement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Permissive {
    #[default]
    Off,
    All,
    /// Sandboxes carrying any of these labels (`key`, `value`).
    Labels(Vec<(String, String)>),
}

/// A malformed request, refused by [`Broker::decide_owned`] (and recorded
/// as a denial), handed back to its caller with the reason.
#[derive(Debug)]
pub struct Rejected {
    pub error: InvalidRequest,
    pub request: Box<DecideRequest>,
}

impl Permissive {
    fn applies(&self, labels: &std::collections::HashMap<String, String>) -> bool {
        match self {
            Permissive::Off => false,
            Permissive::All => true,
            Permissive::Labels(wanted) => wanted
                .iter()
                .any(|(k, v)| labels.get(k).is_some_and(|l| l == v)),
        }
    }
}

impl Broker {
    pub fn new(policy: Arc<PolicyEngine>, audit: Arc<dyn AuditLog>) -> Self {
        Self {
            policy,
            audit,
            permissive: Permissive::Off,
        }
    }

    /// The same broker in permissive mode for the sandboxes `permissive` selects.
    pub fn with_permissive(mut self, permissive: Permissive) -> Self {
        self.permissive = permissive;
        self
    }

    pub fn policy(&self) -> &Arc<PolicyEngine> {
        &self.policy
    }

    pub fn audit(&self) -> &Arc<dyn AuditLog> {
        &self.audit
    }

    /// Decides one request read just now; see [`Broker::decide_received`].
    pub fn decide(&self, req: &DecideRequest) -> Result<Decision, InvalidRequest> {
        self.decide_received(req, Instant::now())
    }

    /// Decides one request, read from the client at `received` (its
    /// `timeout_ns` counts from then). A malformed request is an error (the
    /// caller must deny); anything else is a [`Decision`], allow only when
    /// recorded and answered within the request's time.
    pub fn decide_received(
        &self,
        req: &DecideRequest,
        received: Instant,
    ) -> Result<Decision, InvalidRequest> {
        self.decide_owned(req.clone(), received)
            .map_err(|rejected| rejected.error)
    }

    /// [`Broker::decide_received`] for a request its caller is done with:
    /// a memo hit's record keeps the request itself as its `input`, not a
    /// copy (the copy alone was 3.7 % of the serving threads' time in a
    /// profile of pinned opens, BENCHMARKS.md session 34).
    /// A malformed request comes back with the error.
    pub fn decide_owned(
        &self,
        req: DecideRequest,
        received: Instant,
    ) -> Result<Decision, Rejected> {
        let start = Instant::now();
        if let Err(e) = request::validate(&req) {
            return Err(Rejected {
                error: self.record_invalid(&req, e),
                request: Box::new(req),
            });
        }
        let deadline = deadline(&req, received);
        if let Some(late) = overdue(deadline) {
            return Ok(self.decide_expired(&req, late));
        }
        // A memo hit builds no tree of the input: the record keeps the
        // request, and writes the document from it.
        let (verdict, tree) = self.policy.evaluate_document(&Input::of(&req));
        let latency_us = start.elapsed().as_micros() as u64;
        let mut record = decision_record(&req, &verdict, latency_us);
        // Shared with the record: a late answer's override is made from it.
        let req = Arc::new(req);
        record.input = Some(match tree {
            Some(tree) => RecordInput::Json(tree),
            None => RecordInput::Request(Arc::clone(&req)),
        });
        let would_deny = !verdict.allow
            && match &req.sandbox {
                Some(s) => self.permissive.applies(&s.labels),
                None => self.permissive == Permissive::All,
            };
        if would_deny {
            record.allow = true;
            record.would_deny = true;
        }
        let allows = verdict.allow || would_deny;
        let appended = self.audit.append(record);
        // Recorded as the policy decided, but too late for the client (a slow
        // evaluation, or a strict flush slower than it waits), which has
        // denied the call: a record saying so follows the allow, and the
        // answer agrees with it. A late denial needs none: the call was
        // denied either way (with EACCES, whatever errno the policy chose).
        let late = match &appended {
            Ok(_) if allows => overdue(deadline),
            _ => None,
        };
        Ok(match (appended, late) {
            (Ok(appended), Some(late)) => {
                let reason = format!(
                    "record {} allowed this call, but it was decided and stored {} after the \
                     client's deadline, so the client denied it",
                    appended.seq,
                    ms(late)
                );
                let seq = self.record_override(&req, &verdict, appended.seq, reason.clone());
                Decision {
                    allow: false,
                    errno: errno::DEFAULT.into(),
                    errno_code: errno::code(errno::DEFAULT).unwrap_or(13),
                    reason,
                    policy_revision: verdict.revision.to_string(),
                    audit_seq: seq.unwrap_or(0),
                    eval_us: verdict.eval_time.as_micros() as u64,
                }
            }
            (Ok(appended), None) if would_deny => Decision {
                allow: true,
                errno: String::new(),
                errno_code: 0,
                reason: format!("permissive: the policy would deny: {}", verdict.reason),
                policy_revision: verdict.revision.to_string(),
                audit_seq: appended.seq,
                eval_us: verdict.eval_time.as_micros() as u64,
            },
            (Ok(appended), None) => Decision {
                allow: verdict.allow,
                errno: verdict.errno,
                errno_code: verdict.errno_code,
                reason: verdict.reason,
                policy_revision: verdict.revision.to_string(),
                audit_seq: appended.seq,
                eval_us: verdict.eval_time.as_micros() as u64,
            },
            // A denial whose record is stored but not flushed: the answer is
            // what the record says (a denial needs no durability to be safe).
            (Err(AuditError::Unflushed { seq, .. }), _) if !allows => {
                tracing::error!(seq, "a denial's audit record could not be flushed");
                Decision {
                    allow: false,
                    errno: verdict.errno,
                    errno_code: verdict.errno_code,
                    reason: verdict.reason,
                    policy_revision: verdict.revision.to_string(),
                    audit_seq: seq,
                    eval_us: verdict.eval_time.as_micros() as u64,
                }
            }
            (Err(e), _) => {
                if let AuditError::Unflushed { seq, .. } = e {
                    let reason = format!("record {seq} allowed this call, but it was denied: {e}");
                    self.record_override(&req, &verdict, seq, reason);
                }
                unrecorded_denial(&e, &verdict)
            }
        })
    }

    /// A malformed request: its client denies the call (with `EACCES`), so
    /// it is recorded as a denial, with what of it may be stored and why it
    /// was refused; the error then names the record. A store that refuses
    /// the record leaves it in the log.
    fn record_invalid(&self, req: &DecideRequest, e: InvalidRequest) -> InvalidRequest {
        let verdict = Verdict {
            allow: false,
            errno: errno::DEFAULT.into(),
            errno_code: errno::code(errno::DEFAULT).unwrap_or(13),
            reason: e.to_string(),
            deny: Vec::new(),
            eval_time: Duration::ZERO,
            revision: self.policy.current().revision().clone(),
            memoized: false,
        };
        let record = decision_record(&request::storable(req), &verdict, 0);
        match self.audit.append(record) {
            Ok(a) => InvalidRequest(format!("{} (recorded as audit record {})", e.0, a.seq)),
            Err(AuditError::Unflushed { seq, .. }) => {
                InvalidRequest(format!("{} (recorded as audit record {seq})", e.0))
            }
            Err(store) => {
                tracing::error!(error = %store, refused = %e, syscall = %req.syscall,
                    "the record of a malformed request could not be stored");
                e
            }
        }
    }

    /// A request read after its time ran out: its client has denied the
    /// call already (with `EACCES`, as every unanswered call), so it is not
    /// evaluated, and its record says denied. It carries no `input`: there
    /// is no policy decision in it for `cordon policy replay` to compare.
    fn decide_expired(&self, req: &DecideRequest, late: Duration) -> Decision {
        let revision = self.policy.current().revision().clone();
        let verdict = Verdict {
            allow: false,
            errno: errno::DEFAULT.into(),
            errno_code: errno::code(errno::DEFAULT).unwrap_or(13),
            reason: format!(
                "the request was read {} after the client's deadline, so the client denied \
                 it; not evaluated",
                ms(late)
            ),
            deny: Vec::new(),
            eval_time: Duration::ZERO,
            revision,
            memoized: false,
        };
        let record = decision_record(req, &verdict, 0);
        match self.audit.append(record) {
            Ok(a) => Decision {
                allow: false,
                errno: verdict.errno,
                errno_code: verdict.errno_code,
                reason: verdict.reason,
                policy_revision: verdict.revision.to_string(),
                audit_seq: a.seq,
                eval_us: 0,
            },
            Err(e) => unrecorded_denial(&e, &verdict),
        }
    }

    /// Record `seq` says allow, and it is in the store (or its memory), but
    /// the call is denied (its flush failed or came too late): a record that
    /// says so follows it, in the store if it takes one more, else in the
    /// log. Returns that record's seq, if stored.
    fn record_override(
        &self,
        req: &DecideRequest,
        verdict: &Verdict,
        seq: u64,
        reason: String,
    ) -> Option<u64> {
        let mut r = decision_record(req, verdict, 0);
        r.event = "override".into();
        r.overrides = Some(seq);
        r.allow = false;
        r.memoized = false;
        r.errno = errno::DEFAULT.into();
        r.reason = reason;
        match self.audit.append(r.clone()) {
            Ok(a) => Some(a.seq),
            // In the store's memory: logged at exit if never flushed.
            Err(AuditError::Unflushed { seq, .. }) => Some(seq),
            Err(_) => {
                log_unstored(vec![r]);
                None
            }
        }
    }

    /// The policy's kernel backstop for `sandbox` (`data.cordon.backstop`).
    pub fn backstop(
        &self,
        sandbox: &cordon_proto::v1::Sandbox,
    ) -> Result<Option<serde_json::Value>, String> {
        request::validate_sandbox(sandbox).map_err(|e| e.to_string())?;
        // Permissive means nothing is enforced: no kernel bounds either
        // (a would-deny exec must run, or `cordon learn` learns nothing).
        if self.permissive.applies(&sandbox.labels) {
            return Ok(None);
        }
        self.policy
            .current()
            .backstop(&request::sandbox_document(sandbox))
    }

    /// Records a sandbox start or exit. Returns the record's sequence number.
    pub fn record_lifecycle(&self, event: &Lifecycle) -> Result<u64, LifecycleError> {
        request::validate_lifecycle(event)?;
        let sandbox = event.sandbox.clone().unwrap_or_default();
        let mut record = AuditRecord {
            sandbox_id: sandbox.id,
            labels: sandbox.labels.into_iter().collect(),
            kind: "lifecycle".into(),
            allow: true,
            policy_revision: self.policy.current().revision().to_string(),
            ..Default::default()
        };
        match &event.event {
            Some(Event::Started(s)) => {
                record.event = "sandbox_started".into();
                record.pid = s.pid;
                record.argv = Some(s.argv.iter().map(|a| display_bytes(a)).collect());
                record.reason = "started".into();
            }
            Some(Event::Exited(e)) => {
                record.event = "sandbox_exited".into();
                record.pid = e.pid;
                record.exit_status = Some(e.status);
                record.limit = (!e.limit.is_empty()).then(|| e.limit.clone());
                let usage: std::collections::BTreeMap<String, u64> = [
                    ("memory_peak_bytes", e.memory_peak_bytes),
                    ("cpu_usec", e.cpu_usec),
                    ("pids_peak", e.pids_peak),
                ]
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_owned(), v?)))
                .collect();
                record.usage = (!usage.is_empty()).then_some(usage);
                record.reason = if e.detail.is_empty() {
                    format!("exited with status {}", e.status)
                } else {
                    crate::policy::capped(e.detail.clone())
                };
            }
            None => return Err(InvalidRequest("lifecycle event is empty".into()).into()),
        }
        Ok(self.audit.append(record)?.seq)
    }
}

/// A lifecycle event that could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// When the client stops waiting for the answer to `req`, read at
/// `received`: `timeout_ns` after it (the client sends its wait less
/// [`answer_margin`]), or never.
fn deadline(req: &DecideRequest, received: Instant) -> Option<Instant> {
    let relative = (req.timeout_ns != 0)
        .then(|| received.checked_add(Duration::from_nanos(req.timeout_ns)))
        .flatten();
    // The same moment by the shared clock (see `DecideRequest`): it also
    // counts the time the request waited before it was read.
    let absolute = (req.deadline_unix_ns != 0).then(|| {
        let left = req.deadline_unix_ns.saturating_sub(unix_now_ns());
        let now = Instant::now();
        now.checked_add(Duration::from_nanos(left)).unwrap_or(now)
    });
    match (relative, absolute) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The system clock as Unix time in nanoseconds (0 before 1970).
pub fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

/// How long ago `deadline` passed, if it has.
fn overdue(deadline: Option<Instant>) -> Option<Duration> {
    let deadline = deadline?;
    Instant::now().checked_duration_since(deadline)
}

/// How much sooner than it stops waiting a client asks for its answer: the
/// answer's way back, the request's way there, a scheduling delay. A quarter
/// of the wait, at least 5 ms (but at most half the wait) and at most 100 ms.
pub fn answer_margin(wait: Duration) -> Duration {
    (wait / 4)
        .min(Duration::from_millis(100))
        .max(Duration::from_millis(5).min(wait / 2))
}

/// The `timeout_ns` a client that waits `wait` for an answer sends.
pub fn request_timeout_ns(wait: Duration) -> u64 {
    let budget = wait.saturating_sub(answer_margin(wait));
    // 0 means no limit: a wait too short for any answer still has one.
    (budget.as_nanos().min(u64::MAX as u128) as u64).max(1)
}

/// A duration as people read a lateness: milliseconds, to 0.1.
fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The audit store refused the record: deny, and say why.
fn unrecorded_denial(e: &AuditError, verdict: &Verdict) -> Decision {
    match e {
        // A store that never opened: its opener reports that, once.
        AuditError::NotOpen(_) => {
            tracing::debug!(error = %e, "decision could not be recorded; denying")
        }
        _ => tracing::error!(error = %e, "decision could not be recorded; denying"),
    }
    Decision {
        allow: false,
        errno: errno::DEFAULT.into(),
        errno_code: errno::code(errno::DEFAULT).unwrap_or(13),
        reason: format!("denied because the decision could not be recorded: {e}"),
        policy_revision: verdict.revision.to_string(),
        audit_seq: 0,
        eval_us: verdict.eval_time.as_micros() as u64,
    }
}

/// The audit record of a decision.
pub fn decision_record(req: &DecideRequest, verdict: &Verdict, latency_us: u64) -> AuditRecord {
    let mut r = AuditRecord {
        event: "decision".into(),
        // Only these of the sandbox and process: borrowed, not cloned whole.
        sandbox_id: req
            .sandbox
            .as_ref()
            .map(|s| s.id.clone())
            .unwrap_or_default(),
        labels: req
            .sandbox
            .iter()
            .flat_map(|s| &s.labels)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        pid: req.process.as_ref().map_or(0, |p| p.pid),
        exe: req
            .process
            .as_ref()
            .map(|p| display_bytes(&p.exe))
            .unwrap_or_default(),
        syscall: req.syscall.clone(),
        allow: verdict.allow,
        errno: verdict.errno.clone(),
        reason: verdict.reason.clone(),
        policy_revision: verdict.revision.to_string(),
        latency_us,
        memoized: verdict.memoized,
        ..Default::default()
    };
    match &req.subject {
        Some(s @ Subject::File(f)) => {
            r.kind = request::kind_of(s).into();
            r.path = Some(display_bytes(&f.path));
        }
        Some(s @ Subject::Network(n)) => {
            r.kind = request::kind_of(s).into();
            if n.family == "unix" {
                r.path = Some(display_bytes(&n.path));
            } else {
                r.address = Some(n.address.clone());
                r.port = Some(n.port);
            }
        }
        Some(s @ Subject::Exec(e)) => {
            r.kind = request::kind_of(s).into();
            r.path = Some(display_bytes(&e.path));
            r.argv = Some(e.argv.iter().map(|a| display_bytes(a)).collect());
        }
        None => {}
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        audit::{Appended, AuditFilter, Durability, SledAudit, VerifyReport},
        policy::{PolicyOptions, PolicySource},
    };
    use cordon_proto::v1::FileAccess;
    use tokio::sync::watch;

    /// Policy options whose evaluation limit a loaded machine does not reach
    /// (the default, 50 ms of wall time, a stalled debug build can).
    fn patient() -> PolicyOptions {
        PolicyOptions {
            eval_timeout: std::time::Duration::from_secs(10),
            ..PolicyOptions::default()
        }
    }

    /// A strict store whose appends return `delay` late: a flush slower than
    /// the client waits.
    #[derive(Debug)]
    struct SlowStore {
        inner: SledAudit,
        delay: Duration,
    }

    impl AuditLog for SlowStore {
        fn append(&self, record: AuditRecord) -> Result<Appended, AuditError> {
            let appended = self.inner.append(record);
            std::thread::sleep(self.delay);
            appended
        }
        fn scan(
            &self,
            filter: &AuditFilter,
            each: &mut dyn FnMut(AuditRecord) -> bool,
        ) -> Result<u64, AuditError> {
            self.inner.scan(filter, each)
        }
        fn verify(&self) -> Result<VerifyReport, AuditError> {
            self.inner.verify()
        }
        fn last_seq(&self) -> u64 {
            self.inner.last_seq()
        }
        fn subscribe(&self) -> watch::Receiver<u64> {
            self.inner.subscribe()
        }
        fn flush(&self) -> Result<(), AuditError> {
            self.inner.flush()
        }
    }

    /// A read of a system file, which the built-in policy allows, by a
    /// client that gives the broker `timeout` (none for zero).
    fn read_usr_lib(timeout: Duration) -> DecideRequest {
        DecideRequest {
            syscall: "openat".into(),
            subject: Some(Subject::File(FileAccess {
                path: b"/usr/lib/os-release".to_vec(),
                access: vec!["read".into()],
                ..Default::default()
            })),
            timeout_ns: timeout.as_nanos() as u64,
            ..Default::default()
        }
    }

    fn broker(dir: &std::path::Path, delay: Duration) -> Broker {
        let store = SledAudit::open(dir, Durability::Strict).expect("store");
        let policy = PolicyEngine::new(PolicySource::Builtin, patient()).expect("built-in policy");
        Broker::new(
            Arc::new(policy),
            Arc::new(SlowStore {
                inner: store,
                delay,
            }),
        )
    }

    fn records(b: &Broker) -> Vec<AuditRecord> {
        let mut all = Vec::new();
        b.audit()
            .scan(&AuditFilter::default(), &mut |r| {
                all.push(r);
                true
            })
            .expect("scan");
        all
    }

    #[test]
    fn an_allow_stored_after_the_deadline_is_answered_and_recorded_as_a_denial() {
        let dir = tempfile::tempdir().unwrap();
        let b = broker(dir.path(), Duration::from_millis(300));
        // In time: allowed, one record.
        let d = b.decide(&read_usr_lib(Duration::from_secs(20))).unwrap();
        assert!(d.allow, "{}", d.reason);
        // The store takes 300 ms; the client waits 50: the allow record is
        // followed by an override, and the answer is the denial the client
        // applied.
        let d = b.decide(&read_usr_lib(Duration::from_millis(50))).unwrap();
        assert!(!d.allow);
        assert_eq!(d.errno_code, 13);
        assert!(
            d.reason.contains("after the client's deadline"),
            "{}",
            d.reason
        );
        let all = records(&b);
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(all[0].allow && all[1].allow);
        assert_eq!(all[1].reason, "allowed");
        assert!(all[1].input.is_some());
        assert_eq!(all[2].event, "override");
        assert!(!all[2].allow);
        assert_eq!(all[2].overrides, Some(all[1].seq));
        assert_eq!(d.audit_seq, all[2].seq);
    }

    #[test]
    fn a_request_read_after_its_time_ran_out_is_recorded_as_denied_and_not_evaluated() {
        let dir = tempfile::tempdir().unwrap();
        let b = broker(dir.path(), Duration::ZERO);
        let received = Instant::now() - Duration::from_millis(20);
        let d = b
            .decide_received(&read_usr_lib(Duration::from_millis(5)), received)
            .unwrap();
        assert!(!d.allow);
        assert_eq!(d.errno, "EACCES");
        let all = records(&b);
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(!all[0].allow);
        assert_eq!(all[0].event, "decision");
        assert!(all[0].reason.contains("not evaluated"), "{}", all[0].reason);
        // Nothing for `policy replay` to re-evaluate: no policy decision.
        assert!(all[0].input.is_none());
        assert_eq!(d.audit_seq, all[0].seq);
        // No limit: the same request is allowed.
        assert!(b.decide(&read_usr_lib(Duration::ZERO)).unwrap().allow);
    }

    /// Permissive mode: a call the policy denies is allowed, so one answered
    /// too late is overridden like any allow; one read too late is denied
    /// without a `would_deny` (the policy said nothing).
    #[test]
    fn permissive_allows_answered_too_late_are_overridden() {
        let dir = tempfile::tempdir().unwrap();
        let b = broker(dir.path(), Duration::from_millis(300)).with_permissive(Permissive::All);
        let mut write = read_usr_lib(Duration::from_millis(50));
        if let Some(Subject::File(f)) = &mut write.subject {
            f.access = vec!["write".into()];
        }
        let d = b.decide(&write).unwrap();
        assert!(!d.allow, "{}", d.reason);
        let d = b
            .decide_received(&write, Instant::now() - Duration::from_millis(100))
            .unwrap();
        assert!(!d.allow, "{}", d.reason);
        let all = records(&b);
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(all[0].allow && all[0].would_deny);
        assert_eq!(all[1].event, "override");
        assert_eq!(all[1].overrides, Some(all[0].seq));
        assert!(!all[2].allow && !all[2].would_deny);
    }

    #[test]
    fn the_margin_leaves_time_for_the_answer_at_every_scale() {
        let ms = Duration::from_millis;
        assert_eq!(answer_margin(Duration::from_secs(2)), ms(100));
        assert_eq!(answer_margin(ms(100)), ms(25));
        assert_eq!(answer_margin(ms(10)), ms(5));
        assert_eq!(answer_margin(ms(1)), Duration::from_micros(500));
        assert_eq!(answer_margin(Duration::ZERO), Duration::ZERO);
        assert_eq!(request_timeout_ns(Duration::from_secs(2)), 1_900_000_000);
        assert_eq!(request_timeout_ns(Duration::ZERO), 1);
        assert_eq!(request_timeout_ns(Duration::MAX), u64::MAX);
    }
}
