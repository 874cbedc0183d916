"""Run Lightning's own test files against fulmen AND against real Lightning; print a per-file table.

Usage (from the repository root)::

    .venv/bin/python tests/compat/lightning_suite/run_lightning_suite.py SUITE_ROOT [FILE ...]
        [--engines fulmen,lightning] [--timeout 60] [-k EXPR] [--json OUT.json] [--show-failures N]
        [--fulmen-src OTHER_CHECKOUT/src]

``SUITE_ROOT`` is the folder that holds ``tests_pytorch/`` (and/or ``tests_fabric/``) from Lightning's repository
-- it is not shipped here (Lightning's code; see docs/migration.md for how to obtain it). ``FILE`` arguments are paths
relative to ``SUITE_ROOT``; without any, every ``test_*.py`` under it runs. Each file runs in its own pytest
subprocess (``-q -p no:cacheprovider --timeout``), once per engine, with ``suite_plugin.py`` loaded before collection
(it resolves ``lightning``/``lightning.pytorch``/``lightning.fabric``/``pytorch_lightning``/``lightning_fabric`` to
fulmen, or to the installed ``pytorch-lightning==2.6.1``). ``tests_pytorch.helpers...`` and the suite's own conftest
files come from ``SUITE_ROOT`` itself. This file is not a pytest test module (no ``test_`` prefix).

Per file the table gives: tests collected, passed on Lightning, passed on fulmen, passed on both, and fulmen's
failures among the tests that pass on Lightning, in classes:

* ``import``: the file (or a test) failed on a missing name/module (``ImportError``/``ModuleNotFoundError``);
* ``private``: an ``AttributeError``/``ImportError`` naming a ``_private`` Lightning attribute (not in scope);
* ``attr``: an ``AttributeError`` on a public name;
* ``behaviour``: anything else (assertion, wrong exception, wrong value) -- public behaviour differences.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENGINES = ("lightning", "fulmen")

_PRIVATE = re.compile(r"(?:has no attribute|cannot import name|No module named) '[\w.]*\b_[a-z]\w*'|\._[a-z]\w*")


def _classify(message: str) -> str:
    head = message.strip().splitlines()[0] if message.strip() else ""
    text = message
    is_import = any(k in text for k in ("ImportError", "ModuleNotFoundError", "cannot import name", "No module named"))
    is_attr = "AttributeError" in head or "has no attribute" in head
    name = re.search(r"(?:has no attribute|cannot import name|No module named) '([\w.]+)'", text)
    if (is_import or is_attr) and name and any(p.startswith("_") for p in name.group(1).split(".")):
        return "private"
    if is_import and not is_attr:
        return "import"
    if is_attr:
        return "attr"
    return "behaviour"


def _run_file(
    python: str, suite: Path, rel: str, engine: str, timeout: int, kexpr: str | None, fulmen_src: Path | None
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        env = dict(os.environ)
        env["FULMEN_SUITE_MODE"] = engine
        paths = [str(HERE), str(suite)]
        if fulmen_src is not None and engine == "fulmen":
            paths.insert(0, str(fulmen_src))  # ahead of the editable install: measure another checkout's fulmen
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("PL_RUN_CUDA_TESTS", "0")
        cmd = [
            python, "-m", "pytest", rel, "-q", "-p", "no:cacheprovider", "-p", "suite_plugin",
            f"--timeout={timeout}", f"--junitxml={junit}", "--rootdir", str(suite), "-o", "addopts=",
            "-W", "ignore::DeprecationWarning",
        ]
        if kexpr:
            cmd += ["-k", kexpr]
        proc = subprocess.run(cmd, cwd=suite, env=env, capture_output=True, text=True, timeout=timeout * 200)
        tests: dict[str, dict] = {}
        if junit.exists():
            for case in ET.parse(junit).getroot().iter("testcase"):
                name = f"{case.get('classname')}::{case.get('name')}"
                outcome, message = "passed", ""
                for child in case:
                    if child.tag in ("failure", "error"):
                        outcome = "failed"
                        message = (child.get("message") or "") + "\n" + (child.text or "")
                    elif child.tag == "skipped":
                        outcome = "skipped"
                        message = child.get("message") or ""
                tests[name] = {"outcome": outcome, "message": message[-4000:]}
        return {"rc": proc.returncode, "tests": tests, "tail": (proc.stdout + proc.stderr)[-3000:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", type=Path, help="folder holding tests_pytorch/ and/or tests_fabric/")
    parser.add_argument("files", nargs="*", help="test files relative to SUITE (default: all test_*.py)")
    parser.add_argument("--engines", default="lightning,fulmen")
    parser.add_argument("--timeout", type=int, default=60, help="per-test timeout (pytest-timeout), seconds")
    parser.add_argument("-k", dest="kexpr", default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the per-test results here")
    parser.add_argument(
        "--fulmen-src", type=Path, default=None,
        help="a src/ folder to import fulmen from (e.g. a `git worktree` of an older commit, for a before figure)",
    )
    parser.add_argument("--show-failures", type=int, default=0, help="print the first lines of N fulmen failures")
    args = parser.parse_args(argv)

    suite = args.suite.resolve()
    if not suite.is_dir():
        parser.error(f"SUITE {suite} is not a folder; give the folder that holds Lightning's tests_pytorch/")
    files = args.files or sorted(str(p.relative_to(suite)) for p in suite.rglob("test_*.py"))
    engines = [e for e in args.engines.split(",") if e]
    for engine in engines:
        if engine not in ENGINES:
            parser.error(f"--engines: unknown engine {engine!r}; expected a comma list of {ENGINES}")

    results: dict[str, dict[str, dict]] = {}
    for rel in files:
        results[rel] = {}
        for engine in engines:
            results[rel][engine] = _run_file(
                sys.executable, suite, rel, engine, args.timeout, args.kexpr, args.fulmen_src
            )
            print(f"ran {rel} on {engine}: rc={results[rel][engine]['rc']}", file=sys.stderr, flush=True)

    header = ["file", "collected", "pass_L", "pass_F", "both", "import", "private", "attr", "behaviour"]
    rows = []
    totals = [0] * (len(header) - 1)
    failures: list[tuple[str, str, str]] = []
    for rel, by_engine in results.items():
        lt = by_engine.get("lightning", {}).get("tests", {})
        ft = by_engine.get("fulmen", {}).get("tests", {})
        names = set(lt) | set(ft)
        pass_l = {n for n, t in lt.items() if t["outcome"] == "passed"}
        pass_f = {n for n, t in ft.items() if t["outcome"] == "passed"}
        classes = {"import": 0, "private": 0, "attr": 0, "behaviour": 0}
        # a file whose collection failed on fulmen reports one error: charge it to every Lightning-passing test
        file_error = [t for n, t in ft.items() if t["outcome"] == "failed" and n not in lt]
        for n in sorted(pass_l - pass_f):
            t = ft.get(n) or (file_error[0] if file_error else {"message": "not collected on fulmen"})
            cls = _classify(t["message"])
            classes[cls] += 1
            failures.append((n, cls, t["message"]))
        row = [len(lt) if lt else len(names), len(pass_l), len(pass_f), len(pass_l & pass_f), *classes.values()]
        totals = [a + b for a, b in zip(totals, row)]
        rows.append([rel, *row])
    rows.append(["TOTAL", *totals])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for name, cls, message in failures[: args.show_failures]:
        lines = [ln for ln in message.strip().splitlines() if ln.strip()]
        print(f"\n[{cls}] {name}\n    " + "\n    ".join(lines[:1] + lines[-3:]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
