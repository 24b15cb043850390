"""Expected time to first token on a worker, with its two constants learned from observed TTFTs.

    ttft ≈ base + per_token × (prefill tokens ahead of the first token)

where the prefill ahead is the worker's queued uncached prompt tokens plus this prompt's uncached
part, which is how an SGLang/vLLM-like engine (and the simulator) spends the time before a first
token: chunked prefill of everything admitted ahead, then one step. Nothing is learned per running
request: the running count follows the load, and a constant fitted to it soaks up whatever slows
the fleet at that moment (the gateway's own CPU, a decode burst) and then outweighs the cache.

The fit is a ridge regression towards priors from the engine cost model (about 8,000 prefill tokens
per second, a 10 ms step), on exponentially forgotten sufficient statistics, so that:

* a direction the traffic does not excite (prompts whose uncached part hardly varies) stays at its
  prior instead of drifting with the noise;
* one observation moves the estimate by a bounded amount: residuals beyond a few times their running
  mean absolute size are down-weighted (Huber), so a stalled request cannot swing the constants;
* the result is clamped to physical bounds (per-token cost between 1/1,000,000 and 1/100 s).
"""

from __future__ import annotations

PRIOR_BASE_SECS = 0.010
PRIOR_TOKENS_PER_SEC = 8000.0
BASE_BOUNDS = (0.0, 2.0)
PER_TOKEN_BOUNDS = (1e-6, 1e-2)
MAX_TTFT_SECS = 600.0
HUBER_K = 3.0  # residuals beyond this many mean absolute residuals count as this many


class TtftModel:
    def __init__(self, base: float = PRIOR_BASE_SECS, per_token: float = 1 / PRIOR_TOKENS_PER_SEC,
                 forgetting: float = 0.999, prior_weight: float = 50.0, prior_tokens: float = 500.0) -> None:
        self.prior = (base, per_token)
        self.base, self.per_token = base, per_token
        self._forgetting = forgetting
        # The priors count as `prior_weight` observations: on the base directly, and on the per-token
        # cost at a typical `prior_tokens` uncached tokens (so both are on the scale of seconds²).
        self._ridge = (prior_weight, prior_weight * prior_tokens * prior_tokens)
        self._sxx = [[0.0, 0.0], [0.0, 0.0]]  # Σ w·x·xᵀ with x = (1, tokens)
        self._sxy = [0.0, 0.0]  # Σ w·x·ttft
        self._abs_residual = base  # running mean |residual|, the Huber scale
        self.observations = 0

    def predict(self, prefill_tokens: float) -> float:
        return self.base + self.per_token * prefill_tokens

    def observe(self, prefill_tokens: float, ttft: float) -> None:
        """Fold in one first token seen `ttft` seconds after dispatch, with `prefill_tokens` ahead."""
        if not 0.0 <= ttft < MAX_TTFT_SECS or prefill_tokens < 0:
            return
        residual = abs(ttft - self.predict(prefill_tokens))
        scale = max(self._abs_residual, 1e-3)
        weight = 1.0 if residual <= HUBER_K * scale else HUBER_K * scale / residual
        self._abs_residual = 0.98 * self._abs_residual + 0.02 * min(residual, HUBER_K * scale)
        lam, t = self._forgetting, float(prefill_tokens)
        sxx, sxy = self._sxx, self._sxy
        sxx[0][0] = lam * sxx[0][0] + weight
        sxx[0][1] = sxx[1][0] = lam * sxx[0][1] + weight * t
        sxx[1][1] = lam * sxx[1][1] + weight * t * t
        sxy[0] = lam * sxy[0] + weight * ttft
        sxy[1] = lam * sxy[1] + weight * t * ttft
        self.observations += 1
        self._solve()

    def _solve(self) -> None:
        (r0, r1), (p0, p1) = self._ridge, self.prior
        a, b, d = self._sxx[0][0] + r0, self._sxx[0][1], self._sxx[1][1] + r1
        y0, y1 = self._sxy[0] + r0 * p0, self._sxy[1] + r1 * p1
        determinant = a * d - b * b  # > 0: the ridge makes the matrix positive definite
        base = (d * y0 - b * y1) / determinant
        per_token = (a * y1 - b * y0) / determinant
        self.per_token = min(max(per_token, PER_TOKEN_BOUNDS[0]), PER_TOKEN_BOUNDS[1])
        if self.per_token != per_token:  # refit the base with the per-token cost held at its bound
            base = (y0 - b * self.per_token) / a
        self.base = min(max(base, BASE_BOUNDS[0]), BASE_BOUNDS[1])

    def snapshot(self) -> dict[str, float]:
        return {"base_secs": self.base, "prefill_tokens_per_sec": 1.0 / self.per_token,
                "observations": float(self.observations)}
