"""Sequence lengths as a distribution: what real rollouts look like (a mean, a cap, a tail).

A spec writes a length either as a plain integer (every sequence has it) or as

    gen_len: {mean: 1200, max: 20480, dist: exponential}
    gen_len: {histogram: [[256, 0.5], [1024, 0.3], [8192, 0.2]]}

`exponential` is an exponential truncated to [1, max] whose rate is solved so
the mean is `mean`: a mean below (1 + max) / 2 gives a long right tail (most
responses short, a few near the cap), a mean above it piles lengths up at the
cap (a run where many responses are truncated); mean = (1 + max) / 2 is
uniform. `uniform` spreads lengths evenly over [2*mean - max, max].
`histogram` is a list of (length, weight) pairs.

`clip` (exponential and uniform) is the fraction of sequences cut at `max`:
the responses that run into the cap, which real RL rollouts always have
(verl logs it as response_length/clip_ratio). The rest follow the named
shape with the mean that keeps the overall mean `mean`. A call of N
sequences with clip * N >= 1 lasts at least `max` decode steps, whatever
the mean: the cap, not the mean, sets a large call's straggler.

    gen_len: {mean: 1200, max: 20480, clip: 0.01}

The cost model reads a distribution only through `quantiles(n)` (n
representative lengths, deterministic) and `mean` / `max`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal, Union

from pydantic import BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from typing_extensions import Annotated

from planner import limits as L
from planner.graph.numbers import CheckedModel

DistKind = Literal["exponential", "uniform", "histogram"]


class LengthDist(CheckedModel):
    """A distribution of sequence lengths (tokens): mean, cap, and shape."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    mean: float | None = Field(None, gt=0, le=L.MAX_TOKENS,
                               description="Mean length (derived for histograms).")
    max: int | None = Field(None, gt=0, le=L.MAX_TOKENS,
                            description="Longest length: the engine's cap.")
    dist: DistKind = Field("exponential", description="exponential (truncated), uniform or "
                           "histogram.")
    clip: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of sequences cut at max "
                        "(truncated responses); exponential and uniform only.")
    histogram: tuple[tuple[int, float], ...] | None = Field(
        None, max_length=4096, description="(length, weight) pairs; weights need not sum to 1.")

    @model_validator(mode="before")
    @classmethod
    def _histogram_implies_dist(cls, data):
        if isinstance(data, dict) and data.get("histogram") is not None and "dist" not in data:
            data = dict(data, dist="histogram")
        return data

    @model_validator(mode="after")
    def _check(self) -> "LengthDist":
        if self.dist == "histogram":
            h = self.histogram
            if not h:
                raise ValueError("a histogram length needs histogram: [[length, weight], ...]")
            if any(n <= 0 or n > L.MAX_TOKENS or w < 0 for n, w in h) or sum(w for _, w in h) <= 0:
                raise ValueError(f"histogram lengths must be in 1..{L.MAX_TOKENS}, weights >= 0, "
                                 "some weight > 0")
            total = sum(w for _, w in h)
            if not math.isfinite(total):  # each weight is finite; 1e308 + 1e308 is not
                raise ValueError(f"histogram: the weights sum to {total}; expected a finite sum "
                                 "(weights need not sum to 1: scale them down)")
            mean = sum(n * w for n, w in h) / total
            if not math.isfinite(mean):  # n * w overflowed: weigh by shares instead
                mean = sum(n * (w / total) for n, w in h)
            top = max(n for n, w in h if w > 0)
            if self.mean is not None and abs(self.mean - mean) > 0.5:
                raise ValueError(f"mean {self.mean} does not match the histogram's mean {mean:.1f}")
            if self.max is not None and self.max != top:
                raise ValueError(f"max {self.max} does not match the histogram's longest {top}")
            if self.clip:
                raise ValueError("clip applies to exponential and uniform lengths; a histogram "
                                 "puts the truncated share at its longest length itself")
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "max", top)
            return self
        if self.histogram is not None:
            raise ValueError(f"histogram given but dist is {self.dist!r}")
        if self.mean is None or self.max is None:
            raise ValueError(f"a {self.dist} length needs mean and max")
        if self.mean > self.max:
            raise ValueError(f"mean {self.mean} exceeds max {self.max}")
        bulk = self.bulk_mean
        if self.clip and bulk < 1:
            raise ValueError(f"clip {self.clip} of max {self.max} alone exceeds mean {self.mean} "
                             "(the unclipped sequences would need a mean below 1)")
        if self.dist == "uniform" and 2 * bulk - self.max < 1:
            raise ValueError(f"uniform: 2*mean - max = {2 * bulk - self.max:g} must be >= 1 "
                             "(lengths spread over [2*mean - max, max]; mean of the unclipped)")
        if self.dist == "exponential" and self.mean < 1:
            raise ValueError("exponential: mean must be >= 1")
        return self

    @property
    def bulk_mean(self) -> float:
        """Mean of the sequences not cut at max (the whole mean when clip is 0)."""
        if self.dist == "histogram" or not self.clip:
            return float(self.mean)  # type: ignore[arg-type]
        return (float(self.mean) - self.clip * float(self.max)) / (1.0 - self.clip)

    def quantiles(self, n: int) -> tuple[int, ...]:
        """n representative lengths: the quantiles at (j + 0.5) / n, ascending, each in [1, max]."""
        return _quantiles(self, n)

    @property
    def mean_square(self) -> float:
        """E[length^2]: what attention over packed sequences costs per sequence (it is
        quadratic in each sequence's length, so a tail costs more than its tokens)."""
        return _mean_square(self)

    def quantile(self, q: float) -> float:
        """The length below which a fraction q of sequences lie."""
        if self.dist == "histogram":
            pairs = sorted(self.histogram or [])
            total = sum(w for _, w in pairs)
            acc = 0.0
            for length, w in pairs:
                acc += w / total
                if q < acc - 1e-12:
                    return float(length)
            return float(pairs[-1][0])
        if self.clip:
            if q >= 1.0 - self.clip:
                return float(self.max)
            q /= 1.0 - self.clip  # a quantile of the unclipped sequences
        mean = self.bulk_mean
        lo, hi = (2 * mean - self.max, float(self.max)) if self.dist == "uniform" \
            else (1.0, float(self.max))
        if self.dist == "uniform" or hi <= lo:
            return lo + q * (hi - lo)
        y = (mean - lo) / (hi - lo)  # target mean on [0, 1]
        if y <= 0.5:
            return lo + (hi - lo) * _exp_quantile(_rate_for_mean(y), q)
        return hi - (hi - lo) * _exp_quantile(_rate_for_mean(1.0 - y), 1.0 - q)


