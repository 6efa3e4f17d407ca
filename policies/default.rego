# Cordon's built-in policy: what `cordon run` enforces when given no --policy.
#
# Intent: run an untrusted tool in the current directory. It may read the
# system, read and write its working directory and a private temp dir, exec
# system binaries, and nothing else: no credentials, no network unless
# data.cordon.network.allow lists it, no cloud metadata endpoint.
#
# Contract (docs/policy-authoring.md): `allow` (default false), `deny` (a set
# of reasons; any member denies), `errno` (name; EACCES by default).
package cordon

import rego.v1

default allow := false

# The rules below decide, unless the sandbox's tool (input.sandbox.labels.tool)
# has its own policy in the library (policies/library, loaded beside this
# file), which then decides alone. The denials at the end hold for every tool.
allow if {
	not tool_selected
	builtin_allow
}

default tool_selected := false

# --- files -------------------------------------------------------------------

# Read-only system locations: shared libraries, binaries, configuration.
# /etc secrets are excluded by the deny rules below.
system_read_prefixes := [
	"/usr/", "/lib/", "/lib64/", "/lib32/", "/bin/", "/sbin/", "/etc/",
	"/opt/", "/var/lib/dpkg/", "/sys/devices/system/cpu/",
]

# Devices every program expects; none of them reaches other processes' data.
# Not /dev/pts/N: the policy cannot tell the tool's own terminal from the
# user's others (same owner), which it could read keystrokes from.
device_files := {"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/full", "/dev/tty"}

is_read_only if {
	input.file.access == ["read"]
	not input.file.create
	not input.file.truncate
}

# Reading system files, including directory listings of them.
builtin_allow if {
	input.kind == "file"
	is_read_only
	is_string(input.file.path) # any_prefix_match also takes a list of paths
	strings.any_prefix_match(input.file.path, system_read_prefixes)
}

# Everything in the working directory the sandbox started in, and its private
# temp dir. These are fixed at start; the tool's own cwd is not trusted.
# Second: after system files, the files most requests are for.
builtin_allow if {
	input.kind == "file"
	maybe_writable
	under_any(input.file.path, writable_dirs)
}

# Implied by under_any(path, writable_dirs), whatever slashes end a dir: it
# spares every other path computing writable_dirs (~2 µs).
maybe_writable if startswith(input.file.path, trim_right(input.sandbox.workdir, "/"))

maybe_writable if startswith(input.file.path, trim_right(input.sandbox.tmpdir, "/"))

# The system directories themselves (opened by ls, find, path lookups).
builtin_allow if {
	input.kind == "file"
	is_read_only
	input.file.path in {"/", "/usr", "/etc", "/lib", "/lib64", "/bin", "/sbin", "/tmp", "/dev", "/proc"}
}

# Standard devices, read and write (writing to /dev/null is normal output),
# and (see below) new POSIX semaphores and shared memory. One rule body for
# both: each body costs evaluation time on every file request.
builtin_allow if {
	input.kind == "file"
	startswith(input.file.path, "/dev/")
	dev_allowed
}

dev_allowed if {
	not input.file.create
	input.file.path in device_files
}

# POSIX semaphores and shared memory (Python's multiprocessing locks,
# shm_open): a new object in /dev/shm, created exclusively, so never another
# program's. Off unless data.cordon.shm is true, because the backstop must
# then let the tool write in /dev/shm, where its uid's other objects could be
# unlinked or truncated by calls the broker never sees (a rename is decided
# under its old name, which no rule here allows).
dev_allowed if {
	startswith(input.file.path, "/dev/shm/")
	data.cordon.shm == true
	input.file.create
	"O_EXCL" in input.file.flags
	not contains(substring(input.file.path, 9, -1), "/")
}

# glibc's sem_open names a new semaphore by linking the temporary file it
# made (the rule above) to its name: both names of that link, in /dev/shm
# itself. An object so named still opens only with O_CREAT | O_EXCL, so
# never another program's.
dev_allowed if {
	startswith(input.file.path, "/dev/shm/")
	data.cordon.shm == true
	input.syscall in {"link", "linkat"}
	not contains(substring(input.file.path, 9, -1), "/")
}

# The tool's own fds that have no path (pipes, sockets), reopened through
# /proc/PID/fd/N, read and write (`echo x >/dev/stderr` into a pipe, bash's
# >(...)): an fd that has a path is decided by that path instead.
builtin_allow if {
	input.kind == "file"
	startswith(input.file.path, "/proc/")
	not input.file.create
	startswith(input.file.path, sprintf("/proc/%d/fd/", [input.process.pid]))
}

