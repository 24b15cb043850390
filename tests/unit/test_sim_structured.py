"""The simulator's structured answers: which requests get a JSON document, and in which shape."""

from __future__ import annotations

import json

from shepherd.sim.structured import structured_schema, structured_text, wants_fenced_json

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "size": {"type": "integer"}},
          "required": ["name", "size"]}
SYSTEM = {"role": "system", "content": f"Answer with json matching this json_schema: {json.dumps(SCHEMA)}"}


def test_a_prompt_asking_for_a_json_code_block_gets_one() -> None:
    body = {"messages": [SYSTEM, {"role": "user", "content": "Return the JSON within a ```json codeblock."}]}
    assert wants_fenced_json(body) and structured_schema(body) == SCHEMA
    text = structured_text(SCHEMA, 7, fenced=True)
    assert text.startswith("```json\n") and text.endswith("\n```")
    assert set(json.loads(text.removeprefix("```json\n").removesuffix("\n```"))) == {"name", "size"}


def test_plain_prompts_and_response_formats_are_not_fenced() -> None:
    no_block = {"messages": [SYSTEM, {"role": "user", "content": "Describe a city"}]}
    assert not wants_fenced_json(no_block) and structured_schema(no_block) is None  # plain text
    no_schema = {"messages": [{"role": "user", "content": "Show me a ```json example"}]}
    assert wants_fenced_json(no_schema) and structured_schema(no_schema) is None  # nothing to fill: plain text
    json_object = {"response_format": {"type": "json_object"},
                   "messages": [SYSTEM, {"role": "user", "content": "a ```json block"}]}
    assert not wants_fenced_json(json_object) and structured_schema(json_object) == SCHEMA
