# Tests of dispatch.rego through the broker's entry points, data.cordon.allow,
# deny and errno: the label selects the tool, anything else gets the default,
# and the default's denials hold for every tool.
#
# data.cordon is referenced directly, not through `import data.cordon`:
# regorus evaluates an imported package as a whole document, subpackages
# (the whole library) included, which makes each test far slower.
package cordon_test.library.dispatch

import rego.v1

workdir := "/home/agent/job"

sandbox(labels) := {"id": "t", "labels": labels, "workdir": workdir, "tmpdir": "/tmp/cordon-t"}

process := {"pid": 4242, "ppid": 4241, "uid": 1000, "gid": 1000, "exe": "/usr/bin/python3", "cwd": workdir, "comm": "python3"}

read(labels, path) := {
	"sandbox": sandbox(labels), "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["read"], "create": false, "truncate": false, "flags": ["O_RDONLY"]},
}

write(labels, path) := {
	"sandbox": sandbox(labels), "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["write"], "create": true, "truncate": true, "flags": ["O_WRONLY", "O_CREAT", "O_TRUNC"]},
}

net(labels, op, address, port) := {
	"sandbox": sandbox(labels), "process": process, "syscall": op, "kind": "network",
	"network": {"op": op, "family": "inet", "protocol": "tcp", "address": address, "port": port},
}

exec(labels, path) := {
	"sandbox": sandbox(labels), "process": process, "syscall": "execve", "kind": "exec",
	"exec": {"path": path, "argv": [path]},
}

allowed(request) if {
	data.cordon.allow with input as request
	count(data.cordon.deny) == 0 with input as request
}

tool(name) := {"tool": name, "tenant": "acme"}

# --- each tool is selected by its label ---

test_tools_selected if {
	every name in ["python-codegen", "web-fetch", "coding-agent", "shell-readonly"] {
		data.cordon.tool_selected with input as read(tool(name), "/etc/hosts")
	}
}

test_python_codegen_selected if {
	# Its input dir is outside the workdir; the default does not read /srv.
	allowed(read(tool("python-codegen"), "/srv/datasets/q1.csv"))
	not allowed(read({}, "/srv/datasets/q1.csv"))

	# The default lets a tool write its workdir and exec /bin/sh; this one does not.
	not allowed(write(tool("python-codegen"), "/home/agent/job/generated.py"))
	"python-codegen may not run a shell (/bin/sh)" in data.cordon.deny with input as exec(tool("python-codegen"), "/bin/sh")
	data.cordon.errno == "ECONNREFUSED" with input as net(tool("python-codegen"), "connect", "10.0.0.1", 5432)
}

test_web_fetch_selected if {
	# HTTPS to the allow-list; the default has no network.
	allowed(net(tool("web-fetch"), "connect", "93.184.216.34", 443))
	not allowed(net({}, "connect", "93.184.216.34", 443))

	"plain HTTP to 93.184.216.34:80 is not allowed; web-fetch uses HTTPS only" in data.cordon.deny with input as net(tool("web-fetch"), "connect", "93.184.216.34", 80)
	not allowed(exec(tool("web-fetch"), "/usr/bin/git"))
	data.cordon.errno == "ECONNREFUSED" with input as net(tool("web-fetch"), "connect", "10.0.0.1", 443)
}

test_coding_agent_selected if {
	# Build caches outside the repo; the default writes only the workdir.
	allowed(write(tool("coding-agent"), "/home/agent/.cargo/registry/cache/x.crate"))
	not allowed(write({}, "/home/agent/.cargo/registry/cache/x.crate"))

	"/home/agent/job/.git/hooks/pre-push is a git hook; coding-agent may not write hooks" in data.cordon.deny with input as write(tool("coding-agent"), "/home/agent/job/.git/hooks/pre-push")
	data.cordon.errno == "ECONNREFUSED" with input as net(tool("coding-agent"), "connect", "140.82.121.4", 443)
}

