#!/usr/bin/env python3
"""How long batched audit records wait for the disk while a tool keeps the CPU busy.

Runs the C probe's `open-loop` under `cordon run` (embedded broker, batched
store, a fresh one per run), with the store's debug events in JSON: each
flush logs `audit records on disk` with the newest durable seq. A record's
age is the time of the first flush that covers it less its own `time`. The
contract's window is 10 ms. Also prints the opens' median and p99, read from
the probe's trace. Variants are alternated within each round.

Usage: flush_age.py [--pin] [-n OPENS] ROUNDS VARIANT...
  A VARIANT is a command prefix, split on spaces, ending with the cordon
  binary: e.g. "target/release/cordon", or, to run it as root without
  CAP_SYS_NICE (the flusher then keeps its priority),
  "setpriv --inh-caps=-sys_nice --bounding-set=-sys_nice target/release/cordon".
Needs a build that logs the event (session 21 on).
"""
import argparse
import bisect
import datetime
import json
import os
import statistics
import subprocess
import tempfile

from ab_open import kit, quantile

WINDOW_MS = 10.0


def ns_of(rfc3339: str) -> int:
    base, frac = rfc3339.rstrip("Z").split(".")
    whole = datetime.datetime.fromisoformat(base).replace(tzinfo=datetime.timezone.utc)
    return int(whole.timestamp()) * 10**9 + int(frac.ljust(9, "0")[:9])


def one_run(variant: list[str], pin: bool, n: int, probe: str, policy: list[str], work: str):
    run = tempfile.mkdtemp(dir=work)
    target = os.path.join(run, "target.txt")
    with open(target, "w") as f:
        f.write("x\n")
    trace = os.path.join(run, "trace.txt")
    db = os.path.join(run, "db")
    cmd = (["taskset", "-c", "0"] if pin else []) + variant
    cmd += ["--log-level", "cordon_broker::audit=debug", "--log-format", "json", "run", "--audit-db", db]
    for p in policy:
        cmd += ["--policy", p]
    cmd += ["--", probe, "open-loop", target, str(n)]
    done = subprocess.run(cmd, cwd=run, capture_output=True, text=True, env=dict(os.environ, PROBE_TRACE=trace))
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr[-2000:]}")
    flushes = []
    raised = False
    for line in done.stderr.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        message = event.get("fields", {}).get("message")
        if message == "audit records on disk":
            flushes.append((event["fields"]["durable_seq"], ns_of(event["timestamp"])))
        raised = raised or message == "audit flusher raised"
    flushes.sort()
    seqs = [s for s, _ in flushes]
    cordon = variant[-1]
    out = subprocess.run([cordon, "audit", "--db", db, "--format", "json", "--limit", str(n + 1000)],
                         capture_output=True, text=True, check=True).stdout
    ages, uncovered = [], 0
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        i = bisect.bisect_left(seqs, record["seq"])
        if i < len(seqs):
            ages.append((flushes[i][1] - ns_of(record["time"])) / 1e6)
        else:
            uncovered += 1
    # Every stored record was flushed by some flush (`close` flushes too).
    if uncovered or not ages:
        raise SystemExit(f"{uncovered} of {len(ages) + uncovered} records after the last logged flush")
    ages.sort()
    with open(trace) as f:
        lat = sorted(int(line.split()[1]) for line in f)
    return {
        "open median us": quantile(lat, 0.5) / 1000,
        "open p99 us": quantile(lat, 0.99) / 1000,
        "age median ms": quantile(ages, 0.5),
        "age p99 ms": quantile(ages, 0.99),
        "age max ms": ages[-1],
        "% over window": 100 * sum(a > WINDOW_MS for a in ages) / len(ages),
        "raised": float(raised),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pin", action="store_true")
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("rounds", type=int)
    ap.add_argument("variant", nargs="+")
    args = ap.parse_args()
    variants = [v.split() for v in args.variant]
    for v in variants:
        v[-1] = os.path.abspath(v[-1])
    results = [[] for _ in variants]
    with tempfile.TemporaryDirectory(prefix="cordon-flush-age-") as work:
        probe, policy = kit(work)
        for r in range(args.rounds):
            order = list(range(len(variants)))
            if r % 2:
                order.reverse()
            for i in order:
                row = one_run(variants[i], args.pin, args.n, probe, policy, work)
                results[i].append(row)
                print(f"round {r + 1} {i + 1}: " + "  ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)
    print(f"\n{'pinned' if args.pin else 'unpinned'}, {args.n} opens per run, {args.rounds} rounds "
          "(medians over the runs):")
    for i, v in enumerate(args.variant):
        keys = results[i][0].keys()
        print(f"  {i + 1}: {v}\n     " + "  ".join(
            f"{k} {statistics.median(row[k] for row in results[i]):.1f}" for k in keys))


if __name__ == "__main__":
    main()
