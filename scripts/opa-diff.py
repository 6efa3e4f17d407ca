#!/usr/bin/env python3
"""Differential check of cordon's Rego evaluation (regorus) against real OPA.

    python3 scripts/opa-diff.py [DIR]          # DIR defaults to policies/

Real OPA comes from the PyPI package opa-golib-python-bindings (pinned below):
a wheel that embeds github.com/open-policy-agent/opa/v1/rego as a Go c-shared
library with a ctypes wrapper, so no Go toolchain or opa binary is needed. The
script installs it into target/opa-venv on first use (hash-checked).

It loads DIR the way cordon does (.rego incl. *_test.rego; .json/.yaml/.yml
data under their directory path relative to DIR; hidden entries and
directories named `cases` or `testdata` skipped) and then

  1. runs every test_ rule under OPA with `opa test` semantics (pass when
     true, fail when false/undefined, error on an evaluation error; todo_
     rules are skipped) and compares each outcome with
     `target/debug/cordon policy test DIR --format json`;
  2. evaluates every DIR/cases/*/input.json with OPA (data.cordon.allow,
     data.cordon.deny, data.cordon.errno, with the contract's defaults and
     cordon's fail-closed interpretation) and compares with
     `target/debug/cordon policy eval --policy DIR --input FILE --format json`.

Exit status: 0 no disagreement, 1 disagreements, 2 OPA could not be obtained,
3 cordon could not be run.

Known limits of the OPA side: the embedded engine evaluates with strict
builtin errors (a builtin error is an error, as with
`opa eval --strict-builtin-errors`), whereas plain `opa test` and cordon
treat it as undefined; tests whose name is defined more than once are evaluated as one
rule, whereas `opa test` runs each body as test_x, test_x#01, ... (such tests
are reported as disagreements).
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PKG = "opa-golib-python-bindings"
VERSION = "0.4.4"
# sha256 of opa_golib_python_bindings-0.4.4-py3-none-manylinux_2_34_x86_64.whl
WHEEL_SHA256 = "d411c901e14b8c7c3023e23e4a944f4cf429c1d31baf80e959e57d11efbfd24a"

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / "target" / "opa-venv"
CORDON = REPO / "target" / "debug" / "cordon"

# The wrapper's defaults (broker/src/policy.rs WRAPPER).
DEFAULTS = {"allow": False, "deny": [], "errno": ""}
DEFAULT_ERRNO = "EACCES"


class Unavailable(Exception):
    pass


# ---------------------------------------------------------------- loading --

def collect_sources(root: Path, with_tests: bool):
    """(rego files, data files) as cordon's SourceSet reads them.

    Each entry is (path, data_prefix list)."""
    rego, data = [], []

    def consider(path: Path, prefix, explicit):
        name = path.name
        is_rego = name.endswith(".rego")
        is_data = name.endswith((".json", ".yaml", ".yml"))
        if not (is_rego or is_data):
            return
        if is_rego and name.endswith("_test.rego") and not explicit and not with_tests:
            return
        (rego if is_rego else data).append((path, prefix))

    if root.is_file():
        consider(root, [], True)
        return rego, data
    stack = [(root, [])]
    while stack:
        d, prefix = stack.pop()
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            p = Path(entry.path)
            if p.is_dir():  # follows symlinks, like std::fs::metadata
                if entry.name in ("cases", "testdata"):
                    continue
                stack.append((p, prefix + [entry.name]))
            else:
                consider(p, prefix, False)
    rego.sort(key=lambda x: str(x[0]))
    data.sort(key=lambda x: str(x[0]))
    return rego, data


def merge(into, new, path):
    if isinstance(into, dict) and isinstance(new, dict):
        for k, v in new.items():
            if k in into:
                into[k] = merge(into[k], v, path + [k])
            else:
                into[k] = v
        return into
    raise ValueError("data at %s conflicts with a value from another data file"
                     % ".".join(path or ["<root>"]))


# ----------------------------------------------------------------- worker --
# Runs inside the venv, where opa_bindings is importable. Prints one JSON
# document with raw OPA results; the parent compares.

SCALARS = ("string", "number", "boolean", "null")
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def ground(term):
    t, v = term.get("type"), term.get("value")
    if t in SCALARS:
        return True
    if t in ("array", "set"):
        return all(ground(x) for x in v or [])
    if t == "object":
        return all(ground(k) and ground(x) for k, x in v or [])
    return False


def ref_str(terms):
    """OPA's Ref.String() for the simple cases a test name uses."""
    out = ""
    for i, t in enumerate(terms):
        v = t.get("value")
        if i == 0:
            out = str(v)
        elif t.get("type") in ("string", "var") and IDENT.match(str(v)):
            out += "." + v
        else:
            out += "[" + json.dumps(v) + "]"
    return out


