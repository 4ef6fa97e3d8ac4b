"""Benchmark: what a qwen step's two upstream requests cost in CPU, by HTTP client.

A pool actor makes them through httpx over aiohttp's connection pool (`httpx-aiohttp`, see
`pipelines.steps.StepContext.from_settings`). This makes the same two requests (the generation
call, then the download of the image it names) against the fake DashScope in a process of its
own, `--concurrency` at a time, through that client and through aiohttp alone, and prints this
process's CPU per pair, each measured twice (the second round shows the noise). The difference
is what httpx's own layers cost a job.

    .venv/bin/python bench/http_client.py [--pairs 2000] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
    async with httpx.AsyncClient(transport=AiohttpTransport(limits=limits)) as client:

        async def pair() -> int:
            response = await client.request("POST", base_url + PATH, json=BODY, headers={"Authorization": api_key})
            async with client.stream("GET", image_url(response.json())) as download:
                return sum([len(chunk) async for chunk in download.aiter_bytes()])

        await measure("httpx over aiohttp's pool", pair, pairs, concurrency)


async def through_aiohttp(base_url: str, api_key: str, pairs: int, concurrency: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def pair() -> int:
            async with session.post(base_url + PATH, json=BODY, headers={"Authorization": api_key}) as response:
                payload = await response.json()
            async with session.get(image_url(payload)) as download:
                return sum([len(chunk) async for chunk in download.content.iter_any()])

        await measure("aiohttp alone            ", pair, pairs, concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    with FakeDashScopeProcess() as dashscope:
        auth = f"Bearer {dashscope.api_key}"
        for _ in range(2):
            asyncio.run(through_httpx(dashscope.base_url, auth, args.pairs, args.concurrency))
            asyncio.run(through_aiohttp(dashscope.base_url, auth, args.pairs, args.concurrency))


if __name__ == "__main__":
    main()
