"""The QEMU VM driver."""
