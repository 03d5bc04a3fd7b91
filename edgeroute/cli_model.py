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


def _value_range(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected LOW:HIGH, e.g. 0:16") from None
    return lo, hi


@model.command("init")
@click.argument("onnx_file", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--task", required=True, help="The task the model serves (the policy's task name).")
@click.option("--role", type=click.Choice(["edge", "cloud"]), default="edge", show_default=True)
@click.option("--version", default="1", show_default=True, help="The bundle version.")
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Class labels, one per line (or a JSON list), in the order of the probability "
    "columns; needed only when the graph carries none (skl2onnx classifiers do).",
)
@click.option(
    "--range", "value_range", callback=_value_range, help="Allowed input values, LOW:HIGH."
)
@click.option(
    "--sample",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Inputs to take the allowed range from (.npy, or .csv of numbers).",
)
@click.option("--output", default=None, help="The probability output, if the graph has several.")
@click.option("--description", default="", help="Free text kept in the manifest.")
def init_cmd(
    onnx_file: Path,
    out: Path,
    task: str,
    role: str,
    version: str,
    labels_file: Path | None,
    value_range: tuple[float, float] | None,
    sample: Path | None,
    output: str | None,
    description: str,
) -> None:
    """Make the bundle folder OUT (model.onnx + manifest.json) from ONNX_FILE: input, output
    and class labels read from the graph; written only if every bundle check passes."""
    from edgeroute.cli_common import fail
    from edgeroute.model_init import InitOptions, init_bundle
    from router.errors import ConfigError, EdgerouteError

    if value_range is not None and sample is not None:
        fail(ConfigError("give --range or --sample, not both", field="range"))
    opts = InitOptions(
        task=task,
        role=role,
        version=version,
        labels_file=labels_file,
        value_range=value_range,
        sample=sample,
        output=output,
        description=description,
    )
    try:
        init_bundle(onnx_file, out, opts)
    except EdgerouteError as exc:
        fail(exc)
    click.echo(f"bundle written to {out} (task {task}, {role}, version {version})")


@model.command("keygen")
@click.argument("prefix", type=click.Path(path_type=Path))
def keygen_cmd(prefix: Path) -> None:
    """Create an Ed25519 signing key: PREFIX.key (keep secret) and PREFIX.pub (ship)."""
    from edgeroute.bundle_tools import keygen
    from edgeroute.cli_common import fail
    from router.errors import ConfigError

    try:
        priv, pub, key_id = keygen(prefix)
    except FileExistsError as exc:
        fail(ConfigError(f"{exc.filename} exists; refusing to overwrite a key", field="prefix"))
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
@click.option("--task", default=None, help="The task the bundle must serve (the policy's name).")
@click.option("--role", type=click.Choice(["edge", "cloud"]), default=None)
def verify_cmd(bundle: Path, pubkeys: tuple[Path, ...], task: str | None, role: str | None) -> None:
    """Check BUNDLE as every gate does: signature by a trusted key, every file's sha256,
    the ONNX graph against the manifest, labels, a smoke run (and its task and role, when
    given). Exit 0 if it would be loaded, 1 with the reason if not."""
    from router.errors import BundleError
    from router.signing import key_id_of, public_key_from_pem
    from runtime.bundle import BundleTrust, load_bundle

    try:
        keys = {
            key_id_of(k): k for k in (public_key_from_pem(p.read_bytes(), str(p)) for p in pubkeys)
        }
        trust = BundleTrust(require_signed=True, keys=keys)
        loaded = load_bundle(bundle, trust, task=task, role=role)
    except BundleError as exc:
        click.echo(f"REJECTED ({exc.code}): {exc.message}", err=True)
        sys.exit(1)
    m = loaded.manifest
    click.echo(
        f"ok: {m.task} {m.version} ({m.role}), signed by {loaded.signed_by}, "
        f"{len(m.files)} file(s) verified"
    )


# ---- installed versions on a node (DATA/models) ------------------------------------------


@model.command("install")
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--data-dir", required=True, type=click.Path(path_type=Path), help="The node's data dir."
)
@click.option(
    "--policy",
    "policy_path",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="The node's policy file: its `trust` section verifies the bundle and its task's "
    "edge_bundle is what the bundle must match when nothing is installed yet.",
)
@click.option(
    "--canary",
    "fraction",
    default=None,
    type=click.FloatRange(0.0, 1.0, min_open=True),
    help="Serve this share of requests with the new version until the task's canary rule "
    "promotes or rolls it back.",
)
@click.option(
    "--shadow",
    is_flag=True,
    help="Run the new version on every request without serving it, until the canary rule "
    "promotes or rolls it back.",
)
def install_cmd(
    bundle: Path, data_dir: Path, policy_path: Path, fraction: float | None, shadow: bool
) -> None:
    """Install BUNDLE as a new version of its task on the node with data dir DATA_DIR.

    The bundle is copied into DATA_DIR/models/<task>/<version>/ and checked there exactly
    as the node loads bundles (signature and sha256 with the policy's trust settings,
    onnxruntime, graph against manifest), against the serving version (same task, labels
    and input spec) and with a smoke inference; then it is requested. The running node
    (or the next one started on DATA_DIR) loads and checks it again and swaps it in
    atomically, or starts the canary/shadow run. Exit 1 with the reason if the bundle is
    refused (nothing changes), 2 for an invalid policy.
    """
    import time

    from edge_node.lifecycle.active_policy import bundle_trust, load_policy_file
    from edge_node.lifecycle.model_store import ModelStore, read_manifest
    from edgeroute.cli_common import fail
    from router.errors import BundleError, EdgerouteError
    from router.model_updates import InstallRequest, UpdateMode
    from router.policy_loader import resolve_bundle_path

    if fraction is not None and shadow:
        raise click.UsageError("--canary and --shadow exclude each other")
    mode: UpdateMode = "shadow" if shadow else "fraction" if fraction is not None else "replace"
    try:
        policy, _ = load_policy_file(policy_path, check_token_env=False)
        trust = bundle_trust(policy, policy_path.parent)
        task = read_manifest(bundle).task
        if task not in policy.tasks:
            names = " or ".join(repr(n) for n in policy.tasks)
            raise BundleError(
                f"{bundle}: the bundle serves task {task!r}, not {names} (the tasks of "
                f"{policy_path})",
                field="task",
                code="task_mismatch",
            )
        store = ModelStore(data_dir / "models")
        edge_bundle = resolve_bundle_path(str(policy_path.parent), policy.tasks[task].edge_bundle)
        reference = store.reference_manifest(task, Path(edge_bundle))
        if mode != "replace" and reference.version == read_manifest(bundle).version:
            raise BundleError(
                f"version {reference.version!r} already serves task {task!r}; a canary or "
                "shadow run needs another version",
                code="model_mismatch",
            )
        version, fresh = store.install(bundle, task, trust, reference)
        req = InstallRequest(
            version=version, mode=mode, fraction=fraction or 0.0, requested_at=time.time()
        )
        store.request(task, req)
    except BundleError as exc:
        click.echo(f"REJECTED ({exc.code}): {exc.message}", err=True)
        sys.exit(1)
    except EdgerouteError as exc:
        fail(exc)
    how = {
        "replace": "as the new version",
        "fraction": f"as a canary ({req.fraction:g} of requests)",
        "shadow": "in shadow mode",
    }[mode]
    click.echo(
        f"{'installed' if fresh else 'already installed'}: {task} {version}; requested {how}. "
        "A running node applies it within a second (see `edgeroute model list` or "
        "/v1/status models_update)."
    )


@model.command("rollback")
@click.option(
    "--data-dir", required=True, type=click.Path(path_type=Path), help="The node's data dir."
)
@click.option("--task", required=True, help="The task to roll back.")
@click.option(
    "--to",
    "to_version",
    default=None,
    help="Return to this installed version (or @policy: the policy's edge_bundle) instead "
    "of the previous one.",
)
def rollback_cmd(data_dir: Path, task: str, to_version: str | None) -> None:
    """Return TASK to its previous version (a canary or shadow run in progress is ended
    instead, keeping the current version). The node applies it like an install (loaded,
    verified and smoke-tested before the swap); a second rollback undoes the first."""
    import time

    from edge_node.lifecycle.model_store import ModelStore
    from edgeroute.cli_common import fail
    from router.errors import EdgerouteError
    from router.model_updates import InstallRequest

    store = ModelStore(data_dir / "models")
    try:
        state = store.read_state(task)
        if to_version is not None:
            target = to_version
        elif state.canary is not None:
            target = state.current
        elif state.previous is not None:
            target = state.previous
        else:
            raise click.ClickException(
                f"task {task!r} has no previous version to roll back to in {store.root}"
            )
        store.request(
            task, InstallRequest(version=target, reason="rollback", requested_at=time.time())
        )
    except EdgerouteError as exc:
        fail(exc)
    what = f"end the canary of {state.canary.version}" if state.canary and not to_version else ""
    click.echo(f"requested rollback of {task} to {target}{'; ' + what if what else ''}")


@model.command("list")
@click.option(
    "--data-dir", required=True, type=click.Path(path_type=Path), help="The node's data dir."
)
@click.option("--json", "as_json", is_flag=True, help="Print the states as JSON.")
def list_cmd(data_dir: Path, as_json: bool) -> None:
    """Installed versions and update state of every task of the node (current, previous,
    canary, pending request, last event)."""
    import json

    from edge_node.lifecycle.model_store import ModelStore
    from edgeroute.cli_common import fail
    from router.errors import EdgerouteError

    store = ModelStore(data_dir / "models")
    out = {}
    try:
        for task in store.tasks():
            out[task] = {
                **store.read_state(task).model_dump(mode="json"),
                "installed": store.versions(task),
            }
    except EdgerouteError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    if not out:
        click.echo(f"no installed versions in {store.root}")
    for task, st in out.items():
        canary, pending, last = st["canary"], st["pending"], st["last"]
        click.echo(f"{task}")
        click.echo(f"  current:   {st['current']}")
        click.echo(f"  previous:  {st['previous'] or '-'}")
        click.echo(
            f"  canary:    {canary['version']} ({canary['mode']} {canary['fraction']:g})"
            if canary
            else "  canary:    -"
        )
        click.echo(
            f"  pending:   {pending['reason']} {pending['version']} ({pending['mode']})"
            if pending
            else "  pending:   -"
        )
        click.echo(
            f"  last:      {last['result']} {last['version']}: {last['detail'] or ''}"
            if last
            else "  last:      -"
        )
        click.echo(f"  installed: {', '.join(st['installed']) or '-'}")