def test_rules(module):
    """(ref terms relative to the package, name, partial_object, is_function)
    for every test_/todo_ rule, as OPA's tester selects them (ruleName)."""
    found = []
    for rule in module.get("rules", []):
        head = rule.get("head", {})
        ref = head.get("ref") or [{"type": "var", "value": head.get("name")}]
        prefix, name = [], ""
        for i, term in enumerate(ref):
            if i > 0 and not ground(term):
                break
            prefix.append(term)
            v = term.get("value")
            name = v if term.get("type") in ("var", "string") else ""
            if name.startswith(("test_", "todo_")):
                break
        if not name.startswith(("test_", "todo_")):
            continue
        # Head.DocKind(): a key with a value, or a dynamic ref, is a partial object.
        partial_object = ("key" in head and "value" in head) or any(
            not ground(term) for term in ref[1:])
        found.append({
            "ref": prefix,
            "name": name,
            "partial_object": partial_object,
            "function": bool(head.get("args")),
        })
    return found


def sub_results_fail(v):
    """OPA tester subResults: does a partial-object test value fail?"""
    if v is None:
        return True
    if isinstance(v, dict):
        fail = False
        for x in v.values():
            if isinstance(x, dict):
                fail = sub_results_fail(x) or fail
            elif isinstance(x, bool):
                fail = (not x) or fail
            elif x is not None:
                fail = True
        return fail
    return False


def worker(root: Path):
    from opa_bindings import OpaEngine, OpaError  # noqa: provided by the venv

    def new_engine():
        e = OpaEngine()
        e.print_handler = lambda message, location: None
        return e

    scratch = new_engine()

    def parse_data(path: Path):
        text = path.read_text(encoding="utf-8")
        if path.name.endswith(".json"):
            return json.loads(text)
        # OPA's own YAML reading (sigs.k8s.io/yaml), not Python's.
        return scratch.eval_query("x := yaml.unmarshal(input.s)", {"s": text})[0]["x"]

    def build(with_tests):
        rego, data = collect_sources(root, with_tests)
        engine = new_engine()
        modules = []
        try:
            doc = {}
            for path, prefix in data:
                value = parse_data(path)
                for key in reversed(prefix):
                    value = {key: value}
                doc = merge(doc, value, [])
            for path, _ in rego:
                src = path.read_text(encoding="utf-8")
                engine.add_policy(str(path), src)
                parsed = scratch.eval_query(
                    "m := rego.parse_module(input.f, input.s)", {"f": str(path), "s": src})
                modules.append((str(path), parsed[0]["m"]))
            engine.add_data(doc)
            engine.eval_query("true")  # compiles everything: type errors etc.
        except (OpaError, ValueError, UnicodeDecodeError, OSError) as e:
            return None, modules, "%s" % e
        return engine, modules, None

    out = {"opa_version": opa_version(), "tests": {}, "fixtures": {}}

    # 1. tests
    engine, modules, err = build(True)
    if err:
        out["tests"]["load_error"] = err
    else:
        results, seen = [], {}
        for path, module in modules:
            pkg = module["package"]["path"]
            for t in test_rules(module):
                name = ref_str(pkg + t["ref"])
                seen[name] = seen.get(name, 0) + 1
                if seen[name] > 1:
                    # opa test runs this body as its own test, name#NN.
                    results.append({"name": "%s#%02d" % (name, seen[name] - 1), "file": path,
                                    "outcome": "unsupported",
                                    "error": "duplicate test name: opa test runs each body "
                                             "separately; not emulated"})
                    continue
                r = {"name": name, "file": path}
                if t["name"].startswith("todo_"):
                    r["outcome"] = "skip"
                    results.append(r)
                    continue
                try:
                    rs = engine.eval_query("__opa_diff_x = " + name)
                    if not rs:
                        r["outcome"] = "fail"
                    else:
                        v = rs[0]["__opa_diff_x"]
                        if t["partial_object"]:
                            r["outcome"] = "fail" if sub_results_fail(v) else "pass"
                        else:
                            r["outcome"] = "pass" if v is True else "fail"
                except OpaError as e:
                    r["outcome"] = "error"
                    r["error"] = "%s: %s" % (e.code, e.message)
                    r["builtin_error"] = "eval_builtin_error" in e.message
                results.append(r)
        for r in results:
            if seen.get(r["name"], 0) > 1:
                r.setdefault("note", "defined %d times" % seen[r["name"]])
        out["tests"]["results"] = results

    # 2. fixtures
    cases = sorted(root.glob("cases/*/input.json")) if root.is_dir() else []
    if cases:
        engine, _, err = build(False)
        if err:
            out["fixtures"]["load_error"] = err
        else:
            results = []
            for case in cases:
                r = {"file": str(case)}
                try:
                    doc = json.loads(case.read_text(encoding="utf-8"))
                    raw = {}
                    for field in ("allow", "deny", "errno"):
                        rs = engine.eval_query("x = data.cordon." + field, doc)
                        raw[field] = {"defined": bool(rs), "value": rs[0]["x"] if rs else None}
                    r["raw"] = raw
                except OpaError as e:
                    r["error"] = "%s: %s" % (e.code, e.message)
                except ValueError as e:
                    r["error"] = "input: %s" % e
                results.append(r)
            out["fixtures"]["results"] = results
    else:
        out["fixtures"]["results"] = []

    json.dump(out, sys.stdout)


