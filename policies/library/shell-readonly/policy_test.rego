# Unit tests of the shell-readonly tool policy: `cordon policy test policies/`.
# Every allow and deny rule, with the edges between them, against data.json.
package cordon_test.library.shell_readonly

import data.cordon.library.shell_readonly as policy
import rego.v1

workdir := "/home/agent/project"

sandbox := {"id": "t", "labels": {"tool": "shell-readonly"}, "workdir": workdir, "tmpdir": "/tmp/cordon-t"}

process := {"pid": 4242, "ppid": 4241, "uid": 1000, "gid": 1000, "exe": "/usr/bin/dash", "cwd": workdir, "comm": "sh"}

read(path) := {
	"sandbox": sandbox, "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["read"], "create": false, "truncate": false, "flags": ["O_RDONLY"]},
}

# `cmd > path` in sh: O_WRONLY|O_CREAT|O_TRUNC; create only if path is new.
redirect(path, new) := {
	"sandbox": sandbox, "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["write"], "create": new, "truncate": true, "flags": ["O_WRONLY", "O_CREAT", "O_TRUNC"]},
}

# `cmd >> path`: append, neither created nor truncated.
append(path) := {
	"sandbox": sandbox, "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["write"], "create": false, "truncate": false, "flags": ["O_WRONLY", "O_CREAT", "O_APPEND"]},
}

# O_RDONLY|O_TRUNC: truncates although it only asks to read.
read_truncate(path) := {
	"sandbox": sandbox, "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["read"], "create": false, "truncate": true, "flags": ["O_RDONLY", "O_TRUNC"]},
}

exec(path, argv) := {
	"sandbox": sandbox, "process": process, "syscall": "execve", "kind": "exec",
	"exec": {"path": path, "argv": argv},
}

connect(address, port) := {
	"sandbox": sandbox, "process": process, "syscall": "connect", "kind": "network",
	"network": {"op": "connect", "family": "inet", "protocol": "tcp", "address": address, "port": port},
}

connect_unix(path) := {
	"sandbox": sandbox, "process": process, "syscall": "connect", "kind": "network",
	"network": {"op": "connect", "family": "unix", "protocol": "stream", "path": path},
}

allowed(request) if {
	policy.allow with input as request
	count(policy.deny) == 0 with input as request
}

write_reason(path) := sprintf("shell-readonly may not change files: %s opened for writing", [path])

# --- reading and listing ---

test_read_workdir_file if allowed(read("/home/agent/project/src/main.rs"))

test_list_workdir if allowed(read(workdir))

test_workdir_sibling_denied if not allowed(read("/home/agent/project-secrets/notes.txt"))

test_read_tmpdir if allowed(read("/tmp/cordon-t/listing.txt"))

test_shared_tmp_denied if not allowed(read("/tmp/other/x"))

test_list_tmp if allowed(read("/tmp"))

test_no_workdir_grants_nothing if {
	not allowed(object.union(read("/home/agent/x"), {"sandbox": {"workdir": ""}}))
	allowed(object.union(read("/tmp/cordon-t/x"), {"sandbox": {"workdir": ""}}))
	not allowed(object.union(read("/home/agent/x"), {"sandbox": {"workdir": "", "tmpdir": ""}}))
}

test_read_etc if allowed(read("/etc/passwd"))

test_read_binary if allowed(read("/usr/bin/ls"))

test_list_root if allowed(read("/"))

test_home_denied if not allowed(read("/home/agent/.bash_history"))

test_own_proc if allowed(read("/proc/4242/status"))

test_proc_self if allowed(read("/proc/self/mounts"))

test_other_proc_denied if not allowed(read("/proc/1/cmdline"))

test_proc_uptime if allowed(read("/proc/uptime"))

test_read_urandom if allowed(read("/dev/urandom"))

test_read_disk_denied if not allowed(read("/dev/sda"))

