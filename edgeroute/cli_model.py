"""`edgeroute model ...`: model bundles."""

from __future__ import annotations

import sys
from pathlib import Path

import click

# ---- model ------------------------------------------------------------------------------


@click.group()
def model() -> None:
    """Model bundles."""


@model.command("build-demo")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Train/test split seed.")
def build_demo(out_dir: Path, seed: int) -> None:
    """Train the `digits` edge and cloud models and write their bundles to OUT_DIR."""
    from edgeroute.demo_models import build_demo_bundles

    build = build_demo_bundles(out_dir, seed=seed)
    click.echo(f"edge bundle:  {build.edge_dir}  (test accuracy {build.edge_accuracy:.4f})")
    click.echo(f"cloud bundle: {build.cloud_dir}  (test accuracy {build.cloud_accuracy:.4f})")


@model.command("keygen")
@click.argument("prefix", type=click.Path(path_type=Path))
def keygen_cmd(prefix: Path) -> None:
    """Create an Ed25519 signing key: PREFIX.key (keep secret) and PREFIX.pub (ship)."""
    from edgeroute.bundle_tools import keygen

    try:
        priv, pub, key_id = keygen(prefix)
    except FileExistsError as exc:
        raise click.ClickException(f"{exc.filename} exists; refusing to overwrite a key") from None
    click.echo(f"private key: {priv} (mode 0600)\npublic key:  {pub}\nkey id:      {key_id}")


@model.command("pack")
@click.argument("src_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(path_type=Path, exists=True),
    help="Ed25519 private key (PEM) from `edgeroute model keygen`.",
)
@click.option("--version", default=None, help="Set the bundle version.")
def pack_cmd(src_dir: Path, out: Path, key_path: Path, version: str | None) -> None:
    """Write SRC_DIR as a signed bundle OUT (sha256 of every file, manifest.sig)."""
    from edgeroute.bundle_tools import pack
    from edgeroute.cli_common import fail
    from router.errors import EdgerouteError

    try:
        pack(src_dir, out, key_path.read_bytes(), version=version)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    except EdgerouteError as exc:
        fail(exc)
    click.echo(f"signed bundle written to {out}")


@model.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--pubkey",
    "pubkeys",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path, exists=True),
    help="Trusted public key (PEM).",
)
def verify_cmd(bundle: Path, pubkeys: tuple[Path, ...]) -> None:
    """Check BUNDLE: signature by a trusted key, every file's sha256, the ONNX graph against
    the manifest. Exit 0 if it would be loaded, 1 with the reason if not."""
    from edge_node.bundle import BundleTrust, load_bundle
    from router.errors import BundleError
    from router.signing import key_id_of, public_key_from_pem

    try:
        keys = {
            key_id_of(k): k for k in (public_key_from_pem(p.read_bytes(), str(p)) for p in pubkeys)
        }
        loaded = load_bundle(bundle, BundleTrust(require_signed=True, keys=keys))
    except BundleError as exc:
        click.echo(f"REJECTED ({exc.code}): {exc.message}", err=True)
        sys.exit(1)
    m = loaded.manifest
    click.echo(
        f"ok: {m.task} {m.version} ({m.role}), signed by {loaded.signed_by}, "
        f"{len(m.files)} file(s) verified"
    )
