# Unit tests of the built-in policy: `cordon policy test policies/`.
# One test per allow and per deny rule, and the edges between them.
package cordon_test


import rego.v1

workdir := "/home/agent/job"

sandbox := {"id": "t", "labels": {"tool": "test"}, "workdir": workdir, "tmpdir": "/tmp/cordon-t"}

process := {"pid": 4242, "ppid": 4241, "uid": 1000, "gid": 1000, "exe": "/usr/bin/python3", "cwd": workdir, "comm": "python3"}

read(path) := {
	"sandbox": sandbox, "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["read"], "create": false, "truncate": false, "flags": ["O_RDONLY"]},
}

write(path) := {
	"sandbox": sandbox, "process": process, "syscall": "openat", "kind": "file",
	"file": {"path": path, "access": ["write"], "create": true, "truncate": true, "flags": ["O_WRONLY", "O_CREAT", "O_TRUNC"]},
}

connect(address, port) := {
	"sandbox": sandbox, "process": process, "syscall": "connect", "kind": "network",
	"network": {"op": "connect", "family": "inet", "protocol": "tcp", "address": address, "port": port},
}

bind(address, port) := {
	"sandbox": sandbox, "process": process, "syscall": "bind", "kind": "network",
	"network": {"op": "bind", "family": "inet", "protocol": "tcp", "address": address, "port": port},
}

exec(path) := {
	"sandbox": sandbox, "process": process, "syscall": "execve", "kind": "exec",
	"exec": {"path": path, "argv": [path]},
}

allowed(request) if {
	data.cordon.allow with input as request
	count(data.cordon.deny) == 0 with input as request
}

# --- files ---

test_read_system_library if allowed(read("/usr/lib/x86_64-linux-gnu/libc.so.6"))

test_read_etc if allowed(read("/etc/hosts"))

test_list_system_directory if allowed(read("/usr"))

test_write_system_library_denied if not allowed(write("/usr/lib/x86_64-linux-gnu/libc.so.6"))

test_device_write if {
	request := object.union(write("/dev/null"), {"file": {"create": false, "truncate": false}})
	allowed(request)
}

test_device_create_denied if not allowed(write("/dev/null"))

open_existing(path) := object.union(write(path), {"file": {"create": false, "truncate": false}})

# The tool's own path-less fds (a pipe reopened by `echo x >/dev/stderr`);
# not another process's fds, and not terminals (another of the user's could
# be opened as well as the tool's own).
test_own_pathless_fds_writable_terminals_not if {
	allowed(open_existing("/proc/4242/fd/2"))
	not allowed(open_existing("/proc/4243/fd/2"))
	not allowed(open_existing("/dev/pts/3"))
	not allowed(read("/dev/pts/3"))
}

test_system_proc_files_readable if {
	every path in ["/proc/loadavg", "/proc/uptime", "/proc/version"] {
		allowed(read(path))
	}
}

# Root-only private keys and privileges under /etc (a root tool could read
# them); the rest of /etc stays readable.
test_etc_private_keys_denied if {
	every path in ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssl/private/server.key", "/etc/sudoers.d/admins", "/etc/krb5.keytab", "/etc/wireguard/wg0.conf", "/etc/pki/tls/private/host.key", "/etc/security/opasswd", "/etc/kubernetes/pki/ca.key", "/etc/NetworkManager/system-connections/home.nmconnection", "/etc/ipsec.secrets", "/etc/ppp/chap-secrets"] {
		not allowed(read(path))
	}
	allowed(read("/etc/ssh/ssh_config"))
	allowed(read("/etc/ssl/certs/ca-certificates.crt"))
}

# Other services' secrets and cluster admins' keys under /etc.
test_etc_service_secrets_denied if {
	every path in [
		"/etc/kubernetes/admin.conf", "/etc/kubernetes/super-admin.conf", "/etc/kubernetes/kubelet.conf",
		"/etc/rancher/k3s/k3s.yaml", "/etc/mysql/debian.cnf", "/etc/ipsec.d/private/host.pem",
		"/etc/swanctl/private/a.key", "/etc/credstore/db", "/etc/credstore.encrypted/db",
		"/etc/openvpn/client/c.key", "/etc/gitlab-runner/config.toml", "/etc/sssd/sssd.conf",
		"/etc/netplan/50-cloud-init.yaml", "/etc/wpa_supplicant/wpa_supplicant.conf",
		"/etc/postfix/sasl_passwd", "/etc/dovecot/private/dovecot.pem", "/etc/pki/CA/private/ca.key",
		"/etc/pki/libvirt/private/serverkey.pem",
	] {
		not allowed(read(path))
	}
	allowed(read("/etc/kubernetes/manifests/etcd.yaml"))
	allowed(read("/etc/mysql/my.cnf"))
}

