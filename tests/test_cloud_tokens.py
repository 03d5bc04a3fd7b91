"""The cloud's token file: re-read on every change of content, fail closed (real files
in tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloud_service.auth import TokenFile, check_bearer
from router.errors import Unauthorized


def test_token_file_rereads_on_change_and_fails_closed(tmp_path: Path) -> None:
    """Tokens are checked per node, a rewrite revokes, and a missing file refuses all."""
    path = tmp_path / "tokens"
    path.write_text("a tok-a\nb tok-b\n")
    tokens = TokenFile(path)
    tokens.check("a", "Bearer tok-a")
    with pytest.raises(Unauthorized):
        tokens.check("a", "Bearer tok-b")
    path.write_text("b tok-b\n")
    with pytest.raises(Unauthorized):
        tokens.check("a", "Bearer tok-a")
    path.unlink()
    with pytest.raises(Unauthorized):
        tokens.check("b", "Bearer tok-b")
    with pytest.raises(Unauthorized):
        check_bearer({"a": b"x"}, "a", None)


def test_token_file_sees_rotation_that_keeps_size_and_mtime(tmp_path: Path) -> None:
    """A token rotated by `cp -p` (same length, mtime copied) is revoked at the next check."""
    import shutil

    path = tmp_path / "tokens"
    path.write_text("a tok-1\n")
    tokens = TokenFile(path)
    tokens.check("a", "Bearer tok-1")
    staged = tmp_path / "staged"
    staged.write_text("a tok-2\n")
    st = os.stat(path)
    os.utime(staged, ns=(st.st_atime_ns, st.st_mtime_ns))
    shutil.copy2(staged, path)
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns and os.stat(path).st_size == st.st_size
    with pytest.raises(Unauthorized):
        tokens.check("a", "Bearer tok-1")
    tokens.check("a", "Bearer tok-2")
