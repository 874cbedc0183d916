"""The user's classes (LightningModule, LightningDataModule) and the machinery under the loops.

Who owns what:
- ``events``: the one enum of hook names, in loop order.
- ``run_state``: ``RunState``, everything a resume must restore, with the declared list of saved fields.
- ``dispatch``: the one hook dispatcher; calls only overridden hooks, in Lightning's order.
- ``results``: ``self.log`` storage; values stay on the device until a consumer needs a host number.
- ``module`` / ``datamodule`` / ``optimizer`` / ``saving``: the user-facing classes.
"""

from fulmen.core.datamodule import LightningDataModule
from fulmen.core.module import LightningModule

__all__ = ["LightningDataModule", "LightningModule"]
