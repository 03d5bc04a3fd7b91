"""Running the cloud service: a blocking `run_cloud` for the CLI, and in-process helpers
for tests (`init_ray`, `start_cloud_in_process`, `stop_cloud`).

Ray is always started as a *new* local instance (never joining another one found on the
machine) with node IP 127.0.0.1, the dashboard and usage stats off, and Ray's default
token authentication for a new local instance. Ray 2.60 still binds some of its servers
to all interfaces (README, "Run on a Ray cluster"); Serve's HTTP is on the given host.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import structlog

from cloud_service.settings import CloudServiceSettings

APP_NAME = "edgeroute"
DEFAULT_NUM_CPUS = 2
_log = structlog.get_logger("cloud_service.server")


def init_ray(
    *,
    num_cpus: int = DEFAULT_NUM_CPUS,
    namespace: str = "edgeroute",
    object_store_memory: int = 128 * 1024 * 1024,
) -> None:
    """Start a fresh local Ray in this process (no-op if Ray is already initialised here).

    Node IP 127.0.0.1, dashboard off, usage stats off, worker logs not echoed.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        num_cpus=num_cpus,
        namespace=namespace,
        object_store_memory=object_store_memory,
        log_to_driver=False,
        configure_logging=False,
    )


def base_url(settings: CloudServiceSettings) -> str:
    """The HTTP base URL the service listens on."""
    return f"http://{settings.host}:{settings.port}"


def start_cloud_in_process(
    settings: CloudServiceSettings, *, num_cpus: int = DEFAULT_NUM_CPUS
) -> str:
    """Start Ray (if needed) and Serve in this process, deploy the app, return its base URL.

    Returns once the app is running (models loaded). Raises whatever `serve.run` raises
    when the deployment fails (for example a RuntimeError carrying a BundleError message).
    """
    init_ray(num_cpus=num_cpus, namespace=settings.ray_namespace)
    from ray import serve

    from cloud_service.app import build_app

    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
    return base_url(settings)


def stop_cloud(settings: CloudServiceSettings | None = None, *, shutdown_ray: bool = True) -> None:
    """Shut Ray down (by default), or, with `shutdown_ray=False` (a Ray instance shared
    with others), shut Serve down and kill the shared result store.

    Shutting this process's local Ray instance down ends every actor it runs (Serve's
    controller, proxy and replicas, the result store) at once; `serve.shutdown()` first
    would only add the controller's own graceful stop (up to 30 s). Safe to call when
    nothing is running.
    """
    import ray

    if not ray.is_initialized():
        return
    if shutdown_ray:
        ray.shutdown()
        return
    from ray import serve

    from cloud_service.result_store import kill_result_store

    serve.shutdown()  # type: ignore[no-untyped-call]
    if settings is not None:
        kill_result_store(settings.result_store_name, settings.ray_namespace)


def preflight(settings: CloudServiceSettings) -> None:
    """What the service checks before it starts Ray (seconds instead of a minute, and the
    cause instead of a Ray traceback): every bundle under `settings.bundles_dir` passes the
    one bundle validation (`cloud_service.model.load_cloud_models`) and the tokens file
    (if any) can be read. Raises BundleError or ConfigError naming the path."""
    from cloud_service.model import load_cloud_models
    from router.errors import ConfigError

    load_cloud_models(settings.bundles_dir)
    if settings.tokens_file is not None:
        try:
            settings.tokens_file.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"{settings.tokens_file}: cannot read the tokens file ({exc.strerror or exc})",
                field="tokens_file",
            ) from None


def run_cloud(
    settings: CloudServiceSettings,
    *,
    ready_file: Path | None = None,
    num_cpus: int = DEFAULT_NUM_CPUS,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut Serve and Ray down cleanly.

    Prints one line `edgeroute cloud ready <url>` to stdout when the app is up and, if
    `ready_file` is given, writes the URL there (atomically). Must run in the main thread
    (it installs signal handlers). Raises EdgerouteError before Ray starts when
    `preflight` finds a fault; deployment failures propagate after Ray is shut down.
    """
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        _log.info("cloud_stopping", reason=signal.Signals(signum).name)
        stop.set()

    started = time.monotonic()
    preflight(settings)
    # ray.init installs a fatal-signal handler that aborts the process on SIGTERM, so ours
    # must be installed after it (and before the slow deploy, so a stop request is honoured).
    init_ray(num_cpus=num_cpus, namespace=settings.ray_namespace)
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        url = start_cloud_in_process(settings, num_cpus=num_cpus)
        _log.info(
            "cloud_ready", route="cloud", url=url, startup_s=round(time.monotonic() - started, 2)
        )
        print(f"edgeroute cloud ready {url}", flush=True)
        if ready_file is not None:
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(url + "\n", encoding="utf-8")
            os.replace(tmp, ready_file)
        while not stop.wait(0.5):
            pass
    finally:
        stop_cloud(settings)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
