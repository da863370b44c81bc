"""einplan's version, read by the package, the saved kernels' docstrings and ``einplan --version``."""

__version__ = "0.1.0"
