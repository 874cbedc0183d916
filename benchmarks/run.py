"""fulmen's benchmark harness: fulmen against a hand-written PyTorch loop (and Lightning, when installed).

    make bench                               # the full run; writes docs/benchmarks.md
    .venv/bin/python benchmarks/run.py --quick              # a short run, printed only
    .venv/bin/python benchmarks/run.py --only loops --workloads tiny --rounds 9

Sections (``--only``, comma-separated):

* ``loops``: training-loop time per workload (``--workloads tiny,digits,heavy``; ``tinyval``, issue 12's
  shape with validation after every epoch and a ``__getitems__`` dataset, runs only when named: about 40 s a
  round with Lightning). Contestants run
  interleaved in one process (A B C ... then the reverse order, so drift favours no one), after
  warm-up rounds that are discarded. Each round's time is divided by the hand-written loop's time in
  the same round; the table shows the median of those paired ratios and their interquartile range.
* ``import``: ``import fulmen`` after ``import torch``, in fresh processes (time, VmRSS/VmHWM deltas,
  and whether optional packages or ``torch._dynamo`` were imported).
* ``memory``: one cold run per contestant in a fresh process: time to the first training step
  (framework import included) and the process's peak resident memory (VmHWM from /proc/self/status,
  which unlike ``ru_maxrss`` is not inherited from the parent).
* ``checkpoint``: full-checkpoint save and load time of a 160 MiB model against ``torch.save`` /
  ``torch.load`` of the same content, and how long an asynchronous save blocks.
* ``ddp``: 2-process DDP on the CPU against a hand-written DDP loop (when fulmen has a ddp strategy).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import shlex
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from machine import ROOT, machine_line, median  # noqa: E402

SECTIONS = ("loops", "import", "memory", "checkpoint", "ddp")

# (contestant, workload) -> the goal for the ratio to the hand-written loop
LOOP_GOALS = {
    ("fulmen_min", "tiny"): 1.05,
    ("fulmen_def", "tiny"): 1.3,
    ("fulmen_min", "digits"): 1.02,
    ("fulmen_def", "digits"): 1.1,
    ("fulmen_min", "tinyval"): 1.05,
    ("fulmen_def", "tinyval"): 1.3,
}
IMPORT_GOAL_S, IMPORT_GOAL_MB, PEAK_GOAL_MB = 0.15, 20.0, 20.0
SAVE_GOAL, ASYNC_GOAL, DDP_GOAL = 1.1, 0.10, 1.05


def _child(*args: str, timeout: float = 1800) -> dict[str, Any]:
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "child.py"), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"child {args} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def _q(values: list[float], q: float) -> float:
    values = sorted(values)
    pos = (len(values) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _short_title(title: str) -> str:
    """The workload's title up to its first comma outside parentheses ("Digits CNN (sklearn ..., 1437 ...)")."""
    depth = 0
    for i, ch in enumerate(title):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            return title[:i]
    return title


def _verdict(value: float, goal: float) -> str:
    return f"met (goal <= {goal:g})" if value <= goal else f"**missed** (goal <= {goal:g}, over by {value - goal:.3g})"


# --------------------------------------------------------------------------------------------------
# loops
# --------------------------------------------------------------------------------------------------
def bench_loops(args: argparse.Namespace, log: Any) -> tuple[list[str], list[tuple[str, float, float]]]:
    import torch

    from contestants import contestants, run_in_tempdir
    from workloads import WORKLOADS

    lines: list[str] = []
    goals: list[tuple[str, float, float]] = []
    default_rounds = {"tiny": 15, "digits": 11, "heavy": 7, "tinyval": 7}
    for key in args.workloads.split(","):
        workload = WORKLOADS[key](args.quick)
        torch.set_num_threads(workload.threads)
        cs = contestants(with_lightning=not args.no_lightning)
        rounds = args.rounds or (3 if args.quick else default_rounds[key])
        warmup = 1 if args.quick else 2
        runs: dict[str, list[Any]] = {c.key: [] for c in cs}
        same: dict[str, str] = {}
        reference = None
        log(f"[loops] {workload.title}: {warmup} warm-up + {rounds} rounds x {len(cs)} contestants")
        for r in range(warmup + rounds):
            order = cs if r % 2 == 0 else cs[::-1]
            for c in order:
                gc.collect()
                res = run_in_tempdir(c, workload)
                if c.key == "hand" and reference is None:
                    reference = res.weights
                if r >= warmup:
                    runs[c.key].append(res)
                if c.key not in same and reference is not None:
                    diff = (res.weights - reference).abs().max().item()
                    same[c.key] = "bitwise equal" if diff == 0 else f"max diff {diff:.1e}"
            if r >= warmup:
                hand_t = runs["hand"][-1].wall
                log(f"  round {r - warmup + 1}: " + ", ".join(
                    f"{c.key} {runs[c.key][-1].wall / hand_t:.3f}" for c in cs if c.key != "hand"))
        hand = runs["hand"]
        lines += [
            f"### {workload.title}",
            "",
            f"{workload.threads} thread(s); {rounds} measured rounds after {warmup} warm-up rounds; time per step "
            "= the whole run (Trainer construction to the end of fit) / steps.",
            "",
            "| contestant | per step (wall, median) | ratio to hand-written (wall) | IQR | ratio (process CPU time) "
            "| in-process time to first step | final weights vs hand-written | goal |",
            "|---|---:|---:|---|---:|---:|---|---|",
        ]
        for c in cs:
            rs = runs[c.key]
            wall_ratios = [x.wall / h.wall for x, h in zip(rs, hand)]
            cpu_ratios = [x.cpu / h.cpu for x, h in zip(rs, hand)]
            ratio = median(wall_ratios)
            goal = LOOP_GOALS.get((c.key, key))
            verdict = _verdict(ratio, goal) if goal else ""
            if goal:
                goals.append((f"{_short_title(workload.title)}: {c.label}", ratio, goal))
            per_step = median([x.wall for x in rs]) / workload.steps * 1e6
            lines.append(
                f"| {c.label} | {per_step:,.1f} us | {ratio:.3f}x | {_q(wall_ratios, .25):.3f}-{_q(wall_ratios, .75):.3f} "
                f"| {median(cpu_ratios):.3f}x | {median([x.first_step for x in rs]) * 1e3:.1f} ms "
                f"| {same.get(c.key, '')} | {verdict} |"
            )
        lines.append("")
    return lines, goals


