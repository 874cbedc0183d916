"""The loops. ``fit.py`` read top to bottom shows every training hook in order."""