# The tool's own /proc entries (the shim resolves /proc/self to /proc/PID).
# The startswith is implied by what follows: it only spares other paths the set.
builtin_allow if {
	input.kind == "file"
	startswith(input.file.path, "/proc/")
	is_read_only
	under_any(input.file.path, {sprintf("/proc/%d", [input.process.pid]), "/proc/self", "/proc/thread-self"})
}

# /proc files that describe the system, not other processes.
builtin_allow if {
	input.kind == "file"
	startswith(input.file.path, "/proc/")
	is_read_only
	input.file.path in {"/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/filesystems", "/proc/loadavg", "/proc/uptime", "/proc/version", "/proc/sys/kernel/random/uuid", "/proc/sys/vm/overcommit_memory"}
}

# A workdir of / would make every path writable, one of /tmp, /home, /var or
# the like every user's files, one in /proc, /dev, /etc or a directory of
# programs the system itself: started there, the tool gets its temp dir
# only. (The broker refuses other spellings of these.) A project under /usr,
# such as /usr/src/app, is a workdir like any other.
writable_dirs contains input.sandbox.workdir if {
	not input.sandbox.workdir in shared_dirs
	not strings.any_prefix_match(concat("", [input.sandbox.workdir, "/"]), system_trees)
}

shared_dirs := {
	"", "/", "/tmp", "/var/tmp", "/dev/shm", "/home", "/etc", "/usr", "/usr/local", "/var", "/run",
	"/srv", "/opt", "/mnt", "/media", "/boot", "/proc", "/sys", "/dev", "/bin", "/sbin", "/lib", "/lib64",
	"/usr/share", "/var/lib", "/var/spool", "/var/log", "/var/cache", "/var/mail", "/var/crash",
	# What /home, /root, /usr/local, /srv, /opt and /mnt link to on ostree
	# systems (Fedora Silverblue, CoreOS): the workdir is the cwd the kernel
	# names, the link's target.
	"/var/home", "/var/roothome", "/var/usrlocal", "/var/srv", "/var/opt", "/var/mnt",
}

# exec_prefixes, and the system's other trees (written out: a concatenation
# would be made again at every evaluation).
system_trees := [
	"/proc/", "/sys/", "/dev/", "/etc/", "/boot/", "/run/", "/lib/", "/lib64/", "/usr/lib64/",
	"/usr/local/sbin/", "/usr/local/lib/",
	"/usr/bin/", "/bin/", "/usr/sbin/", "/sbin/", "/usr/local/bin/", "/usr/libexec/", "/usr/lib/",
	"/usr/lib32/", "/usr/libx32/", "/usr/games/", "/var/usrlocal/bin/", "/var/usrlocal/sbin/",
	"/var/usrlocal/lib/",
]

writable_dirs contains input.sandbox.tmpdir if not input.sandbox.tmpdir in {"", "/"}

# --- exec --------------------------------------------------------------------

# Programs from the system's binary directories; never from the working
# directory, so a tool cannot exec a binary it wrote. (It can still run one
# through the dynamic loader, which /usr/lib/ holds: `ld-linux-x86-64.so.2
# ./prog` maps the file, not an exec; docs/threat-model.md.)
exec_prefixes := ["/usr/bin/", "/bin/", "/usr/sbin/", "/sbin/", "/usr/local/bin/", "/usr/libexec/", "/usr/lib/"]

builtin_allow if {
	input.kind == "exec"
	is_string(input.exec.path)
	strings.any_prefix_match(input.exec.path, exec_prefixes)
}

# --- network -----------------------------------------------------------------

# Network access only to what data.cordon.network.allow lists, e.g.
#   {"cordon": {"network": {"allow": [{"cidr": "10.0.0.0/8", "ports": [443]}]}}}
builtin_allow if {
	input.kind == "network"
	input.network.family in {"inet", "inet6"}
	input.network.op in {"connect", "sendto", "sendmsg", "sendmmsg"}
	some entry in data.cordon.network.allow
	net.cidr_contains(entry.cidr, input.network.address)
	input.network.port in entry.ports
}

# --- denials that override every allow ------------------------------------------

