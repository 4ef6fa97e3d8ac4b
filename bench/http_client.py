"""Benchmark: what a qwen step's two upstream requests cost in CPU, by HTTP client.

A pool actor makes them with aiohttp (`pipelines.providers.provider_session` and `send`). This
makes the same two requests (the generation call, then the download of the image it names)
against the fake DashScope in a process of its own, `--concurrency` at a time, through that
client and through httpx (the client STYLE.md takes as a model, on its own connection pool), and
prints this process's CPU per pair, each measured twice (the second round shows the noise). The
difference is why the pool actors use aiohttp.

    .venv/bin/python bench/http_client.py [--pairs 2000] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.providers import DEFAULT_TIMEOUT, provider_session, send  # noqa: E402
from tests.fakes.dashscope import FakeDashScopeProcess  # noqa: E402

PATH = "/services/aigc/multimodal-generation/generation"
BODY = {
    "model": "qwen-image",
    "input": {"messages": [{"role": "user", "content": [{"text": "a benchmark"}]}]},
    "parameters": {"size": "1328*1328", "seed": 7},
}


def image_url(payload: dict) -> str:
    return payload["output"]["choices"][0]["message"]["content"][0]["image"]


async def measure(label: str, pair: Callable[[], Awaitable[int]], pairs: int, concurrency: int) -> None:
    slots = asyncio.Semaphore(concurrency)

    async def limited() -> int:
        async with slots:
            return await pair()

    await asyncio.gather(*(limited() for _ in range(concurrency)))  # warm-up: connections
    cpu, wall = time.process_time(), time.perf_counter()
    sizes = await asyncio.gather(*(limited() for _ in range(pairs)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert all(size > 0 for size in sizes)
    print(f"{label}: {cpu / pairs * 1000:.3f} ms CPU a call and download, {pairs / wall:.0f} pairs/s")


async def through_httpx(base_url: str, api_key: str, pairs: int, concurrency: int) -> None:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:

        async def pair() -> int:
            response = await client.request("POST", base_url + PATH, json=BODY, headers={"Authorization": api_key})
            async with client.stream("GET", image_url(response.json())) as download:
                return sum([len(chunk) async for chunk in download.aiter_bytes()])

        await measure("httpx                      ", pair, pairs, concurrency)


async def through_pool_client(base_url: str, api_key: str, pairs: int, concurrency: int) -> None:
    async with provider_session(concurrency) as session:

        async def pair() -> int:
            headers = {"Authorization": api_key}
            answer = await send(session, "POST", base_url + PATH, json=BODY, headers=headers, timeout=DEFAULT_TIMEOUT)
            async with session.get(image_url(answer.json()), timeout=DEFAULT_TIMEOUT) as download:
                return sum([len(chunk) async for chunk in download.content.iter_any()])

        await measure("the pool actors' (aiohttp) ", pair, pairs, concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    with FakeDashScopeProcess() as dashscope:
        auth = f"Bearer {dashscope.api_key}"
        for _ in range(2):
            asyncio.run(through_httpx(dashscope.base_url, auth, args.pairs, args.concurrency))
            asyncio.run(through_pool_client(dashscope.base_url, auth, args.pairs, args.concurrency))


if __name__ == "__main__":
    main()
