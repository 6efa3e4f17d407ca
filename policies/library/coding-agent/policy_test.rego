# Unit tests of the coding-agent tool policy: `cordon policy test policies/`.
# Every allow and deny rule, with the edges between them, against data.json.
package cordon_test.library.coding_agent

import data.cordon.library.coding_agent as policy
import rego.v1

repo := "/home/agent/src/app"

sandbox := {"id": "t", "labels": {"tool": "coding-agent"}, "workdir": repo, "tmpdir": "/tmp/cordon-t"}

process := {"pid": 4242, "ppid": 4241, "uid": 1000, "gid": 1000, "exe": "/usr/bin/git", "cwd": repo, "comm": "git"}

read(path) := {
	"sandbox": sandbox, "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["read"], "create": false, "truncate": false, "flags": ["O_RDONLY"]},
}

write(path) := {
	"sandbox": sandbox, "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["write"], "create": true, "truncate": true, "flags": ["O_WRONLY", "O_CREAT", "O_TRUNC"]},
}

# An existing file opened read-write, neither created nor truncated.
update(path) := {
	"sandbox": sandbox, "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["read", "write"], "create": false, "truncate": false, "flags": ["O_RDWR"]},
}

net(op, family, protocol, address, port) := {
	"sandbox": sandbox, "process": process, "syscall": op, "kind": "network",
	"network": {"op": op, "family": family, "protocol": protocol, "address": address, "port": port},
}

connect(address, port) := net("connect", "inet", "tcp", address, port)

exec(path) := {
	"sandbox": sandbox, "process": process, "syscall": "execve", "kind": "exec",
	"exec": {"path": path, "argv": [path]},
}

allowed(request) if {
	policy.allow with input as request
	count(policy.deny) == 0 with input as request
}

outside_reason(path) := sprintf("coding-agent may write only inside the repository, its temp dir and build caches, not %s", [path])

hook_reason(path) := sprintf("%s is a git hook; coding-agent may not write hooks", [path])

# --- the repository ---

test_read_source if allowed(read("/home/agent/src/app/src/main.rs"))

test_write_source if allowed(write("/home/agent/src/app/src/lib.rs"))

test_update_git_index if allowed(update("/home/agent/src/app/.git/index"))

test_write_git_object if allowed(write("/home/agent/src/app/.git/objects/ab/cdef0123"))

test_repo_itself if allowed(read(repo))

test_repo_sibling_denied if {
	not allowed(write("/home/agent/src/app-fork/src/main.rs"))
	outside_reason("/home/agent/src/app-fork/src/main.rs") in policy.deny with input as write("/home/agent/src/app-fork/src/main.rs")
}

test_read_repo_sibling_denied if not allowed(read("/home/agent/src/other/secret.txt"))

test_no_workdir_no_repo if {
	not allowed(object.union(write("/x"), {"sandbox": {"workdir": ""}}))
	not allowed(object.union(exec("/target/x"), {"sandbox": {"workdir": ""}}))
}

# --- git hooks ---

test_write_hook_denied if {
	path := "/home/agent/src/app/.git/hooks/pre-commit"
	not allowed(write(path))
	hook_reason(path) in policy.deny with input as write(path)
}

test_update_hook_denied if not allowed(update("/home/agent/src/app/.git/hooks/post-checkout"))

test_create_hooks_dir_entry_denied if {
	path := "/home/agent/src/app/.git/hooks"
	hook_reason(path) in policy.deny with input as write(path)
}

# Moving .git (or a submodule's directory) aside, and one put in its place:
# refused, under either name; other renames in the repository are not.
rename_as(path, role) := object.union(update(path), {"syscall": "rename", "file": {"flags": [role]}})

rename_dir_as(path, role) := object.union(update(path), {"syscall": "rename", "file": {"flags": [role, "DIR"]}})