# Credentials and secrets, wherever they live.
secret_patterns := [
	"/.ssh/", "/.aws/", "/.config/gcloud/", "/.azure/", "/.kube/", "/.docker/config.json/",
	"/.docker/contexts/",
	"/.gnupg/", "/.local/share/keyrings/", "/.netrc", "/.git-credentials", "/.pgpass",
	# Package registries' and forges' tokens.
	"/.npmrc/", "/.pypirc/", "/.cargo/credentials", "/.config/gh/hosts.yml/", "/.gem/credentials/",
	"/.vault-token/", "/.terraform.d/credentials.tfrc.json/", "/.config/git/credentials/",
	"/.config/containers/auth.json/", "/.dockercfg/", "/.m2/settings.xml/",
	"/.gradle/gradle.properties/", "/.config/composer/auth.json/", "/.config/hub/", "/.config/glab-cli/",
	# Clouds, clusters, storage and infrastructure.
	"/.minikube/", "/.oci/", "/.config/openstack/", "/.config/doctl/", "/.databrickscfg/",
	"/.config/rclone/", "/.s3cfg/", "/.boto/", "/.terraformrc/", "/.pulumi/credentials.json/",
	"/.config/sops/", "/.password-store/", "/.local/share/kwalletd/", "/.my.cnf/", "/.mylogin.cnf/",
	# Browsers' saved logins and cookies; AI tools' tokens.
	"/.mozilla/firefox/", "/.config/google-chrome/", "/.config/chromium/",
	"/.config/BraveSoftware/", "/.config/microsoft-edge/", "/.config/vivaldi/", "/.config/opera/",
	"/.var/app/com.google.Chrome/", "/.var/app/org.chromium.Chromium/", "/.var/app/org.mozilla.firefox/",
	"/.var/app/com.brave.Browser/", "/.var/app/com.microsoft.Edge/",
	"/.claude/.credentials.json/", "/.codex/auth.json/", "/.config/github-copilot/",
	"/.cache/huggingface/token/", "/.huggingface/token/", "/.gemini/oauth_creds.json/",
	# More registries' tokens and clouds' credentials.
	# (Not Yarn's .yarnrc.yml nor NuGet's NuGet.Config: every project and
	# restore reads them, and only some hold tokens.)
	"/.config/pypoetry/auth.toml/", "/.composer/auth.json/", "/.aliyun/", "/.config/hcloud/", "/.config/scw/", "/.docker/key.pem/",
	# Shell, REPL and database histories (commands typed with secrets in them).
	"/.bash_history/", "/.zsh_history/", "/.psql_history/", "/.mysql_history/", "/.histfile/",
	"/.sh_history/", "/.local/share/fish/fish_history/", "/.python_history/", "/.node_repl_history/",
	"/.rediscli_history/", "/.sqlite_history/",
]

# Every credential pattern, and every .env name in an absolute path, has a
# "/." in it: one test spares every other path the rules of this group.
deny contains reason if {
	input.kind == "file"
	contains(input.file.path, "/.")
	some reason in dotted_denials
}

# Every pattern starts with "/.": each place the path has one is where a
# pattern can start (one loop step for most paths, against one per pattern).
dotted_denials contains sprintf("%s is a credential store", [input.file.path]) if {
	some i in indexof_n(input.file.path, "/.")
	strings.any_prefix_match(substring(path_with_slash, i, -1), secret_patterns)
}

# .env files hold application secrets by convention.
dotted_denials contains sprintf("%s is a .env file", [input.file.path]) if {
	contains(input.file.path, "/.env") # implied by the last line (an absolute path); spares the split
	parts := split(input.file.path, "/")
	startswith(parts[count(parts) - 1], ".env")
}

# Computed once per request, not once per pattern.
path_with_slash := concat("", [input.file.path, "/"])

# Ubuntu's Chromium (a snap) keeps its profile where no name starts with a
# dot, which the rules above look for first.
deny contains sprintf("%s is a credential store", [input.file.path]) if {
	input.kind == "file"
	contains(input.file.path, "/snap/chromium/")
	contains(input.file.path, "/snap/chromium/common/chromium/")
}

# Denials are grouped behind one cheap test per group (under /etc, a write,
# a network call): each rule body costs the evaluation time even when its
# first line fails, and most requests are reads outside /etc.
deny contains reason if {
	input.kind == "file"
	startswith(input.file.path, "/etc/")
	some reason in etc_denials
}

# By prefix: an editor's or an admin's copy (shadow.bak, shadow~,
# sudoers.orig) holds the same. etckeeper's repository holds every file of
# /etc, shadow's contents among them.
etc_denials contains sprintf("%s holds password hashes or privileges", [input.file.path]) if {
	strings.any_prefix_match(input.file.path, [
		"/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/.git/", "/etc/.hg/", "/etc/.bzr/",
		"/etc/_darcs/",
	])
}

