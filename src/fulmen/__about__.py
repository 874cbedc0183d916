__version__ = "0.1.0"
# The Lightning version whose checkpoint layout and API fulmen follows.
LIGHTNING_COMPAT_VERSION = "2.6.1"
