"""benchmarks/gpu_bench.py's ``--smoke`` mode (tiny sizes on the CPU), so the GPU workload cannot rot unseen."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_bench.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_smoke_run_writes_the_table_json_and_docs_block(tmp_path: Path) -> None:
    docs = tmp_path / "bench.md"
    docs.write_text("# B\n\n## GPU\n\n<!-- gpu-bench:start -->\nnot yet measured\n<!-- gpu-bench:end -->\n\nafter\n")
    proc = _run("--smoke", "--out", str(tmp_path / "out"), "--docs", str(docs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "gpu_bench.json").read_text())
    rows = {(r["workload"], r["precision"], r["contestant"]): r for r in results["rows"]}
    expected = {"hand", "fulmen_min", "fulmen_def"}
    assert {c for _, _, c in rows} >= expected
    assert {(w, p) for w, p, _ in rows} == {("cnn", "bf16-mixed"), ("gpt", "bf16-mixed")}
    for (_, _, contestant), row in rows.items():
        assert row["samples_per_s"] > 0 and math.isfinite(row["ratio"]) and row["ratio"] > 0
        assert all(math.isfinite(v) for v in row["final_loss"])  # every contestant trained
        if contestant == "hand":
            assert row["ratio"] == 1.0
    assert "CPU smoke run" in results["device"]
    # the plain and the torch.compile'd fit follow the same loss curve (fsdp needs a GPU: not run here)
    assert results["curves"]["compile"]["max_abs_diff_vs_plain"] < 1e-4
    table = (tmp_path / "out" / "gpu_bench.md").read_text()
    assert "| workload | precision | contestant |" in table and "fulmen, defaults" in table
    text = docs.read_text()
    assert "not yet measured" not in text and table in text and text.endswith("after\n")


def test_docs_without_the_block_is_a_clear_error(tmp_path: Path) -> None:
    docs = tmp_path / "bench.md"
    docs.write_text("# no block\n")
    proc = _run("--smoke", "--out", str(tmp_path / "out"), "--only", "curves", "--docs", str(docs))
    assert proc.returncode != 0 and "gpu-bench:start" in proc.stderr


@pytest.mark.parametrize("bad", [["--workloads", "vgg", "--only", "loops"]])
def test_unknown_workload_is_a_clear_error(tmp_path: Path, bad: list[str]) -> None:
    proc = _run("--smoke", "--out", str(tmp_path), *bad)
    assert proc.returncode != 0 and "unknown workload 'vgg'" in proc.stderr
