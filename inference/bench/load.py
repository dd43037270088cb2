"""Closed-loop load: N clients, each sending its next request as soon as its last one ended.

A level ends after a fixed number of requests (shared by the clients), or when its duration is up:
then no client starts another request, and the ones in flight are let finish and counted. The
level's wall time runs from its start to the end of its last request.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

import openai

from inference.bench.client import RequestOptions, RequestResult, send
from inference.bench.workload import Workload


@dataclass
class LevelRun:
    concurrency: int
    results: list[RequestResult]
    wall_s: float


async def run_level(
    client: openai.AsyncOpenAI,
    workload: Workload,
    options: RequestOptions,
    concurrency: int,
    requests: int | None = None,
    duration: float | None = None,
) -> LevelRun:
    if (requests is None) == (duration is None):
        raise ValueError("give either a number of requests or a duration")
    indices = itertools.count()
    results: list[RequestResult] = []
    start = time.perf_counter()
    deadline = start + duration if duration is not None else None

    async def one_client() -> None:
        while True:
            index = next(indices)  # clients share one sequence: the event loop runs one at a time
            if requests is not None and index >= requests:
                return
            if deadline is not None and time.perf_counter() >= deadline:
                return
            results.append(await send(client, workload.request(index), options, start))

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    results.sort(key=lambda result: result.index)
    return LevelRun(concurrency, results, wall)


async def warm_up(
    client: openai.AsyncOpenAI, workload: Workload, options: RequestOptions, count: int
) -> list[RequestResult]:
    """`count` requests one after another, not measured: the server's first requests pay for lazy set-up."""
    start = time.perf_counter()
    return [await send(client, workload.request(index), options, start) for index in range(count)]