# --------------------------------------------------------------------------------------------------
# import
# --------------------------------------------------------------------------------------------------
def bench_import(args: argparse.Namespace, log: Any) -> tuple[list[str], list[tuple[str, float, float]]]:
    from contestants import lightning_available

    reps = 3 if args.quick else 7
    targets = ["fulmen", "fulmen+api"]
    if lightning_available() and not args.no_lightning:
        targets += ["pytorch_lightning", "pytorch_lightning+api"]
    lines = [
        "### Import cost after `import torch`",
        "",
        f"Fresh process per measurement, median of {reps}. `+api` also resolves the names a script uses "
        "(fulmen resolves `L.Trainer` etc. lazily; Lightning imports everything in `import pytorch_lightning`).",
        "",
        "| import | time | VmRSS delta | VmHWM delta | optional packages / torch._dynamo imported |",
        "|---|---:|---:|---:|---|",
    ]
    goals: list[tuple[str, float, float]] = []
    torch_times: list[float] = []
    for target in targets:
        results = []
        for _ in range(reps):
            results.append(_child("import", target))
        torch_times += [r["torch_s"] for r in results]
        t = median([r["import_s"] for r in results])
        rss = median([r["rss_mb"] for r in results])
        hwm = median([r["hwm_mb"] for r in results])
        optional = sorted({m for r in results for m in r["optional_loaded"]})
        log(f"[import] {target}: {t * 1e3:.0f} ms, +{rss:.1f} MB RSS")
        lines.append(f"| `{target}` | {t * 1e3:.0f} ms | +{rss:.1f} MB | +{hwm:.1f} MB | {', '.join(optional) or 'none'} |")
        if target == "fulmen+api":
            goals.append(("import fulmen (+ Trainer, LightningModule) after torch: time (s)", t, IMPORT_GOAL_S))
            goals.append(("import fulmen (+ Trainer, LightningModule) after torch: memory (MB, VmRSS)",
                          rss, IMPORT_GOAL_MB))
    lines += ["", f"(`import torch` itself: {median(torch_times) * 1e3:.0f} ms.)", ""]
    return lines, goals


