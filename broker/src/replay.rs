//! Replaying recorded decisions under another policy: which answers would
//! change. Each decision record carries the exact `input` the policy saw, so
//! the new policy is asked exactly the same question.
//!
//! The recorded answer is the policy's own: a permissive-mode record
//! (`would_deny`) counts as a denial, since that is what the policy said.

use std::collections::{BTreeMap, BTreeSet};

use crate::{audit::AuditRecord, policy::LoadedPolicy};

/// Which way a decision changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Direction {
    /// Allowed before, denied by the new policy: what breaks agents.
    #[serde(rename = "allow->deny")]
    AllowToDeny,
    /// Denied before, allowed by the new policy: what the change opens up.
    #[serde(rename = "deny->allow")]
    DenyToAllow,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::AllowToDeny => "allow->deny",
            Direction::DenyToAllow => "deny->allow",
        })
    }
}

/// Recorded decisions that change the same way, for the same tool and subject.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChangeGroup {
    pub direction: Direction,
    /// The sandbox's `tool` label, or `-`.
    pub tool: String,
    pub kind: String,
    pub syscall: String,
    /// The path, `address:port`, unix socket path or executable.
    pub subject: String,
    pub count: u64,
    /// Sequence numbers of the first and last record in the group.
    pub first_seq: u64,
    pub last_seq: u64,
    /// The recorded reason and the new policy's reason (of the first record).
    pub old_reason: String,
    pub new_reason: String,
}

/// What a replay found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReplayReport {
    /// Decision records examined.
    pub decisions: u64,
    /// Of those, re-evaluated (they carry their input).
    pub replayed: u64,
    /// Decision records written before inputs were recorded: not replayable.
    pub without_input: u64,
    pub unchanged: u64,
    pub allow_to_deny: u64,
    pub deny_to_allow: u64,
    /// Policy revisions that made the recorded decisions.
    pub recorded_revisions: BTreeSet<String>,
    pub new_revision: String,
    pub changes: Vec<ChangeGroup>,
    /// The longest evaluation under the new policy, in µs, and its record's
    /// sequence number (0 when none was replayed): a broker whose
    /// `--eval-timeout` is shorter would deny that request, which a replay
    /// with a longer limit shows as unchanged.
    pub slowest_eval_us: u64,
    pub slowest_eval_seq: u64,
}

impl ReplayReport {
    pub fn changed(&self) -> u64 {
        self.allow_to_deny + self.deny_to_allow
    }
}

type GroupKey = (Direction, String, String, String, String);

/// Feeds records one at a time (from a local store or a broker's stream).
#[derive(Debug)]
pub struct Replayer<'a> {
    policy: &'a LoadedPolicy,
    report: ReplayReport,
    groups: BTreeMap<GroupKey, ChangeGroup>,
}

impl<'a> Replayer<'a> {
    pub fn new(policy: &'a LoadedPolicy) -> Self {
        Self {
            policy,
            report: ReplayReport {
                new_revision: policy.revision().to_string(),
                ..Default::default()
            },
            groups: BTreeMap::new(),
        }
    }

    /// Re-evaluates one record; records other than decisions are ignored.
    pub fn add(&mut self, r: &AuditRecord) {
        if r.event != "decision" {
            return;
        }
        self.report.decisions += 1;
        let Some(input) = &r.input else {
            self.report.without_input += 1;
            return;
        };
        self.report.replayed += 1;
        self.report
            .recorded_revisions
            .insert(r.policy_revision.clone());
        let was_allowed = r.allow && !r.would_deny;
        let verdict = self.policy.evaluate(&input.json());
        let took = u64::try_from(verdict.eval_time.as_micros()).unwrap_or(u64::MAX);
        if self.report.slowest_eval_seq == 0 || took > self.report.slowest_eval_us {
            self.report.slowest_eval_us = took;
            self.report.slowest_eval_seq = r.seq;
        }
        let direction = match (was_allowed, verdict.allow) {
            (true, false) => Direction::AllowToDeny,
            (false, true) => Direction::DenyToAllow,
            _ => {
                self.report.unchanged += 1;
                return;
            }
        };
        match direction {
            Direction::AllowToDeny => self.report.allow_to_deny += 1,
            Direction::DenyToAllow => self.report.deny_to_allow += 1,
        }
        let tool = r.labels.get("tool").cloned().unwrap_or_else(|| "-".into());
        let subject = r.subject();
        let key = (
            direction,
            tool.clone(),
            r.kind.clone(),
            r.syscall.clone(),
            subject.clone(),
        );
        self.groups
            .entry(key)
            .and_modify(|g| {
                g.count += 1;
                g.last_seq = r.seq;
            })
            .or_insert_with(|| ChangeGroup {
                direction,
                tool,
                kind: r.kind.clone(),
                syscall: r.syscall.clone(),
                subject,
                count: 1,
                first_seq: r.seq,
                last_seq: r.seq,
                old_reason: r.reason.clone(),
                new_reason: verdict.reason,
            });
    }

    /// The report: changes grouped, allow->deny first, then by count.
    pub fn finish(mut self) -> ReplayReport {
        let mut changes: Vec<ChangeGroup> = self.groups.into_values().collect();
        changes.sort_by(|a, b| {
            (a.direction, std::cmp::Reverse(a.count), &a.tool, &a.subject).cmp(&(
                b.direction,
                std::cmp::Reverse(b.count),
                &b.tool,
                &b.subject,
            ))
        });
        self.report.changes = changes;
        self.report
    }
}