# Private keys and privileges only root can read (a root tool could: its
# opens have root's credentials).
etc_denials contains sprintf("%s is a private key or privilege file", [input.file.path]) if {
	strings.any_prefix_match(input.file.path, [
		"/etc/ssh/ssh_host_", "/etc/ssl/private/", "/etc/sudoers.d/", "/etc/krb5.keytab",
		"/etc/wireguard/", "/etc/letsencrypt/", "/etc/pki/tls/private/", "/etc/security/opasswd",
		"/etc/kubernetes/pki/", "/etc/NetworkManager/system-connections/", "/etc/ipsec.secrets",
		"/etc/ppp/chap-secrets", "/etc/ppp/pap-secrets",
		# Cluster admins' client keys, and other services' secrets.
		"/etc/kubernetes/admin.conf", "/etc/kubernetes/super-admin.conf",
		"/etc/kubernetes/controller-manager.conf", "/etc/kubernetes/scheduler.conf",
		"/etc/kubernetes/kubelet.conf", "/etc/rancher/", "/etc/mysql/debian.cnf",
		"/etc/ipsec.d/private/", "/etc/swanctl/private/", "/etc/credstore", "/etc/openvpn/",
		"/etc/gitlab-runner/", "/etc/sssd/", "/etc/netplan/", "/etc/wpa_supplicant/",
		"/etc/postfix/sasl_passwd", "/etc/dovecot/private/", "/etc/pki/CA/private/",
		"/etc/pki/libvirt/private/",
		"/etc/apt/auth.conf", "/etc/gitlab/", "/etc/docker/key.json", "/etc/salt/pki/", "/etc/chef/",
		"/etc/msmtprc", "/etc/ssmtp/ssmtp.conf", "/etc/boto.cfg",
		# npm's global configuration: the tokens of ~/.npmrc, for everyone.
		"/etc/npmrc",
	])
}

# The rest of what root alone can read under /etc has no list: a file there
# named as a secret, a private key or a key ring is denied (LDAP's
# ldap.secret, Puppet's private_keys, Ceph's *.keyring, *.key).
# apt's public key rings sit in /etc/apt/keyrings/ and /etc/apt/trusted.gpg.d/:
# a .gpg file or a directory named keyrings is not a secret's name.
etc_denials contains sprintf("%s is named as a secret or a private key", [input.file.path]) if {
	named_as_secret(lower(input.file.path))
	not input.file.path in {"/etc/passwd", "/etc/passwd-"}
	not startswith(input.file.path, "/etc/pam.d/")
}

# Plain string tests, one definition each: a regular expression, or a loop
# over the words, cost more per read under /etc (BENCHMARKS.md, session 29).
named_as_secret(path) if contains(path, "secret")

named_as_secret(path) if contains(path, "private")

named_as_secret(path) if contains(path, "passw")

named_as_secret(path) if contains(path, "credential")

named_as_secret(path) if contains(path, "token")

named_as_secret(path) if strings.any_suffix_match(path, [".key", ".keytab", ".keyring"])

deny contains reason if {
	input.kind == "file"
	not is_read_only
	some reason in write_denials
}

# In every name the rules below look for (a rule body that fails at once
# costs little; one test here spares them the rest).
dotted if contains(input.file.path, "/.")

# Files a shell or desktop session runs at the next login: a tool started in
# a home directory must not plant code there.
login_files := {
	".bashrc", ".bash_profile", ".bash_login", ".bash_logout", ".profile", ".zshrc",
	".zshenv", ".zprofile", ".zlogin", ".xprofile", ".xsessionrc", ".pam_environment",
	".bash_aliases", ".zlogout", ".kshrc", ".cshrc", ".tcshrc", ".login", ".xinitrc", ".xsession",
	".bash_completion", ".logout", ".xonshrc", ".mkshrc",
}

write_denials contains sprintf("%s runs at the user's next login", [input.file.path]) if {
	dotted
	parts := split(input.file.path, "/")
	parts[count(parts) - 1] in login_files
}

write_denials contains sprintf("%s starts programs for the user's session", [input.file.path]) if {
	dotted
	some dir in session_dirs
	contains(path_with_slash, dir)
}

