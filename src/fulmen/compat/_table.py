"""The Lightning 2.x public module tree, and which fulmen modules each Lightning module stands for.

Keys are module paths relative to a package root: ``"pytorch"`` roots are ``lightning.pytorch`` and
``pytorch_lightning``; ``"fabric"`` roots are ``lightning.fabric`` and ``lightning_fabric``. The value is a
tuple of fulmen modules whose names the Lightning module exposes, searched in order, or ``None`` to
derive it: the fulmen module at the same relative path if there is one, else the parent's targets (so
``lightning.pytorch.callbacks.lr_finder`` exposes what ``fulmen.callbacks`` has, and a name fulmen lacks
fails with "not supported yet" instead of a confusing module error).

Only the modules listed here are importable under ``fulmen run``; private modules (``lightning.pytorch.loops``,
``...trainer.connectors``) are not part of the API users program against.
"""

from __future__ import annotations

# The precision plugin modules lightning.pytorch and lightning.fabric both have; fulmen has them all in one.
_PRECISION_MODULES: dict[str, tuple[str, ...] | None] = {
    f"plugins.precision.{name}": ("fulmen.plugins.precision",)
    for name in (
        "amp",
        "bitsandbytes",
        "deepspeed",
        "double",
        "fsdp",
        "half",
        "precision",
        "transformer_engine",
        "xla",
    )
}

# lightning.{pytorch,fabric}.plugins.environments.<module>: fulmen's module of that name, or the package.
_ENVIRONMENT_MODULES: dict[str, tuple[str, ...] | None] = {
    **{
        f"plugins.environments.{name}": None
        for name in ("cluster_environment", "kubeflow", "lsf", "mpi", "slurm", "torchelastic", "xla")
    },
    # find_free_network_port lives with the other process-group helpers
    "plugins.environments.lightning": ("fulmen.plugins.environments.lightning", "fulmen.utilities.distributed"),
}

