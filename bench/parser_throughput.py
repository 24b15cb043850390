"""Tool-call and reasoning parser throughput, characters per second, one-shot vs streamed.

For every family it parses that family's corpus outputs (tests/parser_corpus.py: typical answers of a
few hundred characters) and a long output (one call whose string argument is a 16 KB source file),
first in one piece, then fed as 8-character deltas the way a token stream arrives. The ratio
streamed / one-shot is the price of streaming; the baseline is measured in the same run.

    python -m bench.parser_throughput [--seconds 0.5] [--delta 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from shepherd.parsers.reasoning import create_reasoning_parser
from shepherd.parsers.tool import create_tool_parser
from shepherd.testing.parser_corpus import REASONING_SAMPLES, TOOL_SAMPLES, TOOLS

_LINE = '    total = sum(item["price"] * item.get("qty", 1) for item in order)  # <- "quoted" \\ path\n'
LONG_CODE = (_LINE * (16384 // len(_LINE) + 1))[:16384]


def _json_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def long_outputs() -> dict[str, str]:
    """One long call per family, in each family's own format."""
    args = '{"path": "report.py", "content": ' + _json_string(LONG_CODE) + "}"
    return {
        "qwen": f'Writing it.\n<tool_call>\n{{"name": "write_file", "arguments": {args}}}\n</tool_call>',
        "qwen_coder": ("<tool_call>\n<function=write_file>\n<parameter=path>\nreport.py\n</parameter>\n"
                       f"<parameter=content>\n{LONG_CODE}\n</parameter>\n</function>\n</tool_call>"),
        "llama": f'{{"name": "write_file", "parameters": {args}}}',
        "mistral": f"[TOOL_CALLS]write_file[ARGS]{args}",
        "pythonic": f"[write_file(path='report.py', content={LONG_CODE!r})]",
        "deepseek": ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>write_file\n```json\n"
                     f"{args}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"),
        "deepseek31": ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>write_file<｜tool▁sep｜>"
                       f"{args}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"),
        "kimik2": ("<|tool_calls_section_begin|><|tool_call_begin|>functions.write_file:0<|tool_call_argument_begin|>"
                   f"{args}<|tool_call_end|><|tool_calls_section_end|>"),
        "glm45": (f"<tool_call>write_file\n<arg_key>path</arg_key>\n<arg_value>report.py</arg_value>\n"
                  f"<arg_key>content</arg_key>\n<arg_value>{LONG_CODE}</arg_value>\n</tool_call>"),
        "step3": ('<｜tool_calls_begin｜><｜tool_call_begin｜>function<｜tool_sep｜><steptml:invoke name="write_file">'
                  '<steptml:parameter name="path">report.py</steptml:parameter><steptml:parameter name="content">'
                  f"{LONG_CODE}</steptml:parameter></steptml:invoke><｜tool_call_end｜><｜tool_calls_end｜>"),
        "json": f'[{{"name": "write_file", "parameters": {args}}}]',
    }


def _pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def rate(run_once: Callable[[], int], seconds: float) -> float:
    """Characters per second of run_once (which returns how many characters it parsed)."""
    run_once()  # warm up
    chars = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        chars += run_once()
        now = time.perf_counter()
        if now >= deadline:
            return chars / (now - start)


def tool_runner(parser_name: str, texts: list[str], delta: int | None) -> Callable[[], int]:
    inputs = [[text] if delta is None else _pieces(text, delta) for text in texts]
    total = sum(map(len, texts))

    def run_once() -> int:
        for pieces in inputs:
            parser = create_tool_parser(parser_name, tools=TOOLS)
            assert parser is not None
            for piece in pieces:
                parser.feed(piece)
            parser.finish()
        return total

    return run_once


def reasoning_runner(parser_name: str, texts: list[str], delta: int | None) -> Callable[[], int]:
    inputs = [[text] if delta is None else _pieces(text, delta) for text in texts]
    total = sum(map(len, texts))

    def run_once() -> int:
        for pieces in inputs:
            parser = create_reasoning_parser(parser_name)
            assert parser is not None
            for piece in pieces:
                parser.feed(piece)
            parser.finish()
        return total

    return run_once


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument("--seconds", type=float, default=0.5, help="time per measurement (default: 0.5)")
    options.add_argument("--delta", type=int, default=8, help="characters per streamed delta (default: 8)")
    options.add_argument("--json", help="also write the results to this file")
    args = options.parse_args()

    rows: list[dict[str, object]] = []
    by_family: dict[str, list[str]] = {}
    for sample in TOOL_SAMPLES:
        by_family.setdefault(sample.parser, []).append(sample.text)
    long = long_outputs()
    for family, texts in by_family.items():
        for kind, inputs in (("corpus", texts), ("16 KB arg", [long[family]])):
            one_shot = rate(tool_runner(family, inputs, None), args.seconds)
            streamed = rate(tool_runner(family, inputs, args.delta), args.seconds)
            rows.append({"parser": f"tool:{family}", "input": kind, "chars": sum(map(len, inputs)),
                         "one_shot": one_shot, "streamed": streamed})
    reasoning: dict[str, list[str]] = {}
    for rsample in REASONING_SAMPLES:
        if rsample.kwargs is None:
            reasoning.setdefault(rsample.parser, []).append(rsample.text)
    long_thought = "<think>\n" + LONG_CODE + "\n</think>\n\n" + LONG_CODE[:2048]
    for family, texts in reasoning.items():
        for kind, inputs in (("corpus", texts), ("18 KB", [long_thought])):
            if kind != "corpus" and family not in ("qwen3", "deepseek_r1"):
                continue
            one_shot = rate(reasoning_runner(family, inputs, None), args.seconds)
            streamed = rate(reasoning_runner(family, inputs, args.delta), args.seconds)
            rows.append({"parser": f"reasoning:{family}", "input": kind, "chars": sum(map(len, inputs)),
                         "one_shot": one_shot, "streamed": streamed})

    print(f"{'parser':<26} {'input':<10} {'chars':>7} {'one-shot chars/s':>17} "
          f"{f'streamed ({args.delta}-char) chars/s':>29} {'ratio':>6}")
    for row in rows:
        ratio = float(row["streamed"]) / float(row["one_shot"])  # type: ignore[arg-type]
        row["ratio"] = ratio
        print(f"{row['parser']:<26} {row['input']:<10} {row['chars']:>7} {row['one_shot']:>17,.0f} "
              f"{row['streamed']:>29,.0f} {ratio:>6.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
