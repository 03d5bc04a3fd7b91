"""Publishing model bundles: key generation and signed packing (`edgeroute model ...`).

`pack` writes a complete new bundle folder atomically: files are staged in a temporary
sibling folder and renamed into place, so a reader never sees a half-written bundle.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from router.errors import BundleError, ConfigError
from router.manifest import MANIFEST_FILE, parse_manifest, sha256_hex
from router.signing import SIGNATURE_FILE, key_id_of, sign_manifest
from runtime.bundle import load_bundle


def keygen(prefix: Path) -> tuple[Path, Path, str]:
    """Write `PREFIX.key` (private, mode 0600) and `PREFIX.pub`; return both and the key id.

    Refuses (FileExistsError) to overwrite an existing key.
    """
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    priv_path, pub_path = prefix.with_suffix(".key"), prefix.with_suffix(".pub")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    pub_path.write_bytes(public)
    return priv_path, pub_path, key_id_of(key.public_key())


def pack(
    src: Path,
    out: Path,
    private_pem: bytes,
    *,
    version: str | None = None,
    now: dt.datetime | None = None,
) -> Path:
    """Sign the bundle in `src` into a new folder `out`.

    Every file of `src` (except an old signature) is copied and listed with its sha256 in
    the manifest (a `files` list in the source manifest is replaced, or not needed),
    `created_at` is set, `version` replaced if given, and `manifest.sig` written; the
    staged folder must pass the one bundle validation (`runtime.bundle.load_bundle`)
    before it is renamed into place. Raises BundleError if `src` has no valid manifest or
    the bundle fails validation, ConfigError if `out` exists.
    """
    if out.exists():
        raise ConfigError(f"{out} already exists (choose a new folder)", field="out")
    source = src / MANIFEST_FILE
    try:
        draft = json.loads((src / MANIFEST_FILE).read_bytes())
    except FileNotFoundError:
        raise BundleError(f"{source}: missing (write one with `edgeroute model init`)") from None
    except ValueError as exc:
        raise BundleError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(draft, dict):
        raise BundleError(f"{source}: expected a JSON object")
    names = sorted(
        p.name
        for p in src.iterdir()
        if p.is_file() and p.name not in (MANIFEST_FILE, SIGNATURE_FILE)
    )
    if not names:
        raise BundleError(f"{src}: no files to pack")
    created = (now or dt.datetime.now(dt.UTC)).isoformat()
    data = dict(draft)
    data.update(files={n: sha256_hex((src / n).read_bytes()) for n in names}, created_at=created)
    if version is not None:
        data["version"] = version
    manifest_bytes = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    parse_manifest(manifest_bytes, str(source))
    signature = sign_manifest(manifest_bytes, private_pem)
    files = {n: (src / n).read_bytes() for n in names}
    files.update({MANIFEST_FILE: manifest_bytes, SIGNATURE_FILE: signature})
    return publish_bundle(out, files, shown_as=src)


def publish_bundle(
    out: Path,
    files: dict[str, bytes],
    *,
    shown_as: Path,
    task: str | None = None,
    role: str | None = None,
) -> Path:
    """Write `files` (name -> bytes) as the bundle folder `out`, atomically: staged in a
    sibling folder, checked by `validate_staged` (refusals name `shown_as`), fsynced, then
    renamed into place. Raises BundleError (nothing is left behind) or OSError."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, data in files.items():
            (stage / name).write_bytes(data)
        validate_staged(stage, shown_as, task=task, role=role)
        for f in stage.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def validate_staged(
    stage: Path, shown_as: Path, *, task: str | None = None, role: str | None = None
) -> None:
    """The one bundle validation (`runtime.bundle.load_bundle`) of a folder staged before
    its rename; a refusal names `shown_as` (what the user named) instead of the stage."""
    try:
        load_bundle(stage, task=task, role=role)
    except BundleError as exc:
        message = exc.message.replace(str(stage), str(shown_as))
        raise BundleError(message, field=exc.field, code=exc.code) from None
