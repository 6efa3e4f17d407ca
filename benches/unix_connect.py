#!/usr/bin/env python3
"""Unix connects under `cordon run`: cost per connect, and of the first one.

usage: benches/unix_connect.py RUNS CORDON_BIN [CORDON_BIN ...]

Starts a listener outside the sandbox (accepts and closes), then runs each
binary RUNS times, alternated, each run a fresh audit store: the tool makes
one connect (timed apart: a sandbox's first) and 2,000 more, and prints the
median and p99 in µs. Set PIN=1 to pin cordon to CPU 0.
"""
import os, socket, statistics, subprocess, sys, tempfile, threading

TOOL = r"""
import socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
t = time.perf_counter(); s = socket.socket(socket.AF_UNIX); s.connect(path); s.close()
first = time.perf_counter() - t
ts = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    t = time.perf_counter(); s.connect(path); ts.append(time.perf_counter() - t); s.close()
ts.sort()
print(first * 1e6, ts[n // 2] * 1e6, ts[int(n * .99)] * 1e6)
"""
POLICY = 'package cordon\nimport rego.v1\nallow if input.network.family == "unix"\n'


def main():
    runs, bins = int(sys.argv[1]), sys.argv[2:]
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(here, "..", "policies", "default.rego")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(4096)

        def accept():
            while True:
                listener.accept()[0].close()

        threading.Thread(target=accept, daemon=True).start()
        policy = os.path.join(d, "unix.rego")
        open(policy, "w").write(POLICY)
        pin = ["taskset", "-c", "0"] if os.environ.get("PIN") == "1" else []
        results = {b: [] for b in bins}
        for i in range(runs):
            for b in bins:
                db = os.path.join(d, f"db-{i}-{len(results[b])}")
                out = subprocess.run(
                    pin + [b, "run", "--audit-db", db, "--policy", policy, "--policy", default,
                           "--", "/usr/bin/python3", "-c", TOOL, path, "2000"],
                    capture_output=True, text=True, check=True)
                results[b].append([float(x) for x in out.stdout.split()])
        for b, rs in results.items():
            med = lambda k: statistics.median(r[k] for r in rs)
            print(f"{b}: first {med(0):.0f} µs, median {med(1):.1f} µs, p99 {med(2):.0f} µs "
                  f"(medians of {len(rs)} runs)")


main()
