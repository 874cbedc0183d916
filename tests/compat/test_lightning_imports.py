"""``fulmen run`` / ``fulmen.compat``: Lightning's imports resolve to fulmen, only when asked."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fulmen
from fulmen.compat import (
    LightningAlias,
    NotSupportedYetAttributeError,
    NotSupportedYetImportError,
    _table,
    lightning_imports,
    lightning_imports_enabled,
)
from fulmen.utilities.exceptions import NotSupportedYetError

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)] if code else [sys.executable, *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_import_fulmen_installs_no_hook() -> None:
    code = """
        import sys
        import fulmen, fulmen.compat, fulmen.demos
        from fulmen import Trainer, LightningModule, Fabric
        from fulmen.demos import BoringModel
        assert not any(type(f).__name__ == "LightningFinder" for f in sys.meta_path), sys.meta_path
        assert not any(n.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric") for n in sys.modules)
        try:
            import pytorch_lightning
        except ImportError:
            print("absent")
        else:
            assert pytorch_lightning.Trainer is not Trainer
            print("real", pytorch_lightning.Trainer.__module__)
    """
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(("absent", "real pytorch_lightning"))


def test_lightning_names_resolve_to_fulmen() -> None:
    with lightning_imports():
        import lightning as L
        import lightning.pytorch as pl
        import lightning_fabric
        import pytorch_lightning
        from lightning.fabric import Fabric, seed_everything
        from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
        from lightning.pytorch.callbacks.progress import TQDMProgressBar
        from lightning.pytorch.core.optimizer import LightningOptimizer
        from lightning.pytorch.demos.boring_classes import BoringModel
        from lightning.pytorch.loggers import CSVLogger
        from lightning.pytorch.trainer.states import TrainerFn
        from lightning.pytorch.utilities.rank_zero import rank_zero_only
        from lightning.pytorch.utilities.types import STEP_OUTPUT, OptimizerLRScheduler  # noqa: F401
        from lightning_fabric.utilities.imports import _TORCH_GREATER_EQUAL_2_1

        assert L.LightningModule is fulmen.LightningModule is pl.LightningModule
        assert pytorch_lightning.Trainer is fulmen.Trainer and L.Trainer is fulmen.Trainer
        assert Fabric is fulmen.Fabric is lightning_fabric.Fabric is L.Fabric
        assert seed_everything is fulmen.seed_everything
        assert L.pytorch is pl and isinstance(pl, LightningAlias)
        assert pl.__version__ == fulmen.__about__.LIGHTNING_COMPAT_VERSION
        assert pl.callbacks.EarlyStopping is EarlyStopping  # submodules reachable as attributes
        from fulmen.callbacks import EarlyStopping as FE
        from fulmen.callbacks import ModelCheckpoint as FM
        from fulmen.callbacks import TQDMProgressBar as FT
        from fulmen.core.optimizer import LightningOptimizer as FLO
        from fulmen.demos import BoringModel as FB
        from fulmen.loggers import CSVLogger as FC
        from fulmen.trainer.states import TrainerFn as FTF
        from fulmen.utilities.rank_zero import rank_zero_only as frzo

        assert (EarlyStopping, ModelCheckpoint, TQDMProgressBar, LightningOptimizer) == (FE, FM, FT, FLO)
        assert (BoringModel, CSVLogger, TrainerFn, rank_zero_only) == (FB, FC, FTF, frzo)
        assert _TORCH_GREATER_EQUAL_2_1 is True
        assert "EarlyStopping" in dir(pl.callbacks) and "callbacks" in dir(pl)
    assert not lightning_imports_enabled()
    assert "lightning.pytorch" not in sys.modules


def test_missing_names_say_not_supported_yet() -> None:
    with lightning_imports():
        import lightning.pytorch as pl

        with pytest.raises(ImportError, match=r"ModelPruning is not supported yet by fulmen") as info:
            from lightning.pytorch.callbacks import ModelPruning  # noqa: F401
        assert isinstance(info.value, NotSupportedYetImportError)
        assert isinstance(info.value, NotSupportedYetError)
        with pytest.raises(
            AttributeError, match=r"lightning\.pytorch\.callbacks\.ModelPruning is not supported yet"
        ):
            pl.callbacks.ModelPruning  # noqa: B018
        with pytest.raises(NotSupportedYetAttributeError):
            pl.callbacks.ModelPruning  # noqa: B018
        assert not hasattr(pl.callbacks, "ModelPruning")
        assert getattr(pl.callbacks, "ModelPruning", None) is None
        with pytest.raises(ModuleNotFoundError, match="lightning.pytorch.loops.*not supported yet"):
            import lightning.pytorch.loops  # noqa: F401


def test_every_table_entry_imports() -> None:
    """Each public Lightning module of the table is importable, and its targets exist (or are being built)."""
    # built by other issues; while missing, their names raise "not supported yet"
    optional = {"fulmen.cli", "fulmen.tuner"}
    with lightning_imports():
        import importlib

        for root, table in _table.ROOTS.items():
            for rel in table:
                name = f"{root}.{rel}" if rel else root
                module = importlib.import_module(name)
                assert isinstance(module, LightningAlias)
                for target in module.__dict__["_fulmen_targets"]:
                    spec = importlib.util.find_spec(target)
                    assert spec is not None or target in optional, f"{name} -> {target} does not exist"


def test_enable_sets_real_lightning_aside_and_restores_it() -> None:
    pytest.importorskip("pytorch_lightning")
    import pytorch_lightning as real

    with lightning_imports():
        import pytorch_lightning as aliased

        assert aliased is not real and aliased.Trainer is fulmen.Trainer
    import pytorch_lightning as again

    assert again is real


def _write(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(body))
    return script


SCRIPT = """
    import sys, os
    import lightning.pytorch as pl
    from lightning.pytorch.demos.boring_classes import BoringModel
    import helper_module  # next to the script: sys.path[0] is the script's folder
    print("NAME", __name__)
    print("ARGV", sys.argv[1:])
    print("FILE", os.path.basename(__file__))
    print("TRAINER", pl.Trainer.__module__)
"""


@pytest.mark.parametrize("launcher", ["console", "module"])
def test_fulmen_run_runs_a_script_as_main(tmp_path: Path, launcher: str) -> None:
    script = _write(tmp_path, SCRIPT)
    (tmp_path / "helper_module.py").write_text("")
    if launcher == "console":
        exe = Path(sys.executable).with_name("fulmen")
        if not exe.exists():
            pytest.skip("the fulmen console script is not installed next to this interpreter")
        cmd = [str(exe), "run", str(script), "--lr", "0.1", "x"]
    else:
        cmd = [sys.executable, "-m", "fulmen", "run", str(script), "--lr", "0.1", "x"]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "NAME __main__" in result.stdout
    assert "ARGV ['--lr', '0.1', 'x']" in result.stdout
    assert "FILE prog.py" in result.stdout
    assert "TRAINER fulmen.trainer.trainer" in result.stdout


def test_fulmen_run_reports_errors_like_python(tmp_path: Path) -> None:
    script = _write(tmp_path, "from lightning.pytorch.callbacks import ModelPruning\n")
    result = subprocess.run(
        [sys.executable, "-m", "fulmen", "run", str(script)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "ModelPruning is not supported yet by fulmen" in result.stderr
    assert (
        "runpy" not in result.stderr and 'prog.py", line 1, in <module>' in result.stderr
    )  # the user's frames only
    exit_script = _write(tmp_path, "import sys\nsys.exit(3)\n")
    assert (
        subprocess.run([sys.executable, "-m", "fulmen", "run", str(exit_script)], check=False).returncode == 3
    )
    missing = subprocess.run(
        [sys.executable, "-m", "fulmen", "run", str(tmp_path / "nope.py")], check=False, capture_output=True
    )
    assert missing.returncode == 2
    usage = subprocess.run(
        [sys.executable, "-m", "fulmen", "run", "--help"], check=False, capture_output=True, text=True
    )
    assert usage.returncode == 0 and "usage: fulmen run" in usage.stdout


def test_fulmen_run_module_form(tmp_path: Path) -> None:
    (tmp_path / "progmod.py").write_text(
        "import sys, lightning\nprint('OK', lightning.Trainer.__module__, sys.argv[1:])\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "fulmen", "run", "-m", "progmod", "a"],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert result.returncode == 0, result.stderr
    assert "OK fulmen.trainer.trainer ['a']" in result.stdout


def test_spawned_workers_see_the_aliases(tmp_path: Path) -> None:
    """A ``spawn`` worker re-imports the main script; under ``fulmen run`` it must get the aliases too."""
    script = _write(
        tmp_path,
        """
        import multiprocessing as mp
        import lightning.pytorch as pl

        def where(_):
            import lightning.pytorch as inner
            return inner.Trainer.__module__

        if __name__ == "__main__":
            with mp.get_context("spawn").Pool(1) as pool:
                print("WORKER", pool.map(where, [0])[0])
        """,
    )
    result = subprocess.run(
        [sys.executable, "-m", "fulmen", "run", str(script)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "WORKER fulmen.trainer.trainer" in result.stdout


def test_ddp_relaunches_ranks_under_fulmen_run(tmp_path: Path) -> None:
    """``strategy="ddp"`` starts its other ranks by running the command again: under ``fulmen run`` too."""
    script = _write(
        tmp_path,
        """
        import sys

        import lightning.pytorch as pl
        from lightning.pytorch.demos.boring_classes import BoringModel

        if __name__ == "__main__":
            trainer = pl.Trainer(
                accelerator="cpu", devices=2, strategy="ddp", max_steps=2, limit_val_batches=0, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            )
            trainer.fit(BoringModel())
            # one write() per line: a small write to a pipe is atomic, so the ranks' lines cannot interleave
            sys.stdout.write(f"RANK {trainer.global_rank} {pl.Trainer.__module__} {trainer.global_step}\\n")
            sys.stdout.flush()
        """,
    )
    result = subprocess.run(
        [sys.executable, "-m", "fulmen", "run", str(script)],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "RANK 0 fulmen.trainer.trainer 2" in result.stdout
    assert "RANK 1 fulmen.trainer.trainer 2" in result.stdout


def test_grad_norm_and_warning_switch_match_lightning() -> None:
    import torch

    from fulmen.utilities.grads import grad_norm

    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    module(torch.randn(5, 3)).sum().backward()
    with lightning_imports():
        from lightning.pytorch.utilities import disable_possible_user_warnings
        from lightning.pytorch.utilities import grad_norm as aliased

        assert aliased is grad_norm
        disable_possible_user_warnings()
    norms = grad_norm(module, 2)
    assert list(norms) == [f"grad_2.0_norm/{n}" for n, _ in module.named_parameters()] + [
        "grad_2.0_norm_total"
    ]
    total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in module.parameters()]))
    torch.testing.assert_close(norms["grad_2.0_norm_total"], total)
    with pytest.raises(ValueError, match="norm_type"):
        grad_norm(module, 0)
    try:
        from pytorch_lightning.utilities import grad_norm as real
    except ImportError:
        return
    for key, value in real(module, "inf").items():
        torch.testing.assert_close(grad_norm(module, "inf")[key], value)


# ---------------------------------------------------------------- the public import surface (issue 11)
DATA = Path(__file__).parent / "data"


def _import_lines(name: str) -> list[tuple[str, str]]:
    lines = []
    for raw in (DATA / name).read_text().splitlines():
        line = raw.split("  #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append((line, raw))
    return lines


def test_collected_public_imports_resolve() -> None:
    """Every import line collected from Lightning's tests, examples and public projects works under the aliases."""
    lines = _import_lines("lightning_public_imports.txt")
    assert len(lines) > 140
    failures = []
    with lightning_imports():
        for line, _ in lines:
            try:
                exec(line, {})  # noqa: S102 - the data file's import lines
            except Exception as exc:  # noqa: BLE001 - collected and reported together
                failures.append(f"{line}\n    {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


def test_known_missing_imports_fail_with_a_clear_error() -> None:
    """The deliberately unsupported lines (private internals, XLA) fail with fulmen's explanation, not a crash."""
    lines = _import_lines("lightning_known_missing.txt")
    assert lines and all("  # " in raw for _, raw in lines), "each known-missing line needs a reason"
    with lightning_imports():
        for line, _ in lines:
            with pytest.raises(ImportError, match="not supported yet by fulmen|not a public Lightning 2.x module"):
                exec(line, {})  # noqa: S102


_PACKAGES = {
    "_TORCHVISION_AVAILABLE": "torchvision",
    "_OMEGACONF_AVAILABLE": "omegaconf",
    "_RICH_AVAILABLE": "rich",
    "_TENSORBOARD_AVAILABLE": "tensorboard",
    "_TENSORBOARDX_AVAILABLE": "tensorboardX",
    "_MLFLOW_AVAILABLE": "mlflow",
    "_WANDB_AVAILABLE": "wandb",
    "_COMET_AVAILABLE": "comet_ml",
    "_NEPTUNE_AVAILABLE": "neptune",
    "_DEEPSPEED_AVAILABLE": "deepspeed",
    "_PSUTIL_AVAILABLE": "psutil",
    "_JSONARGPARSE_AVAILABLE": "jsonargparse",
}


def test_flags_are_computed_facts_from_any_lightning_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import importlib.metadata
    import importlib.util

    import torch

    with lightning_imports():
        imports = importlib.import_module("lightning.pytorch.utilities.imports")
        fabric_imports = importlib.import_module("lightning.fabric.utilities.imports")
        mlflow_logger = importlib.import_module("lightning.pytorch.loggers.mlflow")
        for flag, package in _PACKAGES.items():
            expected = importlib.util.find_spec(package) is not None
            assert getattr(imports, flag) is expected, flag
            assert getattr(mlflow_logger, flag) is expected, flag  # a flag resolves in whichever module it is read
        assert fabric_imports._IS_WINDOWS is (sys.platform == "win32")
        assert fabric_imports._TORCH_GREATER_EQUAL_2_0 is True
        assert fabric_imports._TORCH_GREATER_EQUAL_99_0 is False
        assert fabric_imports._TORCH_LESS_2_0 is False
        assert imports._PYTHON_GREATER_EQUAL_3_8_0 is True
        assert imports._PYTHON_GREATER_EQUAL_3_99_0 is False
        tm = importlib.util.find_spec("torchmetrics") is not None
        assert imports._TORCHMETRICS_GREATER_EQUAL_0_1_0 is tm
        assert imports._TORCHMETRICS_GREATER_EQUAL_99_0 is False
        major, minor = (int(p) for p in torch.__version__.split(".")[:2])
        assert getattr(fabric_imports, f"_TORCH_GREATER_EQUAL_{major}_{minor}") is True
        assert getattr(fabric_imports, f"_TORCH_GREATER_EQUAL_{major}_{minor + 1}") is False
        # computed, not assumed: a package appears -> its flag is True (a fresh name, so nothing is cached)
        assert imports._FULMEN_FLAG_PROBE_AVAILABLE is False
        (tmp_path / "fulmen_flag_probe_two").mkdir()
        (tmp_path / "fulmen_flag_probe_two" / "__init__.py").write_text("")
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.invalidate_caches()
        assert imports._FULMEN_FLAG_PROBE_TWO_AVAILABLE is True
        with pytest.raises(AttributeError):
            imports.not_a_flag  # noqa: B018


_REAL_FLAG_MODULES = [
    "utilities.imports",
    "loggers.tensorboard",
    "loggers.mlflow",
    "loggers.wandb",
    "loggers.comet",
    "loggers.neptune",
    "callbacks.progress.rich_progress",
    "core.module",
    "strategies.deepspeed",
    "tuner.lr_finder",
    "cli",
]


def test_flags_match_real_lightning() -> None:
    """Each flag real Lightning 2.6.1's modules define has the same truth value under fulmen's aliases."""
    import importlib
    import re

    pytest.importorskip("pytorch_lightning")
    flag = re.compile(r"^_([A-Z0-9_]+_AVAILABLE|TORCH_(GREATER_EQUAL|LESS_EQUAL|LESS)_[0-9_]+|PYTHON_GREATER_EQUAL_[0-9_]+|IS_WINDOWS)$")
    expected: dict[tuple[str, str], bool] = {}
    for root, real_root in (("lightning.pytorch", "pytorch_lightning"), ("lightning.fabric", "lightning_fabric")):
        for rel in _REAL_FLAG_MODULES if root == "lightning.pytorch" else ["utilities.imports", "loggers.tensorboard"]:
            module = importlib.import_module(f"{real_root}.{rel}")
            for name, value in vars(module).items():
                if flag.match(name):
                    expected[(f"{root}.{rel}", name)] = bool(value)
    assert len(expected) > 20
    with lightning_imports():
        got = {key: bool(getattr(importlib.import_module(key[0]), key[1])) for key in expected}
    assert got == expected


def test_cli_lightning_logo(capsys: pytest.CaptureFixture[str]) -> None:
    with lightning_imports():
        from lightning.pytorch import cli_lightning_logo
        from pytorch_lightning import cli_lightning_logo as again

    assert cli_lightning_logo is again is fulmen.cli_lightning_logo
    cli_lightning_logo()
    out = capsys.readouterr().out
    assert "fulmen" in out and len(out.splitlines()) > 5
    assert "\033[" not in out  # not a terminal: no color codes


_LU_PROGRAM = """
    import os, sys
    {setup}
    from lightning_utilities.core.rank_zero import rank_zero_only

    @rank_zero_only
    def only_rank_zero():
        return "ran"

    print("RANK", rank_zero_only.rank, only_rank_zero())
"""


@pytest.mark.parametrize(
    ("setup", "env_rank", "expected"),
    [
        ("from fulmen.compat import enable_lightning_imports; enable_lightning_imports()", None, "RANK 0 ran"),
        ("from fulmen.compat import enable_lightning_imports; enable_lightning_imports()", "1", "RANK 1 None"),
        # plain fulmen: the rank is set when the run is configured (Trainer/Fabric), before the library's import
        ("import fulmen; fulmen.Fabric(accelerator='cpu', devices=1)", None, "RANK 0 ran"),
        ("import fulmen; fulmen.Trainer(logger=False, enable_checkpointing=False)", "1", "RANK 1 None"),
    ],
)
def test_lightning_utilities_rank_is_set(setup: str, env_rank: str | None, expected: str) -> None:
    """lightning_utilities' rank_zero_only raises until its rank is set; Lightning sets it, so fulmen must."""
    pytest.importorskip("lightning_utilities")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "SLURM_PROCID")}
    if env_rank is not None:
        env["RANK"] = env_rank
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_LU_PROGRAM.format(setup=setup))],
        check=False, capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout


