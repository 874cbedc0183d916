"""benchmarks/gpu_bench.py's ``--smoke`` mode (tiny sizes on the CPU), so the GPU workload cannot rot unseen."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    # a GPU run's JSON rendered into the docs later (how run_all.sh's results reach docs/benchmarks.md)
    docs.write_text("<!-- gpu-bench:start -->\nold\n<!-- gpu-bench:end -->\n")
    proc = _run("--from-json", str(tmp_path / "out" / "gpu_bench.json"), "--docs", str(docs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert docs.read_text() == f"<!-- gpu-bench:start -->\n{table}<!-- gpu-bench:end -->\n"


def _module() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bench"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_docs_without_the_block_is_a_clear_error(tmp_path: Path) -> None:
    docs = tmp_path / "bench.md"
    docs.write_text("# no block\n")
    with pytest.raises(SystemExit, match="gpu-bench:start"):
        _module().write_docs(str(docs), "table\n")
    assert docs.read_text() == "# no block\n"


def test_unknown_workload_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown workload 'vgg'"):
        _module().main(["--smoke", "--out", str(tmp_path), "--workloads", "vgg", "--only", "loops"])
