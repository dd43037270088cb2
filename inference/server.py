"""`vlmkit serve`: load the configuration, start the engine and uvicorn, exit cleanly on SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import signal
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from inference.app import create_app
from inference.backends.base import GenerationResult
from inference.engine import Engine
from inference.engine_client import EngineState, Job
from inference.metrics import Metrics
from inference.settings import ConfigError, Settings, load_settings

log = logging.getLogger("vlmkit")

EXIT_DEVICE_FAILED = 3  # not 1 (the model could not load) or 2 (invalid configuration)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML configuration file (fields: see inference/settings.py)")


def build(settings: Settings) -> tuple[FastAPI, Engine]:
    """The app and its engine, wired to one metrics registry. The model loads when the app starts."""
    from inference.backends import load_backend

    metrics = Metrics(settings.served_model_name)

    def publish(engine: Engine) -> None:
        metrics.set_queue(engine.waiting, engine.running)
        metrics.set_ready(engine.state is EngineState.READY)

    engine = Engine(
        functools.partial(load_backend, settings),
        settings.max_queue,
        stuck_after_s=settings.stuck_after_s,
        max_consecutive_failures=settings.max_consecutive_failures,
    )
    engine.subscribe(publish)

    def count(job: Job, result: GenerationResult) -> None:
        metrics.count_tokens(job.prompt.prompt_tokens, result.completion_tokens)
        if job.cancelled.is_set():
            metrics.count_cancelled()

    engine.on_result(count)
    return create_app(settings, engine, metrics), engine


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die by the signal;
    a drained, clean stop should exit 0 instead, as systemd and the operator expect."""

    @contextlib.contextmanager
    def capture_signals(self):
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"vlmkit serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app, engine = build(settings)
    server = _Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            # uvicorn waits this long (fractions too; 0 = not at all) before it cancels the requests in flight.
            timeout_graceful_shutdown=settings.drain_timeout_s,
            access_log=False,
        )
    )

    def stop_when_the_model_is_gone(engine: Engine) -> None:
        if engine.state in (EngineState.FAILED, EngineState.DEAD):
            server.should_exit = True

    engine.subscribe(stop_when_the_model_is_gone)
    log.info(
        "serving %s from %s on http://%s:%d (backend %s)",
        settings.served_model_name,
        settings.model_path,
        settings.host,
        settings.port,
        settings.backend,
    )
    server.run()
    if engine.load_error is not None:
        print(f"vlmkit serve: the model could not be loaded: {engine.load_error}", file=sys.stderr)
        return 1
    if engine.device_error is not None:
        print(
            f"vlmkit serve: the accelerator failed and this process cannot use it any more "
            f"({engine.device_error}); exiting so that the service manager starts a new one",
            file=sys.stderr,
        )
        return EXIT_DEVICE_FAILED
    return 0
