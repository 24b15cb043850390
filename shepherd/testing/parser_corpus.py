"""Model output text per family, as the models write it, with the split each parser must produce.

The texts follow each family's chat template and model card (special tokens written out as the
detokenizer shows them with skip_special_tokens=false). A few are taken from outputs people posted
(noted on the sample). `calls` are (name, arguments as a Python value); the arguments string a
parser returns must parse to exactly that value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def function(name: str, properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": f"{name} tool", "parameters": {
        "type": "object", "properties": properties, "required": list(required)}}}


WEATHER = function("get_weather", {"city": {"type": "string"},
                                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                                   "days": {"type": "integer"}}, ("city",))
TIME = function("get_time", {"timezone": {"type": "string"}})
SEARCH = function("search", {"query": {"type": "string"}, "limit": {"type": "integer"}, "safe": {"type": "boolean"},
                             "filters": {"type": "object"}, "sites": {"type": "array", "items": {"type": "string"}}})
WRITE = function("write_file", {"path": {"type": "string"}, "content": {"type": "string"}})
LS = function("ls", {"dirPath": {"type": "string"}})
TOOLS = [WEATHER, TIME, SEARCH, WRITE, LS]


@dataclass(frozen=True)
class Sample:
    id: str
    parser: str
    text: str
    normal: str
    calls: tuple[tuple[str, Any], ...] = ()
    tools: list[dict[str, Any]] = field(default_factory=lambda: TOOLS)


CODE = 'def greet(name):\n    print(f"Hello, {name}!")\n    return {"ok": True}\n'

TOOL_SAMPLES: tuple[Sample, ...] = (
    # -- Qwen 2.5 / Qwen 3 (Hermes) -------------------------------------------------------------
    Sample("qwen-single", "qwen",
           'I\'ll check the current weather in Paris for you.\n\n<tool_call>\n{"name": "get_weather", '
           '"arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
           "I'll check the current weather in Paris for you.",
           (("get_weather", {"city": "Paris", "unit": "celsius"}),)),
    Sample("qwen-parallel", "qwen",
           '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Tokyo"}}\n</tool_call>\n<tool_call>\n'
           '{"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}\n</tool_call>',
           "", (("get_weather", {"city": "Tokyo"}), ("get_time", {"timezone": "Asia/Tokyo"}))),
    Sample("qwen-nested-unicode", "qwen",
           '<tool_call>\n{"name": "search", "arguments": {"query": "caf\\u00e9 \u201cbest\u201d {near} me", '
           '"limit": 5, "safe": true, "filters": {"price": [1, 2.5e1], "open": null}, "sites": []}}\n</tool_call>',
           "", (("search", {"query": "caf\u00e9 \u201cbest\u201d {near} me", "limit": 5, "safe": True,
                            "filters": {"price": [1, 25.0], "open": None}, "sites": []}),)),
    Sample("qwen-code-argument", "qwen",
           '<tool_call>\n{"name": "write_file", "arguments": {"path": "hello.py", "content": '
           '"def greet(name):\\n    print(f\\"Hello, {name}!\\")\\n    return {\\"ok\\": True}\\n"}}\n</tool_call>',
           "", (("write_file", {"path": "hello.py", "content": CODE}),)),
    Sample("qwen-text-after", "qwen",
           'Let me look that up.\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\n'
           "I will report back once I have the time.",
           "Let me look that up.I will report back once I have the time.", (("get_time", {}),)),
    Sample("qwen-no-call", "qwen", "The capital of France is Paris.\n\n", "The capital of France is Paris.\n\n"),
    # -- Qwen3-Coder XML -------------------------------------------------------------------------
    Sample("qwen-coder-typed", "qwen_coder",
           "I'll search for that.\n<tool_call>\n<function=search>\n<parameter=query>\nrust async runtimes\n"
           "</parameter>\n<parameter=limit>\n10\n</parameter>\n<parameter=safe>\nfalse\n</parameter>\n"
           "<parameter=sites>\n[\"docs.rs\", \"github.com\"]\n</parameter>\n</function>\n</tool_call>",
           "I'll search for that.",
           (("search", {"query": "rust async runtimes", "limit": 10, "safe": False,
                        "sites": ["docs.rs", "github.com"]}),)),
    Sample("qwen-coder-multiline", "qwen_coder",
           "<tool_call>\n<function=write_file>\n<parameter=path>\nhello.py\n</parameter>\n<parameter=content>\n"
           + CODE + "\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n"
           "<parameter=city>\nSão Paulo\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
           "", (("write_file", {"path": "hello.py", "content": CODE}),
                ("get_weather", {"city": "São Paulo", "days": 3}))),
    # -- Llama 3.x JSON --------------------------------------------------------------------------
    Sample("llama-bare", "llama",
           '{"name": "get_weather", "parameters": {"city": "San Francisco", "unit": "fahrenheit"}}',
           "", (("get_weather", {"city": "San Francisco", "unit": "fahrenheit"}),)),
    Sample("llama-python-tag-multi", "llama",
           '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Berlin"}}; '
           '{"name": "get_time", "parameters": {"timezone": "Europe/Berlin"}}',
           "", (("get_weather", {"city": "Berlin"}), ("get_time", {"timezone": "Europe/Berlin"}))),
    Sample("llama-text-only", "llama", "I don't need a tool for that: 2 + 2 = 4. {Braces} stay.",
           "I don't need a tool for that: 2 + 2 = 4. {Braces} stay."),
    # -- Mistral ---------------------------------------------------------------------------------
    Sample("mistral-array", "mistral",
           '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}}, '
           '{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}]',
           "", (("get_weather", {"city": "Lyon", "unit": "celsius"}), ("get_time", {"timezone": "Europe/Paris"}))),
    Sample("mistral-v11", "mistral",
           'Checking both cities.[TOOL_CALLS]get_weather[ARGS]{"city": "Madrid"}[TOOL_CALLS]get_weather[ARGS]'
           '{"city": "Rome", "days": 2}',
           "Checking both cities.",
           (("get_weather", {"city": "Madrid"}), ("get_weather", {"city": "Rome", "days": 2}))),
    Sample("mistral-v11-call-id", "mistral",
           '[TOOL_CALLS]search[CALL_ID]a1B2c3D4e[ARGS]{"query": "mistral tokenizer v11", "limit": 3}',
           "", (("search", {"query": "mistral tokenizer v11", "limit": 3}),)),
    # -- Pythonic (Llama 4) ----------------------------------------------------------------------
    Sample("pythonic-llama4", "pythonic",
           '[get_weather(city="San Francisco", unit="fahrenheit"), get_time(timezone="America/Los_Angeles")]',
           "", (("get_weather", {"city": "San Francisco", "unit": "fahrenheit"}),
                ("get_time", {"timezone": "America/Los_Angeles"}))),
    Sample("pythonic-wrapped-literals", "pythonic",
           "<|python_start|>[search(query='llama (4) \"scout\"', limit=-3, safe=True, filters={'lang': None}, "
           "sites=['a.org', 'b.org'])]<|python_end|>",
           "", (("search", {"query": 'llama (4) "scout"', "limit": -3, "safe": True, "filters": {"lang": None},
                            "sites": ["a.org", "b.org"]}),)),
    Sample("pythonic-text-around", "pythonic",
           "See [1] for details. [get_time(timezone=\"UTC\")] Done.",
           "See [1] for details.Done.", (("get_time", {"timezone": "UTC"}),)),
    # -- DeepSeek V3 / V3.1 ----------------------------------------------------------------------
    Sample("deepseek-v3", "deepseek",
           "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
           '{"city": "Hangzhou", "unit": "celsius"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function'
           '<｜tool▁sep｜>get_time\n```json\n{"timezone": "Asia/Shanghai"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
           "", (("get_weather", {"city": "Hangzhou", "unit": "celsius"}), ("get_time", {"timezone": "Asia/Shanghai"}))),
    Sample("deepseek-v3-text", "deepseek",
           "To answer, I need the weather.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
           'get_weather\n```json\n{"city": "Shenzhen"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
           "To answer, I need the weather.", (("get_weather", {"city": "Shenzhen"}),)),
    Sample("deepseek-v31", "deepseek31",
           "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Beijing\"}"
           "<｜tool▁call▁end｜><｜tool▁call▁begin｜>search<｜tool▁sep｜>"
           "{\"query\": \"beijing air quality\", \"limit\": 2}"
           "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
           "", (("get_weather", {"city": "Beijing"}), ("search", {"query": "beijing air quality", "limit": 2}))),
    # -- Kimi K2 ---------------------------------------------------------------------------------
    Sample("kimi-k2", "kimik2",
           "I'll check both cities.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
           '<|tool_call_argument_begin|>{"city": "Beijing"}<|tool_call_end|><|tool_call_begin|>'
           'functions.get_weather:1<|tool_call_argument_begin|>{"city": "Shanghai"}<|tool_call_end|>'
           "<|tool_calls_section_end|>",
           "I'll check both cities.", (("get_weather", {"city": "Beijing"}), ("get_weather", {"city": "Shanghai"}))),
    # -- GLM-4.5 ---------------------------------------------------------------------------------
    Sample("glm45", "glm45",
           "I'll look up the weather.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n"
           "<arg_value>Beijing</arg_value>\n<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call>",
           "I'll look up the weather.", (("get_weather", {"city": "Beijing", "days": 2}),)),
    # Posted from GLM-4.5-Air (ik_llama.cpp discussion 753).
    Sample("glm45-air-posted", "glm45",
           "Let me search for configuration files in the backend directory to help locate this information: "
           "<tool_call>ls\n<arg_key>dirPath</arg_key>\n<arg_value>backend</arg_value>\n</tool_call>",
           "Let me search for configuration files in the backend directory to help locate this information:",
           (("ls", {"dirPath": "backend"}),)),
    Sample("glm47-compact", "glm45",
           "<tool_call>search<arg_key>query</arg_key><arg_value>glm 4.7</arg_value><arg_key>filters</arg_key>"
           '<arg_value>{"year": 2025}</arg_value></tool_call><tool_call>get_time<arg_key>timezone</arg_key>'
           "<arg_value>UTC</arg_value></tool_call>",
           "", (("search", {"query": "glm 4.7", "filters": {"year": 2025}}), ("get_time", {"timezone": "UTC"}))),
    # -- Step3 -----------------------------------------------------------------------------------
    Sample("step3", "step3",
           "<｜tool_calls_begin｜>\n<｜tool_call_begin｜>function<｜tool_sep｜><steptml:invoke name=\"get_weather\">\n"
           "<steptml:parameter name=\"city\">New York</steptml:parameter>\n<steptml:parameter name=\"days\">5"
           "</steptml:parameter>\n</steptml:invoke><｜tool_call_end｜>\n<｜tool_calls_end｜>",
           "", (("get_weather", {"city": "New York", "days": 5}),)),
    # -- Generic JSON (also what tool_choice=required constrains the output to) -------------------
    Sample("json-required-array", "json",
           '[{"name": "get_weather", "parameters": {"city": "Oslo"}}, {"name": "get_time", "parameters": '
           '{"timezone": "Europe/Oslo"}}]',
           "", (("get_weather", {"city": "Oslo"}), ("get_time", {"timezone": "Europe/Oslo"}))),
    Sample("json-object-in-text", "json",
           'Calling the tool now: {"name": "search", "arguments": {"query": "json \\"quoted\\" text"}} '
           'and a plain object {"note": [1, 2]} stays.',
           'Calling the tool now:and a plain object {"note": [1, 2]} stays.',
           (("search", {"query": 'json "quoted" text'}),)),
)


@dataclass(frozen=True)
class ReasoningSample:
    id: str
    parser: str
    text: str
    reasoning: str
    normal: str
    kwargs: dict[str, Any] | None = None


REASONING_SAMPLES: tuple[ReasoningSample, ...] = (
    ReasoningSample("qwen3-think", "qwen3",
                    "<think>\nOkay, the user wants 17 * 24. 17 * 20 = 340, 17 * 4 = 68, so 408.\n</think>\n\n"
                    "17 × 24 = **408**.",
                    "Okay, the user wants 17 * 24. 17 * 20 = 340, 17 * 4 = 68, so 408.", "17 × 24 = **408**."),
    ReasoningSample("qwen3-no-think", "qwen3", "Hello! How can I help you today?", "",
                    "Hello! How can I help you today?"),
    ReasoningSample("qwen3-thinking-disabled", "qwen3", "<think>x</think>y", "", "<think>x</think>y",
                    {"enable_thinking": False}),
    ReasoningSample("deepseek-r1-prefilled", "deepseek_r1",
                    "Alright, the question is about boiling water at altitude. Lower pressure means a lower "
                    "boiling point.\n</think>\n\nAt higher altitudes water boils below 100 °C.",
                    "Alright, the question is about boiling water at altitude. Lower pressure means a lower "
                    "boiling point.", "At higher altitudes water boils below 100 °C."),
    ReasoningSample("deepseek-r1-own-tag", "deepseek_r1", "<think>\nShort.\n</think>\n\nDone.", "Short.", "Done."),
    ReasoningSample("deepseek-v31-thinking-on", "deepseek_v31", "Check units first.</think>The answer is 3 km.",
                    "Check units first.", "The answer is 3 km.", {"thinking": True}),
    ReasoningSample("deepseek-v31-thinking-default", "deepseek_v31", "The answer is 3 km.", "", "The answer is 3 km."),
    ReasoningSample("glm45", "glm45",
                    "<think>The user greets me; respond politely.</think>\nHello! What can I do for you?",
                    "The user greets me; respond politely.", "Hello! What can I do for you?"),
    ReasoningSample("kimi-vl", "kimi", "◁think▷Look at the chart: the bar for 2023 is tallest.◁/think▷2023.",
                    "Look at the chart: the bar for 2023 is tallest.", "2023."),
    ReasoningSample("step3-truncated", "step3", "The user asks for a proof. Start with the base case n = 1",
                    "The user asks for a proof. Start with the base case n = 1", ""),
    ReasoningSample("cohere", "cohere_cmd",
                    "<|START_THINKING|>Need to compare two numbers.<|END_THINKING|>9.11 < 9.9",
                    "Need to compare two numbers.", "9.11 < 9.9"),
)
