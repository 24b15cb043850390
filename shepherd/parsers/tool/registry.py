"""Tool-call parsers by `--tool-call-parser` name, and which one a model name implies."""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from shepherd.parsers.tool.base import ToolParser
from shepherd.parsers.tool.choice import forced_function, tool_choice_constraint
from shepherd.parsers.tool.deepseek_v3 import DeepSeekV3ToolParser
from shepherd.parsers.tool.deepseek_v31 import DeepSeekV31ToolParser
from shepherd.parsers.tool.forced import ForcedFunctionParser
from shepherd.parsers.tool.glm45 import Glm45ToolParser
from shepherd.parsers.tool.hermes import HermesToolParser
from shepherd.parsers.tool.json_fallback import JsonToolParser
from shepherd.parsers.tool.kimi_k2 import KimiK2ToolParser
from shepherd.parsers.tool.llama import LlamaToolParser
from shepherd.parsers.tool.mistral import MistralToolParser
from shepherd.parsers.tool.pythonic import PythonicToolParser
from shepherd.parsers.tool.qwen_coder import QwenCoderToolParser
from shepherd.parsers.tool.step3 import Step3ToolParser
from shepherd.parsers.tool.types import ToolSet

PASSTHROUGH = "passthrough"  # "no parser": tool-call text stays in the content

# SMG's names first, then the aliases other servers use for the same format.
TOOL_PARSERS: MappingProxyType[str, type[ToolParser]] = MappingProxyType({
    "json": JsonToolParser,
    "qwen": HermesToolParser,
    "hermes": HermesToolParser,
    "qwen25": HermesToolParser,
    "qwen2.5": HermesToolParser,  # SMG's spelling
    "qwen3": HermesToolParser,  # SMG: Qwen3 speaks the same <tool_call> JSON
    "qwen_coder": QwenCoderToolParser,
    "qwen3_coder": QwenCoderToolParser,
    "qwen_xml": QwenCoderToolParser,
    "llama": LlamaToolParser,
    "llama3": LlamaToolParser,
    "llama3_json": LlamaToolParser,
    "mistral": MistralToolParser,
    "pythonic": PythonicToolParser,
    "llama4": PythonicToolParser,
    "deepseek": DeepSeekV3ToolParser,
    "deepseekv3": DeepSeekV3ToolParser,
    "deepseek_v3": DeepSeekV3ToolParser,
    "deepseek31": DeepSeekV31ToolParser,
    "deepseekv31": DeepSeekV31ToolParser,
    "deepseek_v31": DeepSeekV31ToolParser,
    "kimik2": KimiK2ToolParser,
    "kimi_k2": KimiK2ToolParser,
    "glm45": Glm45ToolParser,
    "glm45_moe": Glm45ToolParser,
    "glm4_moe": Glm45ToolParser,
    "glm47": Glm45ToolParser,
    "glm47_moe": Glm45ToolParser,
    "step3": Step3ToolParser,
})

TOOL_PARSER_NAMES: tuple[str, ...] = (*TOOL_PARSERS, PASSTHROUGH)

# Substrings of a lower-cased model name; the longest one found decides. None: known, no parser.
_MODEL_STEMS: tuple[tuple[str, str | None], ...] = (
    ("gpt-4", "json"), ("gpt-3.5", "json"), ("claude-", "json"),
    ("mistral", "mistral"), ("mixtral", "mistral"), ("ministral", "mistral"), ("magistral", "mistral"),
    ("devstral", "mistral"), ("codestral", "mistral"),
    ("qwen", "qwen"), ("qwq", "qwen"),
    ("qwen3-coder", "qwen_coder"), ("qwen3.5", "qwen_coder"), ("qwen3.6", "qwen_coder"),
    ("llama-3", "llama"), ("llama3", "llama"), ("llama-4", "pythonic"), ("llama4", "pythonic"),
    ("deepseek-v3", "deepseek"), ("deepseek-r1", "deepseek"),
    ("deepseek-v3.1", "deepseek31"), ("deepseek-v3.2-exp", "deepseek31"),
    ("deepseek-v3.2", None),  # DSML markup, which no parser here reads
    ("glm-4.5", "glm45"), ("glm-4.6", "glm45"), ("glm-4.7", "glm45"), ("glm-5", "glm45"),
    ("kimi-k2", "kimik2"),
    ("step3", "step3"), ("step-3", "step3"),
)


class UnknownParserError(ValueError):
    """A parser name that is not registered."""


def detect_tool_parser(model: str | None) -> str | None:
    """The parser name a model id implies, or None."""
    if not model:
        return None
    lowered = model.lower()
    best: tuple[int, str | None] = (0, None)
    for stem, parser in _MODEL_STEMS:
        if len(stem) > best[0] and stem in lowered:
            best = (len(stem), parser)
    return best[1]


def resolve_tool_parser(name: str | None, model: str | None = None) -> str | None:
    """The configured name if given (validated), else the one detected from the model; None: no parser."""
    if name:
        if name != PASSTHROUGH and name not in TOOL_PARSERS:
            raise UnknownParserError(
                f"unknown tool-call parser {name!r}; known: {', '.join(sorted(TOOL_PARSER_NAMES))}")
        return None if name == PASSTHROUGH else name
    return detect_tool_parser(model)


def create_tool_parser(name: str | None, *, model: str | None = None, tools: ToolSet | Sequence[Any] | None = None,
                       tool_choice: Any = None) -> ToolParser | None:
    """A fresh parser for one output, or None when tool-call text should stay in the content.

    `tool_choice` matters only when it constrains the engine (`"required"`, a named function, or
    allowed_tools in required mode): the caller must then also send the engine the constraint from
    `tool_choice_constraint(tools, tool_choice)`, and the parser returned reads that constrained
    output instead of the model family's own markup. `"none"` means no tool parsing at all.
    """
    tool_set = tools if isinstance(tools, ToolSet) else ToolSet.from_openai(tools)
    if tool_choice == "none":
        return None
    if tool_choice is not None and tool_choice_constraint(tools, tool_choice) is not None:
        function = forced_function(tool_choice)
        if function is not None:
            return ForcedFunctionParser(function, tool_set)
        return JsonToolParser(tool_set)
    resolved = resolve_tool_parser(name, model)
    return TOOL_PARSERS[resolved](tool_set) if resolved else None
