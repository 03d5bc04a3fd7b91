"""`GET /docs`: the edge API's reference as one self-contained HTML page, rendered from the
OpenAPI schema on the node. No scripts, styles or fonts from elsewhere, so it works on a
device with no internet (FastAPI's Swagger UI and ReDoc pages load their code from a CDN).
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

_METHODS = ("get", "post", "put", "patch", "delete")
_STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:60em;padding:0 1em}"
    "h2{margin-top:2em;border-bottom:1px solid #ccc}code,pre{font-size:13px}"
    "pre{background:#f5f5f5;padding:.6em;overflow-x:auto}.m{font-weight:bold;"
    "text-transform:uppercase;margin-right:.5em}"
)


def render(schema: dict[str, Any]) -> str:
    """The HTML page for `schema` (an OpenAPI 3 document): each operation with its summary,
    description, auth, request body and responses; then the schemas. Every value is
    HTML-escaped. Pure."""
    info = schema.get("info", {})
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{escape(str(info.get('title', 'API')))}</title><style>{_STYLE}</style>",
        f"</head><body><h1>{escape(str(info.get('title', 'API')))}</h1>",
        "<p>The machine-readable schema is at <a href='/openapi.json'>/openapi.json</a>.</p>",
    ]
    for name, scheme in schema.get("components", {}).get("securitySchemes", {}).items():
        parts.append(f"<p><b>Auth ({escape(name)})</b>: {escape(_describe(scheme))}</p>")
    for path, item in schema.get("paths", {}).items():
        for method in _METHODS:
            op = item.get(method)
            if op is not None:
                parts.append(_operation(method, path, op))
    schemas = schema.get("components", {}).get("schemas", {})
    if schemas:
        parts.append("<h2>Schemas</h2>")
        for name, body in schemas.items():
            parts.append(f"<h3 id='schema-{escape(name)}'>{escape(name)}</h3>{_json(body)}")
    parts.append("</body></html>")
    return "".join(parts)


def _operation(method: str, path: str, op: dict[str, Any]) -> str:
    out = [f"<h2><span class='m'>{method}</span><code>{escape(path)}</code></h2>"]
    if op.get("summary"):
        out.append(f"<p><b>{escape(str(op['summary']))}</b></p>")
    if op.get("description"):
        out.append(f"<p>{escape(str(op['description']))}</p>")
    if op.get("security"):
        names = sorted({n for req in op["security"] for n in req})
        out.append(f"<p>Auth: {escape(', '.join(names))}</p>")
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    if body:
        out.append(f"<h4>Request body</h4>{_json(body.get('schema', {}))}")
    for status, resp in op.get("responses", {}).items():
        desc = escape(str(resp.get("description", "")))
        schema = resp.get("content", {}).get("application/json", {}).get("schema")
        out.append(f"<h4>{escape(str(status))} {desc}</h4>")
        if schema:
            out.append(_json(schema))
    return "".join(out)


def _describe(scheme: dict[str, Any]) -> str:
    kind = f"{scheme.get('type', '')} {scheme.get('scheme', '')}".strip()
    return f"{kind}. {scheme.get('description', '')}".strip()


def _json(value: Any) -> str:
    return f"<pre>{escape(json.dumps(value, indent=2))}</pre>"
