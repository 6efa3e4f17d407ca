#!/usr/bin/env python3
"""Runs a command under an allow-everything seccomp filter.

Used by the tests to play a sandboxed process: the broker must refuse any
caller whose /proc/PID/status shows a seccomp filter, whatever the filter does.
"""
import os
import sys

from seccomp_filter import filter_this_thread

filter_this_thread()
os.execv(sys.argv[1], sys.argv[1:])