def opa_version():
    """The OPA module version recorded in the Go build info of the library."""
    try:
        import opa_bindings
        lib = Path(opa_bindings.__file__).parent / "libopabridge.so"
        m = re.search(rb"\tgithub\.com/open-policy-agent/opa\t(v[0-9][^\t\s]*)", lib.read_bytes())
        return m.group(1).decode() if m else "unknown"
    except Exception:
        return "unknown"


# --------------------------------------------------------------- the venv --

def venv_python():
    return VENV / "bin" / "python"


def installed(py: Path):
    if not py.exists():
        return False
    r = subprocess.run(
        [str(py), "-c",
         "import importlib.metadata as m, opa_bindings; "
         "opa_bindings.OpaEngine().close(); print(m.version(%r))" % PKG],
        capture_output=True, text=True, timeout=120)
    return r.returncode == 0 and r.stdout.strip() == VERSION


def ensure_opa():
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "amd64"):
        raise Unavailable("%s %s ships only a linux x86_64 wheel (this is %s %s)"
                          % (PKG, VERSION, sys.platform, platform.machine()))
    if sys.version_info < (3, 10):
        raise Unavailable("%s needs Python >= 3.10 (this is %s)" % (PKG, platform.python_version()))
    py = venv_python()
    if installed(py):
        return py
    r = subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise Unavailable("cannot create %s: %s" % (VENV, last_line(r.stderr)))
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        req.write("%s==%s --hash=sha256:%s\n" % (PKG, VERSION, WHEEL_SHA256))
    try:
        # The package declares Requires-Python >= 3.14, but its wrapper is
        # plain ctypes that runs on 3.10+; the Go library does not care.
        r = subprocess.run(
            [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--only-binary=:all:", "--ignore-requires-python",
             "--require-hashes", "-r", req.name],
            capture_output=True, text=True, timeout=900)
    finally:
        os.unlink(req.name)
    if r.returncode != 0:
        raise Unavailable("pip install %s==%s failed: %s"
                          % (PKG, VERSION, last_line(r.stderr or r.stdout)))
    if not installed(py):
        raise Unavailable("%s==%s installed but its library does not load (needs glibc >= 2.34)"
                          % (PKG, VERSION))
    return py


def last_line(s):
    lines = [l for l in (s or "").strip().splitlines() if l.strip()]
    return lines[-1] if lines else "(no output)"


# ----------------------------------------------------------------- cordon --

class CordonFailed(Exception):
    pass


