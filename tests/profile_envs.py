"""Fresh virtual environments holding one install profile each (`requirements/<profile>.lock`,
hash-checked, made with uv), for tests that run the product from them."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "requirements"


@dataclass(frozen=True)
class ProfileEnv:
    """One environment: its interpreter and the size of its installed packages."""

    python: Path
    installed_mb: float

    @property
    def bin(self) -> Path:
        """The environment's scripts folder (`edgeroute`, and `ray`, `serve` for cloud)."""
        return self.python.parent


def make_env(path: Path, profile: str) -> ProfileEnv:
    """A fresh virtual environment at `path` with exactly the profile's lock (hash-checked)
    and edgeroute installed from this checkout (editable: no build files in the checkout)
    without dependencies."""
    uv = str(Path(sys.executable).parent / "uv")
    env = {**os.environ, "UV_NO_PROGRESS": "1"}
    env.pop("VIRTUAL_ENV", None)
    python = path / "bin" / "python"
    lock = str(LOCKS / f"{profile}.lock")
    for argv in (
        [uv, "venv", "--python", sys.executable, str(path)],
        [uv, "pip", "sync", "--python", str(python), "--require-hashes", lock],
        [uv, "pip", "install", "--python", str(python), "--no-deps", "-e", str(ROOT)],
    ):
        subprocess.run(argv, check=True, capture_output=True, env=env, timeout=600)
    site = next((path / "lib").glob("python3*/site-packages"))
    size = sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and not f.is_symlink())
    return ProfileEnv(python, size / 1e6)


@pytest.fixture(scope="session")
def profile_envs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ProfileEnv]:
    """The `edge` and `cloud` profiles, each in its own fresh environment (made once)."""
    root = tmp_path_factory.mktemp("profiles")
    return {profile: make_env(root / profile, profile) for profile in ("edge", "cloud")}
