"""Chat templates render exactly as Hugging Face's apply_chat_template does."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shepherd.tokenizer.chat_template import ChatTemplate, ChatTemplateError
from tests.qwen import qwen_dir, qwen_tokenizer

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                                               "required": ["city"]}}}]

CONVERSATIONS: list[tuple[list[dict[str, Any]], dict[str, Any]]] = [
    ([{"role": "user", "content": "Hi 🦜"}], {}),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], {"enable_thinking": False}),
    ([{"role": "user", "content": "Weather in Zürich?"},
      {"role": "assistant", "content": "", "tool_calls": [
          {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "c"}}}]},
      {"role": "tool", "content": "{\"temp\": 21}"},
      {"role": "user", "content": "Thanks"}], {"tools": TOOLS}),
    ([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
      {"role": "user", "content": "3+3?"}], {"enable_thinking": True}),
]


@pytest.fixture(scope="module")
def hf_tokenizer() -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(qwen_dir(), local_files_only=True)


@pytest.mark.parametrize("case", range(len(CONVERSATIONS)))
def test_qwen3_template_matches_hugging_face(hf_tokenizer: Any, case: int) -> None:
    messages, extra = CONVERSATIONS[case]
    tools = extra.get("tools")
    kwargs = {k: v for k, v in extra.items() if k != "tools"}
    expected = hf_tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True,
                                                **kwargs)
    template = qwen_tokenizer().chat_template
    assert template is not None
    assert template.render(messages, tools=tools, add_generation_prompt=True, kwargs=kwargs) == expected


def test_qwen3_traits() -> None:
    template = qwen_tokenizer().chat_template
    assert template is not None
    traits = template.traits
    assert traits.content_format == "string"
    assert traits.thinking_key == "enable_thinking" and traits.thinking_default is True
    assert template.thinking_enabled({}) is True
    assert template.thinking_enabled({"enable_thinking": False}) is False


def test_tojson_is_json_dumps_without_sorting_or_escaping() -> None:
    template = ChatTemplate("{{ value | tojson }}|{{ value | tojson(indent=2) }}")
    value = {"b": "<é>", "a": [1, 2]}
    assert template.render([], kwargs={"value": value}, add_generation_prompt=False) == (
        json.dumps(value, ensure_ascii=False) + "|" + json.dumps(value, ensure_ascii=False, indent=2))


def test_globals_and_generation_block() -> None:
    template = ChatTemplate("{% generation %}{{ strftime_now('%Y') }}{% endgeneration %}"
                            "{% if messages|length == 0 %}{{ raise_exception('need messages') }}{% endif %}")
    with pytest.raises(ChatTemplateError, match="need messages"):
        template.render([])
    assert template.render([{"role": "user", "content": "x"}]).isdigit()


def test_content_format_and_thinking_detection() -> None:
    parts = ChatTemplate("{% for m in messages %}{% for p in m.content %}{{ p.text }}{% endfor %}{% endfor %}")
    assert parts.traits.content_format == "openai"
    off = ChatTemplate("{% set thinking = false %}{% if thinking %}<think>{% endif %}")
    assert off.traits.thinking_key == "thinking" and off.traits.thinking_default is False
    prefill = ChatTemplate("{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}")
    assert prefill.traits.think_in_prefill and prefill.traits.thinking_key is None


def test_bad_template_is_a_clear_error() -> None:
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% if %}")
    template = ChatTemplate("{{ messages[0].content.upper() }}")
    with pytest.raises(ChatTemplateError):
        template.render([{"role": "user"}])


# Templates that lean on what the chat sandbox shortcuts (attribute-style reads of dict items, the
# safety verdicts it keeps per type and name), each rendered by it and by Jinja's own sandbox.
SANDBOX_PROBES = [
    "{% for m in messages %}{{ m.role }}:{{ m.content }}|{% endfor %}",
    "{% for m in messages %}{{ m.name is defined }}{{ m.name | default('-') }}{% endfor %}",
    "{% for m in messages %}{% for k, v in m.items() %}{{ k }}={{ v }};{% endfor %}{% endfor %}",
    "{{ messages[0].get('role') }}{{ messages[0].keys() | list | length }}{{ messages | length }}",
    "{{ messages[0].content.startswith('h') }}{{ messages[0].content.split(' ') | join(',') }}",
    "{{ messages[0].items }}{{ messages[0].copy().role }}",
    "{{ messages[0].tool_calls[0].function.name if messages[0].tool_calls else 'none' }}",
]
UNSAFE_PROBES = [
    "{{ messages.append(1) }}",
    "{{ messages[0].update({'role': 'x'}) }}",
    "{{ messages[0].pop('role') }}",
    "{{ messages[0].__class__.__mro__ }}",
    "{{ messages[0].content.__class__.__name__ }}",
    "{{ messages.__len__() }}",
]
PROBE_MESSAGES = [
    [{"role": "user", "content": "hi there"}],
    [{"role": "user", "content": "hello you", "name": "ann", "items": "shadowed?"},
     {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]}],
]


def _render_both(source: str, messages: list[dict[str, Any]], ours: Any) -> tuple[str, str]:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    outputs = []
    for env in (ours, ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)):
        try:
            outputs.append(env.from_string(source).render(messages=messages))
        except jinja2.exceptions.SecurityError as exc:
            outputs.append(f"SecurityError: {exc}")
        except jinja2.UndefinedError as exc:
            outputs.append(f"UndefinedError: {exc}")
    return outputs[0], outputs[1]


@pytest.mark.parametrize("source", SANDBOX_PROBES + UNSAFE_PROBES)
@pytest.mark.parametrize("case", range(len(PROBE_MESSAGES)))
def test_the_chat_sandbox_renders_what_jinjas_sandbox_renders(source: str, case: int) -> None:
    from shepherd.tokenizer.chat_template import _environment

    env = _environment()
    for _ in range(2):  # the second time, from the safety verdicts it kept
        ours, jinjas = _render_both(source, PROBE_MESSAGES[case], env)
        assert ours == jinjas


@pytest.mark.parametrize("source", UNSAFE_PROBES)
def test_the_chat_sandbox_still_refuses_what_is_unsafe(source: str) -> None:
    from shepherd.tokenizer.chat_template import _environment

    env = _environment()
    for _ in range(2):
        ours, _ = _render_both(source, PROBE_MESSAGES[0], env)
        assert ours.startswith("SecurityError"), ours
