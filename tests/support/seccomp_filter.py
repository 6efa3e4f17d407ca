"""An allow-everything seccomp filter for the calling thread (no TSYNC).

The tests use it to play a sandboxed process: the broker must refuse any
caller with a seccomp filter on any thread, whatever the filter does.
"""
import ctypes
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
BPF_RET_K = 0x06
SECCOMP_RET_ALLOW = 0x7FFF0000


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
SECCOMP_RET_ERRNO = 0x00050000
SYS_SECCOMP = 317  # x86_64
SECCOMP_SET_MODE_FILTER = 1
EPERM = 1


def filter_this_thread(deny_seccomp=False):
    """Puts the calling thread under the filter, or exits saying why. With
    deny_seccomp, installing another filter with the seccomp syscall fails
    with EPERM under it (x86_64)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        sys.exit(f"prctl(NO_NEW_PRIVS): errno {ctypes.get_errno()}")
    if deny_seccomp:
        # seccomp(SECCOMP_SET_MODE_FILTER, ...) only: libseccomp's probes
        # (other operations) still answer.
        insns = (SockFilter * 6)(
            SockFilter(BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
            SockFilter(BPF_JEQ_K, 0, 3, SYS_SECCOMP),
            SockFilter(BPF_LD_W_ABS, 0, 0, 16),  # args[0], low half
            SockFilter(BPF_JEQ_K, 0, 1, SECCOMP_SET_MODE_FILTER),
            SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),
            SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        )
        prog = SockFprog(6, insns)
    else:
        insns = (SockFilter * 1)(SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
        prog = SockFprog(1, insns)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        sys.exit(f"prctl(SECCOMP): errno {ctypes.get_errno()}")