test_renaming_what_holds_hooks_denied if {
	every path in ["/home/agent/src/app/.git", "/home/agent/src/app/.git/modules/vendor"] {
		every role in ["OLD", "NEW"] {
			not allowed(rename_dir_as(path, role))
		}
	}
	allowed(rename_as("/home/agent/src/app/src/main.rs", "OLD"))
	allowed(rename_as("/home/agent/src/app/.git/index.lock", "OLD"))
	allowed(rename_as("/home/agent/src/app/.git/index", "NEW"))
	allowed(rename_as("/home/agent/src/app/.git/modules/vendor/objects/pack/pack-1.pack", "NEW"))
	allowed(rename_dir_as("/home/agent/src/app/build", "OLD"))
	# An exchange with a file: the shim says DIR for either side's directory.
	not allowed(object.union(update("/home/agent/src/app/.git"), {"syscall": "renameat2", "file": {"flags": ["NEW", "DIR", "RENAME_EXCHANGE"]}}))
}

test_submodule_hook_denied if {
	path := "/home/agent/src/app/.git/modules/vendor/lib/hooks/post-merge"
	not allowed(write(path))
	hook_reason(path) in policy.deny with input as write(path)
}

test_submodule_object_allowed if allowed(write("/home/agent/src/app/.git/modules/vendor/lib/objects/pack/p.pack"))

test_read_hook_allowed if allowed(read("/home/agent/src/app/.git/hooks/pre-commit.sample"))

test_source_dir_named_hooks_allowed if allowed(write("/home/agent/src/app/src/hooks/use_state.ts"))

test_git_hooks_lookalike_allowed if allowed(write("/home/agent/src/app/.git/hooksmith"))

# --- temp dir, caches, home ---

test_write_tmpdir if allowed(write("/tmp/cordon-t/rustcXYZ/lib.o"))

test_shared_tmp_denied if {
	not allowed(write("/tmp/evil"))
	outside_reason("/tmp/evil") in policy.deny with input as write("/tmp/evil")
}

test_write_cargo_registry if allowed(write("/home/agent/.cargo/registry/cache/index.crates.io-6f17d22bba15001f/serde-1.0.0.crate"))

test_write_xdg_cache if allowed(write("/home/agent/.cache/sccache/ab"))

test_cargo_bin_denied if {
	not allowed(write("/home/agent/.cargo/bin/cargo"))
	outside_reason("/home/agent/.cargo/bin/cargo") in policy.deny with input as write("/home/agent/.cargo/bin/cargo")
}

test_bashrc_denied if {
	not allowed(update("/home/agent/.bashrc"))
	outside_reason("/home/agent/.bashrc") in policy.deny with input as update("/home/agent/.bashrc")
}

test_read_gitconfig if allowed(read("/home/agent/.gitconfig"))

test_read_xdg_git_config if allowed(read("/home/agent/.config/git/ignore"))

test_write_gitconfig_denied if not allowed(update("/home/agent/.gitconfig"))

test_cargo_credentials_denied if not allowed(read("/home/agent/.cargo/credentials.toml"))

test_gitconfig_lookalike_denied if not allowed(read("/home/agent/.gitconfig.bak"))

test_other_home_file_denied if not allowed(read("/home/agent/.bash_history"))

# The cache dirs follow the configured home.
test_cache_follows_home if {
	allowed(write("/var/lib/agent/.cache/pip/x")) with data.library["coding-agent"].home as "/var/lib/agent"
	not allowed(write("/home/agent/.cache/pip/x")) with data.library["coding-agent"].home as "/var/lib/agent"
}

# --- system ---

test_read_header if allowed(read("/usr/include/stdio.h"))

test_read_etc if allowed(read("/etc/gitconfig"))

test_read_cgroup_limits if allowed(read("/sys/fs/cgroup/cpu.max"))

test_list_home if allowed(read("/home"))

test_write_system_denied if {
	not allowed(write("/usr/local/bin/git"))
	outside_reason("/usr/local/bin/git") in policy.deny with input as write("/usr/local/bin/git")
}

