"""Architecture rules from DESIGN.md, checked on the source tree.

- Imports point one way, down the layer list (a lower layer never imports a higher one, not even
  lazily inside a function). ``if TYPE_CHECKING:`` imports are annotations only and are allowed.
- ``torch.distributed`` is imported only in strategies, checkpoint and ``utilities/distributed.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fulmen

ROOT = Path(fulmen.__file__).parent

# low -> high. A module may import its own layer and any layer before it.
LAYERS = [
    ["__about__", "utilities"],
    ["checkpoint", "accelerators", "plugins"],
    ["strategies", "loggers"],
    ["fabric"],
    ["core"],
    ["profilers"],
    ["demos", "callbacks"],
    ["trainer"],
    ["tuner"],
    ["_cli_parser", "cli"],
    ["compat", "__main__", "__init__"],
]
RANK = {name: i for i, group in enumerate(LAYERS) for name in group}

# Known, documented exceptions: (importing module, imported layer) -> reason.
ALLOWED: dict[tuple[str, str], str] = {
    # Lightning-compatible alias modules (``lightning.pytorch.utilities.types`` / export helpers) re-export
    # names that live higher up; nothing inside fulmen imports them.
    ("fulmen.utilities.types", "core"): "Lightning import-path alias",
    ("fulmen.utilities.export", "checkpoint"): "export helper re-using the safetensors writer",
    # the LR-finder/batch-size-finder callbacks are thin wrappers over the tuner's functions, as in Lightning
    ("fulmen.callbacks.lr_finder", "tuner"): "callback wraps tuner function",
    ("fulmen.callbacks.batch_size_finder", "tuner"): "callback wraps tuner function",
    # a checkpoint written by LightningCLI(load_from_checkpoint_support=True) is rebuilt by the CLI's parser
    # (nested class specs, under the import allowlist), as Lightning's load_from_checkpoint calls its CLI's
    ("fulmen.core.saving", "cli"): "load_from_checkpoint rebuilds LightningCLI-saved hyperparameters",
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in ast.walk(node):
                skip.add(id(sub))
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return out


def _modules() -> list[tuple[str, Path]]:
    return [("fulmen." + ".".join(p.relative_to(ROOT).with_suffix("").parts), p) for p in ROOT.rglob("*.py")]


def test_every_layer_is_classified() -> None:
    layers = {_layer(m) for m, _ in _modules()}
    assert layers <= set(RANK), f"unclassified packages: {sorted(layers - set(RANK))}; add them to LAYERS"


def test_imports_point_down_the_layers() -> None:
    violations = []
    for module, path in _modules():
        own = _layer(module)
        for imported in _imports(path):
            if not imported.startswith("fulmen."):
                continue
            target = _layer(imported)
            if RANK.get(target, -1) > RANK[own] and (module, target) not in ALLOWED:
                violations.append(f"{module} imports {imported} ({own} must not depend on {target})")
    assert not violations, "\n".join(violations)


def test_torch_distributed_only_where_allowed() -> None:
    allowed_layers = {"strategies", "checkpoint"}
    offenders = []
    for module, path in _modules():
        for imported in _imports(path):
            if imported.startswith("torch.distributed"):
                if _layer(module) not in allowed_layers and module != "fulmen.utilities.distributed":
                    offenders.append(f"{module} imports {imported}")
    assert not offenders, "\n".join(offenders)
