#!/usr/bin/env python3
"""Workload benchmarks: real programs natively, under `cordon run` (embedded
broker, default policy), under `cordon run --broker` (a separate `cordon
serve`), under `strace -f -o /dev/null`, and under syd where it can be built,
alternated run by run (A B C ... A B C ...) so machine noise hits all alike.

    python3 benches/workloads.py            # RUNS=7; ~10 min on 2 cores
    RUNS=11 python3 benches/workloads.py
    ONLY=startup,scale python3 benches/workloads.py
    NO_SYD=1 python3 benches/workloads.py   # do not build syd
    BASELINE=/tmp/old/cordon python3 benches/workloads.py
                                # also an older build, side by side

Prints Markdown tables (median wall time, ratio to native, p99 where it
applies) and writes raw timings and SVG charts to target/bench-workloads/<UTC>/.

Sections:
  workloads  python3 importing stdlib modules; tar c of a source tree; git
             status and git log in a repo; a C build of many small files
             (make); a loop of curl requests to a local HTTP server
  startup    /bin/true natively, under each wrapper, and under bwrap
  scale      decisions/s and latency with 1, 4, 16, 64 concurrent sandboxes
             against one `cordon serve`; RSS of the broker and a supervisor
Installs what it needs that the project's install script does not:
bubblewrap (apt) and syd (cargo install, a version that builds with this
machine's C compiler); each is skipped with a note when it cannot be had.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("RUNS", "7"))
ONLY = set(filter(None, os.environ.get("ONLY", "").split(",")))
CORDON = os.path.join(ROOT, "target/release/cordon")
# Another cordon binary (say, the previous commit's) run alongside, so a
# change is measured against its baseline in the same run.
BASELINE = os.environ.get("BASELINE")
SYD_VERSION = "3.23.6"  # later releases need a C23 compiler (hardened-malloc)
SYD = os.path.join(ROOT, "target/syd-install/bin/syd")
PY = "/usr/bin/python3"
TAR_DIR = "/usr/lib/python3.11" if os.path.isdir("/usr/lib/python3.11") else "/usr/lib"


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def note(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def ensure_bwrap():
    if shutil.which("bwrap"):
        return True
    r = subprocess.run(["apt-get", "install", "-y", "-qq", "bubblewrap"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r.returncode == 0 and shutil.which("bwrap") is not None


def ensure_syd():
    if os.path.exists(SYD):
        return True
    if os.environ.get("NO_SYD"):
        return False
    note(f"building syd {SYD_VERSION} from crates.io (once; several minutes)")
    r = subprocess.run(["cargo", "install", "syd", "--version", SYD_VERSION, "--locked",
                        "--root", os.path.join(ROOT, "target/syd-install")],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r.returncode == 0 and os.path.exists(SYD)


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Setup:
    """A working directory with the inputs of every workload, the policy, and a broker."""

    def __init__(self):
        self.work = tempfile.mkdtemp(prefix="cordon-bench-")
        w = self.work
        self.bin = os.path.join(w, "bin")
        os.makedirs(self.bin)
        self.probe = os.path.join(self.bin, "probe")
        sh("cc", "-O2", "-pthread", "-o", self.probe, os.path.join(ROOT, "tests/support/probe.c"))
        self.target = os.path.join(w, "target.txt")
        with open(self.target, "w") as f:
            f.write("x")
        # A git repository: the broker crate's sources, one commit per file.
        self.repo = os.path.join(w, "repo")
        shutil.copytree(os.path.join(ROOT, "broker"), self.repo, ignore=shutil.ignore_patterns("target"))
        git = ["git", "-C", self.repo, "-c", "user.name=b", "-c", "user.email=b@b"]
        sh(*git[:3], "init", "-q")
        for dirpath, _, files in sorted(os.walk(self.repo)):
            if ".git" in dirpath:
                continue
            for name in sorted(files):
                sh(*git, "add", os.path.relpath(os.path.join(dirpath, name), self.repo))
                sh(*git, "commit", "-q", "-m", f"add {name}")
        # A C project of many small files.
        self.cproj = os.path.join(w, "cproj")
        os.makedirs(os.path.join(self.cproj, "src"))
        for i in range(60):
            with open(os.path.join(self.cproj, f"src/f{i}.c"), "w") as f:
                f.write(f"#include <stdio.h>\nint f{i}(int x) {{ return x * {i} + 1; }}\n")
        with open(os.path.join(self.cproj, "Makefile"), "w") as f:
            f.write("OBJS := $(patsubst src/%.c,obj/%.o,$(wildcard src/*.c))\n"
                    "all: $(OBJS)\nobj/%.o: src/%.c\n\t@mkdir -p obj\n\t@cc -O1 -c $< -o $@\n"
                    "clean:\n\t@rm -rf obj\n")
        # A local HTTP server for the connect loop.
        self.http = subprocess.Popen([PY, "-m", "http.server", "0", "--bind", "127.0.0.1"],
                                     cwd=self.work, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.http.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N ..."
        self.port = int(line.split(" port ")[1].split()[0])
        # The policy: the built-in default, plus the probe's exec and the local server.
        self.policy_dir = os.path.join(w, "policy")
        os.makedirs(self.policy_dir)
        shutil.copy(os.path.join(ROOT, "policies/default.rego"), self.policy_dir)
        with open(os.path.join(self.policy_dir, "bench.rego"), "w") as f:
            f.write('package cordon\nimport rego.v1\nallow if {\n  input.kind == "exec"\n'
                    f'  startswith(input.exec.path, "{self.bin}/")\n}}\n')
        with open(os.path.join(self.policy_dir, "bench.json"), "w") as f:
            json.dump({"cordon": {"network": {"allow": [{"cidr": "127.0.0.1/32", "ports": [self.port]}]},
                                  "backstop_extra": {"execute": [self.bin]}}}, f)
        self.db = os.path.join(w, "audit")
        self.sock = os.path.join(w, "run/broker.sock")
        self.serve = subprocess.Popen([CORDON, "serve", "--listen", f"unix://{self.sock}", "--audit-db",
                                       os.path.join(w, "serve-audit"), "--policy", self.policy_dir],
                                      stderr=subprocess.DEVNULL)
        for _ in range(400):
            if os.path.exists(self.sock):
                break
            time.sleep(0.05)

    def close(self):
        for p in (self.http, self.serve):
            p.terminate()
            p.wait()
        shutil.rmtree(self.work, ignore_errors=True)

    # --- wrappers ---
    def native(self, cmd):
        return cmd

    def cordon(self, cmd):
        return [CORDON, "run", "--audit-db", self.db, "--policy", self.policy_dir, "--", *cmd]

    def cordon_baseline(self, cmd):
        return [BASELINE, "run", "--audit-db", self.db + "-baseline", "--policy", self.policy_dir, "--", *cmd]

    def cordon_no_memo(self, cmd):
        # Every call evaluated: what a tool's first call to each path costs.
        return [CORDON, "run", "--decision-memo", "0", "--audit-db", self.db, "--policy", self.policy_dir,
                "--", *cmd]

    def cordon_broker(self, cmd):
        return [CORDON, "run", "--broker", f"unix://{self.sock}", "--", *cmd]

    def strace(self, cmd):
        return ["strace", "-f", "-qq", "-o", "/dev/null", *cmd]

    def syd(self, cmd):
        # syd's "lib" profile off, its sandboxes for read, write, exec and
        # network on, with allow-lists as wide as the default policy's.
        return [SYD, "-plib", "-msandbox/read,stat,write,exec,net:on",
                "-mallow/read,stat,exec+/***", f"-mallow/write+{self.work}/***",
                "-mallow/write+/dev/null", "-mallow/write+/tmp/***",
                f"-mallow/net/connect+127.0.0.1!{self.port}", "--", *cmd]

    def bwrap(self, cmd):
        return ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                "--unshare-all", "--die-with-parent", *cmd]


def timed(argv, cwd, env=None):
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def bench_workloads(s, variants):
    workloads = {
        "python imports": ([PY, "-c", "import json, email, http.client, sqlite3, decimal, asyncio, csv, xml.dom.minidom"], s.work, None),
        "tar c": (["/bin/sh", "-c", f"tar cf - {TAR_DIR} 2>/dev/null | wc -c"], s.work, None),
        "git status": (["git", "status", "--short"], s.repo, None),
        "git log": (["git", "log", "--stat", "-n", "100"], s.repo, None),
        "make (60 C files)": (["make", "-s", "-j1"], s.cproj, ["make", "-s", "clean"]),
        "curl x50": (["/bin/sh", "-c", f"for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:{s.port}/; done"], s.work, None),
    }
    # git refuses to run when ~/.gitconfig exists but cannot be read (the
    # default policy keeps $HOME closed): every variant runs it with HOME set
    # to the working directory.
    git_env = {**os.environ, "HOME": s.work, "GIT_CONFIG_NOSYSTEM": "1"}
    wall = {w: {v: [] for v in variants} for w in workloads}
    for i in range(RUNS):
        note(f"workloads run {i + 1}/{RUNS}")
        for w, (cmd, cwd, reset) in workloads.items():
            for v, wrap in variants.items():
                if reset:
                    sh(*reset, cwd=cwd)
                try:
                    env = git_env if cmd[0] == "git" else None
                    wall[w][v].append(timed(wrap(cmd), cwd, env))
                except subprocess.CalledProcessError as e:
                    note(f"{w} under {v} failed ({e.returncode}); not counted")
    return wall


def bench_startup(s, variants):
    times = {v: [] for v in variants}
    for _ in range(max(RUNS, 15)):
        for v, wrap in variants.items():
            times[v].append(timed(wrap(["/bin/true"]), s.work))
    return times


def bench_open_latency(s, variants):
    """Per-call openat+close latency inside the tool (C probe), 20 000 calls, median of 3 runs."""
    out = {}
    for v, wrap in variants.items():
        runs = []
        for _ in range(3):
            text = subprocess.run(wrap([s.probe, "open-loop", s.target, "20000"]), cwd=s.work,
                                  check=True, capture_output=True, text=True).stdout
            kv = dict(x.split("=") for x in text.split())
            runs.append((int(kv["median_ns"]), int(kv["p99_ns"])))
        out[v] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
    return out


def vm_hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def bench_scale(s):
    """N sandboxes at once against one `cordon serve`, each opening an allowed
    file in a loop: decisions/s over the whole run and the per-open latency
    each sandbox saw (median of the sandboxes' p50 and p99)."""
    results = {}
    per_sandbox = 2000
    for n in (1, 4, 16, 64):
        outs = [None] * n

        def one(i):
            text = subprocess.run(s.cordon_broker([s.probe, "open-loop", s.target, str(per_sandbox)]),
                                  cwd=s.work, check=True, capture_output=True, text=True).stdout
            outs[i] = dict(x.split("=") for x in text.split())

        t0 = time.perf_counter()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        ok = [o for o in outs if o]
        results[n] = {
            "decisions_per_s": len(ok) * per_sandbox / elapsed,
            "p50_us": statistics.median(int(o["median_ns"]) for o in ok) / 1000,
            "p99_us": statistics.median(int(o["p99_ns"]) for o in ok) / 1000,
            "wall_s": elapsed,
        }
        note(f"scale {n}: {results[n]['decisions_per_s']:.0f} decisions/s")
    # Memory: the broker after all that; one supervisor while its tool runs.
    broker_rss = vm_hwm(s.serve.pid)
    p = subprocess.Popen(s.cordon(["/bin/sh", "-c", f"for i in $(seq 200); do cat {s.target} >/dev/null; done; sleep 1"]),
                         cwd=s.work, stdout=subprocess.DEVNULL)
    time.sleep(0.8)
    sup_rss = vm_hwm(p.pid)
    p.wait()
    p = subprocess.Popen(s.cordon_broker(["/bin/sh", "-c", "sleep 1"]), cwd=s.work, stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    remote_sup_rss = vm_hwm(p.pid)
    p.wait()
    return results, {"broker (cordon serve) after the scale runs": broker_rss,
                     "supervisor, embedded broker (cordon run)": sup_rss,
                     "supervisor, remote broker (cordon run --broker)": remote_sup_rss}


# --- charts: plain SVG, no dependencies ------------------------------------------------

COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]


def svg_bars(title, groups, series, values, unit, path, log=True):
    """Grouped horizontal bars: one group per workload, one bar per series."""
    import math
    bar_h, gap, left, width = 12, 10, 170, 420
    vmax = max(v for row in values for v in row if v) or 1
    vmin = min(v for row in values for v in row if v) or 1
    lo = math.log10(min(1.0, vmin)) if log else 0

    def x(v):
        if log:
            return left + width * (math.log10(v) - lo) / (math.log10(vmax) - lo + 1e-9)
        return left + width * v / vmax

    h = 40 + len(groups) * (len(series) * bar_h + gap) + 20 * len(series)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<text x="10" y="18" font-size="13" font-weight="bold">{title}</text>']
    y = 34
    for gi, g in enumerate(groups):
        out.append(f'<text x="10" y="{y + len(series) * bar_h / 2 + 4}">{g}</text>')
        for si, _ in enumerate(series):
            v = values[gi][si]
            if v:
                out.append(f'<rect x="{left}" y="{y}" width="{max(1, x(v) - left):.1f}" height="{bar_h - 2}" fill="{COLORS[si % len(COLORS)]}"/>')
                out.append(f'<text x="{x(v) + 4:.1f}" y="{y + bar_h - 3}">{v:.2f}{unit}</text>')
            y += bar_h
        y += gap
    for si, sname in enumerate(series):
        out.append(f'<rect x="{left}" y="{y + 4}" width="10" height="10" fill="{COLORS[si % len(COLORS)]}"/>'
                   f'<text x="{left + 14}" y="{y + 13}">{sname}</text>')
        y += 18
    if log:
        out.append(f'<line x1="{x(1):.1f}" y1="30" x2="{x(1):.1f}" y2="{y - 18 * len(series)}" stroke="#888" stroke-dasharray="3,3"/>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def main():
    sh("cargo", "build", "--release", "--locked", "--bin", "cordon", cwd=ROOT,
       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out_dir = os.path.join(ROOT, "target/bench-workloads", datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    os.makedirs(out_dir)
    s = Setup()
    variants = {"native": s.native, "cordon run": s.cordon, "cordon run --broker": s.cordon_broker,
                "strace -f": s.strace}
    if BASELINE:
        variants = {"native": s.native, "cordon run": s.cordon, "cordon run (baseline)": s.cordon_baseline,
                    **{k: v for k, v in variants.items() if k not in ("native", "cordon run")}}
    skipped = []
    if ensure_syd():
        try:
            sh(*s.syd(["/bin/true"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            variants["syd"] = s.syd
        except subprocess.CalledProcessError:
            skipped.append(f"syd {SYD_VERSION} is built but does not run here (its sandbox setup failed)")
    elif os.environ.get("NO_SYD"):
        skipped.append("syd: NO_SYD is set")
    else:
        skipped.append(f"syd {SYD_VERSION} could not be built from crates.io")
    raw = {"runs": RUNS, "skipped": skipped, "baseline": BASELINE}
    try:
        if not ONLY or "workloads" in ONLY:
            raw["workloads_s"] = bench_workloads(s, variants)
        if not ONLY or "startup" in ONLY:
            startup = dict(variants)
            if ensure_bwrap():
                startup["bwrap"] = s.bwrap
            else:
                skipped.append("bubblewrap could not be installed")
            raw["startup_s"] = bench_startup(s, startup)
        if not ONLY or "latency" in ONLY:
            # The probe opens one file over and over: past the first call,
            # `cordon run` answers from its decision memo. The same without it:
            latency = {**variants, "cordon run --decision-memo 0": s.cordon_no_memo}
            raw["openat_ns"] = bench_open_latency(s, latency)
        if not ONLY or "scale" in ONLY:
            raw["scale"], raw["rss_bytes"] = bench_scale(s)
    finally:
        s.close()
    with open(os.path.join(out_dir, "raw.json"), "w") as f:
        json.dump(raw, f, indent=1)
    report(raw, out_dir)


def report(raw, out_dir):
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"\n# Workload benchmarks ({raw['runs']} alternated runs; {os.cpu_count()} CPUs, {cpu}, "
          f"Linux {os.uname().release}, commit {commit})\n")
    if raw.get("baseline"):
        print(f"- baseline: {raw['baseline']}")
    for s in raw["skipped"]:
        print(f"- skipped: {s}")
    if "workloads_s" in raw:
        w = raw["workloads_s"]
        variants = list(next(iter(w.values())).keys())
        print("\n## Workloads: median wall time (ratio to native)\n")
        print("| workload | " + " | ".join(variants) + " |")
        print("|---" * (len(variants) + 1) + "|")
        groups, ratios = [], []
        for name, per in w.items():
            med = {v: statistics.median(t) if t else None for v, t in per.items()}
            cells = []
            for v in variants:
                if med[v] is None:
                    cells.append("failed")
                elif v == "native":
                    cells.append(f"{med[v] * 1000:.1f} ms")
                else:
                    cells.append(f"{med[v] * 1000:.1f} ms ({med[v] / med['native']:.2f}×)")
            print(f"| {name} | " + " | ".join(cells) + " |")
            groups.append(name)
            ratios.append([med[v] / med["native"] if med[v] else None for v in variants if v != "native"])
        svg_bars("Wall time relative to native (log scale; dashed line = native)", groups,
                 [v for v in variants if v != "native"], ratios, "×", os.path.join(out_dir, "workloads.svg"))
        print("\nRun-to-run spread (max/min of the runs), per workload and variant:\n")
        for name, per in w.items():
            spread = ", ".join(f"{v} {max(t) / min(t):.2f}" for v, t in per.items() if t)
            print(f"- {name}: {spread}")
    if "startup_s" in raw:
        print("\n## Startup: `/bin/true` (median, p99 of the runs)\n")
        print("| variant | median | p99 | over native |")
        print("|---|---|---|---|")
        nat = statistics.median(raw["startup_s"]["native"])
        for v, t in raw["startup_s"].items():
            m = statistics.median(t)
            print(f"| {v} | {m * 1000:.1f} ms | {pct(t, 0.99) * 1000:.1f} ms | +{(m - nat) * 1000:.1f} ms |")
    if "openat_ns" in raw:
        print("\n## One openat+close inside the tool (C probe, 20 000 calls; median of 3 runs)\n")
        print("| variant | median | p99 |")
        print("|---|---|---|")
        for v, (m, p99) in raw["openat_ns"].items():
            print(f"| {v} | {m / 1000:.1f} µs | {p99 / 1000:.1f} µs |")
        names = list(raw["openat_ns"].keys())
        svg_bars("openat+close latency inside the tool (µs, log scale)", ["median", "p99"], names,
                 [[raw["openat_ns"][v][0] / 1000 for v in names], [raw["openat_ns"][v][1] / 1000 for v in names]],
                 " µs", os.path.join(out_dir, "openat-latency.svg"))
    if "scale" in raw:
        print("\n## Scale: N concurrent sandboxes against one `cordon serve`\n")
        print("| sandboxes | decisions/s | per-open p50 | per-open p99 |")
        print("|---|---|---|---|")
        for n, r in raw["scale"].items():
            print(f"| {n} | {r['decisions_per_s']:.0f} | {r['p50_us']:.0f} µs | {r['p99_us']:.0f} µs |")
        print("\n| process | peak RSS (VmHWM) |")
        print("|---|---|")
        for k, v in raw["rss_bytes"].items():
            print(f"| {k} | {v / 2**20:.1f} MiB |" if v else f"| {k} | n/a |")
    print(f"\nraw timings and charts: {out_dir}")


if __name__ == "__main__":
    sys.exit(main())
