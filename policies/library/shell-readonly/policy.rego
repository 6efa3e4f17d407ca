# shell-readonly: a shell that may look but not touch.
#
# Intent: sh and a few read-only utilities (ls, cat, grep, find, head, tail,
# wc, ...) may read and list the system, the working dir and the private temp
# dir. Nothing may be written, created or truncated, there is no network, and
# no other program runs.
#
# Limit: cordon brokers open, exec and socket calls. unlink, rename and mkdir
# are not brokered, so this policy keeps them out of reach by what it lets
# run: no rm/mv/mkdir, no `find -delete`, no bash loadable builtins.
#
# Settings: data.library["shell-readonly"] (data.json beside this file).
# Selected by the sandbox label tool=shell-readonly (see ../dispatch.rego).
package cordon.library.shell_readonly

import rego.v1

settings := data.library["shell-readonly"]

default allow := false

# Redirecting to these changes nothing: `2>/dev/null`, output to the terminal.
discard_devices := {"/dev/null", "/dev/tty"}

# --- files -------------------------------------------------------------------

# Reading and listing whatever is readable; see `readable` below.
allow if {
	input.kind == "file"
	not writes
	readable
}

# Binaries, libraries, /etc, /opt. Secrets under /etc are denied below.
readable if {
	some prefix in settings.read_prefixes
	startswith(input.file.path, prefix)
}

# The top-level system directories themselves (ls /, find /usr ...).
readable if input.file.path in {"/", "/usr", "/etc", "/lib", "/lib64", "/bin", "/sbin", "/opt", "/tmp", "/dev", "/proc"}

# The shell's own /proc entries (the shim resolves /proc/self to /proc/PID).
readable if {
	some own in {sprintf("/proc/%d", [input.process.pid]), "/proc/self", "/proc/thread-self"}
	under(input.file.path, own)
}

# System-wide /proc files that describe the machine, not other processes.
readable if input.file.path in {"/proc/cpuinfo", "/proc/meminfo", "/proc/uptime", "/proc/loadavg", "/proc/version"}

# The working dir and the private temp dir: what the shell is there to inspect.
readable if {
	some dir in sandbox_dirs
	under(input.file.path, dir)
}

# Reading the standard input devices.
readable if input.file.path in {"/dev/null", "/dev/zero", "/dev/urandom", "/dev/tty"}

# Discarding output: `cmd 2>/dev/null` opens with O_WRONLY|O_CREAT|O_TRUNC.
allow if {
	input.kind == "file"
	discard_device
}

# Read-only means no file is opened for writing, created or truncated.
deny contains sprintf("shell-readonly may not change files: %s opened for writing", [input.file.path]) if {
	input.kind == "file"
	writes
	not discard_device
}

# Secrets under /etc stay unreadable even though /etc is readable.
deny contains sprintf("%s holds system secrets", [input.file.path]) if {
	input.kind == "file"
	some secret in settings.secret_paths
	under(input.file.path, secret)
}

# `enable -f /usr/lib/bash/rm rm` loads a builtin that unlinks without any
# exec; loading it is reading the .so, so refuse the read.
deny contains sprintf("%s holds bash loadable builtins, which change files without exec", [input.file.path]) if {
	input.kind == "file"
	some dir in settings.loadable_builtin_dirs
	under(input.file.path, dir)
}

# --- exec --------------------------------------------------------------------

# The read-only utilities and sh itself.
allow if {
	input.kind == "exec"
	input.exec.path in settings.commands
}

# find deletes with unlinkat, which cordon does not broker: refuse the flag.
deny contains "find -delete removes files; shell-readonly may not change files" if {
	input.kind == "exec"
	endswith(input.exec.path, "/find")
	"-delete" in input.exec.argv
}

# --- network -----------------------------------------------------------------

# Looking at files needs no network (unix sockets included: glibc falls back
# from nscd to /etc/passwd for `ls -l`).
deny contains sprintf("shell-readonly has no network access (%s)", [input.network.op]) if {
	input.kind == "network"
}

# A refused connection makes glibc's nscd client fall back quietly; bind and
# listen keep the default EACCES.
errno := "ECONNREFUSED" if {
	input.kind == "network"
	not input.network.op in {"bind", "listen"}
}

# --- helpers -----------------------------------------------------------------

# Opens for writing, creates or truncates.
writes if "write" in input.file.access

writes if input.file.create

writes if input.file.truncate

# The dirs the shell inspects; an empty one is no dir at all, not "everything under /".
sandbox_dirs contains input.sandbox.workdir if input.sandbox.workdir != ""

sandbox_dirs contains input.sandbox.tmpdir if input.sandbox.tmpdir != ""

# /dev/null or /dev/tty opened without creating it.
discard_device if {
	not input.file.create
	input.file.path in discard_devices
}

# path is dir itself or inside it (not merely sharing a prefix: /work2 is not under /work).
under(path, dir) if path == dir

under(path, dir) if startswith(path, concat("", [trim_right(dir, "/"), "/"]))
