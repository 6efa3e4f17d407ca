#!/usr/bin/env python3
"""Builds of `cordon` side by side on the brokered open, alternated run by run.

Each run starts a fresh audit store and runs the C probe's `open-loop` (N
opens of one file, openat+close) under `cordon run` with the default policy
plus a rule letting the probe run (`bench.rego`, `bench.json`, as
scripts/bench-shim.py writes them). Builds are alternated within every round,
so the machine's noise falls on all of them alike. The probe writes every
call's latency (PROBE_TRACE); the summary is each build's median over the runs
of their median, p99, p99.9 and count of calls over 150 us.

Usage: ab_open.py [--pin] [--serve] [--relative] [--target FILE] [-n OPENS] ROUNDS CORDON...
  --pin     everything on CPU 0 (taskset -c 0)
  --strict  the embedded broker's store in strict durability (every answer
            waits for its record's flush)
  --relative  the probe opens the target by its name, from its directory (a
            lookup that starts at the tool's cwd), not by its absolute path
  --serve   through a fresh `cordon serve` of the same build per run
            (`cordon run --broker unix://...`, the Session stream)
  --user    the tool runs as this uid (`cordon run --user`; cordon as root):
            its calls are made with another uid's credentials
  --target  the file opened (default: a fresh one-line file; e.g. a hard
            link to time files with two names); runs start in its directory,
            which the default policy lets a tool read
  e.g. benches/ab_open.py --pin 3 /tmp/cordon-before target/release/cordon
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

# A call slower than this is counted: the tail's size, beside its quantiles.
SLOW_NS = 150_000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kit(work: str) -> tuple[str, list[str]]:
    """The probe, built here, and the policy files that let it run."""
    probe = os.path.join(work, "bin", "probe")
    os.makedirs(os.path.dirname(probe))
    subprocess.run(["cc", "-O2", "-pthread", "-o", probe,
                    os.path.join(ROOT, "tests", "support", "probe.c")], check=True)
    rego = os.path.join(work, "policy", "bench.rego")
    os.makedirs(os.path.dirname(rego))
    with open(rego, "w") as f:
        f.write('package cordon\nimport rego.v1\nallow if {\n  input.kind == "exec"\n'
                f'  input.exec.path == "{probe}"\n}}\n')
    data = os.path.join(work, "policy", "bench.json")
    with open(data, "w") as f:
        json.dump({"cordon": {"backstop_extra": {"execute": [os.path.dirname(probe)]}}}, f)
    default = os.path.join(ROOT, "policies", "default.rego")
    return probe, [default, rego, data]


def wait_for(path: str, proc: subprocess.Popen) -> None:
    for _ in range(400):
        if os.path.exists(path):
            return
        if proc.poll() is not None:
            raise SystemExit(f"cordon serve exited with {proc.returncode}")
        time.sleep(0.025)
    raise SystemExit(f"cordon serve did not create {path}")


def one_run(cordon: str, args, probe: str, policy: list[str], target: str, work: str) -> list[int]:
    """Every call's latency (ns), sorted."""
    run = tempfile.mkdtemp(dir=work)
    # Where the tool may write: its working directory (the target's).
    fd, trace = tempfile.mkstemp(prefix=".ab-open-trace-", dir=os.path.dirname(target))
    if args.user is not None:
        os.fchown(fd, args.user, -1)
    os.close(fd)
    pin = ["taskset", "-c", "0"] if args.pin else []
    serve = None
    if args.serve:
        sock = os.path.join(run, "sock", "broker.sock")
        cmd = [*pin, cordon, "serve", "--listen", f"unix://{sock}", "--audit-db", os.path.join(run, "db")]
        for p in policy:
            cmd += ["--policy", p]
        serve = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        wait_for(sock, serve)
        cmd = [*pin, cordon, "run", "--broker", f"unix://{sock}"]
    else:
        cmd = [*pin, cordon, "run", "--audit-db", os.path.join(run, "db")]
        if args.user is not None:
            cmd += ["--user", str(args.user)]
        if args.strict:
            cmd += ["--durability", "strict"]
        for p in policy:
            cmd += ["--policy", p]
    name = os.path.basename(target) if args.relative else target
    cmd += ["--", probe, "open-loop", name, str(args.n)]
    try:
        # The default policy lets a tool read what is under its working directory.
        done = subprocess.run(cmd, cwd=os.path.dirname(target), capture_output=True, text=True,
                              env=dict(os.environ, PROBE_TRACE=trace))
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr}")
    finally:
        if serve:
            serve.terminate()
            serve.wait()
    try:
        with open(trace) as f:
            return sorted(int(line.split()[1]) for line in f)
    finally:
        os.unlink(trace)


def quantile(lat: list[int], q: float) -> int:
    return lat[min(len(lat) - 1, int(len(lat) * q))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pin", action="store_true")
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--relative", action="store_true")
    ap.add_argument("--strict", action="store_true")
    ap.add_argument("--target")
    ap.add_argument("--user", type=int)
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("rounds", type=int)
    ap.add_argument("cordon", nargs="+")
    args = ap.parse_args()
    builds = [os.path.abspath(c) for c in args.cordon]
    # Named as given, numbered: the same build twice is an A/A check of the noise.
    names = [f"{i + 1}:{c}" for i, c in enumerate(args.cordon)]
    with tempfile.TemporaryDirectory(prefix="cordon-ab-") as work:
        if args.user is not None:
            os.chmod(work, 0o755)  # the tool's uid runs the probe from it
        probe, policy = kit(work)
        target = os.path.abspath(args.target) if args.target else os.path.join(work, "target.txt")
        if not args.target:
            with open(target, "w") as f:
                f.write("x\n")
        results = [[] for _ in builds]
        for r in range(args.rounds):
            # Alternate the order too, so neither build always runs first.
            order = list(range(len(builds)))
            if r % 2:
                order.reverse()
            for b in order:
                lat = one_run(builds[b], args, probe, policy, target, work)
                row = (quantile(lat, 0.5), quantile(lat, 0.99), quantile(lat, 0.999),
                       sum(ns > SLOW_NS for ns in lat))
                results[b].append(row)
                print(f"round {r + 1} {names[b]}: median {row[0] / 1000:.2f} us  p99 {row[1] / 1000:.1f} us"
                      f"  p99.9 {row[2] / 1000:.0f} us  over {SLOW_NS // 1000} us: {row[3]}", flush=True)
    where = ("serve" if args.serve else "embedded") + (", pinned" if args.pin else ", unpinned") \
        + (", relative path" if args.relative else "") + (", strict" if args.strict else "")
    print(f"\n{where}, {args.n} opens per run, {args.rounds} rounds (medians over the runs):")
    for b, name in enumerate(names):
        meds, p99s, p999s, slow = zip(*results[b])
        print(f"  {name:24} median {statistics.median(meds) / 1000:6.2f} us "
              f"({min(meds) / 1000:.2f}-{max(meds) / 1000:.2f})  p99 {statistics.median(p99s) / 1000:6.1f} us"
              f"  p99.9 {statistics.median(p999s) / 1000:5.0f} us  over {SLOW_NS // 1000} us: "
              f"{statistics.median(slow):.0f} calls")


if __name__ == "__main__":
    main()
