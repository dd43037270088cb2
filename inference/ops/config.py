"""The deployed config.yaml, read for what the tasks need from it: the bind address, the port, the model path.

The file is on the server and may have been edited by hand: anything malformed is an OpsError
that names the file and the field, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from inference.ops.target import OpsError, port_number


@dataclass(frozen=True)
class ServiceConfig:
    host: str | None = None  # None: not set in the file, the inventory's value stands
    port: int | None = None
    model_path: str | None = None


def parse_service_config(text: str, where: str) -> ServiceConfig:
    """`where` names the file in messages, e.g. 'gpu-server-1:/etc/vlmkit/config.yaml'."""
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
            raise OpsError(f"{where} is not valid YAML at line {exc.problem_mark.line + 1}: {exc.problem}") from None
        raise OpsError(f"{where} is not valid YAML: {exc}") from None
    if config is None:
        return ServiceConfig()
    if not isinstance(config, dict):
        raise OpsError(f"{where} must be a mapping of settings, not a {type(config).__name__}")
    return ServiceConfig(
        host=_text(config, "host", where),
        port=port_number(config.get("port"), f"{where}: port") if config.get("port") is not None else None,
        model_path=_text(config, "model_path", where),
    )


def _text(config: dict, key: str, where: str) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise OpsError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value
