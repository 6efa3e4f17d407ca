#!/usr/bin/env python3
"""Shim benchmarks: the same workloads natively, under `strace -f`, and under
`cordon run` (embedded broker, default policy), interleaved run by run so
machine noise hits all three alike. Prints a Markdown table of medians and
ratios; raw timings go to target/bench-shim/<UTC timestamp>/.

    scripts/bench-shim.py                 # RUNS=7, release build
    RUNS=11 scripts/bench-shim.py

Workloads:
  true       /bin/true: start-up cost of each wrapper
  python     python3 -c "import json, email, http.client, sqlite3"
  tar        tar cf - /usr/lib/python3.11 | wc -c  (file-heavy)
  openat     per-call latency of openat+close inside the tool (C probe),
             pinned (everything on CPU 0) and unpinned; also through a
             `cordon serve` over the Session stream (`cordon run --broker`)
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("RUNS", "7"))
CORDON = os.path.join(ROOT, "target/release/cordon")
PY = "/usr/bin/python3"
TAR_DIR = "/usr/lib/python3.11" if os.path.isdir("/usr/lib/python3.11") else "/usr/lib"


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def main():
    sh("cargo", "build", "--release", "--locked", "--bin", "cordon", cwd=ROOT)
    out_dir = os.path.join(ROOT, "target/bench-shim", datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    os.makedirs(out_dir)
    work = tempfile.mkdtemp(prefix="cordon-bench-")
    probe = os.path.join(work, "bin/probe")
    os.makedirs(os.path.dirname(probe))
    sh("cc", "-O2", "-pthread", "-o", probe, os.path.join(ROOT, "tests/support/probe.c"))
    extra = os.path.join(work, "bench.rego")
    with open(extra, "w") as f:
        f.write('package cordon\nimport rego.v1\nallow if {\n  input.kind == "exec"\n'
                f'  input.exec.path == "{probe}"\n}}\n')
    # The default backstop runs only system programs: the probe's dir is added.
    extra_data = os.path.join(work, "bench.json")
    with open(extra_data, "w") as f:
        json.dump({"cordon": {"backstop_extra": {"execute": [os.path.dirname(probe)]}}}, f)
    target = os.path.join(work, "target.txt")
    with open(target, "w") as f:
        f.write("x")
    db = os.path.join(work, "audit")
    policy = ["--policy", os.path.join(ROOT, "policies/default.rego"), "--policy", extra, "--policy", extra_data]

    def cordon(cmd):
        return [CORDON, "run", "--audit-db", db, *policy, "--", *cmd]

    def strace(cmd):
        return ["strace", "-f", "-qq", "-o", "/dev/null", *cmd]

    workloads = {
        "true": ["/bin/true"],
        "python": [PY, "-c", "import json, email, http.client, sqlite3"],
        "tar": ["/bin/sh", "-c", f"tar cf - {TAR_DIR} 2>/dev/null | wc -c >/dev/null"],
    }
    modes = {"native": lambda c: c, "strace -f": strace, "cordon": cordon}
    wall = {w: {m: [] for m in modes} for w in workloads}
    for i in range(RUNS):
        for w, cmd in workloads.items():
            for m, wrap in modes.items():
                t0 = time.perf_counter()
                subprocess.run(wrap(cmd), cwd=work, check=True, stdout=subprocess.DEVNULL)
                wall[w][m].append(time.perf_counter() - t0)

    def probe_run(wrap, pin):
        cmd = wrap([probe, "open-loop", target, "20000"])
        if pin:
            cmd = ["taskset", "-c", "0", *cmd]
        out = subprocess.run(cmd, cwd=work, check=True, capture_output=True, text=True).stdout
        kv = dict(x.split("=") for x in out.split())
        return int(kv["median_ns"]), int(kv["p99_ns"])

    # A broker daemon with the same policy, for the remote path.
    policy_dir = os.path.join(work, "policy")
    os.makedirs(policy_dir)
    shutil.copy(os.path.join(ROOT, "policies/default.rego"), policy_dir)
    shutil.copy(extra, policy_dir)
    shutil.copy(extra_data, policy_dir)
    sock = os.path.join(work, "run/broker.sock")
    serve = subprocess.Popen([CORDON, "serve", "--listen", f"unix://{sock}", "--audit-db",
                              os.path.join(work, "serve-audit"), "--policy", policy_dir],
                             stderr=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(sock):
            break
        time.sleep(0.05)

    def remote(cmd):
        return [CORDON, "run", "--broker", f"unix://{sock}", "--", *cmd]

    lat = {}
    for pin in (True, False):
        for m, wrap in {**modes, "cordon --broker (serve)": remote}.items():
            runs = [probe_run(wrap, pin) for _ in range(3)]
            lat[(m, pin)] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
    serve.terminate()
    serve.wait()

    with open(os.path.join(out_dir, "raw.json"), "w") as f:
        json.dump({"wall_s": wall, "openat_ns": {f"{m} pinned={p}": v for (m, p), v in lat.items()}}, f, indent=1)

    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    print(f"\n## Shim workloads ({RUNS} interleaved runs each, medians; {os.cpu_count()} CPUs, {cpu}, "
          f"{os.uname().release})\n")
    print("| workload | native | strace -f | cordon run | cordon / native | strace / native |")
    print("|---|---|---|---|---|---|")
    for w in workloads:
        med = {m: statistics.median(v) for m, v in wall[w].items()}
        print(f"| {w} | {med['native']*1000:.1f} ms | {med['strace -f']*1000:.1f} ms | {med['cordon']*1000:.1f} ms "
              f"| {med['cordon']/med['native']:.2f}× | {med['strace -f']/med['native']:.2f}× |")
    print("\n| openat+close inside the tool | median | p99 |")
    print("|---|---|---|")
    for (m, pin), (med, p99) in lat.items():
        print(f"| {m}, {'pinned to CPU 0' if pin else 'unpinned'} | {med/1000:.1f} µs | {p99/1000:.1f} µs |")
    print(f"\nraw: {out_dir}/raw.json")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
