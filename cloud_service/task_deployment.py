"""One task's model as its own Serve deployment (`model-<task>`), called by the ingress
through a DeploymentHandle when `per_task_deployments` is on.

Importing this module imports ray; import it only where Ray is wanted. The class lives at
module level so replicas import it by reference.
"""

import asyncio
from typing import Any

from ray import serve

from cloud_service.metrics import ReplicaMetrics
from cloud_service.rerank_flow import Answer, rerank_by_task
from cloud_service.settings import CloudServiceSettings
from router.log_setup import configure_logging
from router.wire import RerankItem


@serve.deployment(name="TaskModel")
class TaskModel:
    """One replica holding one task's verified ONNX model; single items share `@serve.batch`."""

    def __init__(self, cfg: CloudServiceSettings, folder: str) -> None:
        from cloud_service.model import CloudModel

        configure_logging(cfg.log_level)  # this replica's process: JSON lines on its stderr
        self._cfg = cfg
        self._model = CloudModel.load(folder, role="cloud")
        self._metrics = ReplicaMetrics()
        batched: Any = self.rerank_one
        batched.set_max_batch_size(cfg.max_batch_size)
        batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    async def _run(self, items: list[RerankItem]) -> list[Answer]:
        if self._cfg.slow_model_s > 0:
            await asyncio.sleep(self._cfg.slow_model_s)
        self._metrics.batch(self._model.task, len(items))
        return rerank_by_task({self._model.task: self._model}, items)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def rerank_one(self, items: list[RerankItem]) -> list[Answer]:
        """Re-rank the items of concurrent single-item calls in one model run."""
        return await self._run(items)

    async def rerank(self, items: list[RerankItem]) -> list[Answer]:
        """Answers for `items` in order (one model run; a single item joins a batch)."""
        if len(items) == 1 and self._cfg.batching:
            return [await self.rerank_one(items[0])]
        return await self._run(items)

    def version(self) -> str:
        """The model version this replica serves."""
        return self._model.version

    def check_health(self) -> None:
        """Serve's health check: raises BundleError unless the ONNX session still runs."""
        self._model.self_check()
