"""A bare QEMU harness for smoke-booting the tiny image in tests (the VM driver is not used).

The serial console is a unix socket QEMU waits on before starting the guest; a thread reads it
continuously into memory and console.log (QEMU's own chardev logfile duplicates characters when
the socket reader lags). The readiness port is a virtio-serial port logged to a file; QMP is
reached with raw JSON. QEMU is always killed and reaped by `stop`.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import threading
import time
from pathlib import Path

from virtkit.images.tinyinit import READY_MARKER, READY_PORT


def host_tsc_khz() -> int | None:
    """The host's TSC rate, which a TCG guest sees as its own (from /proc/cpuinfo's "cpu MHz").

    A microvm guest under TCG has no HPET or PM timer to calibrate its TSC against; when the PIT
    calibration fails on a busy host it hangs, unless told the rate with tsc_early_khz=.
    """
    match = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    return int(float(match.group(1)) * 1000) if match else None


class TinyVM:
    """One QEMU process booting a built tiny image directly (kernel + initrd)."""

    def __init__(self, workdir: Path, argv: list[str], *, mmio: bool) -> None:
        self.dir = workdir
        self.console_log = workdir / "console.log"
        self.ready_log = workdir / "ready.log"
        self.qmp_path = workdir / "qmp.sock"
        self.console_path = workdir / "console.sock"
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [*argv, *self._io_args(mmio)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        self._output_lock = threading.Lock()
        self._received = bytearray()
        self._console = self._connect(self.console_path)
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()

    def _connect(self, path: Path, timeout: float = 10.0) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                return sock
            except OSError:
                sock.close()
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(f"QEMU did not open {path.name}: {self._output()}") from None
                time.sleep(0.01)

    def _read_console(self) -> None:
        with self.console_log.open("ab") as log:
            while True:
                try:
                    chunk = self._console.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                with self._output_lock:
                    self._received += chunk
                log.write(chunk)
                log.flush()

    @classmethod
    def boot(
        cls, workdir: Path, *, machine: str, kernel: Path, initrd: Path, append: str, devices: list[str],
        arch: str = "x86_64", cpu: str = "max",
    ) -> TinyVM:
        """Boot directly; virtio devices are on MMIO for microvm and arm's virt, else on PCI."""
        argv = [
            f"qemu-system-{arch}", "-M", machine, "-accel", "tcg", "-cpu", cpu, "-m", "256", "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", append, *devices,
        ]
        return cls(workdir, argv, mmio=machine.startswith("microvm") or arch == "aarch64")

    def _io_args(self, mmio: bool) -> list[str]:
        serial = "virtio-serial-device" if mmio else "virtio-serial-pci"
        return [
            "-chardev", f"socket,id=con,path={self.console_path},server=on,wait=on",
            "-serial", "chardev:con",
            "-device", serial,
            "-chardev", f"file,id=ready,path={self.ready_log}",
            "-device", f"virtserialport,chardev=ready,name={READY_PORT}",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
        ]

    def console(self) -> str:
        with self._output_lock:
            return self._received.decode(errors="replace")

    def _text(self, path: Path) -> str:
        if path == self.console_log:
            return self.console()
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for(self, path: Path, text: str, timeout: float) -> float:
        """Seconds since launch until `text` appeared in `path`; AssertionError on timeout or exit."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if text in self._text(path):
                return time.monotonic() - self.started
            if self.process.poll() is not None:
                raise AssertionError(f"QEMU exited ({self.process.returncode}): {self._output()}")
            time.sleep(0.02)
        raise AssertionError(f"no {text!r} in {path.name} after {timeout:g} s; console:\n{self.console()}")

    def wait_ready(self, timeout: float = 30.0) -> float:
        return self.wait_for(self.console_log, READY_MARKER, timeout)

    def run(self, command: str, timeout: float = 20.0) -> str:
        """Type `command` on the console shell and return what it printed.

        The line is typed again when the shell did not echo it within 3 s (it may not be
        reading the console yet right after the readiness marker).
        """
        tag = secrets.token_hex(4)
        begin, end = f"<<{tag}", f"{tag}>>"
        # The markers are split by quotes so the echoed command line does not match them.
        line = f"echo '<<''{tag}'; {command}; echo '{tag}''>>'\n"
        deadline = time.monotonic() + timeout
        mark, sent = len(self.console()), 0.0
        while time.monotonic() < deadline:
            out = self.console()[mark:]
            if begin in out and end in out:
                return out.split(begin, 1)[1].split(end, 1)[0].replace("\r", "").strip("\n")
            if begin not in out and time.monotonic() - sent > 3.0:
                self._console.sendall(line.encode())
                sent = time.monotonic()
            time.sleep(0.05)
        raise AssertionError(f"no answer to {command!r}; console:\n{self.console()}")

    def qmp(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as qmp:
            qmp.settimeout(10)
            qmp.connect(str(self.qmp_path))
            stream = qmp.makefile("rw")
            stream.readline()  # greeting
            for execute in ("qmp_capabilities", command):
                stream.write(json.dumps({"execute": execute}) + "\n")
                stream.flush()
                while "return" not in (reply := json.loads(stream.readline())) and "error" not in reply:
                    pass
                assert "error" not in reply, reply

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            message = f"QEMU still running after {timeout:g} s; console:\n{self.console()}"
            raise AssertionError(message) from None

    def _output(self) -> str:
        return self.process.stdout.read() if self.process.stdout else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._console.close()
        self._reader.join(5)
        if self.process.stdout:
            self.process.stdout.close()
