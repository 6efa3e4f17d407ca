# Unit tests of the python-codegen tool policy: `cordon policy test policies/`.
# Every allow and deny rule, with the edges between them, against data.json.
package cordon_test.library.python_codegen

import data.cordon.library.python_codegen as policy
import rego.v1

workdir := "/home/agent/task"

sandbox := {"id": "t", "labels": {"tool": "python-codegen"}, "workdir": workdir, "tmpdir": "/tmp/cordon-t"}

process := {"pid": 4242, "ppid": 4241, "uid": 1000, "gid": 1000, "exe": "/usr/bin/python3.11", "cwd": workdir, "comm": "python3"}

read(path) := {
	"sandbox": sandbox, "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["read"], "create": false, "truncate": false, "flags": ["O_RDONLY"]},
}

# open(path, "w") on a new file.
write(path) := {
	"sandbox": sandbox, "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["write"], "create": true, "truncate": true, "flags": ["O_WRONLY", "O_CREAT", "O_TRUNC"]},
}

# open(path, "w") on an existing file: no create, but truncate.
overwrite(path) := {
	"sandbox": sandbox, "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["write"], "create": false, "truncate": true, "flags": ["O_WRONLY", "O_CREAT", "O_TRUNC"]},
}

# open(path, "r+"): read and write, nothing created or truncated.
update(path) := {
	"sandbox": sandbox, "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["read", "write"], "create": false, "truncate": false, "flags": ["O_RDWR"]},
}

connect(address, port) := {
	"sandbox": sandbox, "process": process, "syscall": "connect", "kind": "network",
	"network": {"op": "connect", "family": "inet", "protocol": "tcp", "address": address, "port": port},
}

bind(address, port) := {
	"sandbox": sandbox, "process": process, "syscall": "bind", "kind": "network",
	"network": {"op": "bind", "family": "inet", "protocol": "tcp", "address": address, "port": port},
}

connect_unix(path) := {
	"sandbox": sandbox, "process": process, "syscall": "connect", "kind": "network",
	"network": {"op": "connect", "family": "unix", "protocol": "stream", "path": path},
}

exec(path) := {
	"sandbox": sandbox, "process": process, "syscall": "execve", "kind": "exec",
	"exec": {"path": path, "argv": [path]},
}

allowed(request) if {
	policy.allow with input as request
	count(policy.deny) == 0 with input as request
}

# --- reading the system ---

test_read_stdlib if allowed(read("/usr/lib/python3.11/json/__init__.py"))

test_read_shared_library if allowed(read("/lib/x86_64-linux-gnu/libm.so.6"))

test_read_etc if allowed(read("/etc/localtime"))

test_read_cpu_topology if allowed(read("/sys/devices/system/cpu/possible"))

test_list_root if allowed(read("/"))

test_read_other_sys_denied if not allowed(read("/sys/class/net/eth0/address"))

test_write_stdlib_denied if {
	not allowed(write("/usr/lib/python3.11/sitecustomize.py"))
	"python-codegen may write only to its output dir and temp dir, not /usr/lib/python3.11/sitecustomize.py" in policy.deny with input as write("/usr/lib/python3.11/sitecustomize.py")
}

test_shadow_denied if {
	not allowed(read("/etc/shadow"))
	"/etc/shadow holds system secrets" in policy.deny with input as read("/etc/shadow")
}

test_ssh_host_key_denied if {
	not allowed(read("/etc/ssh/ssh_host_ed25519_key"))
	"/etc/ssh/ssh_host_ed25519_key holds system secrets" in policy.deny with input as read("/etc/ssh/ssh_host_ed25519_key")
}

test_secret_prefix_sibling_allowed if allowed(read("/etc/sshd_banner"))

# --- /proc and devices ---

test_own_proc if allowed(read("/proc/4242/status"))

test_proc_self if allowed(read("/proc/self/maps"))

test_other_proc_denied if not allowed(read("/proc/1/environ"))

test_proc_pid_prefix_denied if not allowed(read("/proc/42420/environ"))

test_proc_cpuinfo if allowed(read("/proc/cpuinfo"))

test_devnull_overwrite if allowed(overwrite("/dev/null"))

