"""Run by tests/integration/test_structured_output_clients.py with .venv-instructor's Python (instructor
cannot share the test venv): extracts one pydantic model per instructor mode from the gateway at argv[1]
and prints, as one JSON line per mode, what it parsed (or the error)."""

from __future__ import annotations

import json
import sys

import instructor
import openai
from pydantic import BaseModel

MODES = {"json": instructor.Mode.JSON, "json_schema": instructor.Mode.JSON_SCHEMA, "md_json": instructor.Mode.MD_JSON,
         "tools": instructor.Mode.TOOLS, "tools_strict": instructor.Mode.TOOLS_STRICT}


class City(BaseModel):
    name: str
    population: int
    coastal: bool
    districts: list[str]


def extract(base_url: str, model: str, mode: str, stream: bool) -> dict[str, object]:
    client = instructor.from_openai(openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0),
                                    mode=MODES[mode])
    messages = [{"role": "user", "content": "Describe Lisbon"}]
    try:
        if stream:  # partial objects while the answer streams; the last one is the whole City
            partials = list(client.chat.completions.create_partial(
                model=model, response_model=City, max_retries=0, messages=messages))
            city = City.model_validate(partials[-1].model_dump())
            return {"mode": mode, "stream": True, "partials": len(partials), "city": city.model_dump()}
        city = client.chat.completions.create(model=model, response_model=City, max_retries=0, messages=messages)
        return {"mode": mode, "stream": False, "type": type(city).__name__, "city": city.model_dump()}
    except Exception as exc:  # reported to the test, which fails with it
        return {"mode": mode, "stream": stream, "error": f"{type(exc).__name__}: {exc}"[:2000]}


def main() -> None:
    base_url, model = sys.argv[1], sys.argv[2]
    for mode in MODES:
        print(json.dumps(extract(base_url, model, mode, stream=False)), flush=True)
    print(json.dumps(extract(base_url, model, "json", stream=True)), flush=True)


if __name__ == "__main__":
    main()
