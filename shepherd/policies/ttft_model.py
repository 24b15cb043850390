"""Expected time to first token on a worker, with constants learned from the TTFTs the gateway sees.

    ttft ≈ base + per_token × (queued prefill tokens + this prompt's uncached tokens)
                + per_running × requests already running there
                + per_fleet × the fleet's mean running requests

The last term is the same for every candidate, so it never changes a decision: it is there to soak up
congestion that slows every worker at once (a busy host, the gateway's own CPU), which would
otherwise be learned as a per-worker running cost and make the model trade cache hits for balance.

The three constants start from priors (an engine prefilling about 8,000 tokens/s) and are refitted
online by recursive least squares with a forgetting factor, one update per observed first token, so
they follow the fleet's real speed (a slower GPU, a longer decode batch). Coefficients are kept in
physical ranges (never negative, per-token cost bounded) so that a few odd observations cannot make
the model prefer a queue or ignore a cache.
"""

from __future__ import annotations

from collections.abc import Sequence

# (1, prefill tokens ahead of the first token, running requests there, the fleet's mean running requests)
Features = tuple[float, float, float, float]

_BOUNDS = ((0.0, 5.0), (1e-7, 1e-2), (0.0, 0.1), (0.0, 0.1))
_N = len(_BOUNDS)


class TtftModel:
    def __init__(self, base: float = 0.005, per_token: float = 1 / 8000, per_running: float = 0.0005,
                 forgetting: float = 0.995) -> None:
        self.theta = [base, per_token, per_running, 0.0]
        # The priors' uncertainty (variance), per coefficient: loose, so that tens of requests move them.
        variances = (1.0, 1e-6, 1e-3, 1e-3)
        self._initial_p = [[variances[i] if i == j else 0.0 for j in range(_N)] for i in range(_N)]
        self._max_p = list(variances)
        self._p = [row[:] for row in self._initial_p]
        self._forgetting = forgetting
        self.observations = 0

    @staticmethod
    def features(prefill_tokens: float, running: float, fleet_running: float = 0.0) -> Features:
        return (1.0, float(prefill_tokens), float(running), float(fleet_running))

    def predict(self, x: Sequence[float]) -> float:
        return sum(t * v for t, v in zip(self.theta, x, strict=True))

    def observe(self, x: Sequence[float], ttft: float) -> None:
        """One recursive-least-squares step towards the observed `ttft` (seconds)."""
        if not 0.0 <= ttft < 600.0:
            return
        p, lam = self._p, self._forgetting
        px = [sum(p[i][j] * x[j] for j in range(_N)) for i in range(_N)]
        denominator = lam + sum(x[i] * px[i] for i in range(_N))
        if denominator <= 0.0:
            return
        gain = [v / denominator for v in px]
        error = ttft - self.predict(x)
        self.theta = [min(max(self.theta[i] + gain[i] * error, _BOUNDS[i][0]), _BOUNDS[i][1]) for i in range(_N)]
        self._p = [[(p[i][j] - gain[i] * px[j]) / lam for j in range(_N)] for i in range(_N)]
        # A direction the traffic does not excite would see its variance grow without bound (windup):
        # cap each variance at its prior by rescaling its row and column (D·P·D stays positive definite).
        scale = [min(1.0, (self._max_p[i] / self._p[i][i]) ** 0.5) if self._p[i][i] > 0 else 1.0
                 for i in range(_N)]
        if any(v < 1.0 for v in scale):
            self._p = [[self._p[i][j] * scale[i] * scale[j] for j in range(_N)] for i in range(_N)]
        self.observations += 1

    def snapshot(self) -> dict[str, float]:
        base, per_token, per_running, per_fleet = self.theta
        return {"base_secs": base, "prefill_tokens_per_sec": 1.0 / per_token, "per_running_secs": per_running,
                "per_fleet_running_secs": per_fleet,
                "observations": float(self.observations)}
