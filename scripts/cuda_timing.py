"""Kernel timing for the GPU benchmarks: calls captured in a CUDA graph, so launch overhead is excluded."""

from __future__ import annotations

import statistics

import torch

CALLS_PER_GRAPH = 20


def graph_time(fn, replays: int = 10) -> float:
    """Seconds per call of `fn`: a CUDA graph of CALLS_PER_GRAPH calls, median of `replays` replays."""
    return cycled_time([fn] * CALLS_PER_GRAPH, replays)


def cycled_time(calls: list, replays: int = 10) -> float:
    """Seconds per call: one CUDA graph calling each of `calls` in turn (e.g. the same product on copies of a
    weight too large together for the L2 cache, as a decoding step reads it), median of `replays` replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in [*calls[:2], *calls[:2]]:  # compile, tune and allocate outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in calls:
            fn()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000 / len(calls))
    return statistics.median(times)
