#!/usr/bin/env python3
"""Runs a command under an allow-everything seccomp filter.

Used by the tests to play a sandboxed process: the broker must refuse any
caller whose /proc/PID/status shows a seccomp filter, whatever the filter does.
"""
import os
import sys

from seccomp_filter import filter_this_thread

# --deny-seccomp: the seccomp syscall fails with EPERM under the filter.
deny = sys.argv[1:2] == ["--deny-seccomp"]
args = sys.argv[2:] if deny else sys.argv[1:]
filter_this_thread(deny_seccomp=deny)
os.execv(args[0], args)