test_shadow_denied if {
	not allowed(read("/etc/shadow"))
	"/etc/shadow holds system secrets" in policy.deny with input as read("/etc/shadow")
}

test_own_proc if allowed(read("/proc/4242/cgroup"))

test_proc_self if allowed(read("/proc/self/mountinfo"))

test_other_proc_denied if not allowed(read("/proc/4241/environ"))

test_proc_cpuinfo if allowed(read("/proc/cpuinfo"))

test_devnull_write if allowed(update("/dev/null"))

test_device_create_denied if {
	not allowed(write("/dev/null"))
	outside_reason("/dev/null") in policy.deny with input as write("/dev/null")
}

# --- exec ---

test_exec_git if allowed(exec("/usr/bin/git"))

test_exec_git_helper if allowed(exec("/usr/lib/git-core/git-remote-https"))

test_exec_make if allowed(exec("/usr/bin/make"))

test_exec_resolved_gcc if allowed(exec("/usr/bin/x86_64-linux-gnu-gcc-12"))

test_exec_cc1 if allowed(exec("/usr/lib/gcc/x86_64-linux-gnu/12/cc1"))

test_exec_linker if allowed(exec("/usr/bin/x86_64-linux-gnu-ld.bfd"))

test_exec_cargo if allowed(exec("/usr/bin/cargo"))

test_exec_sh_for_make_recipes if allowed(exec("/usr/bin/dash"))

test_exec_build_script if allowed(exec("/home/agent/src/app/target/debug/build/serde-1a2b/build-script-build"))

test_exec_test_binary if allowed(exec("/home/agent/src/app/target/debug/deps/app-0123abcd"))

test_exec_target_lookalike_denied if not allowed(exec("/home/agent/src/app/targets/x"))

test_exec_repo_script_denied if not allowed(exec("/home/agent/src/app/scripts/deploy.sh"))

test_exec_hook_denied if not allowed(exec("/home/agent/src/app/.git/hooks/pre-commit"))

test_exec_build_outputs_forbidden if {
	not allowed(exec("/home/agent/src/app/target/debug/app")) with data.library["coding-agent"].repo_exec_dirs as []
}

test_exec_curl_denied if not allowed(exec("/usr/bin/curl"))

test_exec_ssh_denied if not allowed(exec("/usr/bin/ssh"))

test_exec_gcc_lookalike_denied if not allowed(exec("/usr/bin/gcc-wrapper.sh"))

test_exec_git_core_sibling_denied if not allowed(exec("/usr/lib/git-core-extra/git-evil"))

# --- network ---

test_registry_https if allowed(connect("151.101.2.137", 443))

test_registry_ipv6 if allowed(net("connect", "inet6", "tcp", "2a04:4e42:200::649", 443))

test_registry_address_sort_probe if allowed(net("connect", "inet", "udp", "151.101.2.137", 443))

test_registry_other_port_denied if not allowed(connect("151.101.2.137", 80))

test_github_denied if {
	not allowed(connect("140.82.121.4", 443))
	policy.errno == "ECONNREFUSED" with input as connect("140.82.121.4", 443)
}

test_registry_sctp_denied if not allowed(net("connect", "inet", "sctp", "151.101.2.137", 443))

test_dns_to_stub if allowed(net("sendto", "inet", "udp", "127.0.0.53", 53))

test_dns_elsewhere_denied if not allowed(net("sendto", "inet", "udp", "8.8.8.8", 53))

test_unix_denied if {
	request := {
		"sandbox": sandbox, "process": process, "syscall": "connect", "kind": "network",
		"network": {"op": "connect", "family": "unix", "protocol": "stream", "path": "/run/docker.sock"},
	}
	not allowed(request)
	policy.errno == "ECONNREFUSED" with input as request
}

test_bind_denied_with_eacces if {
	request := net("bind", "inet", "tcp", "127.0.0.1", 8080)
	not allowed(request)
	not policy.errno with input as request
}

test_no_errno_for_files if not policy.errno with input as write("/etc/passwd")