def run_cordon(binary: Path, args, wait: float, timeout: float):
    """Runs cordon; while the binary is missing or being replaced, waits."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return subprocess.run([str(binary)] + args, capture_output=True, text=True,
                                  timeout=timeout)
        except (FileNotFoundError, PermissionError, OSError) as e:
            if time.monotonic() >= deadline:
                raise CordonFailed("cannot run %s: %s" % (binary, e))
            time.sleep(5)


def cordon_json(binary, args, wait, timeout):
    """stdout parsed as JSON, or raises CordonFailed with stderr."""
    r = run_cordon(binary, args, wait, timeout)
    try:
        return json.loads(r.stdout), r
    except ValueError:
        if r.returncode < 0 or r.returncode > 1:
            raise CordonFailed("%s %s: exit %d: %s" % (binary.name, " ".join(args), r.returncode,
                                                       last_line(r.stderr)))
        return None, r


# ---------------------------------------------------------------- compare --

def interpret_opa(case):
    """OPA's raw answer read the way cordon's interpret() reads the wrapper's."""
    if "error" in case:
        return {"status": "error", "allow": False, "deny": [], "errno": DEFAULT_ERRNO,
                "detail": case["error"]}
    raw = {k: (v["value"] if v["defined"] else DEFAULTS[k]) for k, v in case["raw"].items()}

    def bad(msg):
        return {"status": "bad-shape", "allow": False, "deny": [], "errno": DEFAULT_ERRNO,
                "detail": msg}

    if not isinstance(raw["allow"], bool):
        return bad("allow is not a boolean")
    if not isinstance(raw["deny"], list):
        return bad("deny is not a set")
    if not all(isinstance(m, str) for m in raw["deny"]):
        return bad("deny has a non-string member")
    deny = sorted(set(raw["deny"]))
    if raw["allow"] and not deny:
        return {"status": "ok", "allow": True, "deny": deny, "errno": ""}
    errno = raw["errno"]
    return {"status": "ok", "allow": False, "deny": deny,
            "errno": errno if errno != "" else DEFAULT_ERRNO, "raw_errno": errno}


def cordon_status(c):
    reason = c.get("reason", "")
    if reason.startswith(("policy evaluation failed", "policy evaluation timed out")):
        return "error"
    if reason.startswith("policy error:"):
        return "bad-shape"
    return "ok"


def errno_agrees(o, c):
    if o["errno"] == c.get("errno"):
        return True
    # cordon maps an errno it does not know (or a non-string) to EACCES.
    reason = c.get("reason", "")
    raw = o.get("raw_errno")
    return c.get("errno") == DEFAULT_ERRNO and (
        (isinstance(raw, str) and ("unknown errno %s" % json.dumps(raw)) in reason)
        or (not isinstance(raw, str) and "not a string; used EACCES" in reason))


def fmt_decision(d):
    if d is None:
        return "-"
    s = "allow" if d.get("allow") else "deny"
    if not d.get("allow"):
        s += " " + str(d.get("errno"))
    if d.get("deny"):
        s += " %s" % json.dumps(d["deny"])
    return s


def shorten(s, n=110):
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def print_table(rows):
    headers = ("kind", "name", "opa", "cordon", "detail")
    cols = [[h] + [shorten(r[i], 60 if i in (2, 3) else 110) for r in rows]
            for i, h in enumerate(headers)]
    widths = [max(len(x) for x in c) for c in cols]
    for j in range(len(rows) + 1):
        line = "  ".join(cols[i][j].ljust(widths[i]) for i in range(len(headers) - 1))
        print(line + "  " + cols[-1][j])
        if j == 0:
            print("  ".join("-" * w for w in widths))


