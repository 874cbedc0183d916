"""Progress bars: the ``ProgressBar`` base, ``TQDMProgressBar`` and ``RichProgressBar`` (needs ``fulmen[rich]``)."""

from fulmen.callbacks.progress.progress_bar import ProgressBar
from fulmen.callbacks.progress.rich_progress import RichProgressBar, RichProgressBarTheme
from fulmen.callbacks.progress.tqdm_progress import TQDMProgressBar

__all__ = ["ProgressBar", "RichProgressBar", "RichProgressBarTheme", "TQDMProgressBar"]
