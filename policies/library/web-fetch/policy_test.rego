# Unit tests of the web-fetch tool policy: `cordon policy test policies/`.
# Every allow and deny rule, with the edges between them, against data.json.
package cordon_test.library.web_fetch

import data.cordon.library.web_fetch as policy
import rego.v1

workdir := "/home/agent/fetch"

sandbox := {"id": "t", "labels": {"tool": "web-fetch"}, "workdir": workdir, "tmpdir": "/tmp/cordon-t"}

process := {"pid": 4242, "ppid": 4241, "uid": 1000, "gid": 1000, "exe": "/usr/bin/curl", "cwd": workdir, "comm": "curl"}

read(path) := {
	"sandbox": sandbox, "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["read"], "create": false, "truncate": false, "flags": ["O_RDONLY"]},
}

write(path) := {
	"sandbox": sandbox, "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["write"], "create": true, "truncate": true, "flags": ["O_WRONLY", "O_CREAT", "O_TRUNC"]},
}

# An existing file opened for writing without O_CREAT or O_TRUNC.
append(path) := {
	"sandbox": sandbox, "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["write"], "create": false, "truncate": false, "flags": ["O_WRONLY", "O_APPEND"]},
}

net(op, family, protocol, address, port) := {
	"sandbox": sandbox, "process": process, "syscall": op, "kind": "network",
	"network": {"op": op, "family": family, "protocol": protocol, "address": address, "port": port},
}

connect(address, port) := net("connect", "inet", "tcp", address, port)

connect6(address, port) := net("connect", "inet6", "tcp", address, port)

connect_unix(path) := {
	"sandbox": sandbox, "process": process, "syscall": "connect", "kind": "network",
	"network": {"op": "connect", "family": "unix", "protocol": "stream", "path": path},
}

exec(path) := {
	"sandbox": sandbox, "process": process, "syscall": "execve", "kind": "exec",
	"exec": {"path": path, "argv": [path, "https://example.com/"]},
}

allowed(request) if {
	policy.allow with input as request
	count(policy.deny) == 0 with input as request
}

# --- HTTPS egress ---

test_https_allowed if allowed(connect("93.184.216.34", 443))

test_https_ipv6_allowed if allowed(connect6("2606:2800:220:1:248:1893:25c8:1946", 443))

test_https_udp_allowed if allowed(net("connect", "inet", "udp", "93.184.216.34", 443))

test_https_sendmsg_allowed if allowed(net("sendmsg", "inet", "udp", "93.184.216.34", 443))

test_alternate_port_allowed if allowed(connect("10.20.3.4", 8443))

test_alternate_port_other_network_denied if not allowed(connect("93.184.216.34", 8443))

test_https_outside_allow_list_denied if not allowed(connect("93.184.217.1", 443))

test_ssh_port_denied if not allowed(connect("93.184.216.34", 22))

test_other_protocol_denied if not allowed(net("connect", "inet", "sctp", "93.184.216.34", 443))

test_bind_denied if {
	request := net("bind", "inet", "tcp", "0.0.0.0", 443)
	not allowed(request)
	not policy.errno with input as request
}

test_connect_errno if policy.errno == "ECONNREFUSED" with input as connect("8.8.4.4", 443)

test_no_errno_for_files if not policy.errno with input as read("/etc/shadow")

# --- plain HTTP ---

test_http_denied if {
	request := connect("93.184.216.34", 80)
	not allowed(request)
	"plain HTTP to 93.184.216.34:80 is not allowed; web-fetch uses HTTPS only" in policy.deny with input as request
}

test_http_denied_even_when_listed if {
	request := connect("93.184.216.34", 80)
	policy.allow with input as request with data.library["web-fetch"].egress as [{"cidr": "93.184.216.0/24", "ports": [80, 443]}]
	not allowed(request) with data.library["web-fetch"].egress as [{"cidr": "93.184.216.0/24", "ports": [80, 443]}]
}

