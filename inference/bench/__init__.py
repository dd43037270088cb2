"""`vlmkit bench`: a load generator for OpenAI-compatible chat endpoints, with image+text requests.

workload (images and prompts) -> client (one timed streaming request) -> load (N clients per level)
-> stats (percentiles, throughput) -> report (table, JSON, PNG); cli ties them together.
"""

from inference.bench.cli import configure, run

__all__ = ["configure", "run"]
