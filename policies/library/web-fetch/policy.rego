# web-fetch: fetches URLs with curl or wget for an agent.
#
# Intent: HTTPS to an allow-list of networks only, with DNS to the listed
# resolvers so names resolve; read what TLS and name resolution need (CA
# certificates, resolver configuration, shared libraries); write only the
# working dir and the private temp dir; run curl or wget and nothing else.
#
# Settings: data.library["web-fetch"] (data.json beside this file).
# Selected by the sandbox label tool=web-fetch (see ../dispatch.rego).
package cordon.library.web_fetch

import rego.v1

settings := data.library["web-fetch"]

default allow := false

# Calls that send to an address (bind and listen are never allowed).
outbound_ops := {"connect", "sendto", "sendmsg", "sendmmsg"}

# --- network -----------------------------------------------------------------

# HTTPS to the allow-list, e.g. {"cidr": "93.184.216.0/24", "ports": [443]}.
# UDP too: glibc's getaddrinfo connects a UDP socket to each candidate
# address to sort them (RFC 6724), and HTTP/3 is HTTPS over UDP.
allow if {
	inet_outbound
	input.network.protocol in {"tcp", "udp"}
	some entry in settings.egress
	net.cidr_contains(entry.cidr, input.network.address)
	input.network.port in entry.ports
}

# DNS to the configured resolvers only, over UDP and TCP (TCP for answers too
# large for UDP), so names resolve without a general UDP hole.
allow if {
	inet_outbound
	input.network.protocol in {"tcp", "udp"}
	input.network.port == 53
	input.network.address in settings.resolvers
}

# glibc asks systemd-resolved (nss-resolve) and nscd over unix sockets before
# sending DNS itself. They answer lookups only, and every name they resolve
# could be resolved through the resolvers above anyway, so allowing them adds
# no reach; it avoids a slower fallback and keeps resolved's cache and DNSSEC.
allow if {
	input.kind == "network"
	input.network.family == "unix"
	input.network.op in outbound_ops
	input.network.path in settings.unix_sockets
}

# Plain HTTP can be read and rewritten on the way: refuse it even when the
# allow-list names port 80, so a page cannot be swapped in transit.
deny contains sprintf("plain HTTP to %s:80 is not allowed; web-fetch uses HTTPS only", [input.network.address]) if {
	inet_outbound
	input.network.port == 80
}

# A refused connection is what curl and wget report best; bind and listen
# keep the default EACCES.
errno := "ECONNREFUSED" if {
	input.kind == "network"
	input.network.op in outbound_ops
}

# --- files -------------------------------------------------------------------

# CA certificates, OpenSSL configuration, shared libraries, locale data.
allow if {
	input.kind == "file"
	not writes
	some prefix in settings.read_prefixes
	startswith(input.file.path, prefix)
}

# Name resolution and user lookup configuration, one file each.
allow if {
	input.kind == "file"
	not writes
	input.file.path in settings.read_files
}

# The download target and scratch space: the working dir and private temp dir.
allow if {
	input.kind == "file"
	some dir in writable_dirs
	under(input.file.path, dir)
}

# Standard devices (progress output to /dev/null, entropy).
allow if {
	input.kind == "file"
	not input.file.create
	input.file.path in {"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"}
}

# /etc/ssl is readable for the CA bundle, but the host's TLS private keys live
# beside it.
deny contains sprintf("%s holds TLS private keys", [input.file.path]) if {
	input.kind == "file"
	some dir in {"/etc/ssl/private", "/etc/pki/tls/private"}
	under(input.file.path, dir)
}

# --- exec --------------------------------------------------------------------

# curl and wget themselves (resolved paths: /usr/bin/wget may be wget2).
allow if {
	input.kind == "exec"
	input.exec.path in settings.programs
}

# --- helpers -----------------------------------------------------------------

# An IPv4 or IPv6 call that sends somewhere (not bind or listen).
inet_outbound if {
	input.kind == "network"
	input.network.family in {"inet", "inet6"}
	input.network.op in outbound_ops
}

# Opens for writing, creates or truncates.
writes if "write" in input.file.access

writes if input.file.create

writes if input.file.truncate

# Where downloads go; an empty dir is no dir at all, not "everything under /".
writable_dirs contains input.sandbox.workdir if input.sandbox.workdir != ""

writable_dirs contains input.sandbox.tmpdir if input.sandbox.tmpdir != ""

# path is dir itself or inside it (not merely sharing a prefix: /work2 is not under /work).
under(path, dir) if path == dir

under(path, dir) if startswith(path, concat("", [trim_right(dir, "/"), "/"]))
