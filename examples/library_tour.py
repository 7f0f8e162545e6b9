"""virtkit as a Python library: a container and a VM from the tiny image, driven from a script.

Run: .venv/bin/python examples/library_tour.py [--root DIR]   (as root; builds the tiny image if missing)

The same verbs as the CLI (launch, exec, snapshot, restore, stop, copy, delete), over the same
ops; errors are the VirtkitError subclasses the CLI reports.
"""

from __future__ import annotations

import argparse

from virtkit import Host
from virtkit.errors import NotFoundError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None,
                        help="state root (default: $VIRTKIT_ROOT or /var/lib/virtkit)")
    args = parser.parse_args()
    with Host(root=args.root) as host:
        if not any("tiny" in image.aliases for image in host.images()):
            host.build_tiny_image()

        box = host.launch("tiny", "tour-c1", kind="container", memory="64MiB", wait=True)
        print("container:", box.exec(["uname", "-sr"]).stdout.decode().strip(), "|", box.state.value)
        box.exec(["sh", "-c", "echo before > /root/note"])
        box.snapshot("s1")
        box.exec(["sh", "-c", "echo after > /root/note"])
        box.stop()
        box.restore("s1")
        box.start(wait=True)
        print("restored note:", box.exec(["cat", "/root/note"]).stdout.decode().strip())
        box.stop()
        clone = box.copy("tour-c2", snapshot="s1")  # a linked clone of the snapshot
        clone.start(wait=True)
        print("clone's hostname:", clone.exec(["hostname"]).stdout.decode().strip())
        clone.delete(force=True)
        box.delete()

        vm = host.launch("tiny", "tour-vm1", kind="vm", cpus=1, memory="256MiB", wait=True)
        print("vm:", vm.exec(["uname", "-m"]).stdout.decode().strip(), "|", vm.state.value)
        vm.stop(timeout=60)
        vm.delete()

        try:
            host.instance("tour-vm1")
        except NotFoundError as error:
            print("gone:", error)
        print("instances left:", [instance.name for instance in host.instances()])


if __name__ == "__main__":
    main()
