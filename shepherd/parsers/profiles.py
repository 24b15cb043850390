"""Vendor parser profiles for --model-alias: a served model whose own name names no vendor takes the
parsers its vendor-named alias implies (`--model-alias kimi-k2=my-local-model`: the Kimi K2 tool-call
parser under both names), as SMG's alias gives the served model that vendor's profile.

SMG's "contract profile" is wider: per-vendor request validation and normalization (its vendor
verifiers' rules), which Shepherd does not have. What Shepherd chooses by model name is the tool-call
and reasoning parser, so that is what an alias carries here. As in SMG: a served model whose own name
decides (a vendor's, or any family the parsers detect) keeps its own; the first vendor-named alias of a
served model wins; an OpenAI-looking alias (`gpt-4o=local-model`) is naming for OpenAI clients and
carries nothing. An explicit --tool-call-parser / --reasoning-parser still wins over either.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from shepherd.parsers.reasoning.registry import detect_reasoning_parser
from shepherd.parsers.tool.registry import detect_tool_parser

log = logging.getLogger("shepherd.parsers")

# The vendors whose parser families an alias may carry: a `/`-separated segment of the name starts with
# one of these (case-insensitive), as SMG matches them.
_VENDOR_MARKERS: dict[str, str] = {
    "kimi": "kimi", "moonshot": "kimi", "minimax": "minimax", "abab": "minimax",
    "glm": "zai", "zai": "zai", "z-ai": "zai", "deepseek": "deepseek",
}


def vendor_of(model: str) -> str | None:
    for segment in model.lower().split("/"):
        for marker, vendor in _VENDOR_MARKERS.items():
            if segment.startswith(marker):
                return vendor
    return None


def _names_its_own_parsers(model: str) -> bool:
    """Whether the served model's own name decides its parsers (a vendor, or any family detected)."""
    return vendor_of(model) is not None or detect_tool_parser(model) is not None or \
        detect_reasoning_parser(model) is not None


class ParserProfiles:
    """For any model name, the name whose parsers apply to it (itself, or a vendor-named alias)."""

    def __init__(self, aliases: Iterable[tuple[str, str]] = ()) -> None:
        aliases = list(aliases)
        self._named_by: dict[str, str] = {}  # served model or alias -> the vendor-named alias to detect by
        for alias, canonical in aliases:
            if vendor_of(alias) is None or _names_its_own_parsers(canonical):
                continue
            kept = self._named_by.setdefault(canonical, alias)
            if kept != alias and vendor_of(kept) != vendor_of(alias):
                log.warning("--model-alias %s=%s names another vendor than %s=%s; the model keeps %s's parsers",
                            alias, canonical, kept, canonical, kept)
        for alias, canonical in aliases:  # every alias of such a model answers with the same parsers
            if canonical in self._named_by:
                self._named_by.setdefault(alias, self._named_by[canonical])

    def detection_name(self, model: str | None) -> str | None:
        """The name to detect the tool-call and reasoning parsers from, for a request naming `model`."""
        if model is None:
            return None
        return self._named_by.get(model, model)
