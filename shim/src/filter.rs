//! The seccomp program every sandboxed task runs under.
//!
//! Three outcomes, decided in the kernel:
//! - **brokered** (`USER_NOTIF`, then policy): the open family, `connect`,
//!   `bind`, `listen`, `sendto` with an address, `sendmsg`, `sendmmsg`, the
//!   exec family;
//! - **forbidden** (`USER_NOTIF`, answered by the supervisor with an errno and
//!   counted, never sent to the policy): calls that would let a tool escape or
//!   blind the supervisor — see [`forbidden_errno`];
//! - everything else runs.
//!
//! Forbidden calls go through the supervisor rather than `SECCOMP_RET_ERRNO`
//! so they can be counted in the sandbox's exit record; if the supervisor is
//! gone they still fail (the kernel answers `ENOSYS`). A syscall from any ABI
//! but the native one (`int 0x80`, x32) kills the process.

use std::{io::Read, os::fd::AsFd};

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

use std::sync::{Arc, OnceLock};

use crate::sys::BpfProgram;

/// A failure to build the filter.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("building the seccomp filter failed at {step}: {source}")]
    Build {
        step: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },
    #[error("exporting the seccomp filter failed: {0}")]
    Export(#[from] std::io::Error),
}

/// Syscalls decided by the policy.
pub const BROKERED: &[i64] = &[
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_creat,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_sendmsg,
    libc::SYS_sendmmsg,
    libc::SYS_execve,
    libc::SYS_execveat,
    // A new name for a file: decided under both names (notify/names.rs).
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_link,
    libc::SYS_linkat,
    // A symlink's name: decided as a create.
    libc::SYS_symlink,
    libc::SYS_symlinkat,
];

/// Syscalls the supervisor inspects without asking the policy: their
/// arguments are registers, so answering "continue" cannot be raced.
pub const INSPECTED: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_personality,
    // Signals: the supervisor refuses those aimed at itself (any of its
    // threads, its process group, or everyone) and lets the rest run.
    libc::SYS_kill,
    libc::SYS_tkill,
    libc::SYS_tgkill,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_pidfd_open,
];

/// `ioprio_set`'s `which` for one process or thread.
pub const IOPRIO_WHO_PROCESS: u64 = 1;

/// Calls that change another task's limits or scheduling, notified (by the
/// conditional rules in [`build`], one set per entry) only when they name
/// another task: refused when that task is the supervisor, else continued.
/// The supervisor dispatches on this list.
pub const TASK_TUNING: &[i64] = &[
    libc::SYS_prlimit64,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_setparam,
    libc::SYS_sched_setattr,
    libc::SYS_sched_setaffinity,
    libc::SYS_setpriority,
    libc::SYS_ioprio_set,
];

/// Credential changes, also inspected: the supervisor forgets what it keeps
/// of the caller's credentials (`process::TaskCache`) before letting them
/// run.
pub const CREDENTIAL_CHANGES: &[i64] = &[
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_setgroups,
    libc::SYS_capset,
];

