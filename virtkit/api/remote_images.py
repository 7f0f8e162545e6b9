"""The image store of a remote server, shaped as the local one the CLI uses (ops/images.py).

`RemoteImages` answers as `LocalImages` in cli/image.py does: ImageRecords rebuilt from
`/1.0/images` (api/routes/images.py); a build is an operation the client waits for. An image's
files are the server's: `path` names them as they are there (under the server's state root).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from virtkit.api.remote_common import seg

if TYPE_CHECKING:
    from virtkit.api.client import Client
    from virtkit.images.staged import Progress
    from virtkit.model import ImageRecord

ImageList = list["ImageRecord"]
PROGRESS_POLL = 0.5  # seconds between two looks at a build's progress
Names = list[str]


def image_of(document: dict[str, object]) -> ImageRecord:
    from virtkit.model import ImageRecord

    return ImageRecord.model_validate(document)


class RemoteImages:
    """The images of a server's API."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def list(self) -> list[ImageRecord]:
        return [image_of(document) for document in self.client.request("GET", "/1.0/images")]

    def get(self, ref: str) -> ImageRecord:
        return image_of(self.client.request("GET", f"/1.0/images/{seg(ref)}"))

    def path(self, record: ImageRecord) -> Path:
        """Where the image's files are on the server."""
        from virtkit.images.store import IMAGES_DIR

        return Path(str(self.client.info()["root"])) / IMAGES_DIR / record.fingerprint

    def delete(self, ref: str) -> ImageRecord:
        return image_of(self.client.request("DELETE", f"/1.0/images/{seg(ref)}"))

    def add_alias(self, ref: str, alias: str) -> ImageRecord:
        return image_of(self.client.request("POST", f"/1.0/images/{seg(ref)}/aliases", json={"alias": alias}))

    def remove_alias(self, alias: str) -> ImageRecord:
        return image_of(self.client.request("DELETE", f"/1.0/images/aliases/{seg(alias)}"))

    def build_tiny(self, arch: str, progress: Progress) -> ImageRecord:
        """Built on the server; its progress, as the operation records it, given to `progress`."""
        return self._build({"builder": "tiny", "arch": arch}, progress)[0]

    def build_debian(self, release: str, packages: Names, arch: str, flavour: str, refresh: bool,
                     progress: Progress) -> ImageList:  # fmt: skip
        body = {"builder": "debian", "release": release, "packages": packages, "arch": arch,
                "flavour": flavour, "refresh": refresh}  # fmt: skip
        return self._build(body, progress)

    def _build(self, body: dict[str, object], progress: Progress) -> ImageList:
        """The images a build operation made, its progress passed on while it runs (a phase the
        server ends between two looks is not seen)."""
        document = self.client.request("POST", "/1.0/images/build", json=body)
        operation = str(document["id"])
        while document.get("status") in ("pending", "running"):
            if document.get("message"):
                progress(str(document["message"]), float(document.get("progress") or 0.0) / 100)
            document = self.client.request("GET", f"/1.0/operations/{operation}/wait",
                                           params={"timeout": PROGRESS_POLL}, timeout=PROGRESS_POLL + 60)
        return [image_of(image) for image in self.client.wait(operation)["images"]]