session_dirs := [
	"/.config/autostart/", "/.config/systemd/user/", "/.local/share/systemd/user/",
	"/.bashrc.d/", "/.config/fish/", "/.config/environment.d/", "/.config/plasma-workspace/env/",
	"/.config/plasma-workspace/shutdown/", "/.kde/Autostart/", "/.kde4/Autostart/",
	"/.config/openbox/autostart", "/.config/lxsession/", "/.config/nushell/", "/.bash_completion.d/",
	"/.local/share/bash-completion/",
]

# Code that later runs outside the sandbox, by name: the user's bin directory
# (first on PATH in Debian's ~/.profile), Python's user site-packages (a .pth
# file runs at every interpreter start), and git's global settings
# (core.fsmonitor and core.hooksPath run programs in every repository).
write_denials contains sprintf("%s runs as the user outside the sandbox", [input.file.path]) if {
	dotted
	some dir in outside_runs
	contains(path_with_slash, dir)
}

outside_runs := [
	"/.local/bin/", "/.local/lib/python", "/.gitconfig/", "/.config/git/config/",
	# rustup's: ~/.profile sources ~/.cargo/env, which puts ~/.cargo/bin
	# on PATH.
	"/.cargo/env/", "/.cargo/bin/",
	# What editors, the terminal multiplexer and zsh frameworks run when
	# they start.
	"/.vimrc/", "/.exrc/", "/.vim/", "/.config/nvim/", "/.emacs/", "/.emacs.d/", "/.tmux.conf/",
	"/.config/tmux/", "/.oh-my-zsh/", "/.zshrc.d/", "/.config/systemd/user.conf/",
]

# A rename (flags "OLD" or "NEW", and "DIR") of a directory on the way to a
# denied name (~/.config, on the way to ~/.config/gh/hosts.yml; ~/.local, to
# ~/.local/bin/): moved, what is beneath it no longer matches, and what is
# put in its place is not checked. Decided by its own name, so its own name
# is kept: ~/bin included (found by review).
# (Under the writes' group: both names of a rename are decided as writes.)
write_denials contains reason if {
	input.file.flags[0] in {"OLD", "NEW"}
	"DIR" in input.file.flags # a file named .config (the kernel's) is no way to anything
	some reason in name_change_denials
}

name_change_denials contains sprintf("%s is on the way to credentials or to what runs outside the sandbox; it keeps its name", [input.file.path]) if {
	some pattern in array.concat(array.concat(secret_patterns, session_dirs), outside_runs)
	parts := split(trim(pattern, "/"), "/")
	count(parts) > 1
	some i in numbers.range(1, count(parts) - 1)
	endswith(path_with_slash, concat("", ["/", concat("/", array.slice(parts, 0, i)), "/"]))
}

name_change_denials contains sprintf("%s runs as the user outside the sandbox", [input.file.path]) if {
	home_bin(array.concat(split(input.file.path, "/"), ["x"]))
}

# ~/bin, which Debian's ~/.profile puts first on PATH when it exists.
write_denials contains sprintf("%s runs as the user outside the sandbox", [input.file.path]) if {
	home_bin(split(input.file.path, "/"))
}

home_bin(parts) if {
	parts[1] == "home"
	parts[3] == "bin"
	count(parts) > 4
}

home_bin(parts) if {
	parts[1] == "root"
	parts[2] == "bin"
	count(parts) > 3
}

# The same on ostree systems (Silverblue, CoreOS), where homes are there.
home_bin(parts) if {
	parts[1] == "var"
	parts[2] == "home"
	parts[4] == "bin"
	count(parts) > 5
}

home_bin(parts) if {
	parts[1] == "var"
	parts[2] == "roothome"
	parts[3] == "bin"
	count(parts) > 4
}

deny contains reason if {
	input.kind == "network"
	some reason in network_denials
}

# Link-local addresses hold the cloud metadata and credential endpoints
# (169.254.169.254 on AWS, GCP and Azure; 169.254.170.2 for ECS task roles,
# 169.254.170.23 for EKS Pod Identity); Alibaba's is 100.100.100.200, Azure's
# WireServer 168.63.129.16, AWS's IPv6 ones fd00:ec2::254 and fd00:ec2::23,
# GCP's fd20:ce::254. (The broker takes each address in one spelling only.)
network_denials contains "the cloud metadata endpoint hands out credentials" if {
	input.network.family == "inet"
	net.cidr_contains("169.254.0.0/16", input.network.address)
}

