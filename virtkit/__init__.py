"""virtkit: virtual machines and containers on Linux servers, made in seconds, kept apart, moved.

This package's top level stays light: `virtkit --version` imports nothing but this module and click,
and `virtkit run`'s fast path nothing at all (not even typing). The library's names
(`from virtkit import Host`, see virtkit/library.py) are imported on first use.
"""

__version__ = "0.1.0"

__all__ = ["Host", "Instance", "__version__"]

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from virtkit.library import Host, Instance


def __getattr__(name: str) -> object:
    if name in ("Host", "Instance"):
        from virtkit import library

        return getattr(library, name)
    raise AttributeError(f"module 'virtkit' has no attribute {name!r}")