# What a root tool could read under /etc that no list names: files named as
# secrets, passwords, private keys or key rings, in any case; apt's public
# key rings, the user database and PAM's settings stay readable.
test_etc_files_named_as_secrets_denied if {
	every path in [
		"/etc/apt/auth.conf", "/etc/apt/auth.conf.d/90ubuntu-advantage", "/etc/ldap.secret",
		"/etc/pam_ldap.secret", "/etc/ceph/ceph.client.admin.keyring",
		"/etc/puppetlabs/puppet/ssl/private_keys/host.pem", "/etc/docker/certs.d/r:5000/client.key",
		"/etc/samba/smbpasswd", "/etc/gitlab/initial_root_password", "/etc/gitlab/gitlab-secrets.json",
		"/etc/exim4/passwd.client", "/etc/salt/pki/master/master.pem", "/etc/chef/client.pem",
		"/etc/docker/key.json", "/etc/msmtprc", "/etc/boto.cfg", "/etc/App/DB_Password.txt",
		"/etc/etcd/pki/peer.KEY", "/etc/krb5/service.keytab",
	] {
		not allowed(read(path))
	}
	every path in [
		"/etc/passwd", "/etc/passwd-", "/etc/pam.d/common-password", "/etc/apt/keyrings/docker.gpg",
		"/etc/apt/trusted.gpg.d/debian.asc", "/etc/docker/certs.d/r:5000/client.cert",
		"/etc/ssl/certs/ca-certificates.crt", "/etc/keyboard.conf",
	] {
		allowed(read(path))
	}
}

# Started in a directory shared by every user, or one of the system's, the
# tool gets its temp dir only; a project under /usr is a workdir like any.
test_shared_and_system_workdirs_are_not_writable if {
	every dir in ["/tmp", "/var/tmp", "/home", "/var", "/proc", "/dev", "/etc", "/run/user/1000", "/usr/local/bin", "/usr/lib/x", "/proc/1", "/usr/lib64", "/lib/x", "/usr/local/lib"] {
		there := object.union(sandbox, {"workdir": dir})
		not allowed(object.union(write(sprintf("%s/x", [dir])), {"sandbox": there}))
		b := data.cordon.backstop with input as {"sandbox": there}
		not dir in b.write
	}
	project := object.union(sandbox, {"workdir": "/usr/src/app"})
	allowed(object.union(write("/usr/src/app/out.txt"), {"sandbox": project}))
}

# The same directories as ostree systems spell them (/home is a link to
# /var/home there, and the workdir is the link's target), and the rest of
# /var's and /usr's shared trees.
test_ostree_and_var_shared_workdirs_are_not_writable if {
	every dir in [
		"/var/home", "/var/roothome", "/var/usrlocal", "/var/srv", "/var/opt", "/var/mnt", "/var/crash",
		"/var/lib", "/var/spool", "/var/log", "/var/cache", "/var/mail", "/usr/share", "/usr/games",
		"/usr/lib32/x", "/var/usrlocal/bin",
	] {
		there := object.union(sandbox, {"workdir": dir})
		not allowed(object.union(write(sprintf("%s/x", [dir])), {"sandbox": there}))
		b := data.cordon.backstop with input as {"sandbox": there}
		not dir in b.write
	}
	project := object.union(sandbox, {"workdir": "/var/home/user/job"})
	allowed(object.union(write("/var/home/user/job/out.txt"), {"sandbox": project}))
	service := object.union(sandbox, {"workdir": "/var/lib/jenkins/workspace/job"})
	allowed(object.union(write("/var/lib/jenkins/workspace/job/out.txt"), {"sandbox": service}))
}

# A project's own .docker directory (Dockerfiles) is not Docker's credential
# store; the client's config and TLS contexts are.
test_a_projects_docker_directory_is_not_a_credential_store if {
	allowed(read("/home/agent/job/.docker/php/Dockerfile"))
	not allowed(read("/home/agent/job/.docker/config.json"))
	not allowed(read("/home/agent/job/.docker/contexts/tls/x/key.pem"))
}