# The names of Lightning's public modules come from the Lightning 2.6 package layout; the values are fulmen's.
PYTORCH: dict[str, tuple[str, ...] | None] = {
    "": ("fulmen",),
    # accelerators
    "accelerators": ("fulmen.accelerators",),
    "accelerators.accelerator": None,
    "accelerators.cpu": None,
    "accelerators.cuda": None,
    "accelerators.mps": None,
    "accelerators.tpu": ("fulmen.accelerators",),  # Lightning's deprecated TPUAccelerator alias
    "accelerators.xla": None,
    # callbacks
    "callbacks": ("fulmen.callbacks",),
    "callbacks.batch_size_finder": None,
    "callbacks.callback": None,
    "callbacks.checkpoint": ("fulmen.callbacks.callback",),
    "callbacks.device_stats_monitor": None,
    "callbacks.early_stopping": None,
    "callbacks.finetuning": None,
    "callbacks.gradient_accumulation_scheduler": None,
    "callbacks.lambda_function": None,
    "callbacks.lr_finder": None,
    "callbacks.lr_monitor": None,
    "callbacks.model_checkpoint": None,
    "callbacks.model_summary": None,
    "callbacks.on_exception_checkpoint": None,
    "callbacks.prediction_writer": None,
    "callbacks.progress": None,
    "callbacks.progress.progress_bar": None,
    "callbacks.progress.rich_progress": None,
    "callbacks.progress.tqdm_progress": None,
    "callbacks.pruning": None,
    "callbacks.rich_model_summary": ("fulmen.callbacks.model_summary",),
    "callbacks.spike": None,
    "callbacks.stochastic_weight_avg": None,
    "callbacks.throughput_monitor": None,
    "callbacks.timer": None,
    "callbacks.weight_averaging": None,
    # cli
    "cli": ("fulmen.cli",),
    # core
    "core": ("fulmen.core",),
    "core.datamodule": None,
    "core.hooks": None,
    "core.mixins": ("fulmen.core.hparams",),
    "core.mixins.hparams_mixin": ("fulmen.core.hparams",),
    "core.module": None,
    "core.optimizer": None,
    "core.saving": None,
    # demos
    "demos": ("fulmen.demos",),
    "demos.boring_classes": None,
    "demos.lstm": None,
    "demos.mnist_datamodule": ("fulmen.demos.mnist_datamodule", "fulmen.demos"),
    "demos.transformer": None,
    # loggers
    "loggers": ("fulmen.loggers",),
    "loggers.comet": None,
    "loggers.csv_logs": None,
    "loggers.litlogger": None,
    "loggers.logger": None,
    "loggers.mlflow": None,
    "loggers.neptune": None,
    "loggers.tensorboard": None,
    "loggers.utilities": None,
    "loggers.wandb": None,
    # plugins
    "plugins": (
        "fulmen.plugins.precision",
        "fulmen.plugins.environments",
        "fulmen.checkpoint",
        "fulmen.plugins.layer_sync",
    ),
    "plugins.environments": ("fulmen.plugins.environments",),
    **_ENVIRONMENT_MODULES,
    "plugins.io": ("fulmen.checkpoint",),
    "plugins.io.async_plugin": ("fulmen.checkpoint",),
    "plugins.io.checkpoint_plugin": ("fulmen.checkpoint",),
    "plugins.io.torch_plugin": ("fulmen.checkpoint",),
    "plugins.io.wrapper": ("fulmen.checkpoint",),
    "plugins.io.xla_plugin": ("fulmen.checkpoint",),
    "plugins.layer_sync": ("fulmen.plugins.layer_sync",),
    "plugins.precision": ("fulmen.plugins.precision",),
    **_PRECISION_MODULES,
    # profilers
    "profilers": ("fulmen.profilers",),
    "profilers.advanced": None,
    "profilers.base": ("fulmen.profilers",),
    "profilers.profiler": None,
    "profilers.pytorch": None,
    "profilers.simple": None,
    "profilers.xla": ("fulmen.profilers",),
    # strategies
    "strategies": ("fulmen.strategies",),
    "strategies.ddp": None,
    "strategies.deepspeed": None,
    "strategies.fsdp": None,
    "strategies.launchers": None,
    "strategies.model_parallel": None,
    "strategies.parallel": None,
    "strategies.single_device": None,
    "strategies.single_xla": None,
    "strategies.strategy": None,
    "strategies.xla": None,
    # serve (ServableModule, ServableModuleValidator)
    "serve": ("fulmen.serve.servable",),
    "serve.servable_module": ("fulmen.serve.servable",),
    "serve.servable_module_validator": ("fulmen.serve.servable",),
    # trainer
    "trainer": ("fulmen.trainer", "fulmen.utilities.seed"),
    "trainer.states": None,
    "trainer.trainer": None,
    # tuner
    "tuner": ("fulmen.tuner",),
    "tuner.batch_size_scaling": None,
    "tuner.lr_finder": None,
    "tuner.tuning": None,
    # utilities
    "utilities": (
        "fulmen.utilities",
        "fulmen.utilities.combined_loader",
        "fulmen.utilities.grads",
        "fulmen.utilities.warnings",
    ),
    "utilities.argparse": None,
    "utilities.combined_loader": None,
    "utilities.compile": None,
    "utilities.consolidate_checkpoint": None,
    "utilities.data": None,
    "utilities.deepspeed": ("fulmen.strategies.deepspeed",),  # convert_zero_checkpoint_to_fp32_state_dict
    "utilities.enums": None,
    "utilities.exceptions": None,
    "utilities.grads": None,
    "utilities.imports": ("fulmen.compat._imports",),
    "utilities.memory": ("fulmen.tuner._trial",),  # is_oom_error, garbage_collection_cuda
    "utilities.migration": ("fulmen.compat._migration",),
    "utilities.migration.migration": ("fulmen.compat._migration",),
    "utilities.migration.utils": ("fulmen.compat._migration",),
    "utilities.model_helpers": ("fulmen.core.model_helpers",),
    "utilities.model_summary": None,
    "utilities.model_summary.model_summary": ("fulmen.utilities.model_summary",),
    "utilities.parameter_tying": None,
    "utilities.parsing": ("fulmen.utilities.parsing", "fulmen.tuner._attr"),  # + lightning_{has,get,set}attr
    "utilities.rank_zero": None,
    "utilities.seed": None,
    "utilities.signature_utils": None,
    "utilities.types": None,
    "utilities.upgrade_checkpoint": ("fulmen.compat._migration",),
    "utilities.warnings": None,
}

