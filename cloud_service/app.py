"""The Ray Serve application of the cloud re-ranker: `build_app(settings)`, and
`app_builder(args)` for Serve configs (`import_path: cloud_service.app:app_builder`).

One ingress deployment (`CloudReranker`, a plain Serve HTTP handler) serves every task found under
`settings.bundles_dir`, either with the models in its own replicas or, with
`per_task_deployments: true`, through one `TaskModel` deployment per task named
`model-<task>` (each with its own replicas, autoscaling and health check):

- `POST /v1/rerank`: a `RerankItem` or a `RerankBatch`; answers a `RerankResponse` in item
  order. Items already answered for the node (header `X-Edgeroute-Node`) come from the shared
  result store with `cached: true` (a call marked `X-Edgeroute-First-Send: 1` is computed
  without asking the store, and its results are stored for retries); misses of single-item
  requests go through a `@serve.batch` method, so concurrent requests share one ONNX run;
  the misses of a batch request are computed in one model call per task.
- `GET /healthz`: `{"status": "ok", "tasks": {task: version}}` (no auth).
- `GET /v1/stats`: the store's counters plus this replica's batch counters.

Errors are JSON `{"error": {"code", "message", "field"}}`: 400 bad JSON, 413 body too large,
422 schema error, 401 bad token, 503/429 with `Retry-After` on overload (more than
`max_queued_requests` waiting at a caller). Nothing here runs at import: ray is imported
by `build_app` and `deployment_options`. The deployments (`cloud_service.deployment`,
`cloud_service.task_deployment`) never import this module, so the module graph has no
circle: request parsing and error bodies live in `cloud_service.http_parsing`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from cloud_service.settings import CloudServiceSettings
from router.errors import BundleError
from router.manifest import MANIFEST_FILE, parse_manifest

if TYPE_CHECKING:
    from ray.serve import Application
    from ray.serve.deployment import Deployment


def discover_tasks(bundles_dir: Path) -> dict[str, Path]:
    """Task name -> bundle folder for every bundle under `bundles_dir` (manifests only, no
    model is loaded). Raises BundleError when none is found or two claim the same task."""
    root = Path(bundles_dir)
    if (root / MANIFEST_FILE).is_file():
        folders = [root]
    elif root.is_dir():
        folders = sorted(p for p in root.iterdir() if (p / MANIFEST_FILE).is_file())
    else:
        raise BundleError(f"{root}: no such bundles folder")
    tasks: dict[str, Path] = {}
    for folder in folders:
        path = folder / MANIFEST_FILE
        manifest = parse_manifest(path.read_bytes(), str(path))
        if manifest.task in tasks:
            raise BundleError(
                f"{folder}: task {manifest.task!r} is already in {tasks[manifest.task]}"
            )
        tasks[manifest.task] = folder
    if not tasks:
        raise BundleError(f"{root}: no bundle found (expected <task>/{MANIFEST_FILE})")
    return tasks


def deployment_options(settings: CloudServiceSettings) -> dict[str, Any]:
    """The Serve deployment options taken from `settings` (a Serve config's `deployments:`
    entries override them per deployment)."""
    from ray.serve.config import BackpressureConfig

    options: dict[str, Any] = {
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        "backpressure_config": BackpressureConfig(
            status_code=settings.overload_status, retry_after_s=settings.retry_after_s
        ),
        "health_check_period_s": settings.health_check_period_s,
    }
    if settings.num_replicas is not None:
        options["num_replicas"] = settings.num_replicas
    return options


def build_app(settings: CloudServiceSettings) -> Application:
    """The bound Serve application for `settings` (deploy it with `serve.run`).

    Replica count, `max_ongoing_requests`, `max_queued_requests`, the overload answer and
    the health-check period come from `settings`. Building reads only the bundles'
    manifests (per-task mode); the models are loaded in each replica's constructor (a bad
    bundle fails the deployment with the BundleError message).
    """
    from cloud_service.deployment import CloudReranker

    options = deployment_options(settings)
    ingress = cast("Deployment", CloudReranker).options(**options)
    if not settings.per_task_deployments:
        return ingress.bind(settings)
    from cloud_service.task_deployment import TaskModel

    task_deployment = cast("Deployment", TaskModel)
    handles = {
        task: task_deployment.options(name=f"model-{task}", **options).bind(settings, str(folder))
        for task, folder in discover_tasks(settings.bundles_dir).items()
    }
    return ingress.bind(settings, handles)


def app_builder(args: dict[str, Any]) -> Application:
    """Serve application builder: `args` (a Serve config's application `args`) are the
    `CloudServiceSettings` fields. Raises pydantic's ValidationError on unknown or invalid
    keys, so a typo in the config fails the deploy instead of being ignored."""
    return build_app(CloudServiceSettings.model_validate(args))
