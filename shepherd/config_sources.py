"""Flag values from a YAML config file and SHEPHERD_* environment variables.

The argparse declarations are the one source of truth: every long option of a parser is also a
config-file key (`worker-urls` or `worker_urls`) and an environment variable (`SHEPHERD_WORKER_URLS`),
converted and checked with the option's own type, choices and nargs. Adding a flag to the parser is
all it takes. Precedence: command line > environment > config file > the declared default.

Value syntax: in the file, natural YAML (lists for multi-value flags, true/false for switches); in the
environment, one string: switches take true/false/1/0/yes/no/on/off, multi-value flags are split like
a shell would (quote an entry that holds spaces, e.g. a `--prefill "URL PORT"` pair).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shepherd.yaml_file import read_yaml_file

ENV_PREFIX = "SHEPHERD_"
CONFIG_FLAG = "--config"
_NOT_SOURCED = {"help", "version", "config"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigSourceError(ValueError):
    """A config file or environment value is unusable; the message names the source and the flag."""


@dataclass(frozen=True)
class Option:
    name: str  # the long flag without dashes, e.g. "worker-urls"
    action: argparse.Action

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")


def options(parser: argparse.ArgumentParser) -> dict[str, Option]:
    found: dict[str, Option] = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of its actions
        long = [s for s in action.option_strings if s.startswith("--")]
        if long and action.dest not in _NOT_SOURCED:
            name = long[0][2:]
            found[name] = Option(name, action)
    return found


def add_config_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(CONFIG_FLAG, default=None, metavar="FILE",
                        help=f"read flag values from this YAML file (keys: flag names without --); the environment "
                             f"({ENV_PREFIX}<FLAG>, e.g. {ENV_PREFIX}WORKER_URLS) overrides it, the command line "
                             "overrides both")


def apply_sources(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str],
                  environ: Mapping[str, str]) -> None:
    """Fill every option not given on the command line from the environment, else the config file."""
    known = options(parser)
    given = _given_on_command_line(parser, argv)
    path = getattr(args, "config", None) or environ.get(ENV_PREFIX + "CONFIG")
    sourced: dict[str, Any] = {}
    if path:
        for name, value in _read_file(path, known).items():
            sourced[known[name].action.dest] = _convert(known[name], value, f"config file {path}")
    for key in environ:
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        name = key[len(ENV_PREFIX):].lower().replace("_", "-")
        if name not in known:
            print(f"shepherd: ignoring {key}: no --{name} flag", file=sys.stderr)
            continue
        source = f"environment variable {key}"
        if environ[key].startswith("tcp://"):  # SHEPHERD_PORT=tcp://10.0.0.1:80 and the like
            source += " (set by a Kubernetes Service named shepherd? use enableServiceLinks: false)"
        sourced[known[name].action.dest] = _convert(known[name], environ[key], source, from_env=True)
    for dest, value in sourced.items():
        if dest not in given:
            setattr(args, dest, value)


def _given_on_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The dests the command line set: parse again with every default suppressed."""
    saved = [(action, action.default) for action in parser._actions]  # noqa: SLF001
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(list(argv))))
    finally:
        for action, default in saved:
            action.default = default


def _read_file(path: str, known: Mapping[str, Option]) -> dict[str, Any]:
    data = read_yaml_file(path, "config file", ConfigSourceError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigSourceError(f"config file {path}: expected a mapping of flag names to values")
    values: dict[str, Any] = {}
    unknown = []
    for key, value in data.items():
        name = str(key).removeprefix("--").replace("_", "-")
        if name in known:
            values[name] = value
        else:
            unknown.append(str(key))
    if unknown:
        raise ConfigSourceError(f"config file {path}: unknown settings: {', '.join(sorted(unknown))}")
    return values


def _convert(option: Option, value: Any, source: str, *, from_env: bool = False) -> Any:
    action = option.action
    where = f"{source}: --{option.name}"
    if isinstance(action, argparse.BooleanOptionalAction):  # --x / --no-x: the value itself
        return _bool(value, where)
    if action.nargs == 0:  # switches: store_true, store_false, store_const
        return action.const if _bool(value, where) else action.default
    if isinstance(action, argparse._AppendAction):  # noqa: SLF001 - a repeatable flag
        entries = _list(value, from_env)
        if action.nargs in (None, "?"):
            return [_scalar(action, entry, where) for entry in entries]
        return [[_scalar(action, part, where) for part in _entry_parts(entry)] for entry in entries]
    if action.nargs in ("*", "+") or isinstance(action.nargs, int):
        items = [_scalar(action, item, where) for item in _list(value, from_env)]
        if action.nargs == "+" and not items:
            raise ConfigSourceError(f"{where}: needs at least one value")
        return items
    return _scalar(action, value, where)


def _scalar(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, (dict, list)):
        raise ConfigSourceError(f"{where}: expected a single value, got {type(value).__name__}")
    text = _text(value)
    try:
        converted = action.type(text) if callable(action.type) else text
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise ConfigSourceError(f"{where}: invalid value {text!r} ({exc})") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigSourceError(f"{where}: {text!r} is not one of {choices}")
    return converted


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _list(value: Any, from_env: bool) -> list[Any]:
    if isinstance(value, list):
        return value
    if value is None:
        return []
    if from_env or isinstance(value, str):
        try:
            return shlex.split(str(value))
        except ValueError as exc:
            raise ConfigSourceError(f"cannot split {value!r}: {exc}") from None
    return [value]


def _entry_parts(entry: Any) -> list[Any]:
    if isinstance(entry, list):
        return entry
    return str(entry).split()


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigSourceError(f"{where}: expected true or false, got {value!r}")
