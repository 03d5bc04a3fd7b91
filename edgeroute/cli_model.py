"""`edgeroute model ...`: model bundles."""

from __future__ import annotations

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