/// The errno a forbidden syscall fails with, or `None` if it is not
/// forbidden outright. `ENOSYS` where libc or liburing fall back gracefully.
pub fn forbidden_errno(nr: i64) -> Option<i32> {
    Some(match nr {
        libc::SYS_io_uring_setup | libc::SYS_io_uring_enter | libc::SYS_io_uring_register => {
            libc::ENOSYS
        }
        libc::SYS_clone3 => libc::ENOSYS,
        // The supervisor performs the tool's opens and connects on its own
        // threads, where a Landlock domain the tool gave itself does not
        // apply: refused as unsupported, so a nested sandbox knows it has none.
        libc::SYS_landlock_create_ruleset
        | libc::SYS_landlock_add_rule
        | libc::SYS_landlock_restrict_self => libc::ENOSYS,
        libc::SYS_ptrace
        | libc::SYS_process_vm_readv
        | libc::SYS_process_vm_writev
        // Takes another process's fds with ptrace's permission: a process
        // cordon is starting holds, until its exec, every fd of its parent
        // (close-on-exec, not closed), listeners of other sandboxes included.
        | libc::SYS_pidfd_getfd
        | libc::SYS_bpf
        | libc::SYS_perf_event_open
        | libc::SYS_userfaultfd
        | libc::SYS_mount
        | libc::SYS_umount2
        | libc::SYS_fsopen
        | libc::SYS_fsconfig
        | libc::SYS_fsmount
        | libc::SYS_fspick
        | libc::SYS_move_mount
        | libc::SYS_open_tree
        | SYS_OPEN_TREE_ATTR
        | libc::SYS_mount_setattr
        | libc::SYS_pivot_root
        | libc::SYS_chroot
        | libc::SYS_unshare
        | libc::SYS_setns
        | libc::SYS_open_by_handle_at
        | libc::SYS_name_to_handle_at
        | libc::SYS_keyctl
        | libc::SYS_add_key
        | libc::SYS_request_key
        | libc::SYS_kexec_load
        | libc::SYS_kexec_file_load
        | libc::SYS_init_module
        | libc::SYS_finit_module
        | libc::SYS_delete_module
        | libc::SYS_fanotify_init
        | libc::SYS_fanotify_mark
        | libc::SYS_iopl
        | libc::SYS_ioperm
        | libc::SYS_acct
        | libc::SYS_swapon
        | libc::SYS_swapoff
        | libc::SYS_quotactl
        | libc::SYS_quotactl_fd
        | libc::SYS_reboot
        | libc::SYS_sethostname
        | libc::SYS_setdomainname
        | libc::SYS_syslog
        // Hangs up the controlling terminal: the user's, shared with the
        // shell that started cordon, whose session then gets SIGHUP.
        | libc::SYS_vhangup
        // Conditional rules below: only the dangerous argument values reach us.
        | libc::SYS_mknod
        | libc::SYS_mknodat
        | libc::SYS_clone
        | libc::SYS_ioctl
        | libc::SYS_fcntl
        | libc::SYS_setsockopt => libc::EPERM,
        // The supervisor's pidfd, from a socket the supervisor sent on or
        // connected: refused as an unknown option.
        libc::SYS_getsockopt => libc::ENOPROTOOPT,
        libc::SYS_socketpair => libc::EAFNOSUPPORT,
        _ => return None,
    })
}

/// `open_tree_attr` (Linux 6.15): `open_tree` with mount attributes. The
/// libc crate stops at 462, so it is named by number.
pub const SYS_OPEN_TREE_ATTR: i64 = 467;

/// Every unconditionally forbidden syscall.
const FORBIDDEN_ALWAYS: &[i64] = &[
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_clone3,
    libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_add_rule,
    libc::SYS_landlock_restrict_self,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    SYS_OPEN_TREE_ATTR,
    libc::SYS_mount_setattr,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    // A root tool's fds on files the broker never saw: a fanotify group
    // (without FID reporting, which needs CAP_SYS_ADMIN) is handed an fd of
    // every file opened or written on a whole file system, the store's too.
    libc::SYS_fanotify_init,
    libc::SYS_fanotify_mark,
    // Privileged calls that reach hardware or files past the broker: port
    // I/O, the accounting file and swap (each opened by the kernel from a
    // path), quotas, and rebooting the machine.
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_acct,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_reboot,
    // The host's names (a root tool shares its UTS namespace).
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    // The user's terminal, hung up.
    libc::SYS_vhangup,
];

/// Device numbers `mknod` may not give a new node: a root tool's block
/// device for the disk, made in its working directory, would be opened by a
/// path the policy allows, and read or write every file on it.
const DEVICE_TYPES: &[u64] = &[libc::S_IFBLK as u64, libc::S_IFCHR as u64];

