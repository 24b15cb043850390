"""Reading an operator's YAML file (config, MCP servers, tenant limits, priority classes) with one
clear line on failure: which flag's file, and what was wrong with it."""

from __future__ import annotations

from typing import Any

import yaml


def read_yaml_file(path: str, what: str, error: type[Exception]) -> Any:
    """The document in `path` (None for an empty file); an unreadable file or bad YAML raises `error`
    with a message that starts with `what` and the path."""
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except OSError as exc:
        raise error(f"{what} {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} {path}: not valid YAML ({exc})") from None