# --------------------------------------------------------------------------------------------------
# cold runs: time to first step, peak memory
# --------------------------------------------------------------------------------------------------
def bench_memory(args: argparse.Namespace, log: Any) -> tuple[list[str], list[tuple[str, float, float]]]:
    from contestants import contestants

    cs = contestants(with_lightning=not args.no_lightning)
    workloads = ["tiny"] if args.quick else ["tiny", "digits"]
    reps = 1 if args.quick else 3
    extra = ["--quick"] if args.quick else []
    lines = [
        "### Cold run: time to first step and peak memory",
        "",
        f"One fresh process per run (median of {reps}): `import torch`, build the data, then start the clock: "
        "import the framework, build the Trainer, fit. Peak memory is the process's VmHWM at the end.",
        "",
        "| workload | contestant | time to first step | peak memory (VmHWM) | vs hand-written |",
        "|---|---|---:|---:|---:|",
    ]
    goals: list[tuple[str, float, float]] = []
    for wl in workloads:
        hand_hwm = None
        for c in cs:
            rs = [_child("run", c.key, wl, *extra) for _ in range(reps)]
            first = median([r["first_step_s"] for r in rs])
            hwm = median([r["hwm_mb"] for r in rs])
            if c.key == "hand":
                hand_hwm = hwm
            delta = hwm - hand_hwm if hand_hwm is not None else 0.0
            log(f"[memory] {wl} {c.key}: first step {first * 1e3:.0f} ms, VmHWM {hwm:.1f} MB ({delta:+.1f})")
            lines.append(f"| {wl} | {c.label} | {first * 1e3:.0f} ms | {hwm:.1f} MB | {delta:+.1f} MB |")
            if c.key == "fulmen_def":
                goals.append((f"peak memory of a full run ({wl}, fulmen defaults) over hand-written (MB)", delta,
                              PEAK_GOAL_MB))
    lines.append("")
    return lines, goals


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------
def bench_checkpoint(args: argparse.Namespace, log: Any) -> tuple[list[str], list[tuple[str, float, float]]]:
    from contestants import lightning_available

    with_pl = lightning_available() and not args.no_lightning
    flags = (["--quick"] if args.quick else []) + ([] if with_pl else ["--no-lightning"])
    log("[checkpoint] running (fresh process)")
    r = _child("checkpoint", *flags)
    save = {k: median(v) for k, v in r["save"].items()}
    load = {k: median(v) for k, v in r["load"].items()}
    mb = r["file_mb"]
    labels = {"torch": "plain torch.save / torch.load", "torch_fsync": "plain torch.save + fsync of the file",
              "fulmen": "fulmen", "lightning": "Lightning",
              "lightning_async": "Lightning + AsyncCheckpointIO (blocking part)"}
    lines = [
        f"### Checkpoints: {r['size_mib']} MiB model ({r['params']:,} parameters) + Adam state",
        "",
        f"Median of {r['reps']} saves/loads after a warm-up round, alternating order, each to a new file after "
        f"`os.sync()`; {r['threads']} torch threads. fulmen's save is atomic and durable (temporary file, fsync, "
        "rename, directory fsync); `torch.save` and Lightning's are neither.",
        "",
        "| saver | file | save | vs torch.save | load | vs torch.load |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, t in save.items():
        ld = load.get(key)
        load_cells = f"{ld:.3f} s | {ld / load['torch']:.2f}x" if ld is not None else " | "
        lines.append(f"| {labels[key]} | {mb[key]:.0f} MB | {t:.3f} s | {t / save['torch']:.2f}x | {load_cells} |")
    lines.append("")
    goals = [("full checkpoint save vs torch.save (ratio)", save["fulmen"] / save["torch"], SAVE_GOAL)]
    lines += [f"fulmen against `torch.save` + fsync (the same durability): {save['fulmen'] / save['torch_fsync']:.2f}x.",
              ""]
    if "lightning_async" in save:
        lines += [f"Lightning + AsyncCheckpointIO returns after {save['lightning_async']:.3f} s "
                  f"({save['lightning_async'] / save['lightning']:.1%} of its synchronous save).", ""]
    runs = {}
    for snapshot in ("auto", "copy"):
        log(f"[checkpoint] async snapshot={snapshot} (fresh process, one trainer)")
        runs[snapshot] = _child("checkpoint_async", snapshot, *(["--quick"] if args.quick else []))
    first = runs["auto"]
    lines += [
        "Asynchronous save (fulmen), each mode in a fresh process that holds one trainer (as a training script "
        "does), against the same trainer's synchronous save in that process. *Blocking*: how long "
        f"`save_checkpoint` takes to return. *Loop loss*: the call plus the {first['loop_steps']} Adam steps that "
        f"follow it ({first['step_s']:.3f} s each without a save), minus the same steps without a save in flight: "
        "it adds the copy-on-write page faults and the CPU the writer takes from the loop (*writer CPU*: user + "
        "system time of the forked writer process). 100% means the loop loses as much as with a synchronous save.",
        "",
        "| snapshot | sync save | blocking | % of sync save | loop loss | % of sync save | write done after the call "
        "| writer CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = {}
    for snapshot, name in (("auto", "fork (`auto` here)"), ("copy", "copy")):
        a = runs[snapshot]
        sync = median(a["save"]["sync"])
        block = median(a["save"]["async"])
        loss = median(a["loop_loss"])
        ratios[snapshot] = (block / sync, loss / sync)
        late = a["loop_unfinished"]
        note = f" ({late} of {a['reps']} writes outlasted the steps: loss undercounted)" if late else ""
        cpu = f"{median(a['writer_cpu']):.3f} s" if a["writer_cpu"] else "-"
        lines.append(
            f"| {name} | {sync:.3f} s | {block:.3f} s | {block / sync:.1%} | {loss:.3f} s | {loss / sync:.1%}{note} "
            f"| {median(a['done_after']):.3f} s | {cpu} |"
        )
    lines.append("")
    goals.append(("async save: blocking time / synchronous save time", ratios["auto"][0], ASYNC_GOAL))
    goals.append(("async save: loop loss (blocking + slower steps) / synchronous save time", ratios["auto"][1],
                  ASYNC_GOAL))
    log(f"[checkpoint] save fulmen {save['fulmen']:.3f}s torch {save['torch']:.3f}s async block "
        f"{ratios['auto'][0]:.1%} loop loss {ratios['auto'][1]:.1%}")
    return lines, goals


# --------------------------------------------------------------------------------------------------
# DDP
# --------------------------------------------------------------------------------------------------
def bench_ddp(args: argparse.Namespace, log: Any) -> tuple[list[str], list[tuple[str, float, float]]]:
    import ddp_bench

    lines = ["### 2-process DDP on the CPU (gloo)", ""]
    reason = ddp_bench.unavailable()
    if reason:
        log(f"[ddp] skipped: {reason}")
        return [*lines, f"Skipped: {reason}", ""], []
    log("[ddp] running")
    r = _child("ddp", *(["--quick"] if args.quick else []))
    ratio = r["fulmen_step"] / r["hand_step"]
    lines += [
        r["description"],
        "",
        "| contestant | per step (steady state, rank 0) | ratio |",
        "|---|---:|---:|",
        f"| hand-written DDP loop | {r['hand_step'] * 1e6:,.0f} us | 1.000x |",
        f"| fulmen `strategy=\"{r['strategy']}\"` | {r['fulmen_step'] * 1e6:,.0f} us | {ratio:.3f}x |",
        "",
    ]
    return lines, [("2-process DDP step vs hand-written DDP", ratio, DDP_GOAL)]


# --------------------------------------------------------------------------------------------------
def _kept_section(path: str | None, heading: str, end_marker: str) -> str | None:
    """A section of the file being rewritten that another run writes, kept as it is: '## GPU' (written by
    benchmarks/gpu_bench.py on a GPU machine) and '## Serving' (benchmarks/serve/bench.py, a separate run with wrk)
    are not measured by this CPU run. The section runs from its heading to its end marker."""
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read()
    start = text.find(f"\n{heading}\n")
    end = text.find(end_marker, start)
    if start < 0 or end < 0:
        return None
    return text[start + 1 : end + len(end_marker)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run (fewer steps, rounds and repetitions)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run, from {','.join(SECTIONS)}")
    parser.add_argument("--workloads", default="tiny,digits,heavy", help="loop workloads: tiny,digits,heavy,tinyval")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds per loop workload")
    parser.add_argument("--no-lightning", action="store_true", help="leave Lightning out even if installed")
    parser.add_argument("--out", default=None,
                        help="markdown file to write (default: docs/benchmarks.md for a full run of every section, "
                             "nothing for --quick or --only)")
    args = parser.parse_args()
    sections = [s for s in args.only.split(",") if s]
    for s in sections:
        if s not in SECTIONS:
            parser.error(f"unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    out = args.out
    if out is None and not args.quick and set(sections) == set(SECTIONS):
        out = os.path.join(ROOT, "docs", "benchmarks.md")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    machine = machine_line()
    log(machine)
    command = "python benchmarks/run.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:])
    body: list[str] = []
    goals: list[tuple[str, float, float]] = []
    runners = {"loops": bench_loops, "import": bench_import, "memory": bench_memory,
               "checkpoint": bench_checkpoint, "ddp": bench_ddp}
    for section in SECTIONS:
        if section in sections:
            lines, g = runners[section](args, log)
            body += lines
            goals += g
    doc = [
        "# Benchmarks",
        "",
        "fulmen against a hand-written PyTorch loop (the physical limit) and Lightning, measured side by side "
        "in one run. Generated by `benchmarks/run.py`; `make bench` reruns everything and rewrites this file.",
        "",
        f"- Command: `{command}` ({datetime.date.today().isoformat()})",
        f"- Machine: {machine}",
        "",
        "## Goals",
        "",
        "| goal | measured | verdict |",
        "|---|---:|---|",
    ]
    doc += [f"| {name} | {value:.3g} | {_verdict(value, goal)} |" for name, value, goal in goals]
    doc += ["", "## Results", "", *body]
    gpu = _kept_section(out, "## GPU", "<!-- gpu-bench:end -->")
    if gpu:
        doc += [gpu, ""]
    serving = _kept_section(out, "## Serving", "<!-- serve-bench:end -->")
    if serving:
        doc += [serving, ""]
    notes = os.path.join(HERE, "notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            doc += ["## Notes", "", f.read().strip(), ""]
    text = "\n".join(doc).rstrip() + "\n"
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text)
        log(f"wrote {out}")


if __name__ == "__main__":
    main()