/// Namespace-creating `clone` flags (the ones `clone` accepts).
pub const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// Socket options that route a packet through other hosts (IPv4 source
/// route options, IPv6 routing headers), as `(level, optname, name)`: the
/// kernel then sends to the route's first hop, not to the address the policy
/// allowed, and none needs privilege. Per-packet, the same comes as control
/// data, which a brokered `sendmsg` refuses (only `SCM_RIGHTS` and unix
/// `SCM_CREDENTIALS` pass).
pub const SOURCE_ROUTE_OPTIONS: &[(u64, u64, &str)] = &[
    (libc::IPPROTO_IP as u64, 4, "IP_OPTIONS"),
    (libc::IPPROTO_IPV6 as u64, 57, "IPV6_RTHDR"),
    (libc::IPPROTO_IPV6 as u64, 5, "IPV6_2292RTHDR"),
    (libc::IPPROTO_IPV6 as u64, 6, "IPV6_2292PKTOPTIONS"),
    // A flow label's options, which the kernel parses as control data (a
    // routing header among them, where it has Mobile IPv6) and adds to
    // every packet sent with that label (found by review).
    (libc::IPPROTO_IPV6 as u64, 32, "IPV6_FLOWLABEL_MGR"),
];

/// `SO_PASSPIDFD` and `SO_PEERPIDFD` (Linux 6.5; not in the libc crate).
pub const SO_PASSPIDFD: u64 = 76;
pub const SO_PEERPIDFD: u64 = 77;

/// `fcntl` command that takes a pointer to `struct f_owner_ex` (libc lacks it).
pub const F_SETOWN_EX: i32 = 15;

/// `ioctl(fd, TIOCSTI, …)` pushes input into the terminal: a classic escape.
const TIOCSTI: u64 = 0x5412;

/// `ioctl(fd, TIOCLINUX, …)` on a virtual console: its selection paste
/// (`TIOCL_PASTESEL`, a subcommand in memory) is the same injection, with
/// `CAP_SYS_ADMIN` and no controlling terminal needed (Linux 6.7).
const TIOCLINUX: u64 = 0x541c;

/// `ioctl(fd, TIOCVHANGUP)` hangs up a terminal (`CAP_SYS_ADMIN`): the user's
/// one, inherited, sends SIGHUP to the session leader outside the sandbox
/// (found by review); `TIOCCONS` takes the console's output (the same).
const TIOCVHANGUP: u64 = 0x5437;
const TIOCCONS: u64 = 0x541d;

/// `ioctl(fd, TIOCSCTTY, 1)`: take a terminal that is another session's
/// controlling one (`CAP_SYS_ADMIN`): the user's, inherited, whose shell then
/// loses it (found by review). With 0, a terminal of no session, as a
/// program that opens a pty for its child does, it runs.
const TIOCSCTTY: u64 = 0x540e;

/// `syslog` actions that change the kernel log or its console: read and
/// clear (2 reads destructively, 4, 5), console off, on and level (6, 7, 8).
/// Reading it whole (3) and its sizes stay what the kernel allows.
const SYSLOG_ACTIONS_REFUSED: &[u64] = &[2, 4, 5, 6, 7, 8];

const FIOSETOWN: u64 = 0x8901;
const SIOCSPGRP: u64 = 0x8902;

/// The tool's filter, built once per process: it depends on nothing but
/// this build, and libseccomp takes ~0.3 ms to make it. `cordon run` asks
/// for it while the audit store opens, and a library host's later sandboxes
/// reuse it.
pub fn program() -> Result<Arc<BpfProgram>, FilterError> {
    static BUILT: OnceLock<Arc<BpfProgram>> = OnceLock::new();
    if let Some(program) = BUILT.get() {
        return Ok(program.clone());
    }
    let program = Arc::new(build()?);
    Ok(BUILT.get_or_init(|| program).clone())
}

