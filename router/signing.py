"""Ed25519 signatures of model bundles (pure: bytes in, verdicts out).

A signed bundle has `manifest.sig` beside `manifest.json`: JSON `{"algorithm": "ed25519",
"key_id", "signature"}` where `signature` is base64 of the Ed25519 signature over the exact
bytes of `manifest.json`. The manifest lists the sha256 of every file, so a valid signature
plus matching hashes covers the whole bundle. `key_id` is the first 16 hex digits of the
sha256 of the raw public key. Every failure raises BundleError with a distinct `code`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, ValidationError

from router.errors import BundleError

SIGNATURE_FILE = "manifest.sig"


class BundleSignature(BaseModel):
    """The content of `manifest.sig`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str
    signature: str


def public_key_from_pem(pem: bytes, source: str = "<key>") -> Ed25519PublicKey:
    """Parse an Ed25519 public key (PEM); BundleError(code=bad_key) otherwise."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise BundleError(f"{source}: not a PEM public key ({exc})", code="bad_key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{source}: not an Ed25519 public key", code="bad_key")
    return key


def key_id_of(key: Ed25519PublicKey) -> str:
    """The short id of a public key (16 hex digits of the sha256 of its raw bytes)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_manifest(manifest_bytes: bytes, private_pem: bytes) -> bytes:
    """The `manifest.sig` bytes for `manifest_bytes`, signed with an Ed25519 private key (PEM).

    Deterministic (Ed25519 signatures are). Raises BundleError(code=bad_key) for a key that
    is not an unencrypted Ed25519 private key.
    """
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"not a usable private key ({exc})", code="bad_key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError("not an Ed25519 private key", code="bad_key")
    sig = BundleSignature(
        key_id=key_id_of(key.public_key()),
        signature=base64.b64encode(key.sign(manifest_bytes)).decode(),
    )
    return sig.model_dump_json(indent=2).encode() + b"\n"


def verify_manifest_signature(
    manifest_bytes: bytes,
    signature_bytes: bytes | None,
    trusted: Mapping[str, Ed25519PublicKey],
    source: str,
) -> str:
    """Check `manifest.sig` against the trusted keys (key_id -> key); return the key_id.

    Raises BundleError with code `unsigned_bundle` (no signature), `bad_signature_file`
    (unparseable), `untrusted_key` (signed by a key not in `trusted`) or `bad_signature`
    (the manifest was changed after signing, or the signature is forged).
    """
    if signature_bytes is None:
        raise BundleError(
            f"{source}: bundle is not signed (no {SIGNATURE_FILE}) and the "
            "policy requires signed bundles",
            code="unsigned_bundle",
        )
    try:
        sig = BundleSignature.model_validate_json(signature_bytes)
        raw = base64.b64decode(sig.signature, validate=True)
    except (ValidationError, binascii.Error, ValueError):
        raise BundleError(
            f"{source}: {SIGNATURE_FILE} is malformed", code="bad_signature_file"
        ) from None
    key = trusted.get(sig.key_id)
    if key is None:
        raise BundleError(
            f"{source}: signed by key {sig.key_id}, which is not among the "
            f"trusted keys ({', '.join(sorted(trusted)) or 'none'})",
            code="untrusted_key",
        )
    try:
        key.verify(raw, manifest_bytes)
    except InvalidSignature:
        raise BundleError(
            f"{source}: signature does not match manifest.json (changed after signing, or forged)",
            code="bad_signature",
        ) from None
    return sig.key_id
