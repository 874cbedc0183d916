"""Serving benchmark: fulmen.serve vs LitServe 0.2.19 vs a plain FastAPI app, the same model, wrk as the load.

    python benchmarks/serve/bench.py --models linear --concurrency 1 16 64 --duration 5

LitServe runs from its own venv (``--litserve-python /work/ls-venv/bin/python``; skipped when absent) so it
never touches the project's environment. Results: one JSON line per run on stdout, then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "benchmarks"))

from models import payload  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(python: str, script: str, env: dict[str, str], timeout: float = 180) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, **env, "PORT": str(port), "PYTHONPATH": str(ROOT / "src")}
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen([python, str(HERE / script)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{script} exited: {Path(log.name).read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{script} not healthy after {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _wrk(url: str, body: str, concurrency: int, duration: int) -> dict[str, float]:
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)  # noqa: SIM115
    lua.write(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = {json.dumps(body)}\n')
    lua.close()
    threads = 1 if concurrency == 1 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", lua.name, url + "/predict"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "non_2xx": int(errors.group(1)) if errors else 0}


def kill_test(duration: int = 6, concurrency: int = 16) -> dict[str, float]:
    """fulmen under load (linear model, 2 workers, timeout 5 s); one worker SIGKILLed midway.

    Reports wrk's max latency (no request may wait past the timeout), the non-2xx answers (the killed
    worker's in-flight requests get a 503) and the seconds from the kill until /health is 200 again.
    """
    import threading

    proc, url = _start(
        sys.executable,
        "app_lit.py",
        {"FRAMEWORK": "fulmen", "MODEL": "linear", "BATCH": "8", "BATCH_TIMEOUT": "auto", "SERVE_TIMEOUT": "5"},
    )
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)  # noqa: SIM115
    lua.write(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(payload('linear'))}\n"
    )
    lua.close()
    out: dict[str, str] = {}

    def load() -> None:
        cmd = ["wrk", "-t2", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", lua.name, url + "/predict"]
        out["wrk"] = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout

    try:
        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(duration / 3)
        with urllib.request.urlopen(url + "/info", timeout=5) as r:
            pid = json.loads(r.read())["server"]["workers"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        healthy_after, seen_down = float("nan"), False

        def status() -> int:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    return int(r.status)
            except urllib.error.HTTPError as err:
                return int(err.code)
            except OSError:
                return 0

        while time.monotonic() - killed < 30:
            code = status()
            seen_down = seen_down or code != 200
            if seen_down and code == 200:  # first down (the kill seen), then up again
                healthy_after = time.monotonic() - killed
                break
            time.sleep(0.02)
        thread.join(duration + 90)
    finally:
        _stop(proc)
    text = out.get("wrk", "")
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", text)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    total = re.search(r"(\d+) requests in", text)
    return {
        "requests": int(total.group(1)) if total else 0,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "max_latency_ms": _ms(latency.group(3)) if latency else float("nan"),
        "health_503_seen": seen_down,
        "healthy_again_s": round(healthy_after, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["linear", "digits", "mlp10m"])
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 16, 64])
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--batching", nargs="+", default=["off", "on"], help="off: max_batch_size 1; on: 8, 10 ms")
    p.add_argument(
        "--contestants",
        nargs="+",
        default=["fulmen", "fulmen-auto", "litserve", "fastapi"],
        help="fulmen-auto: fulmen with batch_timeout='auto' (batching on only)",
    )
    p.add_argument("--litserve-python", default="/work/ls-venv/bin/python")
    p.add_argument("--kill-test", action="store_true", help="only the SIGKILL-under-load test")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    if args.kill_test:
        print(json.dumps({"kill_test": kill_test()}))
        return
    rows = []
    for model in args.models:
        body = payload(model)
        for contestant in args.contestants:
            modes = ["off"] if contestant == "fastapi" else ["on"] if contestant == "fulmen-auto" else args.batching
            for mode in modes:
                if contestant == "fastapi":
                    python, script, env = sys.executable, "app_fastapi.py", {"MODEL": model}
                else:
                    python = args.litserve_python if contestant == "litserve" else sys.executable
                    if not os.path.exists(python):
                        print(f"skip {contestant}: {python} missing", file=sys.stderr)
                        continue
                    window = "auto" if contestant == "fulmen-auto" else "0.01"
                    env = {
                        "FRAMEWORK": "litserve" if contestant == "litserve" else "fulmen",
                        "MODEL": model,
                        "BATCH": "8" if mode == "on" else "1",
                        "BATCH_TIMEOUT": window if mode == "on" else "0.0",
                    }
                    script = "app_lit.py"
                proc, url = _start(python, script, env)
                try:
                    _wrk(url, body, 4, 2)  # warm-up
                    for c in args.concurrency:
                        result = {"model": model, "contestant": contestant, "batching": mode, "concurrency": c}
                        result.update(_wrk(url, body, c, args.duration))
                        print(json.dumps(result), flush=True)
                        rows.append(result)
                finally:
                    _stop(proc)
    print("\n| model | contestant | batching | concurrency | req/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['contestant']} | {r['batching']} | {r['concurrency']} | {r['rps']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.1f} | {r['non_2xx']} |"
        )
    try:
        from machine import machine_line

        print(f"\nmachine: {machine_line()}")
    except Exception:
        pass


if __name__ == "__main__":
    main()