/// Builds the filter and exports it as a BPF program.
pub fn build() -> Result<BpfProgram, FilterError> {
    let step = |step: &str| {
        let step = step.to_owned();
        move |source| FilterError::Build { step, source }
    };
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(step("init"))?;
    // Any other ABI (int 0x80 on x86-64, x32) kills the process: the
    // supervisor decodes native syscall numbers only.
    ctx.set_act_badarch(ScmpAction::KillProcess)
        .map_err(step("bad-arch action"))?;

    for &nr in BROKERED
        .iter()
        .chain(INSPECTED)
        .chain(CREDENTIAL_CHANGES)
        .chain(FORBIDDEN_ALWAYS)
    {
        ctx.add_rule(ScmpAction::Notify, ScmpSyscall::from(nr as i32))
            .map_err(step(&format!("syscall {nr}")))?;
    }
    let notify_if = |ctx: &mut ScmpFilterContext, nr: i64, cmp: ScmpArgCompare| {
        ctx.add_rule_conditional(ScmpAction::Notify, ScmpSyscall::from(nr as i32), &[cmp])
            .map(|_| ())
            .map_err(step(&format!("conditional rule for syscall {nr}")))
    };
    // A 32-bit argument: compare the low half only (the upper half of the
    // register is not guaranteed to be zero or sign-extended).
    let low32 = ScmpCompareOp::MaskedEqual(0xffff_ffff);
    // sendto with a destination address (arg 4 non-null) or MSG_FASTOPEN,
    // which makes a TCP send connect; a plain send on a connected socket runs.
    notify_if(
        &mut ctx,
        libc::SYS_sendto,
        ScmpArgCompare::new(4, ScmpCompareOp::NotEqual, 0),
    )?;
    notify_if(
        &mut ctx,
        libc::SYS_sendto,
        ScmpArgCompare::new(
            3,
            ScmpCompareOp::MaskedEqual(libc::MSG_FASTOPEN as u64),
            libc::MSG_FASTOPEN as u64,
        ),
    )?;
    // A block or character device node (the mode's file type: `umode_t`,
    // the low 16 bits). A character device numbered 0 is an overlay
    // whiteout, which the kernel lets anyone make: not refused (its `dev`
    // argument, 32 bits, compared whole: stray upper bits refuse, not pass).
    for &kind in DEVICE_TYPES {
        let file_type = ScmpCompareOp::MaskedEqual(libc::S_IFMT as u64);
        for (nr, mode_arg) in [(libc::SYS_mknod, 1), (libc::SYS_mknodat, 2)] {
            let mut cmps = vec![ScmpArgCompare::new(mode_arg, file_type, kind)];
            if kind == libc::S_IFCHR as u64 {
                cmps.push(ScmpArgCompare::new(
                    mode_arg + 1,
                    ScmpCompareOp::NotEqual,
                    0,
                ));
            }
            ctx.add_rule_conditional(ScmpAction::Notify, ScmpSyscall::from(nr as i32), &cmps)
                .map_err(step(&format!("device node rule for syscall {nr}")))?;
        }
    }
    for &flag in CLONE_NAMESPACE_FLAGS {
        notify_if(
            &mut ctx,
            libc::SYS_clone,
            ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(flag), flag),
        )?;
    }
    // A process that shares its cwd with another (`CLONE_FS` without
    // `CLONE_THREAD`): that one could move the cwd after an exec was
    // verified, and the interpreter of an approved script would open
    // another by the same relative name (`exec::Script`). Threads share it
    // too, but die at the exec.
    let fs_not_thread = (libc::CLONE_FS | libc::CLONE_THREAD) as u64;
    notify_if(
        &mut ctx,
        libc::SYS_clone,
        ScmpArgCompare::new(
            0,
            ScmpCompareOp::MaskedEqual(fs_not_thread),
            libc::CLONE_FS as u64,
        ),
    )?;
    // TIOCSTI, TIOCLINUX, TIOCVHANGUP, TIOCCONS; and FIOSETOWN/SIOCSPGRP,
    // which like F_SETOWN_EX aim SIGIO at a pid read from memory (a way to
    // signal the supervisor).
    for cmd in [
        TIOCSTI,
        TIOCLINUX,
        TIOCVHANGUP,
        TIOCCONS,
        FIOSETOWN,
        SIOCSPGRP,
    ] {
        notify_if(
            &mut ctx,
            libc::SYS_ioctl,
            ScmpArgCompare::new(1, low32, cmd),
        )?;
    }
    // TIOCSCTTY that steals (a non-zero argument, an int).
    ctx.add_rule_conditional(
        ScmpAction::Notify,
        ScmpSyscall::from(libc::SYS_ioctl as i32),
        &[
            ScmpArgCompare::new(1, low32, TIOCSCTTY),
            // Any bit, the upper half's too: refuses a harmless call at worst.
            ScmpArgCompare::new(2, ScmpCompareOp::NotEqual, 0),
        ],
    )
    .map_err(step("conditional rule for TIOCSCTTY"))?;
    // The host's kernel log, which a root tool could clear.
    for &action in SYSLOG_ACTIONS_REFUSED {
        notify_if(
            &mut ctx,
            libc::SYS_syslog,
            ScmpArgCompare::new(0, low32, action),
        )?;
    }
    // F_SETOWN_EX would point SIGIO at a pid read from memory; refused.
    // (F_SETOWN with a register argument is checked by the supervisor.)
    notify_if(
        &mut ctx,
        libc::SYS_fcntl,
        ScmpArgCompare::new(1, low32, F_SETOWN_EX as u64),
    )?;
    notify_if(
        &mut ctx,
        libc::SYS_fcntl,
        ScmpArgCompare::new(1, low32, libc::F_SETOWN as u64),
    )?;

    for &(level, optname, _) in SOURCE_ROUTE_OPTIONS {
        ctx.add_rule_conditional(
            ScmpAction::Notify,
            ScmpSyscall::from(libc::SYS_setsockopt as i32),
            &[
                ScmpArgCompare::new(1, low32, level),
                ScmpArgCompare::new(2, low32, optname),
            ],
        )
        .map_err(step("conditional rule for setsockopt"))?;
    }

    // A pidfd of the peer (`SO_PEERPIDFD`) or of each sender
    // (`SO_PASSPIDFD`, then `SCM_PIDFD`): the supervisor connects and sends
    // for the tool, so that pidfd is the supervisor's, a signal target.
    for (nr, optname) in [
        (libc::SYS_setsockopt, SO_PASSPIDFD),
        (libc::SYS_getsockopt, SO_PEERPIDFD),
    ] {
        ctx.add_rule_conditional(
            ScmpAction::Notify,
            ScmpSyscall::from(nr as i32),
            &[
                ScmpArgCompare::new(1, low32, libc::SOL_SOCKET as u64),
                ScmpArgCompare::new(2, low32, optname),
            ],
        )
        .map_err(step("conditional rule for pidfd socket options"))?;
    }
    // socketpair of a family other than unix: the family check `socket`
    // gets (its module would load, and its `create` run, before any error).
    notify_if(
        &mut ctx,
        libc::SYS_socketpair,
        ScmpArgCompare::new(0, ScmpCompareOp::NotEqual, libc::AF_UNIX as u64),
    )?;

    // Limits and scheduling of another task: a tool running as cordon's
    // user could lower the supervisor's limits (RLIMIT_CPU kills it,
    // RLIMIT_NOFILE starves it of fds) or its priority. Notified only when
    // another task is named (a changing prlimit64, or a pid, pgrp or user);
    // the supervisor refuses those that reach itself.
    let not_zero = |arg: u32| ScmpArgCompare::new(arg, ScmpCompareOp::NotEqual, 0);
    ctx.add_rule_conditional(
        ScmpAction::Notify,
        ScmpSyscall::from(libc::SYS_prlimit64 as i32),
        &[not_zero(0), not_zero(2)],
    )
    .map_err(step("conditional rule for prlimit64"))?;
    for nr in [
        libc::SYS_sched_setscheduler,
        libc::SYS_sched_setparam,
        libc::SYS_sched_setattr,
        libc::SYS_sched_setaffinity,
    ] {
        notify_if(&mut ctx, nr, not_zero(0))?;
    }
    // setpriority(which, who, _): PRIO_PROCESS is 0; ioprio_set(which,
    // who, _): IOPRIO_WHO_PROCESS is 1. Any other `which`, or a `who`.
    notify_if(&mut ctx, libc::SYS_setpriority, not_zero(1))?;
    notify_if(&mut ctx, libc::SYS_setpriority, not_zero(0))?;
    notify_if(&mut ctx, libc::SYS_ioprio_set, not_zero(1))?;
    notify_if(
        &mut ctx,
        libc::SYS_ioprio_set,
        ScmpArgCompare::new(0, ScmpCompareOp::NotEqual, IOPRIO_WHO_PROCESS),
    )?;

    // prctl(PR_SET_MM) rewrites the memory map's description, the exe link
    // among it: refused (the supervisor keeps `exe` until the next exec).
    notify_if(
        &mut ctx,
        libc::SYS_prctl,
        ScmpArgCompare::new(0, low32, libc::PR_SET_MM as u64),
    )?;

    export(&ctx)
}

