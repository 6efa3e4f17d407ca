#!/usr/bin/env python3
"""A non-blocking TCP connect to loopback, natively and under cordon builds.

usage: benches/connect_nonblocking.py ROUNDS CORDON [CORDON ...]

A native acceptor listens on 127.0.0.1 and closes what it accepts. In each
round, each build runs a Python client under an allow-all policy (a fresh
store per build) that makes 400 non-blocking connects, one at a time, and
times each `connect` call (the call alone, not the handshake's completion);
it prints the median of the last 350. Builds alternate within a round; the
figure printed is the median of the round medians, then each round's.
Run with `env -u RUST_BACKTRACE`.
"""
import os, socket, statistics, subprocess, sys, tempfile

CLIENT = r"""
import select, socket, statistics, sys, time
port, times = int(sys.argv[1]), []
for _ in range(400):
    s = socket.socket(); s.setblocking(False)
    t = time.perf_counter()
    s.connect_ex(('127.0.0.1', port))
    times.append((time.perf_counter() - t) * 1e6)
    select.select([], [s], [], 1); s.close()
print(statistics.median(times[50:]))
"""

ACCEPTOR = r"""
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('127.0.0.1', 0)); srv.listen(512)
print(srv.getsockname()[1], flush=True)
while True:
    c, _ = srv.accept(); c.close()
"""


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    rounds, builds = int(sys.argv[1]), sys.argv[2:]
    work = tempfile.mkdtemp(prefix="cordon-connect-bench-")
    policy = os.path.join(work, "allow-all.rego")
    with open(policy, "w") as f:
        f.write("package cordon\nallow := true\n")
    acceptor = subprocess.Popen([sys.executable, "-c", ACCEPTOR], stdout=subprocess.PIPE, text=True)
    port = acceptor.stdout.readline().strip()
    medians = {name: [] for name in ["native"] + builds}
    try:
        for _ in range(rounds):
            for name in medians:
                client = [sys.executable, "-c", CLIENT, port]
                if name != "native":
                    store = os.path.join(work, f"store-{builds.index(name)}")
                    client = [name, "run", "--audit-db", store, "--policy", policy, "--"] + client
                out = subprocess.run(client, cwd=work, capture_output=True, text=True, check=True)
                medians[name].append(float(out.stdout))
    finally:
        acceptor.kill()
    for name, values in medians.items():
        rounds_text = " ".join(f"{v:.1f}" for v in values)
        print(f"{statistics.median(values):7.1f} us  (rounds: {rounds_text})  {name}")


if __name__ == "__main__":
    main()