def test_lightning_utilities_rank_follows_the_strategy(tmp_path: Path) -> None:
    """Two DDP processes (gloo): each rank's lightning_utilities rank_zero_only.rank is its global rank."""
    pytest.importorskip("lightning_utilities")
    script = tmp_path / "prog.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import fulmen

            def work(fabric):
                from lightning_utilities.core.rank_zero import rank_zero_only
                with open(r"{tmp_path}/rank%d.txt" % fabric.global_rank, "w") as f:
                    f.write(str(rank_zero_only.rank))

            if __name__ == "__main__":
                fulmen.Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn").launch(work)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=180, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "rank0.txt").read_text() == "0"
    assert (tmp_path / "rank1.txt").read_text() == "1"


def test_more_public_helpers() -> None:
    """Enums, ``is_wrapped``, the tuner's attribute helpers and the OOM helpers under their Lightning paths."""
    import torch

    import fulmen.fabric

    with lightning_imports():
        from lightning.fabric import is_wrapped
        from lightning.fabric.utilities.enums import LightningEnum
        from lightning.pytorch.utilities import GradClipAlgorithmType
        from lightning.pytorch.utilities.memory import garbage_collection_cuda, is_oom_error
        from lightning.pytorch.utilities.parsing import lightning_getattr, lightning_hasattr

    assert GradClipAlgorithmType.NORM == "norm" == GradClipAlgorithmType.from_str("Norm")
    assert issubclass(GradClipAlgorithmType, LightningEnum)
    fabric = fulmen.fabric.Fabric(accelerator="cpu", devices=1)
    module = torch.nn.Linear(2, 2)
    assert not is_wrapped(module) and is_wrapped(fabric.setup_module(module))
    assert is_oom_error(RuntimeError("CUDA out of memory. Tried to allocate")) and not is_oom_error(ValueError("x"))
    garbage_collection_cuda()  # no CUDA here: a no-op, not an error

    class Model(torch.nn.Module):
        lr = 0.1

    assert lightning_hasattr(Model(), "lr") and lightning_getattr(Model(), "lr") == 0.1