/// The calls a connector makes once its filter is loaded (see
/// `sys::connector`): its loop, the credential switches, its exit.
const CONNECTOR_CALLS: &[i64] = &[
    libc::SYS_recvmsg,
    libc::SYS_write,
    libc::SYS_connect,
    libc::SYS_close,
    libc::SYS_setgroups,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_getppid,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The connector's filter: those calls, anything else kills it. Its point is
/// less what it forbids than that it exists: a broker refuses a peer under
/// a seccomp filter.
pub fn connector() -> Result<BpfProgram, FilterError> {
    let step = |step: &str| {
        let step = step.to_owned();
        move |source| FilterError::Build { step, source }
    };
    let mut ctx = ScmpFilterContext::new(ScmpAction::KillProcess).map_err(step("init"))?;
    ctx.set_act_badarch(ScmpAction::KillProcess)
        .map_err(step("bad-arch action"))?;
    for &nr in CONNECTOR_CALLS {
        ctx.add_rule(ScmpAction::Allow, ScmpSyscall::from(nr as i32))
            .map_err(step(&format!("syscall {nr}")))?;
    }
    // Re-armed after each request: its death signal, and not dumpable.
    for (option, value) in [
        (libc::PR_SET_PDEATHSIG, libc::SIGKILL),
        (libc::PR_SET_DUMPABLE, 0),
    ] {
        ctx.add_rule_conditional(
            ScmpAction::Allow,
            ScmpSyscall::from(libc::SYS_prctl as i32),
            &[
                // The option is an int to the kernel; the value a full word
                // (the connector passes both as words).
                ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(0xffff_ffff), option as u64),
                ScmpArgCompare::new(1, ScmpCompareOp::Equal, value as u64),
            ],
        )
        .map_err(step("prctl"))?;
    }
    export(&ctx)
}

