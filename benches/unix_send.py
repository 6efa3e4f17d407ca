#!/usr/bin/env python3
"""Unix sends under `cordon run`: cost per notified send, natively beside it.

usage: benches/unix_send.py RUNS CORDON_BIN [CORDON_BIN ...]

Each run, for "native" and each binary, alternated, a fresh audit store: the
tool makes 2,000 `sendmsg` on a unix datagram socketpair (no address: no
decision, performed by the supervisor, with SCM_CREDENTIALS since session 18)
and 2,000 `sendto` to a bound datagram path (each decided), reading each
message back, and prints both medians in µs. Set PIN=1 to pin to CPU 0.
"""
import os, statistics, subprocess, sys, tempfile

TOOL = r"""
import os, socket, sys, time
n = int(sys.argv[2])
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
ts = []
for _ in range(n):
    t = time.perf_counter(); a.sendmsg([b'x']); ts.append(time.perf_counter() - t); b.recv(16)
path = os.path.join(sys.argv[1], 'r-%d.sock' % os.getpid())
r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); r.bind(path)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
us = []
for _ in range(n):
    t = time.perf_counter(); s.sendto(b'x', path); us.append(time.perf_counter() - t); r.recv(16)
ts.sort(); us.sort()
print(ts[n // 2] * 1e6, us[n // 2] * 1e6)
"""
POLICY = "package cordon\nallow := true\n"


def main():
    runs, bins = int(sys.argv[1]), sys.argv[2:]
    pin = ["taskset", "-c", "0"] if os.environ.get("PIN") == "1" else []
    with tempfile.TemporaryDirectory() as d:
        policy = os.path.join(d, "allow.rego")
        open(policy, "w").write(POLICY)
        results = {b: [] for b in ["native"] + bins}
        for i in range(runs):
            for b in results:
                tool = ["/usr/bin/python3", "-c", TOOL, d, "2000"]
                if b != "native":
                    db = os.path.join(d, f"db-{i}-{len(results[b])}")
                    tool = [b, "run", "--audit-db", db, "--policy", policy, "--"] + tool
                out = subprocess.run(pin + tool, capture_output=True, text=True, check=True)
                results[b].append([float(x) for x in out.stdout.split()])
        for b, rs in results.items():
            med = lambda k: statistics.median(r[k] for r in rs)
            print(f"{b}: sendmsg {med(0):.1f} µs, sendto a path {med(1):.1f} µs "
                  f"(medians of {len(rs)} runs)")


main()
