#!/usr/bin/env python3
"""Where a brokered open's tail falls in time.

Runs the C probe's `open-loop` under `cordon run` (embedded broker, a fresh
store), with PROBE_TRACE so that it writes every call's start and latency,
then prints the median, p99 and p99.9, and the slow calls (over SLOW_US)
with the gaps between them: a tail that comes in clusters every ~10 ms is
the batched audit flush (its window) on the tool's CPU.

Usage: open_tail.py CORDON PROBE [N] [--pin]
  e.g. benches/open_tail.py target/release/cordon /tmp/pb/bin/probe 20000 --pin
The probe opens a file in the run's working directory (a fresh temporary
one). The default policy must be let to run the probe: extra policy files
come from OPEN_TAIL_POLICY (colon-separated), as in BENCHMARKS.md's kit
(`bench.rego`, `bench.json`).
"""
import os
import subprocess
import sys
import tempfile

SLOW_US = int(os.environ.get("SLOW_US", "150"))


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--pin"]
    pin = "--pin" in sys.argv
    if len(args) < 2:
        sys.exit(__doc__)
    cordon, probe = (os.path.abspath(a) for a in args[:2])
    n = args[2] if len(args) > 2 else "20000"
    policies = [p for p in os.environ.get("OPEN_TAIL_POLICY", "").split(":") if p]
    with tempfile.TemporaryDirectory() as work:
        trace = os.path.join(work, "trace.txt")
        target = os.path.join(work, "target.txt")
        with open(target, "w") as f:
            f.write("target\n")
        cmd = ["taskset", "-c", "0"] if pin else []
        cmd += [cordon, "run", "--audit-db", os.path.join(work, "db")]
        if policies:
            here = os.path.dirname(os.path.abspath(__file__))
            cmd += ["--policy", os.path.join(here, "..", "policies", "default.rego")]
            for p in policies:
                cmd += ["--policy", os.path.abspath(p)]
        cmd += ["--", probe, "open-loop", target, n]
        env = dict(os.environ, PROBE_TRACE=trace)
        subprocess.run(cmd, check=True, cwd=work, env=env, stdout=subprocess.DEVNULL)
        calls = [tuple(map(int, line.split())) for line in open(trace)]
    lat = sorted(ns for _, ns in calls)
    pick = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] / 1000
    print(f"calls {len(lat)}  median {pick(0.5):.1f} us  p99 {pick(0.99):.1f} us  p99.9 {pick(0.999):.1f} us")
    slow = [(at, ns) for at, ns in calls if ns > SLOW_US * 1000]
    print(f"over {SLOW_US} us: {len(slow)} calls in {calls[-1][0] / 1e6:.0f} ms")
    gaps = [(b[0] - a[0]) / 1e6 for a, b in zip(slow, slow[1:])]
    print("gaps between them (ms):", " ".join(f"{g:.1f}" for g in gaps[:40]))
    print("their latencies (us):", " ".join(str(ns // 1000) for _, ns in slow[:40]))


if __name__ == "__main__":
    main()
