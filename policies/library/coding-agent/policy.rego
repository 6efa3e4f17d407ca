# coding-agent: an agent that edits, builds and commits one repository.
#
# Intent: read and write the repository (the sandbox's workdir), its private
# temp dir and the build caches listed in the settings; read the system; run
# git, make, the C toolchain and the build tool (cargo by default); reach the
# package registries over HTTPS and nothing else on the network. Writes
# outside those places, and to git hooks, are denied with a reason.
#
# Settings: data.library["coding-agent"] (data.json beside this file).
# Selected by the sandbox label tool=coding-agent (see ../dispatch.rego).
package cordon.library.coding_agent

import rego.v1

settings := data.library["coding-agent"]

default allow := false

# The repository is the sandbox's workdir (undefined when there is none, so
# an empty workdir never means "everything under /").
repo := input.sandbox.workdir if input.sandbox.workdir != ""

# Standard devices; none of them reaches other processes' data.
device_files := {"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/full", "/dev/tty"}

# --- files -------------------------------------------------------------------

# Compilers, headers, libraries, /etc. Secrets under /etc are denied below.
allow if {
	input.kind == "file"
	not writes
	some prefix in settings.system_read_prefixes
	startswith(input.file.path, prefix)
}

# The top-level system directories themselves (path lookups, directory walks).
allow if {
	input.kind == "file"
	not writes
	input.file.path in {"/", "/usr", "/etc", "/lib", "/lib64", "/opt", "/tmp", "/dev", "/proc", "/home"}
}

# Own /proc entries (the shim resolves /proc/self to /proc/PID).
allow if {
	input.kind == "file"
	not writes
	some own in {sprintf("/proc/%d", [input.process.pid]), "/proc/self", "/proc/thread-self"}
	under(input.file.path, own)
}

# System-wide /proc files that make and cargo size their job count from.
allow if {
	input.kind == "file"
	not writes
	input.file.path in {"/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/loadavg"}
}

# Git's and the build tool's user configuration, read-only.
allow if {
	input.kind == "file"
	not writes
	some rel in settings.home_read
	under(input.file.path, concat("/", [settings.home, rel]))
}

# The repository, the private temp dir and the build caches, for any access.
allow if {
	input.kind == "file"
	in_writable_dir
}

# Standard devices, read and write; the nodes exist, so never created.
allow if {
	input.kind == "file"
	writable_device
}

# Everything the agent changes must be in the repository (where a reviewer
# sees it in the diff), the temp dir or a cache; anything else is persistence
# (shell rc files, ~/.local/bin) or tampering.
deny contains sprintf("coding-agent may write only inside the repository, its temp dir and build caches, not %s", [input.file.path]) if {
	input.kind == "file"
	writes
	not in_writable_dir
	not writable_device
}

# Git runs hooks on the developer's next commit, outside any sandbox and
# invisible in the diff: the classic way to persist from a repository.
# (.git/modules/NAME/hooks are the hooks of submodules.)
deny contains sprintf("%s is a git hook; coding-agent may not write hooks", [input.file.path]) if {
	input.kind == "file"
	writes
	git_hook_path
}

# Secrets under /etc stay unreadable even though /etc is readable.
deny contains sprintf("%s holds system secrets", [input.file.path]) if {
	input.kind == "file"
	some secret in settings.secret_paths
	under(input.file.path, secret)
}

# --- exec --------------------------------------------------------------------

# git, make, the C toolchain, the build tool, and the shell and coreutils
# that make recipes use (each command they run is brokered in turn).
# Exec paths are resolved: /usr/bin/cc arrives as /usr/bin/x86_64-linux-gnu-gcc-12.
allow if {
	input.kind == "exec"
	input.exec.path in settings.exec_files
}

# Toolchain directories and name prefixes: git's helpers (git-core), gcc's
# internals (cc1, collect2), the target-prefixed gcc and binutils.
# Prefixes, not globs: glob.match costs ~1 ms per call.
allow if {
	input.kind == "exec"
	some prefix in settings.exec_prefixes
	startswith(input.exec.path, prefix)
}

# What the build itself produces and runs: cargo's build scripts and test
# binaries under target/. Building code means running it; the programs stay
# inside this sandbox and under this policy. An empty list forbids it.
allow if {
	input.kind == "exec"
	some rel in settings.repo_exec_dirs
	startswith(input.exec.path, concat("/", [trim_right(repo, "/"), rel, ""]))
}

# --- network -----------------------------------------------------------------

# HTTPS to the package registries, e.g.
#   {"name": "crates.io", "cidrs": ["151.101.0.0/16"]}
# UDP too: glibc's getaddrinfo connects a UDP socket to each candidate
# address to sort them.
allow if {
	inet_outbound
	input.network.protocol in {"tcp", "udp"}
	input.network.port == 443
	some registry in settings.registries
	some cidr in registry.cidrs
	net.cidr_contains(cidr, input.network.address)
}

# DNS to the configured resolvers, so registry names resolve. An empty list
# leaves name resolution to /etc/hosts.
allow if {
	inet_outbound
	input.network.protocol in {"tcp", "udp"}
	input.network.port == 53
	input.network.address in settings.resolvers
}

# A refused connection is what git and cargo report best; bind and listen
# keep the default EACCES.
errno := "ECONNREFUSED" if {
	input.kind == "network"
	not input.network.op in {"bind", "listen"}
}

# --- helpers -----------------------------------------------------------------

# An IPv4 or IPv6 call that sends somewhere (not bind or listen).
inet_outbound if {
	input.kind == "network"
	input.network.family in {"inet", "inet6"}
	input.network.op in {"connect", "sendto", "sendmsg", "sendmmsg"}
}

# Opens for writing, creates or truncates.
writes if "write" in input.file.access

writes if input.file.create

writes if input.file.truncate

# Where the agent may write: the repository, the temp dir, the build caches.
writable_dirs contains repo

writable_dirs contains input.sandbox.tmpdir if input.sandbox.tmpdir != ""

writable_dirs contains dir if {
	some rel in settings.cache_dirs
	dir := concat("/", [settings.home, rel])
}

# The path is in (or is) one of the writable dirs.
in_writable_dir if {
	some dir in writable_dirs
	under(input.file.path, dir)
}

# A rename or link (flags "OLD" or "NEW") of a repository's .git, or of a
# submodule's directory under .git/modules: moved aside, a .git put in its
# place holds hooks that no write to .git/hooks/ made (found by review).
# (`git submodule absorbgitdirs`, which moves a submodule's .git there, is
# refused too.)
deny contains sprintf("%s holds git hooks; coding-agent may not rename it", [input.file.path]) if {
	input.kind == "file"
	input.file.flags[0] in {"OLD", "NEW"}
	"DIR" in input.file.flags
	git_hooks_holder
}

git_hooks_holder if endswith(input.file.path, "/.git")

# (Directories only: git renames pack and lock files in there.)
git_hooks_holder if contains(input.file.path, "/.git/modules")

# A standard device opened without creating it.
writable_device if {
	not input.file.create
	input.file.path in device_files
}

# The path is a hooks dir of a repository or of a submodule, or inside one.
git_hook_path if contains(path_with_slash, "/.git/hooks/")

git_hook_path if {
	contains(input.file.path, "/.git/modules/")
	contains(path_with_slash, "/hooks/")
}

# Computed once per request, so a dir matches like the files in it.
path_with_slash := concat("", [input.file.path, "/"])

# path is dir itself or inside it (not merely sharing a prefix: /work2 is not under /work).
under(path, dir) if path == dir

under(path, dir) if startswith(path, concat("", [trim_right(dir, "/"), "/"]))
