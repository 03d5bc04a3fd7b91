"""The Serve config of a cluster deployment, made from the shipped template
(`cloud_service/serve_config.yaml`) with this machine's paths and HTTP address."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from router.errors import InputError

TEMPLATE = Path(__file__).resolve().parents[1] / "cloud_service" / "serve_config.yaml"


def local_config(bundles: Path, tokens_file: Path | None, host: str, port: int) -> dict[str, Any]:
    """The template with `bundles_dir` and `tokens_file` as absolute paths, Serve's HTTP
    proxy on `host:port` and on the head node only. Raises InputError naming the option
    whose path does not exist."""
    if not bundles.is_dir():
        raise InputError(f"--bundles: {bundles} is not a folder of bundles", field="--bundles")
    if tokens_file is not None and not tokens_file.is_file():
        raise InputError(f"--tokens-file: {tokens_file} does not exist", field="--tokens-file")
    config: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    config["proxy_location"] = "HeadOnly"
    config["http_options"] = {"host": host, "port": port}
    args = config["applications"][0]["args"]
    args["bundles_dir"] = str(bundles.resolve())
    if tokens_file is None:
        args.pop("tokens_file", None)
    else:
        args["tokens_file"] = str(tokens_file.resolve())
    return config


def render(config: dict[str, Any]) -> str:
    """The YAML text of `config`, with a header saying where it came from."""
    head = f"# Made by `edgeroute cloud config` from {TEMPLATE.name}; paths are this machine's.\n"
    return head + yaml.safe_dump(config, sort_keys=False)
