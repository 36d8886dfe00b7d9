"""Standard errors of the summary's classifier metrics, by a seeded bootstrap over prompt rows.

Why a bootstrap: the metrics are whatever a classifier's `summarize` returns (rates, accuracies,
ratios of rates, per-set means), so a formula per metric would have to know each one. Resampling
the rows and recomputing `summarize` gives every metric its standard error the same way; for a
plain rate p over n videos it matches the binomial sqrt(p(1-p)/n) (tested). Deterministic (fixed
seed), so a rerun reports the same numbers. Cost: BOOTSTRAP_SAMPLES calls of `summarize` on
python dicts, ~0.1 s for 1,000 rows with the toy or NudeNet classifier.

Paired metrics (`summarize_paired`, base vs erased on the same rows) resample the pairs together.
A search uses these to say whether two trials differ at all (`pipelines.search.objective`).
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable

BOOTSTRAP_SAMPLES = 200
BOOTSTRAP_SEED = 0


def _stratum(item) -> Any:
    """Records that carry a `set` (the toy classifier's target / synonym / nontarget groups) are
    resampled within it, so each group keeps its size, as in the experiment's design."""
    rec = item[0] if isinstance(item, tuple) else item
    return rec.get("set") if isinstance(rec, dict) else None


def bootstrap_se(items: list, stat: Callable[[list], dict[str, Any]],
                 samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> dict[str, float]:
    """Per key of `stat(items)`: the standard deviation of that key over `samples` resamples of
    `items` (with replacement, within each stratum, same sizes). Counts (`n_*`) and keys whose
    value is not a finite number are left out; a resample where a key is missing or NaN (a ratio
    whose base rate drew 0) does not count."""
    if len(items) < 2:
        return {}
    rng = random.Random(seed)
    strata: dict[Any, list] = {}
    for it in items:
        strata.setdefault(_stratum(it), []).append(it)
    groups = list(strata.values())
    draws: dict[str, list[float]] = {}
    for _ in range(samples):
        res = stat([g[rng.randrange(len(g))] for g in groups for _ in range(len(g))])
        for k, v in res.items():
            if not k.startswith("n_") and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
                draws.setdefault(k, []).append(float(v))
    out = {}
    for k, vs in draws.items():
        if len(vs) >= samples // 2:  # a key defined in under half the resamples has no usable spread
            mean = sum(vs) / len(vs)
            out[k] = math.sqrt(sum((v - mean) ** 2 for v in vs) / (len(vs) - 1))
    return out


def paired_se(classifier, base: list, erased: list, **kw) -> dict[str, float]:
    """Bootstrap standard errors of `classifier.summarize_paired(base, erased)` (pairs resampled together)."""
    pairs = list(zip(base, erased))
    return bootstrap_se(pairs, lambda ps: classifier.summarize_paired([b for b, _ in ps], [e for _, e in ps]), **kw)