def _unit_mean(u: float) -> float:
    """Mean of the exponential with rate u truncated to [0, 1] (u > 0)."""
    if u < 1e-6:
        return 0.5 - u / 12.0
    if u > 700:
        return 1.0 / u
    return 1.0 / u - 1.0 / math.expm1(u)


@lru_cache(maxsize=4096)
def _rate_for_mean(y: float) -> float:
    """The rate u > 0 whose truncated exponential on [0, 1] has mean y (0 < y <= 0.5)."""
    if y >= 0.5 - 1e-9:
        return 0.0
    lo, hi = 0.0, 1.0
    while _unit_mean(hi) > y:
        hi *= 2.0
    for _ in range(100):  # the mean falls monotonically with the rate
        mid = (lo + hi) / 2
        if _unit_mean(mid) > y:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _exp_quantile(u: float, q: float) -> float:
    """Inverse CDF on [0, 1] of the truncated exponential with rate u >= 0."""
    if u == 0.0:
        return q
    return -math.log1p(-q * -math.expm1(-u)) / u


@lru_cache(maxsize=1024)
def _quantiles(dist: LengthDist, n: int) -> tuple[int, ...]:
    cap = int(dist.max or 1)
    return tuple(min(cap, max(1, round(dist.quantile((j + 0.5) / n)))) for j in range(n))


# Quantiles the second moment is taken over: exact for histograms and for the clipped
# share (both are point masses), within ~0.1% for a truncated exponential's tail.
_MOMENT_POINTS = 4096


@lru_cache(maxsize=1024)
def _mean_square(dist: LengthDist) -> float:
    if dist.dist == "histogram":
        pairs = dist.histogram or ()
        total = sum(w for _, w in pairs)
        return sum(n * n * (w / total) for n, w in pairs)
    qs = _quantiles(dist, _MOMENT_POINTS)
    return sum(float(n) * n for n in qs) / len(qs)


def length_mean(value: int | LengthDist) -> float:
    return float(value) if isinstance(value, int) else float(value.mean)  # type: ignore[arg-type]


def length_max(value: int | LengthDist) -> int:
    return value if isinstance(value, int) else int(value.max)  # type: ignore[arg-type]


def _to_length(value):
    """An int > 0 stays; a mapping becomes a LengthDist, its first error as one message."""
    if isinstance(value, dict):
        try:
            return LengthDist(**value)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            raise ValueError(f"{where + ': ' if where else ''}{msg}") from None
    if isinstance(value, bool) or not isinstance(value, (int, LengthDist)):
        raise ValueError("expected a length: an integer > 0 or {mean, max, dist}")
    if isinstance(value, int) and value <= 0:
        raise ValueError(f"expected a length > 0, got {value}")
    return value


# A length field: an integer, or a distribution written as a mapping.
LengthValue = Annotated[Union[int, LengthDist], BeforeValidator(_to_length)]
