"""`virtkit image` commands that need no build: listing, errors on bad references and names."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import Cli
from tests.e2e.test_cli import assert_clear_error


def test_empty_list(virtkit: Cli) -> None:
    result = virtkit("image", "list")
    assert result.returncode == 0, result.stderr
    assert "No images" in result.stdout
    assert json.loads(virtkit("image", "list", "--json").stdout) == []


def test_missing_image(virtkit: Cli, tmp_path: Path) -> None:
    assert_clear_error(virtkit("image", "show", "tiny"), 1, "image 'tiny' not found")
    assert_clear_error(virtkit("image", "delete", "tiny"), 1, "image 'tiny' not found")
    assert_clear_error(virtkit("image", "alias", "add", "tiny", "web"), 1, "image 'tiny' not found")
    assert_clear_error(virtkit("image", "alias", "remove", "web"), 1, "alias 'web' not found")
    assert_clear_error(virtkit("image", "export", "tiny", str(tmp_path / "x.tar")), 1, "not found")
    assert not (tmp_path / "x.tar").exists()


def test_bad_alias(virtkit: Cli) -> None:
    for bad in ("Web", "a/b", "x" * 70, "-x-"):
        assert_clear_error(virtkit("image", "alias", "add", "tiny", "--", bad), 2, "invalid image alias")