def main():
    ap = argparse.ArgumentParser(
        description="Compare cordon's (regorus) policy tests and fixture decisions with real OPA.")
    ap.add_argument("dir", nargs="?", default="policies", help="policy directory (default: policies)")
    ap.add_argument("--cordon", default=str(CORDON), help="cordon binary (default: %(default)s)")
    ap.add_argument("--wait", type=float, default=600,
                    help="seconds to wait for a missing cordon binary (default: 600)")
    ap.add_argument("--timeout", type=float, default=600,
                    help="limit in seconds for each OPA or cordon run (default: 600)")
    ap.add_argument("-v", "--verbose", action="store_true", help="also list agreements")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    root = Path(args.dir)
    if args.worker:
        worker(root)
        return 0
    if not root.exists():
        print("opa-diff: %s does not exist" % root, file=sys.stderr)
        return 3

    # OPA side.
    try:
        py = ensure_opa()
        r = subprocess.run([str(py), str(Path(__file__).resolve()), "--worker", str(root)],
                           capture_output=True, text=True, timeout=args.timeout)
        if r.returncode != 0:
            raise Unavailable("OPA worker failed: %s" % last_line(r.stderr))
        opa = json.loads(r.stdout)
    except subprocess.TimeoutExpired:
        print("opa-diff: OPA unavailable: evaluation exceeded %gs" % args.timeout)
        return 2
    except Unavailable as e:
        print("opa-diff: OPA unavailable: %s" % e)
        return 2

    # cordon side.
    binary = Path(args.cordon)
    rows, agree = [], []
    engine = "regorus"
    try:
        ct, crun = cordon_json(binary, ["policy", "test", str(root), "--format", "json"],
                               args.wait, args.timeout)
        ot = opa["tests"]
        if ct is None or "load_error" in ot:
            o = "load error" if "load_error" in ot else "loaded"
            c = "load error" if ct is None else "loaded"
            row = ("tests", str(root), o, c,
                   ot.get("load_error") or (last_line(crun.stderr) if ct is None else ""))
            (agree if o == c else rows).append(row)
        else:
            cres = {t["name"]: t for t in ct.get("tests", [])}
            names = []
            for t in ot["results"]:
                names.append(t["name"])
            for n in cres:
                if n not in names:
                    names.append(n)
            obyn = {t["name"]: t for t in ot["results"]}
            for n in names:
                o, c = obyn.get(n), cres.get(n)
                oo = o["outcome"] if o else "missing"
                co = c["outcome"] if c else "missing"
                detail = []
                if o and o.get("error"):
                    detail.append("opa: " + o["error"])
                    if o.get("builtin_error"):
                        detail.append("(strict builtin errors; plain opa test would treat as undefined)")
                if c and c.get("error"):
                    detail.append("cordon: " + c["error"])
                if o and o.get("note"):
                    detail.append(o["note"])
                row = ("test", n, oo, co, " ".join(detail))
                same = oo == co or (oo == "skip" and co == "missing")
                (agree if same else rows).append(row)

        fixtures = opa["fixtures"]
        if "load_error" in fixtures:
            rows.append(("fixtures", str(root), "load error", "?", fixtures["load_error"]))
        for case in fixtures.get("results", []):
            o = interpret_opa(case)
            c, crun = cordon_json(binary, ["policy", "eval", "--policy", str(root), "--input",
                                           case["file"], "--format", "json"],
                                  args.wait, args.timeout)
            name = str(Path(case["file"]).parent.relative_to(root))
            if c is None:
                rows.append(("fixture", name, fmt_decision(o), "load error", last_line(crun.stderr)))
                continue
            engine = "regorus, %s" % c.get("engine", "?")
            cs = cordon_status(c)
            same = (o["status"] == cs and o["allow"] == c.get("allow")
                    and o["deny"] == sorted(c.get("deny") or []) and errno_agrees(o, c))
            detail = []
            if o.get("detail"):
                detail.append("opa: " + o["detail"])
            if cs != "ok" or not same:
                detail.append("cordon: " + c.get("reason", ""))
            ol = fmt_decision(o) + ("" if o["status"] == "ok" else " (%s)" % o["status"])
            cl = fmt_decision(c) + ("" if cs == "ok" else " (%s)" % cs)
            (agree if same else rows).append(("fixture", name, ol, cl, " ".join(detail)))
    except subprocess.TimeoutExpired:
        print("opa-diff: cordon exceeded %gs" % args.timeout)
        return 3
    except CordonFailed as e:
        print("opa-diff: %s" % e)
        return 3

    n_tests = sum(1 for r in agree + rows if r[0] in ("test", "tests"))
    n_fix = sum(1 for r in agree + rows if r[0] in ("fixture", "fixtures"))
    print("OPA %s (via %s==%s) vs %s (%s)"
          % (opa.get("opa_version", "unknown"), PKG, VERSION, binary, engine))
    print("%s: %d tests, %d fixtures compared; %d agree, %d disagree"
          % (root, n_tests, n_fix, len(agree), len(rows)))
    if args.verbose and agree:
        print("\nagreements:")
        print_table(agree)
    if rows:
        print("\ndisagreements:")
        print_table(rows)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
