"""General utilities (mirrors ``lightning.pytorch.utilities``)."""

from fulmen.utilities.apply_func import apply_to_collection, move_data_to_device
from fulmen.utilities.data import suggested_max_num_workers
from fulmen.utilities.enums import GradClipAlgorithmType, LightningEnum
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.parsing import AttributeDict, is_picklable
from fulmen.utilities.rank_zero import (
    rank_zero_deprecation,
    rank_zero_info,
    rank_zero_only,
    rank_zero_warn,
)
from fulmen.utilities.seed import isolate_rng, seed_everything
from fulmen.utilities.throughput import measure_flops

__all__ = [
    "AttributeDict",
    "GradClipAlgorithmType",
    "LightningEnum",
    "MisconfigurationException",
    "apply_to_collection",
    "is_picklable",
    "isolate_rng",
    "measure_flops",
    "move_data_to_device",
    "rank_zero_deprecation",
    "rank_zero_info",
    "rank_zero_only",
    "rank_zero_warn",
    "seed_everything",
    "suggested_max_num_workers",
]
