//! The broker core: validate, evaluate, record, answer. Shared by the gRPC
//! service and the embedded broker of `cordon run`.
//!
//! Invariant: an answer is an allow only if the policy allowed it *and* its
//! audit record was stored (per the durability mode). Every failure on this
//! path is a denial with a reason that says what failed.

use std::{sync::Arc, time::Instant};

use cordon_proto::v1::{
    DecideRequest, Decision, Lifecycle, decide_request::Subject, lifecycle::Event,
};

use crate::{
    audit::{AuditError, AuditLog, AuditRecord, log_unstored},
    errno,
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

    /// Decides one request. A malformed request is an error (the caller must
    /// deny); anything else is a [`Decision`], allow only when recorded.
    pub fn decide(&self, req: &DecideRequest) -> Result<Decision, InvalidRequest> {
        let start = Instant::now();
        request::validate(req)?;
        let input = request::input_document(req);
        let verdict = self.policy.evaluate(&input);
        let latency_us = start.elapsed().as_micros() as u64;
        let mut record = decision_record(req, &verdict, latency_us);
        record.input = Some(input);
        let would_deny = !verdict.allow
            && match &req.sandbox {
                Some(s) => self.permissive.applies(&s.labels),
                None => self.permissive == Permissive::All,
            };
        if would_deny {
            record.allow = true;
            record.would_deny = true;
        }
        Ok(match self.audit.append(record) {
            Ok(appended) if would_deny => Decision {
                allow: true,
                errno: String::new(),
                errno_code: 0,
                reason: format!("permissive: the policy would deny: {}", verdict.reason),
                policy_revision: verdict.revision.to_string(),
                audit_seq: appended.seq,
                eval_us: verdict.eval_time.as_micros() as u64,
            },
            Ok(appended) => Decision {
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
            Err(AuditError::Unflushed { seq, .. }) if !verdict.allow && !would_deny => {
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
            Err(e) => {
                if let AuditError::Unflushed { seq, .. } = e {
                    self.record_override(req, &verdict, seq, &e);
                }
                unrecorded_denial(&e, &verdict)
            }
        })
    }

    /// Record `seq` says allow, and it is in the store's memory, but the
    /// call is denied (its flush failed): a record that says so follows it,
    /// in the store if it takes one more, else in the log.
    fn record_override(&self, req: &DecideRequest, verdict: &Verdict, seq: u64, e: &AuditError) {
        let mut r = decision_record(req, verdict, 0);
        r.event = "override".into();
        r.overrides = Some(seq);
        r.allow = false;
        r.memoized = false;
        r.errno = errno::DEFAULT.into();
        r.reason = format!("record {seq} allowed this call, but it was denied: {e}");
        match self.audit.append(r.clone()) {
            Ok(_) => {}
            // In the store's memory: logged at exit if never flushed.
            Err(AuditError::Unflushed { .. }) => {}
            Err(_) => log_unstored(vec![r]),
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

/// The audit store refused the record: deny, and say why.
fn unrecorded_denial(e: &AuditError, verdict: &Verdict) -> Decision {
    tracing::error!(error = %e, "decision could not be recorded; denying");
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
    let sandbox = req.sandbox.clone().unwrap_or_default();
    let process = req.process.clone().unwrap_or_default();
    let mut r = AuditRecord {
        event: "decision".into(),
        sandbox_id: sandbox.id,
        labels: sandbox.labels.into_iter().collect(),
        pid: process.pid,
        exe: display_bytes(&process.exe),
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
