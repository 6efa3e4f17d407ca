//! Cordon shim: runs a tool under a seccomp user-notification filter so that
//! each sensitive syscall it (or any descendant) makes is decided by the
//! broker, and the decision is what actually happens.
//!
//! - [`filter`]: the seccomp program (brokered, forbidden, allowed).
//! - [`notify`]: the supervisor loop: decode, decide, act.
//! - [`resolve`]: path resolution as the kernel would do it for the tool.
//! - [`emulate`]: performing allowed opens, connects and sends ourselves.
//! - [`connector`]: the filtered processes that make the tool's unix connects.
//! - [`exec`]: verifying that an allowed exec runs the approved image.
//! - `interrupt`: the tool's handled signals, for the blocking calls made for it.
//! - [`client`]: embedded or remote (gRPC `Session`) decisions.
//! - [`protect`]: cordon's own files, out of the tool's reach whatever the policy.
//! - [`backstop`]: the Landlock ruleset applied beneath the broker.
//! - [`limits`]: memory, CPU, process, time and file caps (cgroup or rlimits).
//! - [`sandbox`]: the public API around `std::process::Command`.
//! - `sys`: the only module with `unsafe`.

pub mod backstop;
pub mod client;
pub mod connector;
pub mod emulate;
pub mod exec;
pub mod filter;
mod interrupt;
pub mod limits;
pub mod memory;
pub mod notify;
pub mod process;
pub mod protect;
pub mod resolve;
pub mod sandbox;
mod sys;

pub use client::{Decider, Embedded, Remote};
pub use limits::Limits;
pub use notify::DEFAULT_DEADLINE;
pub use sandbox::{
    Sandbox, Sandboxed, SpawnError, become_subreaper, default_sigpipe, harden_supervisor,
    hold_signals, raise_fd_limit, rmdir_if_start_given_up,
};
