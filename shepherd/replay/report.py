"""The advisor's answer as a table for people, or JSON for machines."""

from __future__ import annotations

import shlex
from dataclasses import asdict
from typing import Any

from shepherd.replay.advisor import Advice, ReplaySettings
from shepherd.replay.trace import Trace


def launch_command(advice: Advice) -> str:
    return "shepherd launch " + " ".join(shlex.quote(f) for f in advice.launch_flags) + \
        f" --worker-urls <{advice.workers} worker URLs>"


def as_json(trace: Trace, settings: ReplaySettings, advice: Advice) -> dict[str, Any]:
    return {
        "trace": {"source": trace.source, "requests": len(trace.requests), "duration_secs": round(trace.duration, 3),
                  "tokens_per_block": trace.tokens_per_block, "skipped_lines": trace.skipped},
        "fleet": {"workers": settings.workers, "engine": asdict(settings.params),
                  "load_monitor_interval_secs": settings.load_monitor_interval},
        "seed": settings.seed,
        "results": [{"rank": i + 1, "label": row.candidate.label, "policy": row.candidate.policy,
                     "settings": dict(row.candidate.settings),
                     **{k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(row.result).items()}}
                    for i, row in enumerate(advice.rows)],
        "recommendation": {"label": advice.recommended.candidate.label, "policy": advice.recommended.candidate.policy,
                           "settings": dict(advice.recommended.candidate.settings), "reason": advice.reason,
                           "launch_flags": advice.launch_flags, "launch_command": launch_command(advice)},
        "capacity": advice.capacity,
    }


def as_table(trace: Trace, settings: ReplaySettings, advice: Advice) -> str:
    lines = [f"Replayed {len(trace.requests)} requests ({trace.source}, {trace.duration:.1f}s of traffic) against "
             f"{settings.workers} simulated workers, seed {settings.seed}.", ""]
    header = (f"{'#':>2} {'policy':<60} {'hit rate':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'req/s':>7} "
              f"{'tok/s':>8} {'worker share min/max':>21}")
    lines += [header, "-" * len(header)]
    for i, row in enumerate(advice.rows, 1):
        r = row.result
        marker = "*" if row is advice.recommended else " "
        lines.append(f"{i:>2} {marker}{row.candidate.label:<59} {r.hit_rate:>8.1%} {r.ttft_p50_ms:>7.0f}ms "
                     f"{r.ttft_p99_ms:>7.0f}ms {r.throughput_rps:>7.1f} {r.output_tps:>8.0f} "
                     f"{r.min_share:>10.1%} / {r.max_share:<8.1%}")
    lines += ["", f"Recommended: {advice.recommended.candidate.label} ({advice.reason}).",
              f"  {launch_command(advice)}"]
    capacity = advice.capacity
    if capacity is not None:
        if capacity.get("workers") is None:
            lines.append(f"Capacity: no fleet size up to the limit keeps TTFT p99 under "
                         f"{capacity['target_ttft_p99_ms']:g} ms ({capacity['message']}).")
        else:
            lines.append(f"Capacity: {capacity['workers']} workers keep TTFT p99 under "
                         f"{capacity['target_ttft_p99_ms']:g} ms with {capacity['policy']} "
                         f"({capacity['ttft_p99_ms']:.0f} ms).")
        lines.append("  sizes tried (workers: p99 ms): " +
                     ", ".join(f"{n}: {v:.0f}" for n, v in capacity["tried"].items()))
    if trace.skipped:
        lines.append(f"({trace.skipped} unreadable trace lines were skipped)")
    return "\n".join(lines)
