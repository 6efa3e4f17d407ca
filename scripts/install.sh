#!/usr/bin/env bash
# Installs what Cordon needs on a Debian machine and builds it.
# System packages: protoc (gRPC code generation), libseccomp (the shim),
# strace (benchmark comparisons), python3 with venv and a C compiler (test tools,
# the OPA differential check),
# util-linux (setpriv, taskset), openssl (test certificates for the tls feature),
# procps (kill, pkill in tests).
set -euo pipefail
cd "$(dirname "$0")/.."

# Rust 1.88 or newer (edition 2024, let chains). Debian's own cargo is older
# (bookworm's 1.65, trixie's 1.85), so rustup provides it when needed.
rust_ok() {
  command -v cargo >/dev/null 2>&1 || return 1
  local v
  v=$(cargo --version | awk '{print $2}')
  [ "$(printf '%s\n' 1.88.0 "$v" | sort -V | head -n1)" = 1.88.0 ]
}
# A rustup install from an earlier run that this shell does not have yet.
if ! rust_ok && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck source=/dev/null
  . "$HOME/.cargo/env"
fi

need=()
rust_ok || command -v rustup >/dev/null 2>&1 || command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
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
# procps: kill and pkill, which tests use to stop what they started.
command -v pkill >/dev/null 2>&1 && [ -x /bin/kill ] || need+=(procps)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "needs root or sudo to install: ${need[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! rust_ok; then
  echo "installing Rust (stable, with rustup)" >&2
  if command -v rustup >/dev/null 2>&1; then
    rustup toolchain install stable --profile minimal
    rustup default stable
  else
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    # shellcheck source=/dev/null
    . "$HOME/.cargo/env"
  fi
  rust_ok || { echo "Rust 1.88 or newer is required and could not be installed (https://rustup.rs)" >&2; exit 1; }
fi
cargo build --locked --release --bin cordon
