"""The metric names the shipped Grafana dashboard queries, so tests can check that the edge
node and the cloud really export each of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "edgeroute-dashboard.json"
_NAME = re.compile(r"\b(?:ray_)?edgeroute_[a-z_]+\b")


def dashboard_metrics(cloud: bool) -> set[str]:
    """Sample names in the dashboard's queries: the cloud's (`ray_...`, exported through
    Ray) when `cloud`, else the edge node's."""
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in _NAME.findall(e)}
    return {n for n in names if n.startswith("ray_") == cloud}
