"""Helpers of the offline-first tests (tests/test_offline_*.py): policies, concurrent senders,
polling, and the cloud's per-id computation counts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.edge_fixtures import CLOUD_NODE, CLOUD_TOKEN, policy_head
from tests.waiting import holds_within


def offline_policy(
    edge_bundle: Path,
    *,
    queue: str = "max_items: 100000\n  max_bytes: 268435456\n  on_full: reject",
    sync: str = "batch_size: 32\n  interval_ms: 50\n  max_attempts: 3",
    breaker: str = "{failure_threshold: 1, open_ms: 200, open_max_ms: 400, probe_interval_ms: 50}",
    retry: str = "{max_attempts: 1, backoff_initial_ms: 10, backoff_max_ms: 50}",
    request_timeout_ms: int = 2000,
    tasks: str = "",
    cost: str = "price_per_call: 0.0",
) -> str:
    """A policy with task `later` (cloud_first, answer_and_queue: every request needs the
    cloud) plus `tasks` (extra YAML task blocks, indented by 2)."""
    head = policy_head(
        queue=queue,
        sync=sync,
        retry=retry,
        breaker=breaker,
        request_timeout_ms=request_timeout_ms,
        cost=cost,
    )
    return f"""\
{head}tasks:
  later:
    edge_bundle: {edge_bundle}
    cloud_task: digits
    bundle_task: digits
    threshold: 0.5
    placement: cloud_first
    when_offline: answer_and_queue
    deadline_ms: 2000
{tasks}
"""


async def send_all(
    url: str,
    bodies: Sequence[dict[str, Any]],
    *,
    concurrency: int = 16,
    on_answer: Callable[[int, httpx.Response], None] | None = None,
    timeout_s: float = 10.0,
) -> list[httpx.Response | None]:
    """POST every body to `{url}/v1/infer` with `concurrency` requests in flight; one entry per
    body: its response, or None when the connection failed (e.g. the node was killed)."""
    out: list[httpx.Response | None] = [None] * len(bodies)
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def one(i: int) -> None:
            async with sem:
                try:
                    resp = await client.post(f"{url}/v1/infer", json=bodies[i])
                except httpx.HTTPError:
                    return
                out[i] = resp
                if on_answer is not None:
                    on_answer(i, resp)

        await asyncio.gather(*(one(i) for i in range(len(bodies))))
    return out


async def fetch_results(url: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`GET /v1/results/{id}` for every id (concurrently); id -> JSON body."""
    sem = asyncio.Semaphore(16)
    async with httpx.AsyncClient(timeout=10) as client:

        async def one(rid: str) -> tuple[str, dict[str, Any]]:
            async with sem:
                resp = await client.get(f"{url}/v1/results/{rid}")
                body: dict[str, Any] = resp.json()
                return rid, body

        return dict(await asyncio.gather(*(one(r) for r in ids)))


def wait_until(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> bool:
    """Poll `predicate` until it is true (True) or `timeout_s` passes (False); an HTTP error
    counts as "not yet" (`tests.waiting.holds_within`)."""
    return holds_within(predicate, timeout_s, step_s, ignore=(httpx.HTTPError,))


def _cloud_headers() -> dict[str, str]:
    return {"X-Edgeroute-Node": CLOUD_NODE, "Authorization": f"Bearer {CLOUD_TOKEN}"}


def cloud_stats(cloud_url: str) -> dict[str, Any]:
    """The cloud's `GET /v1/stats` (store counters: computed_total, dedup_hits, ...)."""
    resp = httpx.get(f"{cloud_url}/v1/stats", headers=_cloud_headers(), timeout=10)
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


def cloud_computed(cloud_url: str, ids: Sequence[str]) -> dict[str, int]:
    """How many times the cloud computed each id for the test node (its own count)."""
    resp = httpx.post(
        f"{cloud_url}/v1/stats/computed",
        json={"request_ids": list(ids)},
        headers=_cloud_headers(),
        timeout=30,
    )
    resp.raise_for_status()
    counts: dict[str, int] = resp.json()["computed"]
    return counts
