"""Drivers: one contract (`Driver`) for every kind of instance, and the registry that finds them.

`get_driver("vm")` is the QEMU driver (virtkit.drivers.qemu), loaded on first use so that
commands which never touch an instance do not import it. See drivers/base.py for the contract.
"""

from virtkit.drivers.base import (
    Driver,
    ExecResult,
    InstancePaths,
    Runtime,
    Status,
    get_driver,
)

__all__ = ["Driver", "ExecResult", "InstancePaths", "Runtime", "Status", "get_driver"]
