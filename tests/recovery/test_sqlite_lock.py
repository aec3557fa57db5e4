"""One ``keybrake serve`` per SQLite file, whatever name the file is reached by."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_cli import free_port
from tests.test_cli_operations import api_status, create_token, keybrake, serving

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX links and flock")


@pytest.mark.parametrize("link", [os.symlink, os.link], ids=["symlink", "hard link"])
def test_a_second_server_through_a_link_refuses_to_start(
    tmp_path: Path, link: Callable[[Path, Path], None]
) -> None:
    db = tmp_path / "keybrake.db"
    _, token, _ = create_token(f"sqlite:///{db}", "default")
    (tmp_path / "elsewhere").mkdir()
    other_name = tmp_path / "elsewhere" / "same.db"
    link(db, other_name)
    with serving(f"sqlite:///{db}") as url:
        second = keybrake(
            "serve",
            "--port",
            str(free_port()),
            "--database",
            f"sqlite:///{other_name}",
            timeout=20,
        )
        assert second.returncode == 2, second.stderr
        assert f"keybrake serve: another keybrake server is using {other_name}" in second.stderr
        assert api_status(url, token) == 200  # the first one goes on serving
    # Once it has stopped, the file is free again, by either name.
    with serving(f"sqlite:///{other_name}") as url:
        assert api_status(url, token) == 200


def test_the_lock_leaves_no_file_beside_the_database(tmp_path: Path) -> None:
    db = tmp_path / "keybrake.db"
    create_token(f"sqlite:///{db}", "default")
    with serving(f"sqlite:///{db}"):
        assert not (tmp_path / "keybrake.db.serve-lock").exists()
