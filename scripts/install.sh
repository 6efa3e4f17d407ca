#!/usr/bin/env bash
# Installs what Cordon needs on a Debian machine and builds it.
# System packages: protoc (gRPC code generation), libseccomp (the shim),
# strace (benchmark comparisons), python3 with venv and a C compiler (test tools,
# the OPA differential check),
# util-linux (setpriv, taskset), openssl (test certificates for the tls feature).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -e /usr/include/seccomp.h ] || need+=(libseccomp-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v strace >/dev/null 2>&1 || need+=(strace)
[ -x /usr/bin/python3 ] || need+=(python3)
# venv: scripts/opa-diff.py installs real OPA (a PyPI wheel) into target/opa-venv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
cargo build --locked --release --bin cordon