FABRIC: dict[str, tuple[str, ...] | None] = {
    "": ("fulmen.fabric", "fulmen.utilities.seed"),
    "fabric": ("fulmen.fabric.fabric",),
    "wrappers": ("fulmen.fabric.fabric",),
    "connector": ("fulmen.fabric.connector",),
    "cli": ("fulmen.fabric",),
    # accelerators
    "accelerators": ("fulmen.accelerators",),
    "accelerators.accelerator": None,
    "accelerators.cpu": None,
    "accelerators.cuda": None,
    "accelerators.mps": None,
    "accelerators.registry": None,
    "accelerators.xla": None,
    # loggers: Fabric's CSV/TensorBoard loggers take root_dir (fulmen.fabric.loggers), the rest is shared
    "loggers": ("fulmen.fabric.loggers", "fulmen.loggers"),
    "loggers.csv_logs": ("fulmen.fabric.loggers", "fulmen.loggers.csv_logs"),
    "loggers.logger": None,
    "loggers.tensorboard": ("fulmen.fabric.loggers", "fulmen.loggers.tensorboard"),
    # plugins
    "plugins": ("fulmen.plugins.precision", "fulmen.plugins.environments", "fulmen.checkpoint"),
    "plugins.collectives": ("fulmen.plugins.collectives",),
    "plugins.collectives.collective": ("fulmen.plugins.collectives",),
    "plugins.collectives.single_device": ("fulmen.plugins.collectives",),
    "plugins.collectives.torch_collective": ("fulmen.plugins.collectives",),
    "plugins.environments": ("fulmen.plugins.environments",),
    **_ENVIRONMENT_MODULES,
    "plugins.io": ("fulmen.checkpoint",),
    "plugins.io.checkpoint_io": ("fulmen.checkpoint",),
    "plugins.io.torch_io": ("fulmen.checkpoint",),
    "plugins.io.xla": ("fulmen.checkpoint",),
    "plugins.precision": ("fulmen.plugins.precision",),
    **_PRECISION_MODULES,
    "plugins.precision.utils": ("fulmen.plugins.precision",),
    # strategies
    "strategies": ("fulmen.strategies",),
    "strategies.ddp": None,
    "strategies.deepspeed": None,
    "strategies.dp": None,
    "strategies.fsdp": None,
    "strategies.launchers": None,
    "strategies.model_parallel": None,
    "strategies.parallel": None,
    "strategies.registry": None,
    "strategies.single_device": None,
    "strategies.single_xla": None,
    "strategies.strategy": None,
    "strategies.xla": None,
    "strategies.xla_fsdp": None,
    # utilities
    "utilities": ("fulmen.utilities", "fulmen.utilities.warnings"),
    "utilities.apply_func": None,
    "utilities.cloud_io": None,
    "utilities.consolidate_checkpoint": None,
    "utilities.data": None,
    "utilities.device_dtype_mixin": None,
    "utilities.device_parser": None,
    "utilities.distributed": None,
    "utilities.enums": None,
    "utilities.exceptions": None,
    "utilities.imports": ("fulmen.compat._imports",),
    "utilities.init": None,
    "utilities.load": None,
    "utilities.logger": ("fulmen.loggers.utilities",),
    "utilities.optimizer": None,
    "utilities.rank_zero": None,
    "utilities.registry": None,
    "utilities.seed": None,
    "utilities.spike": None,
    "utilities.throughput": None,
    "utilities.types": None,
    "utilities.warnings": None,
}

# ``lightning`` itself: the umbrella package (``import lightning as L``).
UMBRELLA: tuple[str, ...] = ("fulmen",)

# Package roots: ``(lightning name, table)``. ``lightning.pytorch``/``lightning.fabric`` hang under ``lightning``.
ROOTS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "lightning.pytorch": PYTORCH,
    "pytorch_lightning": PYTORCH,
    "lightning.fabric": FABRIC,
    "lightning_fabric": FABRIC,
}

# Top-level names the finder claims (``lightning_utilities`` is a separate, real package and is left alone).
TOP_LEVEL = ("lightning", "pytorch_lightning", "lightning_fabric")
