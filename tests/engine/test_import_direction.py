"""The layers import one way: HTTP (app.py) -> serving -> engine -> backend. Read from the sources."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

INFERENCE = Path(__file__).resolve().parents[2] / "inference"

# What each layer must not import: the layers above it, and (for the serving side) the engine's implementation.
FORBIDDEN = {
    "app.py": {"inference.engine", "inference.backends.transformers_backend", "inference.backends.static_decode"},
    "serving.py": {
        "inference.app",
        "inference.engine",
        "inference.backends.transformers_backend",
        "inference.backends.static_decode",
    },
    "engine_client.py": {"inference.app", "inference.serving", "inference.engine"},
    "engine.py": {"inference.app", "inference.serving", "inference.server"},
    "backends": {
        "inference.app",
        "inference.serving",
        "inference.server",
        "inference.engine",
        "inference.engine_client",
    },
}


def imported_modules(source: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    path = INFERENCE / layer
    sources = sorted(path.glob("*.py")) if path.is_dir() else [path]
    wrong = {
        f"{source.name}: {module}"
        for source in sources
        for module in imported_modules(source)
        if module in FORBIDDEN[layer]
    }
    assert not wrong


def test_every_backend_implements_the_declared_interface():
    from inference.backends import Backend
    from inference.backends.transformers_backend import TransformersBackend
    from inference.backends.unsloth_backend import UnslothBackend

    for backend in (TransformersBackend, UnslothBackend):
        assert issubclass(backend, Backend) and not inspect.isabstract(backend), backend.__abstractmethods__