/// The program libseccomp built, as bytes we can load ourselves.
fn export(ctx: &ScmpFilterContext) -> Result<BpfProgram, FilterError> {
    let mut memfd = std::fs::File::from(
        nix::sys::memfd::memfd_create(c"cordon-filter", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(std::io::Error::from)?,
    );
    ctx.export_bpf(memfd.as_fd())
        .map_err(|source| FilterError::Build {
            step: "export".into(),
            source,
        })?;
    let mut bytes = Vec::new();
    use std::io::Seek;
    memfd.seek(std::io::SeekFrom::Start(0))?;
    memfd.read_to_end(&mut bytes)?;
    BpfProgram::from_bytes(&bytes).ok_or_else(|| {
        FilterError::Export(std::io::Error::other(format!(
            "libseccomp exported {} bytes, not a BPF program",
            bytes.len()
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_is_built_once_per_process_and_is_the_built_one() {
        let first = program().expect("filter");
        let again = program().expect("filter");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first.len(), build().expect("filter").len());
    }

    #[test]
    fn every_forbidden_syscall_has_an_errno_and_none_is_brokered() {
        for nr in FORBIDDEN_ALWAYS {
            assert!(forbidden_errno(*nr).is_some(), "{nr}");
            assert!(!BROKERED.contains(nr), "{nr}");
        }
        for nr in BROKERED.iter().chain(INSPECTED).chain(CREDENTIAL_CHANGES) {
            assert_eq!(forbidden_errno(*nr), None, "{nr}");
        }
    }

    #[test]
    fn the_filter_builds() {
        let prog = build().unwrap();
        assert!(prog.len() > 20, "{} instructions", prog.len());
    }
}