test_shell_readonly_selected if {
	# The /opt directory is listable here; the default does not list it.
	allowed(read(tool("shell-readonly"), "/opt"))
	not allowed(read({}, "/opt"))

	"shell-readonly may not change files: /home/agent/job/out.txt opened for writing" in data.cordon.deny with input as write(tool("shell-readonly"), "/home/agent/job/out.txt")
	not allowed(exec(tool("shell-readonly"), "/usr/bin/rm"))
	data.cordon.errno == "ECONNREFUSED" with input as net(tool("shell-readonly"), "connect", "10.0.0.1", 443)
}

# A tool's denial with no errno of its own keeps the broker's EACCES: the
# default's errno stands aside for library tools.
test_tool_without_errno if {
	not data.cordon.errno with input as write(tool("python-codegen"), "/etc/hosts")
	not data.cordon.errno with input as net(tool("web-fetch"), "bind", "0.0.0.0", 8443)
}

# --- anything else gets the default ---

test_unlabelled_gets_default if {
	request := write({}, "/home/agent/job/generated.py")
	not data.cordon.tool_selected with input as request
	allowed(request)
	allowed(exec({}, "/bin/sh"))
	data.cordon.errno == "ECONNREFUSED" with input as net({}, "connect", "93.184.216.34", 443)
}

test_no_labels_field_gets_default if {
	request := json.remove(write({}, "/home/agent/job/generated.py"), ["sandbox/labels"])
	not data.cordon.tool_selected with input as request
	allowed(request)
}

test_unknown_tool_gets_default if {
	labels := tool("gitlab-runner")
	not data.cordon.tool_selected with input as read(labels, "/etc/hosts")
	allowed(write(labels, "/home/agent/job/generated.py"))
	allowed(exec(labels, "/bin/sh"))
	not allowed(net(labels, "connect", "93.184.216.34", 443))
}

test_other_label_does_not_select if {
	not data.cordon.tool_selected with input as read({"team": "web-fetch"}, "/etc/hosts")
	not allowed(net({"team": "web-fetch"}, "connect", "93.184.216.34", 443))
}

test_label_is_case_sensitive if not data.cordon.tool_selected with input as read(tool("Web-Fetch"), "/etc/hosts")

# --- the default's denials hold for every tool ---

test_ssh_key_in_workdir_denied_for_web_fetch if {
	request := read(tool("web-fetch"), "/home/agent/job/.ssh/id_ed25519")
	data.cordon.allow with input as request
	"/home/agent/job/.ssh/id_ed25519 is a credential store" in data.cordon.deny with input as request
}

test_dotenv_denied_for_coding_agent if {
	request := read(tool("coding-agent"), "/home/agent/job/.env")
	data.cordon.allow with input as request
	"/home/agent/job/.env is a .env file" in data.cordon.deny with input as request
}

test_aws_credentials_in_repo_denied_for_coding_agent if {
	request := write(tool("coding-agent"), "/home/agent/job/.aws/credentials")
	data.cordon.allow with input as request
	"/home/agent/job/.aws/credentials is a credential store" in data.cordon.deny with input as request
}

test_shadow_denied_for_shell_readonly if {
	request := read(tool("shell-readonly"), "/etc/shadow")
	"/etc/shadow holds password hashes or privileges" in data.cordon.deny with input as request
}

test_metadata_denied_even_when_web_fetch_lists_it if {
	request := net(tool("web-fetch"), "connect", "169.254.169.254", 443)
	egress := [{"cidr": "169.254.0.0/16", "ports": [443]}]
	data.cordon.allow with input as request with data.library["web-fetch"].egress as egress
	"the cloud metadata endpoint hands out credentials" in data.cordon.deny with input as request with data.library["web-fetch"].egress as egress
}

test_bind_denied_for_every_tool if {
	every name in ["python-codegen", "web-fetch", "coding-agent", "shell-readonly"] {
		"bind needs a policy that allows listening" in data.cordon.deny with input as net(tool(name), "bind", "0.0.0.0", 8080)
	}
}
