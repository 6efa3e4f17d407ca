#!/usr/bin/env bash
# Runs the whole test suite: unit, policy fixtures and unit tests (also under
# real OPA), and end-to-end tests that
# start real broker and sandbox processes (real seccomp filter, real tools).
# Some tests switch to the unprivileged user `nobody` with setpriv, so run it
# as root (as CI does). The optional `tls` feature is tested last.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
cargo test --locked --workspace --all-targets
cargo test --locked --workspace --doc
cargo test --locked --features tls --test tls
# The shipped policies and their tests under real OPA (a PyPI wheel) and cordon agree.
python3 scripts/opa-diff.py policies/