test_urandom_read if allowed(read("/dev/urandom"))

test_device_create_denied if not allowed(write("/dev/null"))

test_other_device_denied if not allowed(update("/dev/sda"))

# --- input, working dir, output, temp ---

test_read_input_relative if allowed(read("/home/agent/task/in/sales.csv"))

test_read_input_absolute if allowed(read("/srv/datasets/2024/q1.parquet"))

test_input_sibling_denied if not allowed(read("/srv/datasets-private/q1.parquet"))

test_write_input_denied if {
	not allowed(update("/srv/datasets/2024/q1.parquet"))
	"python-codegen may write only to its output dir and temp dir, not /srv/datasets/2024/q1.parquet" in policy.deny with input as update("/srv/datasets/2024/q1.parquet")
}

test_read_workdir if allowed(read("/home/agent/task/generated.py"))

test_workdir_sibling_denied if not allowed(read("/home/agent/task2/generated.py"))

test_write_workdir_denied if {
	not allowed(overwrite("/home/agent/task/generated.py"))
	"python-codegen may write only to its output dir and temp dir, not /home/agent/task/generated.py" in policy.deny with input as overwrite("/home/agent/task/generated.py")
}

test_write_output if allowed(write("/home/agent/task/out/report.csv"))

test_update_output if allowed(update("/home/agent/task/out/report.csv"))

test_output_dir_itself if allowed(read("/home/agent/task/out"))

test_output_sibling_denied if not allowed(write("/home/agent/task/output/report.csv"))

test_write_tmpdir if allowed(write("/tmp/cordon-t/cache.pkl"))

test_shared_tmp_denied if not allowed(write("/tmp/cache.pkl"))

test_absolute_output_dir if {
	allowed(write("/srv/results/report.csv")) with data.library["python-codegen"].output_dir as "/srv/results"
}

# Without a workdir, relative settings resolve to nothing (not to /out).
test_no_workdir_no_relative_dirs if {
	not allowed(object.union(write("/out/report.csv"), {"sandbox": {"workdir": ""}}))
	not allowed(object.union(read("/in/sales.csv"), {"sandbox": {"workdir": ""}}))
	allowed(object.union(read("/srv/datasets/a.csv"), {"sandbox": {"workdir": ""}}))
}

# An empty tmpdir grants nothing (not "every path under /").
test_no_tmpdir if {
	request := object.union(write("/tmp/cordon-t/x"), {"sandbox": {"tmpdir": ""}})
	not allowed(request)
}

# --- exec ---

test_exec_python3 if allowed(exec("/usr/bin/python3"))

test_exec_versioned_python if allowed(exec("/usr/bin/python3.11"))

test_exec_local_python if allowed(exec("/usr/local/bin/python3.12"))

test_exec_python_config_denied if not allowed(exec("/usr/bin/python3.11-config"))

test_exec_python_from_workdir_denied if not allowed(exec("/home/agent/task/python3"))

test_exec_other_binary_denied if not allowed(exec("/usr/bin/curl"))

test_exec_sh_denied if {
	not allowed(exec("/bin/sh"))
	"python-codegen may not run a shell (/bin/sh)" in policy.deny with input as exec("/bin/sh")
}

test_exec_dash_denied if {
	not allowed(exec("/usr/bin/dash"))
	"python-codegen may not run a shell (/usr/bin/dash)" in policy.deny with input as exec("/usr/bin/dash")
}

# --- network ---

test_connect_denied if {
	request := connect("93.184.216.34", 443)
	not allowed(request)
	"python-codegen has no network access (connect)" in policy.deny with input as request
	policy.errno == "ECONNREFUSED" with input as request
}

test_connect_unix_denied if {
	request := connect_unix("/run/nscd/socket")
	not allowed(request)
	policy.errno == "ECONNREFUSED" with input as request
}

test_bind_denied_with_eacces if {
	request := bind("127.0.0.1", 8000)
	not allowed(request)
	"python-codegen has no network access (bind)" in policy.deny with input as request
	not policy.errno with input as request
}

test_no_errno_for_files if not policy.errno with input as read("/etc/shadow")
