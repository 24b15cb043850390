"""Write SMG's `smg launch` flag list as JSON (run with the SMG venv's python: `make smg-flags`).

The output, shepherd/data/smg_launch_flags.json, is the reference list the flag-table test feeds to
`shepherd launch`; regenerate it when SMG moves to a new version.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys

from smg.router_args import RouterArgs  # type: ignore[import-not-found]


def main() -> None:
    parser = argparse.ArgumentParser()
    RouterArgs.add_cli_args(parser)
    flags = []
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of actions
        if not action.option_strings or action.option_strings == ["-h", "--help"]:
            continue
        default = action.default
        flags.append({
            "flag": action.option_strings[0],
            "aliases": action.option_strings[1:],
            "takes_value": action.nargs != 0,
            "nargs": action.nargs if isinstance(action.nargs, (int, str)) else None,
            "choices": list(action.choices) if action.choices else None,
            "default": default if isinstance(default, (int, float, str, bool, list, type(None))) else str(default),
            "type": getattr(action.type, "__name__", None),
            "help": " ".join((action.help or "").split()),
        })
    out = {"source": "smg", "version": importlib.metadata.version("smg"), "flags": flags}
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