# A tool started in a home directory reads its dotfiles but cannot plant
# code in what runs at the next login.
test_login_files_not_writable_in_a_home_workdir if {
	home := object.union(sandbox, {"workdir": "/home/user"})
	every name in [
		".bashrc", ".profile", ".zshrc", ".config/autostart/x.desktop", ".config/systemd/user/x.service",
		".bash_aliases", ".bashrc.d/10-x.sh", ".config/fish/config.fish", ".config/environment.d/x.conf",
		".local/share/systemd/user/x.service", ".xinitrc", ".cshrc", ".bash_completion", ".logout",
		".xonshrc", ".config/plasma-workspace/env/x.sh", ".config/plasma-workspace/shutdown/x.sh",
		".kde/Autostart/x.sh", ".config/openbox/autostart", ".config/lxsession/LXDE/autostart",
		".config/nushell/config.nu", ".local/share/bash-completion/completions/git",
	] {
		request := object.union(write(sprintf("/home/user/%s", [name])), {"sandbox": home})
		not allowed(request)
	}
	allowed(object.union(read("/home/user/.bashrc"), {"sandbox": home}))
	allowed(object.union(write("/home/user/notes.txt"), {"sandbox": home}))
	allowed(object.union(write("/home/user/.config/app.toml"), {"sandbox": home}))
}

# What runs later as the user outside the sandbox: the user's bin directory
# (first on PATH), Python's user site-packages (.pth files run at every
# start), git's global settings (core.fsmonitor runs in every repository).
# A project's own virtualenv and git settings stay the tool's.
test_code_that_runs_outside_later_not_writable_in_a_home_workdir if {
	home := object.union(sandbox, {"workdir": "/home/user"})
	every name in [
		".local/bin/sudo", ".local/lib/python3.11/site-packages/zz.pth",
		".local/lib/python3.11/site-packages/usercustomize.py", ".gitconfig", ".config/git/config",
		"bin/ls", ".cargo/env", ".cargo/bin/cargo", ".vimrc", ".config/nvim/init.lua",
		".emacs.d/init.el", ".tmux.conf", ".oh-my-zsh/custom/x.zsh", ".config/systemd/user.conf",
	] {
		not allowed(object.union(write(sprintf("/home/user/%s", [name])), {"sandbox": home}))
	}
	every name in [
		"job/.venv/lib/python3.11/site-packages/x.pth", "job/.git/config", ".local/share/app/state",
		".config/git/ignore", "job/bin/run", "binder/x", "job/.cargo/config.toml",
	] {
		allowed(object.union(write(sprintf("/home/user/%s", [name])), {"sandbox": home}))
	}
	allowed(object.union(read("/home/user/.gitconfig"), {"sandbox": home}))
	allowed(object.union(read("/home/user/bin/ls"), {"sandbox": home}))
	root_home := object.union(sandbox, {"workdir": "/root"})
	not allowed(object.union(write("/root/bin/ls"), {"sandbox": root_home}))
	ostree_home := object.union(sandbox, {"workdir": "/var/home/user"})
	not allowed(object.union(write("/var/home/user/bin/ls"), {"sandbox": ostree_home}))
	allowed(object.union(write("/var/home/user/binder"), {"sandbox": ostree_home}))
	allowed(object.union(write("/root/binder"), {"sandbox": root_home}))
}

# Started in /, the tool does not get every path: only its temp dir.
test_a_root_workdir_is_not_writable if {
	root := object.union(sandbox, {"workdir": "/"})
	not allowed(object.union(write("/etc/passwd2"), {"sandbox": root}))
	not allowed(object.union(write("/srv/x"), {"sandbox": root}))
	allowed(object.union(write("/tmp/cordon-t/x"), {"sandbox": root}))
	b := data.cordon.backstop with input as {"sandbox": root}
	not "/" in b.write
	root_tmp := object.union(sandbox, {"tmpdir": "/"})
	not allowed(object.union(write("/srv/x"), {"sandbox": root_tmp}))
}

# POSIX semaphores and shared memory, when data.cordon.shm asks for them:
# only a new object created exclusively in /dev/shm itself.
exclusive(path) := object.union(write(path), {"file": {"access": ["read", "write"], "truncate": false, "flags": ["O_RDWR", "O_CREAT", "O_EXCL"]}})

