//! Cordon broker: answers "may this process make this syscall?" from Rego
//! policies and records every decision in a tamper-evident audit store.
//!
//! - [`policy`]: load, hot-reload and evaluate the policy (package `cordon`).
//! - [`audit`]: the append-only, hash-chained audit store and its queries.
//! - [`decide`]: the broker core that ties the two together, used in process by
//!   `cordon run` and behind gRPC by [`service`].
//! - [`memo`]: verdicts a policy revision keeps for inputs it has seen.
//! - [`testing`]: policy unit tests (`test_` rules), like `opa test`.
//! - [`lint`]: mistakes `cordon policy check` reports beyond parse errors.
//! - [`replay`]: recorded decisions re-evaluated under another policy.
//! - [`request`]: request validation.
//! - [`input`]: the Rego `input` document, read from a request.

// `unsafe` only in `audit::sched` (`sched_getattr`, `sched_setattr`).
#![deny(unsafe_code)]

pub mod audit;
pub mod client;
pub mod decide;
pub mod errno;
pub mod input;
pub mod lint;
pub mod memo;
pub mod peer;
pub mod policy;
pub mod replay;
pub mod request;
pub mod service;
pub mod testing;

pub use cordon_proto::v1 as proto;
pub use decide::{Broker, Permissive, Rejected};
