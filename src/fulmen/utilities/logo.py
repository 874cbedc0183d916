"""``cli_lightning_logo()``: the banner Lightning's example scripts print before they start."""

from __future__ import annotations

import sys

# fulmen's own art: a bolt and the name.
FULMEN_LOGO = r"""
        ____
       /   /
      /   /__      __      _
     /     _/     / _|_  _| |_ __ ___   ___ _ __
    /__   /      | |_| || | | '_ ` _ \ / _ \ '_ \
      /  /       |  _| || | | | | | | |  __/ | | |
     /  /        |_|  \_,_|_|_| |_| |_|\___|_| |_|
    / /
   //              the Lightning API, on fulmen
   /
"""


def cli_lightning_logo() -> None:
    """Print fulmen's logo, as ``lightning.pytorch.cli_lightning_logo()`` prints Lightning's.

    Colored (ANSI magenta) only when stdout is a terminal, so piped output and log files stay plain.
    """
    color = sys.stdout.isatty()
    print()
    print(f"\033[0;35m{FULMEN_LOGO}\033[0m" if color else FULMEN_LOGO)
    print()
