"""Prometheus metrics of the service, in a registry of its own (one per app)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from inference.backends.base import PromptWork

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.requests = Counter(
            "vlmkit_requests", "Chat completion requests by outcome", labels + ["outcome"], registry=self.registry
        )
        self.time_to_first_token = Histogram(
            "vlmkit_time_to_first_token_seconds",
            "Time from request to the first answer text",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.e2e_latency = Histogram(
            "vlmkit_e2e_request_latency_seconds",
            "Time from request to the last answer text",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter("vlmkit_prompt_tokens", "Prompt tokens processed", labels, registry=self.registry)
        self.generation_tokens = Counter("vlmkit_generation_tokens", "Tokens generated", labels, registry=self.registry)
        self.queue_length = Gauge(
            "vlmkit_queue_length", "Requests waiting for the model", labels, registry=self.registry
        )
        self.requests_running = Gauge(
            "vlmkit_requests_running", "Requests being generated", labels, registry=self.registry
        )
        self.cancelled = Counter(
            "vlmkit_generations_cancelled",
            "Generations stopped early: client gone, stop sequence, or shutdown",
            labels,
            registry=self.registry,
        )
        self.model_ready = Gauge("vlmkit_model_ready", "1 once the model is loaded", labels, registry=self.registry)
        self._model = model_name

    def count_request(self, outcome: str) -> None:
        self.requests.labels(self._model, outcome).inc()

    def observe_ttft(self, seconds: float) -> None:
        self.time_to_first_token.labels(self._model).observe(seconds)

    def observe_latency(self, seconds: float) -> None:
        self.e2e_latency.labels(self._model).observe(seconds)

    def count_tokens(self, prompt: int, generated: int) -> None:
        self.prompt_tokens.labels(self._model).inc(prompt)
        self.generation_tokens.labels(self._model).inc(generated)

    def count_cancelled(self) -> None:
        self.cancelled.labels(self._model).inc()

    def set_queue(self, waiting: int, running: int) -> None:
        self.queue_length.labels(self._model).set(waiting)
        self.requests_running.labels(self._model).set(running)

    def set_ready(self, ready: bool) -> None:
        self.model_ready.labels(self._model).set(1 if ready else 0)

    def watch_gpus(self, read: Callable[[], list[dict]]) -> None:
        """At each scrape, report the memory of the GPUs `read()` lists (index, memory_*_bytes)."""
        self.registry.register(_GpuMemory(self._model, read))

    def watch_prompts(self, read: Callable[[], PromptWork]) -> None:
        """At each scrape, report what `read()` counts: images encoded and reused, prompt tokens reused."""
        self.registry.register(_PromptWork(self._model, read))


class _GpuMemory(Collector):
    """vlmkit_gpu_memory_{allocated,total}_bytes{gpu}, read when scraped: no GPU, no samples."""

    def __init__(self, model_name: str, read: Callable[[], list[dict]]) -> None:
        self.model_name = model_name
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        allocated = GaugeMetricFamily(
            "vlmkit_gpu_memory_allocated_bytes",
            "GPU memory allocated by torch, per GPU the model is on",
            labels=["model_name", "gpu"],
        )
        total = GaugeMetricFamily(
            "vlmkit_gpu_memory_total_bytes", "Memory of each GPU the model is on", labels=["model_name", "gpu"]
        )
        for gpu in self.read():
            allocated.add_metric([self.model_name, str(gpu["index"])], gpu["memory_allocated_bytes"])
            total.add_metric([self.model_name, str(gpu["index"])], gpu["memory_total_bytes"])
        yield allocated
        yield total


class _PromptWork(Collector):
    """vlmkit_images_encoded_total, vlmkit_images_reused_total and vlmkit_prompt_tokens_reused_total, read from
    the model when scraped."""

    def __init__(self, model_name: str, read: Callable[[], PromptWork]) -> None:
        self.model_name = model_name
        self.read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        work = self.read()
        encoded = CounterMetricFamily(
            "vlmkit_images_encoded", "Prompt images run through the vision encoder", labels=["model_name"]
        )
        reused = CounterMetricFamily(
            "vlmkit_images_reused",
            "Prompt images whose vision encoder output was kept from an earlier prompt (image_cache_size)",
            labels=["model_name"],
        )
        tokens = CounterMetricFamily(
            "vlmkit_prompt_tokens_reused",
            "Prompt tokens whose keys and values a decoding slot still held from the conversation's last turn",
            labels=["model_name"],
        )
        encoded.add_metric([self.model_name], work.images_encoded)
        reused.add_metric([self.model_name], work.images_reused)
        tokens.add_metric([self.model_name], work.tokens_reused)
        yield encoded
        yield reused
        yield tokens