test_shm_objects_only_when_asked_and_only_new_ones if {
	not allowed(exclusive("/dev/shm/sem.AbC123"))
	allowed(exclusive("/dev/shm/sem.AbC123")) with data.cordon.shm as true
	allowed(exclusive("/dev/shm/psm_1f2e")) with data.cordon.shm as true
	not allowed(write("/dev/shm/sem.AbC123")) with data.cordon.shm as true
	not allowed(object.union(read("/dev/shm/sem.other"), {"file": {"access": ["read", "write"], "flags": ["O_RDWR"]}})) with data.cordon.shm as true
	not allowed(exclusive("/dev/shm/dir/x")) with data.cordon.shm as true
	# glibc's sem_open links its temporary file to the semaphore's name.
	link_old := object.union(read("/dev/shm/sem.XyZ123"), {"syscall": "link", "file": {"access": ["read", "write"], "flags": ["OLD"]}})
	link_new := object.union(write("/dev/shm/sem.mp-1"), {"syscall": "link", "file": {"truncate": false, "flags": ["NEW"]}})
	allowed(link_old) with data.cordon.shm as true
	allowed(link_new) with data.cordon.shm as true
	not allowed(link_old)
	not allowed(object.union(link_old, {"syscall": "rename"})) with data.cordon.shm as true
	not allowed(object.union(link_new, {"file": {"path": "/dev/shm/dir/x"}})) with data.cordon.shm as true
	not "/dev/shm" in data.cordon.backstop.write with input as {"sandbox": sandbox}
	"/dev/shm" in data.cordon.backstop.write with input as {"sandbox": sandbox} with data.cordon.shm as true
}

test_own_proc if allowed(read("/proc/4242/status"))

test_proc_self if allowed(read("/proc/self/maps"))

test_own_proc_directory_itself if allowed(read("/proc/4242"))

test_pid_sharing_a_prefix_denied if not allowed(read("/proc/42420/status"))

test_other_proc_denied if not allowed(read("/proc/1/environ"))

test_proc_system_file if allowed(read("/proc/cpuinfo"))

test_write_workdir if allowed(write("/home/agent/job/out/result.csv"))

test_workdir_itself if allowed(read(workdir))

test_sibling_of_workdir_denied if not allowed(write("/home/agent/job2/x"))

# A workdir named with a trailing slash covers the same tree, and no sibling.
test_workdir_with_trailing_slash if {
	slashed := {"sandbox": {"workdir": "/home/agent/job/"}}
	allowed(object.union(write("/home/agent/job/out"), slashed))
	not allowed(object.union(write("/home/agent/job2/x"), slashed))
}

test_exec_prefix_needs_a_whole_directory if not allowed(exec("/usr/binx/tool"))

# A path is a string: a list of paths, which strings.any_prefix_match would
# take, allows nothing. (For a file, other rules' string builtins make it an
# evaluation error, which the broker answers with a denial.)
test_a_list_of_paths_allows_nothing if not allowed(exec(["/usr/bin/true"]))

test_tmpdir if allowed(write("/tmp/cordon-t/scratch"))

test_shared_tmp_denied if not allowed(write("/tmp/other"))

test_unrelated_home_denied if not allowed(read("/home/agent/.bash_history"))

# A home directory's files the policy does not allow look absent to reads
# (git, pip and the like then do without their per-user settings); writes
# there, reads elsewhere and reads denied with a reason keep EACCES.
test_unallowed_reads_in_homes_are_enoent if {
	not allowed(read("/root/.gitconfig"))
	data.cordon.errno == "ENOENT" with input as read("/root/.gitconfig")
	data.cordon.errno == "ENOENT" with input as read("/home/agent/.config/git/config")
	data.cordon.errno == "ENOENT" with input as read("/home/agent")
	not data.cordon.errno with input as read("/root")
	not data.cordon.errno with input as read("/home")
	not data.cordon.errno with input as write("/root/.gitconfig")
	not data.cordon.errno with input as object.union(read("/root/.gitconfig"), {"file": {"flags": ["O_RDONLY", "O_CREAT"]}})
	not data.cordon.errno with input as read("/home/agent/job/src/main.rs")
	not data.cordon.errno with input as read("/srv/data/x")
	not data.cordon.errno with input as read("/rootfs/x")
	not data.cordon.errno with input as read("/home/agent/.ssh/config")
	not data.cordon.errno with input as read("/home/agent/job/.env")
}

# --- credentials, whatever allows them ---

test_ssh_key_in_workdir_denied if {
	not allowed(read("/home/agent/job/.ssh/id_ed25519"))
	"/home/agent/job/.ssh/id_ed25519 is a credential store" in data.cordon.deny with input as read("/home/agent/job/.ssh/id_ed25519")
}

