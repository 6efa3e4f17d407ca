# python-codegen: LLM-generated Python run once for a data task.
#
# Intent: the code may read the system (interpreter, stdlib, site-packages,
# shared libraries, /etc minus secrets), its own /proc entry, its input dirs
# and the working dir; it may write only its output dir and its private temp
# dir; it may start Python again (subprocess, multiprocessing) but never a
# shell, and it has no network at all.
#
# Settings: data.library["python-codegen"] (data.json beside this file).
# Selected by the sandbox label tool=python-codegen (see ../dispatch.rego).
package cordon.library.python_codegen

import rego.v1

settings := data.library["python-codegen"]

default allow := false

# Standard devices; none of them reaches other processes' data.
device_files := {"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/full"}

# --- files -------------------------------------------------------------------

# Reading (or listing) whatever is readable; see `readable` below.
allow if {
	input.kind == "file"
	not writes
	readable
}

# The interpreter, stdlib, site-packages, shared libraries and /etc.
# /etc secrets are denied below.
readable if {
	some prefix in settings.system_read_prefixes
	startswith(input.file.path, prefix)
}

# The top-level system directories themselves (path lookups, os.listdir).
readable if input.file.path in {"/", "/usr", "/etc", "/lib", "/lib64", "/tmp", "/dev", "/proc"}

# The program's own /proc entries (the shim resolves /proc/self to /proc/PID).
readable if {
	some own in {sprintf("/proc/%d", [input.process.pid]), "/proc/self", "/proc/thread-self"}
	under(input.file.path, own)
}

# System-wide /proc files that numpy, pandas and os.cpu_count() read.
readable if input.file.path in {"/proc/cpuinfo", "/proc/meminfo", "/proc/stat"}

# The task's input data.
readable if {
	some dir in input_dirs
	under(input.file.path, dir)
}

# The working dir: the generated script and anything staged beside it.
readable if {
	input.sandbox.workdir != ""
	under(input.file.path, input.sandbox.workdir)
}

# The output dir and the private temp dir, for any access.
allow if {
	input.kind == "file"
	in_writable_dir
}

# Standard devices, read and write (print(..., file=open(os.devnull, "w"))).
# The nodes exist, so a create flag here means someone replaced them.
allow if {
	input.kind == "file"
	writable_device
}

# Results go to the output dir only: a write anywhere else (even elsewhere in
# the working dir, e.g. over the input or the script) is a bug or an escape.
deny contains sprintf("python-codegen may write only to its output dir and temp dir, not %s", [input.file.path]) if {
	input.kind == "file"
	writes
	not in_writable_dir
	not writable_device
}

# Secrets under /etc stay unreadable even though /etc is readable.
deny contains sprintf("%s holds system secrets", [input.file.path]) if {
	input.kind == "file"
	some secret in settings.secret_paths
	under(input.file.path, secret)
}

# --- exec --------------------------------------------------------------------

# Python itself: sys.executable for subprocess and multiprocessing's spawn.
# Exact paths (exec paths are resolved, so /usr/bin/python3 arrives as
# /usr/bin/python3.N): a glob such as python3* would also admit the
# python3-config shell script, and glob.match costs ~1 ms per call.
allow if {
	input.kind == "exec"
	input.exec.path in settings.interpreters
}

# os.system() and subprocess(shell=True) run /bin/sh: generated code that
# reaches for a shell is the first step of most escapes, so say so.
deny contains sprintf("python-codegen may not run a shell (%s)", [input.exec.path]) if {
	input.kind == "exec"
	input.exec.path in settings.shells
}

# --- network -----------------------------------------------------------------

# The task's data is local; any network use (unix sockets included) is
# exfiltration or a download of code nobody reviewed.
deny contains sprintf("python-codegen has no network access (%s)", [input.network.op]) if {
	input.kind == "network"
}

# A refused connection is what clients handle best (glibc's nscd lookup falls
# back to /etc/passwd); bind and listen keep the default EACCES.
errno := "ECONNREFUSED" if {
	input.kind == "network"
	not input.network.op in {"bind", "listen"}
}

# --- helpers -----------------------------------------------------------------

# Opens for writing, creates or truncates.
writes if "write" in input.file.access

writes if input.file.create

writes if input.file.truncate

# Where the code may write: the output dir and the private temp dir (an
# empty tmpdir is no dir at all, not "everything under /").
writable_dirs contains dir if dir := resolve_dir(settings.output_dir)

writable_dirs contains input.sandbox.tmpdir if input.sandbox.tmpdir != ""

# The path is in (or is) the output dir or the temp dir.
in_writable_dir if {
	some dir in writable_dirs
	under(input.file.path, dir)
}

# A standard device opened without creating it.
writable_device if {
	not input.file.create
	input.file.path in device_files
}

# The input dirs, resolved. resolve_dir is called in the body: in regorus
# 0.14 a set rule whose key is a function call that is undefined for some
# element of a `some` loop fails with "not an object" instead of skipping it.
input_dirs contains resolved if {
	some dir in settings.input_dirs
	resolved := resolve_dir(dir)
}

# A directory from the settings: absolute as given, relative to the workdir.
# (One definition, chained with `else`: see default.rego's errno.)
resolve_dir(dir) := dir if {
	startswith(dir, "/")
} else := concat("/", [trim_right(input.sandbox.workdir, "/"), dir]) if {
	not startswith(dir, "/")
	input.sandbox.workdir != ""
}

# path is dir itself or inside it (not merely sharing a prefix: /work2 is not under /work).
under(path, dir) if path == dir

under(path, dir) if startswith(path, concat("", [trim_right(dir, "/"), "/"]))