test_port_8080_not_called_http if count(policy.deny) == 0 with input as connect("93.184.216.34", 8080)

# --- DNS ---

test_dns_udp_to_resolver if allowed(net("sendto", "inet", "udp", "1.1.1.1", 53))

test_dns_tcp_to_resolver if allowed(connect("127.0.0.53", 53))

test_dns_ipv6_resolver if allowed(net("connect", "inet6", "udp", "2606:4700:4700::1111", 53))

test_dns_to_other_server_denied if not allowed(net("sendto", "inet", "udp", "8.8.8.8", 53))

test_resolver_other_port_denied if not allowed(net("sendto", "inet", "udp", "1.1.1.1", 5353))

# --- unix sockets ---

test_systemd_resolved_socket if allowed(connect_unix("/run/systemd/resolve/io.systemd.Resolve"))

test_nscd_socket if allowed(connect_unix("/run/nscd/socket"))

test_docker_socket_denied if {
	not allowed(connect_unix("/run/docker.sock"))
	policy.errno == "ECONNREFUSED" with input as connect_unix("/run/docker.sock")
}

test_unix_bind_denied if {
	request := object.union(connect_unix("/run/nscd/socket"), {"syscall": "bind", "network": {"op": "bind"}})
	not allowed(request)
}

# --- files ---

test_read_ca_bundle if allowed(read("/etc/ssl/certs/ca-certificates.crt"))

test_read_ca_source if allowed(read("/usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt"))

test_read_openssl_lib if allowed(read("/usr/lib/x86_64-linux-gnu/libssl.so.3"))

test_read_resolv_conf if allowed(read("/etc/resolv.conf"))

test_read_nsswitch if allowed(read("/etc/nsswitch.conf"))

test_read_other_etc_denied if not allowed(read("/etc/fstab"))

test_read_prefix_sibling_denied if not allowed(read("/etc/ssl-backup/ca.crt"))

test_write_ca_bundle_denied if not allowed(append("/etc/ssl/certs/ca-certificates.crt"))

test_write_resolv_conf_denied if not allowed(write("/etc/resolv.conf"))

test_tls_private_key_denied if {
	not allowed(read("/etc/ssl/private/ssl-cert-snakeoil.key"))
	"/etc/ssl/private/ssl-cert-snakeoil.key holds TLS private keys" in policy.deny with input as read("/etc/ssl/private/ssl-cert-snakeoil.key")
}

test_pki_private_key_denied if not allowed(read("/etc/pki/tls/private/localhost.key"))

test_write_download if allowed(write("/home/agent/fetch/index.html"))

test_append_download if allowed(append("/home/agent/fetch/log.txt"))

test_workdir_sibling_denied if not allowed(write("/home/agent/fetch2/index.html"))

test_write_tmpdir if allowed(write("/tmp/cordon-t/curl-partial"))

test_shared_tmp_denied if not allowed(write("/tmp/curl-partial"))

test_home_denied if not allowed(read("/home/agent/.curlrc"))

# An empty workdir or tmpdir grants nothing (not "every path under /").
test_no_workdir if {
	not allowed(object.union(write("/x"), {"sandbox": {"workdir": ""}}))
	not allowed(object.union(write("/x"), {"sandbox": {"workdir": "", "tmpdir": ""}}))
	allowed(object.union(write("/tmp/cordon-t/x"), {"sandbox": {"workdir": ""}}))
}

test_devnull if allowed(append("/dev/null"))

test_device_create_denied if not allowed(write("/dev/null"))

test_other_device_denied if not allowed(read("/dev/mem"))

# --- exec ---

test_exec_curl if allowed(exec("/usr/bin/curl"))

test_exec_wget if allowed(exec("/usr/bin/wget"))

test_exec_shell_denied if not allowed(exec("/usr/bin/bash"))

test_exec_curl_from_workdir_denied if not allowed(exec("/home/agent/fetch/curl"))