test_aws_denied if not allowed(read("/home/agent/job/.aws/credentials"))

test_gcloud_denied if not allowed(read("/home/agent/job/.config/gcloud/credentials.db"))

test_netrc_denied if not allowed(read("/home/agent/job/.netrc"))

test_keyring_denied if not allowed(read("/home/agent/job/.local/share/keyrings/login.keyring"))

# Each pattern, the store itself named without a trailing slash (the path
# the deny rule sees gets one appended; its cheap "/." guard must pass).
test_every_credential_pattern_is_denied if {
	every pattern in data.cordon.secret_patterns {
		path := concat("", ["/home/agent/job", trim_suffix(pattern, "/")])
		sprintf("%s is a credential store", [path]) in data.cordon.deny with input as read(path)
	}
}

# Ubuntu's Chromium snap keeps its profile under names without a dot.
test_snap_chromium_profile_denied if {
	path := "/home/agent/job/snap/chromium/common/chromium/Default/Cookies"
	sprintf("%s is a credential store", [path]) in data.cordon.deny with input as read(path)
	allowed(read("/home/agent/job/snap/chromium/README.md"))
}

# Every program directory is a system tree.
test_system_trees_hold_the_exec_prefixes if {
	every prefix in data.cordon.exec_prefixes {
		prefix in data.cordon.system_trees
	}
}

# The patterns are tried only where the path has a "/.": each must start there.
test_every_credential_pattern_starts_with_a_dotted_name if {
	every pattern in data.cordon.secret_patterns {
		startswith(pattern, "/.")
	}
}

# A pattern is found after other dotted names, and after names that are not
# ASCII (where the loop's positions, in characters, must match substring's).
test_a_credential_store_after_other_dotted_names_is_denied if {
	every path in [
		"/home/agent/job/.venv/lib/.ssh/id_rsa", "/home/agent/job/.a/.b/.aws/credentials",
		"/home/agent/job/é/ü/.ssh/id_rsa", "/home/agent/job/.é/日本/.netrc",
	] {
		sprintf("%s is a credential store", [path]) in data.cordon.deny with input as read(path)
	}
	every path in ["/home/agent/job/.venv/lib/x.py", "/home/agent/job/é/.sshx/id_rsa", "/home/agent/job/a.ssh/id"] {
		allowed(read(path))
	}
}

test_dotenv_denied if {
	not allowed(read("/home/agent/job/.env.local"))
	"/home/agent/job/.env.local is a .env file" in data.cordon.deny with input as read("/home/agent/job/.env.local")
}

test_environment_named_file_allowed if allowed(read("/home/agent/job/environment.txt"))

test_shadow_denied if {
	not allowed(read("/etc/shadow"))
	"/etc/shadow holds password hashes or privileges" in data.cordon.deny with input as read("/etc/shadow")
}

# Copies of the password and privilege files, and etckeeper's repository of
# /etc (which holds shadow's contents); the public files beside them stay
# readable.
test_copies_of_shadow_and_etckeeper_denied if {
	every path in [
		"/etc/shadow.bak", "/etc/shadow~", "/etc/gshadow.old", "/etc/sudoers.orig",
		"/etc/.git/objects/ab/cdef", "/etc/.hg/store/data/shadow.i", "/etc/npmrc",
	] {
		not allowed(read(path))
	}
	every path in ["/etc/passwd", "/etc/group", "/etc/.pwd.lock", "/etc/npm/x", "/etc/.etckeeper"] {
		allowed(read(path))
	}
}

# --- exec ---

test_exec_system_binary if allowed(exec("/usr/bin/git"))

test_exec_from_workdir_denied if not allowed(exec("/home/agent/job/run.sh"))

# --- network ---

test_connect_default_denied if not allowed(connect("93.184.216.34", 443))

test_connect_errno_is_econnrefused if {
	data.cordon.errno == "ECONNREFUSED" with input as connect("93.184.216.34", 443)
}

test_connect_allowed_by_data if {
	allowed(connect("10.1.2.3", 443)) with data.cordon.network.allow as [{"cidr": "10.0.0.0/8", "ports": [443]}]
}

test_connect_port_not_listed_denied if {
	not allowed(connect("10.1.2.3", 22)) with data.cordon.network.allow as [{"cidr": "10.0.0.0/8", "ports": [443]}]
}

