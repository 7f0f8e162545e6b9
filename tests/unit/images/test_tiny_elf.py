"""ELF reading for builders: machine, static or dynamic, PVH notes; garbage reads as not-ELF."""

from __future__ import annotations

from virtkit.images import elf

from .elfbuild import AARCH64, X86_64, make_elf, note, pvh_kernel


def test_machine_names_the_architecture() -> None:
    assert elf.machine(make_elf(X86_64)) == "x86_64"
    assert elf.machine(make_elf(AARCH64)) == "aarch64"
    assert elf.machine(make_elf(40)) == "elf-machine-40"


def test_static_means_no_interpreter() -> None:
    assert elf.is_static(make_elf())
    assert not elf.is_static(make_elf(interp=True))


def test_pvh_note_is_found_among_others() -> None:
    assert elf.has_pvh_note(pvh_kernel())
    assert not elf.has_pvh_note(make_elf(notes=[note(b"Xen", 6), note(b"GNU", 18)]))
    assert not elf.has_pvh_note(make_elf())


def test_garbage_is_not_elf() -> None:
    for data in (b"", b"\x7fELF", b"MZ" + b"\0" * 100, b"\x7fELF\x01\x01" + b"\0" * 80):
        assert elf.machine(data) is None
        assert not elf.is_static(data)
        assert list(elf.segments(data)) == []


def test_truncated_program_headers_stop_quietly() -> None:
    data = make_elf(notes=[note(b"Xen", 18)])
    assert list(elf.segments(data[:70])) == []
    assert not elf.has_pvh_note(data[:-8])