network_denials contains "the cloud metadata endpoint hands out credentials" if {
	input.network.address in {
		"100.100.100.200", "fd00:ec2::254", "fd00:ec2::23", "fd20:ce::254",
		# Oracle Cloud's IPv6 one, and Oracle Cloud Classic's.
		"fd00:c1::a9fe:a9fe", "192.0.0.192",
	}
}

# All of AWS's IPv6 metadata prefix.
network_denials contains "the cloud metadata endpoint hands out credentials" if {
	input.network.family == "inet6"
	net.cidr_contains("fd00:ec2::/32", input.network.address)
}

# Azure's WireServer is also the VM's DNS resolver (port 53): only its
# agent ports are denied.
network_denials contains "the cloud metadata endpoint hands out credentials" if {
	input.network.address == "168.63.129.16"
	input.network.port in {80, 32526}
}

network_denials contains "the cloud metadata endpoint hands out credentials" if {
	input.network.family == "inet6"
	net.cidr_contains("fe80::/10", input.network.address)
}

# A server needs explicit policy.
network_denials contains sprintf("%s needs a policy that allows listening", [input.network.op]) if {
	input.network.op in {"bind", "listen"}
	input.network.family != "unix"
}

# The errno of a denial.
#
# A refused connection is what clients handle best; binding or listening
# without permission is an access error.
#
# A read in a home directory that no rule allows, and none denies with a
# reason, fails as if the file were absent: programs that open optional
# per-user settings there carry on without them, where EACCES often ends
# them. (Programs that first ask access() or stat(), which are not brokered,
# still see the file: git then stops at an unreadable ~/.gitconfig. The
# coding-agent policy in the library reads it.) A denial with a reason (a
# credential store, a .env file) stays EACCES, which tools report.
#
# A library tool's sandbox gets its tool's errno (`tool_errno`, from the
# library's dispatch), or none.
#
# One rule, its cases chained with `else`: two definitions that could both
# hold with different values would make Cordon evaluate this policy in the
# interpreter, slower, since the compiled VM does not fail such a conflict as
# OPA does. (These cases cannot both hold: tools, networks, files.)

# A denial's errno: a selected library tool's own, else ECONNREFUSED for a
# connect or send, else ENOENT for a read in a home that nothing decided.
errno := e if {
	tool_selected
	e := data.cordon.tool_errno
} else := "ECONNREFUSED" if {
	not tool_selected
	input.kind == "network"
	not input.network.op in {"bind", "listen"}
} else := "ENOENT" if {
	not tool_selected
	input.kind == "file"
	not allow # not when allowed, by any file's rule: only denials need an errno (and allow is known)
	strings.any_prefix_match(input.file.path, ["/root/", "/home/"])
	is_read_only
	not "O_CREAT" in input.file.flags # an existing file: ENOENT would name its directory
	count(deny) == 0
}

# --- kernel backstop -------------------------------------------------------------

# Landlock bounds applied to the tool before it starts, and to the opens the
# supervisor performs for it: even if the shim were bypassed, the tool writes
# (creates, removes, renames) only in its working directory, its temp dir and
# the standard devices, and executes only system programs. Reads stay with the
# rules above. See docs/threat-model.md.
# A library tool policy (tool_selected) brings its own bounds, or none.
# A policy that allows more adds it with data, e.g.
#   {"cordon": {"backstop_extra": {"execute": ["/opt/tools"], "write": ["/srv/out"]}}}
backstop := {
	"write": array.concat(
		array.concat([dir | some dir in writable_dirs], ["/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/pts"]),
		array.concat(backstop_extra_write, shm_write),
	),
	"execute": array.concat(["/usr", "/bin", "/sbin", "/lib", "/lib64", "/opt"], backstop_extra_execute),
} if not tool_selected

default shm_write := []

shm_write := ["/dev/shm"] if data.cordon.shm == true

default backstop_extra_write := []

backstop_extra_write := data.cordon.backstop_extra.write

default backstop_extra_execute := []

backstop_extra_execute := data.cordon.backstop_extra.execute

# --- helpers -------------------------------------------------------------------

# path is one of dirs or inside one (not merely sharing a prefix: /work2 is not
# under /work). strings.any_prefix_match tests all prefixes in one builtin call,
# which the VM runs faster than a `some prefix in ...` loop (BENCHMARKS.md).
under_any(path, dirs) if path in dirs

under_any(path, dirs) if {
	is_string(path)
	strings.any_prefix_match(path, {concat("", [trim_right(dir, "/"), "/"]) | some dir in dirs})
}
