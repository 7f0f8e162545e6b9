"""virtkit: virtual machines and containers on Linux servers, made in seconds, kept apart, moved.

This package's top level stays light: `virtkit --version` imports nothing but this module and click.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
