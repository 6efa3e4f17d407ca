#!/usr/bin/env python3
"""Cost of a rename and of a link, natively and under cordon builds, side by side.

usage: benches/names.py ROUNDS N CORDON [CORDON ...]

Each round runs, for native and then each build (`CORDON run --audit-db
DIR -- python3 -c LOOP`, a fresh store each, the default policy), a Python
loop that times N renames (a -> b -> a), N link+unlink and N symlink+unlink pairs in a
directory of its own, and prints each call's median in µs; the figures
printed are the medians of the round medians, then each round's.

  benches/names.py 3 2000 /tmp/cordon-old /tmp/cordon-new
"""
import json, os, statistics, subprocess, sys, tempfile

LOOP = r"""
import json, os, sys, time
n = int(sys.argv[1])
open('a', 'w').close()
def median(f):
    times = []
    for _ in range(n):
        start = time.perf_counter_ns()
        f()
        times.append(time.perf_counter_ns() - start)
    times.sort()
    return times[len(times) // 2] / 1000
state = ['a', 'b']
def rename():
    os.rename(state[0], state[1])
    state.reverse()
def link():
    os.link(state[0], 'l')
    os.unlink('l')
def symlink():
    os.symlink(state[0], 's')
    os.unlink('s')
print(json.dumps({'rename': median(rename), 'link+unlink': median(link),
                  'symlink+unlink': median(symlink)}))
"""


def run(cordon, n):
    with tempfile.TemporaryDirectory() as work:
        tool = ["/usr/bin/python3", "-c", LOOP, str(n)]
        if cordon:
            tool = [cordon, "run", "--audit-db", os.path.join(work, ".audit"), "--"] + tool
        out = subprocess.run(tool, cwd=work, check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    rounds, n, builds = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    results = {b: [] for b in ["native"] + builds}
    for _ in range(rounds):
        for b in results:
            results[b].append(run(None if b == "native" else b, n))
    for b, runs in results.items():
        for call in ("rename", "link+unlink", "symlink+unlink"):
            each = [r[call] for r in runs]
            print(f"{b:24} {call:12} {statistics.median(each):8.2f} µs  (rounds: "
                  + ", ".join(f"{v:.2f}" for v in each) + ")")


if __name__ == "__main__":
    main()