test_metadata_denied_even_when_listed if {
	request := connect("169.254.169.254", 80)
	not allowed(request) with data.cordon.network.allow as [{"cidr": "0.0.0.0/0", "ports": [80]}]
	"the cloud metadata endpoint hands out credentials" in data.cordon.deny with input as request
}

# Every link-local IPv4 address (ECS and EKS credential endpoints too),
# Alibaba's metadata address, Azure's WireServer, IPv6 link-local and the
# IPv6 metadata endpoints, even when listed; a neighbour of the range is not.
test_metadata_ranges_denied_even_when_listed if {
	everything := [{"cidr": "0.0.0.0/0", "ports": [80]}, {"cidr": "::/0", "ports": [80]}]
	every address in ["169.254.170.2", "169.254.170.23", "169.254.0.1", "100.100.100.200", "168.63.129.16"] {
		not allowed(connect(address, 80)) with data.cordon.network.allow as everything
	}
	# Azure's WireServer answers DNS too.
	not allowed(connect("168.63.129.16", 32526)) with data.cordon.network.allow as [{"cidr": "0.0.0.0/0", "ports": [32526]}]
	allowed(connect("168.63.129.16", 53)) with data.cordon.network.allow as [{"cidr": "0.0.0.0/0", "ports": [53]}]
	not allowed(connect("192.0.0.192", 80)) with data.cordon.network.allow as everything
	every address in ["fe80::1", "fd00:ec2::254", "fd00:ec2::23", "fd00:ec2::1:2", "fd20:ce::254", "fd00:c1::a9fe:a9fe"] {
		v6 := object.union(connect(address, 80), {"network": {"family": "inet6"}})
		not allowed(v6) with data.cordon.network.allow as everything
	}
	allowed(connect("169.255.0.1", 80)) with data.cordon.network.allow as everything
	other6 := object.union(connect("2001:db8::1", 80), {"network": {"family": "inet6"}})
	allowed(other6) with data.cordon.network.allow as everything
}

test_bind_denied_with_eacces if {
	not allowed(bind("0.0.0.0", 8080))
	not data.cordon.errno with input as bind("0.0.0.0", 8080)
}

# --- kernel backstop ---

test_backstop_writes_workdir_tmpdir_and_devices if {
	b := data.cordon.backstop with input as {"sandbox": sandbox}
	workdir in b.write
	"/tmp/cordon-t" in b.write
	"/dev/null" in b.write
	not "/" in b.write
	"/usr" in b.execute
	not workdir in b.execute
}

test_backstop_extends_with_data if {
	b := data.cordon.backstop with input as {"sandbox": sandbox}
		with data.cordon.backstop_extra as {"execute": ["/opt/tools"], "write": ["/srv/out"]}
	"/opt/tools" in b.execute
	"/srv/out" in b.write
}

# --- renames and links (two decisions: flags "OLD", then "NEW") ---

name_change(path, role) := object.union(write(path), {
	"syscall": "rename",
	"sandbox": object.union(sandbox, {"workdir": "/home/user"}),
	"file": {"access": ["read", "write"], "create": false, "truncate": false, "flags": [role, "DIR"]},
})

# A directory on the way to a denied name keeps its name: moved, what is
# beneath it would match no pattern (~/.config/gh/hosts.yml as
# c/gh/hosts.yml), and what is put in its place is not checked.
test_directories_on_the_way_to_denied_names_keep_them if {
	every path in [
		"/home/user/.config", "/home/user/.config/gh", "/home/user/.docker", "/home/user/.claude",
		"/home/user/.local", "/home/user/.local/share", "/home/user/.cache/huggingface",
		"/home/user/.local/lib", "/home/user/.config/systemd", "/home/user/bin", "/root/bin",
	] {
		every role in ["OLD", "NEW"] {
			not allowed(name_change(path, role))
		}
	}
	every path in [
		"/home/user/job/src", "/home/user/.configs", "/home/user/notes.txt", "/home/user/binder",
		"/home/user/job/.venv",
	] {
		every role in ["OLD", "NEW"] {
			allowed(name_change(path, role))
		}
	}
	# A file of such a name is no way to anything (the kernel's build
	# renames its .config to .config.old).
	every role in ["OLD", "NEW"] {
		allowed(object.union(name_change("/home/user/job/linux/.config", role), {"file": {"flags": [role]}}))
	}
	# An open of the same directory is not a name change.
	allowed(object.union(read("/home/user/.config"), {"sandbox": object.union(sandbox, {"workdir": "/home/user"})}))
}