test_shadow_denied if {
	not allowed(read("/etc/shadow"))
	"/etc/shadow holds system secrets" in policy.deny with input as read("/etc/shadow")
}

test_sudoers_d_denied if not allowed(read("/etc/sudoers.d/90-cloud-init-users"))

test_loadable_builtin_denied if {
	not allowed(read("/usr/lib/bash/rm"))
	"/usr/lib/bash/rm holds bash loadable builtins, which change files without exec" in policy.deny with input as read("/usr/lib/bash/rm")
}

test_loadable_builtin_sibling_allowed if allowed(read("/usr/lib/bashdb/dbg-main.sh"))

# --- no changes ---

test_redirect_new_file_denied if {
	not allowed(redirect("/home/agent/project/out.txt", true))
	write_reason("/home/agent/project/out.txt") in policy.deny with input as redirect("/home/agent/project/out.txt", true)
}

test_redirect_existing_file_denied if {
	not allowed(redirect("/home/agent/project/README.md", false))
	write_reason("/home/agent/project/README.md") in policy.deny with input as redirect("/home/agent/project/README.md", false)
}

test_append_denied if {
	not allowed(append("/home/agent/project/log"))
	write_reason("/home/agent/project/log") in policy.deny with input as append("/home/agent/project/log")
}

test_read_truncate_denied if {
	not allowed(read_truncate("/home/agent/project/data.db"))
	write_reason("/home/agent/project/data.db") in policy.deny with input as read_truncate("/home/agent/project/data.db")
}

test_write_tmpdir_denied if not allowed(redirect("/tmp/cordon-t/x", true))

test_discard_to_devnull if allowed(redirect("/dev/null", false))

test_output_to_tty if allowed(append("/dev/tty"))

test_create_devnull_denied if {
	not allowed(redirect("/dev/null", true))
	write_reason("/dev/null") in policy.deny with input as redirect("/dev/null", true)
}

test_write_other_device_denied if not allowed(append("/dev/zero"))

# --- exec ---

test_exec_sh if allowed(exec("/usr/bin/dash", ["sh", "-c", "ls | wc -l"]))

test_exec_ls if allowed(exec("/usr/bin/ls", ["ls", "-la"]))

test_exec_grep if allowed(exec("/bin/grep", ["grep", "-r", "TODO", "."]))

test_exec_find if allowed(exec("/usr/bin/find", ["find", ".", "-name", "*.rs"]))

test_find_delete_denied if {
	request := exec("/usr/bin/find", ["find", ".", "-name", "*.o", "-delete"])
	not allowed(request)
	"find -delete removes files; shell-readonly may not change files" in policy.deny with input as request
}

test_delete_argument_to_other_command if allowed(exec("/usr/bin/grep", ["grep", "-r", "-delete", "."]))

test_exec_rm_denied if not allowed(exec("/usr/bin/rm", ["rm", "-rf", "."]))

test_exec_mv_denied if not allowed(exec("/usr/bin/mv", ["mv", "a", "b"]))

test_exec_from_workdir_denied if not allowed(exec("/home/agent/project/ls", ["ls"]))

# --- network ---

test_connect_denied if {
	request := connect("93.184.216.34", 443)
	not allowed(request)
	"shell-readonly has no network access (connect)" in policy.deny with input as request
	policy.errno == "ECONNREFUSED" with input as request
}

test_nscd_denied_quietly if {
	not allowed(connect_unix("/run/nscd/socket"))
	policy.errno == "ECONNREFUSED" with input as connect_unix("/run/nscd/socket")
}

test_listen_denied_with_eacces if {
	request := object.union(connect("0.0.0.0", 8000), {"syscall": "listen", "network": {"op": "listen"}})
	not allowed(request)
	"shell-readonly has no network access (listen)" in policy.deny with input as request
	not policy.errno with input as request
}

test_no_errno_for_files if not policy.errno with input as read("/etc/shadow")
