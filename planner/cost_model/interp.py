"""Log-log interpolation over measured grids.

Measured tables are turned into EFFICIENCY grids: at every measured point,
efficiency = analytic model time / measured time. A query anywhere then costs
analytic(query) / efficiency(query), with the efficiency interpolated
bilinearly in log space between measured points and clamped to the nearest
measured point outside them. So:
- at a measured point the estimate is the measurement, exactly;
- between points it is a log-log interpolation (times follow power laws in
  size, so this is the natural interpolant);
- outside the grid it is the analytic roofline scaled by the nearest measured
  efficiency, as the issue asks.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Sequence


def _bracket(axis: tuple[float, ...], x: float) -> tuple[int, float]:
    """(i, w): x sits between axis[i] and axis[i+1] at weight w in [0, 1] (clamped)."""
    n = len(axis)
    if n == 1 or x <= axis[0]:
        return 0, 0.0
    if x >= axis[-1]:
        return n - 2, 1.0
    i = bisect_right(axis, x) - 1
    return i, (x - axis[i]) / (axis[i + 1] - axis[i])


class LogGrid:
    """f(x, y) > 0 known on a rectangular grid; bilinear in (log x, log y, log f)."""

    __slots__ = ("_lx", "_ly", "_lv")

    def __init__(self, xs: Sequence[float], ys: Sequence[float], values: Sequence[Sequence[float]]):
        if len(values) != len(xs) or any(len(row) != len(ys) for row in values):
            raise ValueError("grid values must be len(xs) x len(ys)")
        self._lx = tuple(math.log(x) for x in xs)
        self._ly = tuple(math.log(y) for y in ys)
        self._lv = tuple(tuple(math.log(v) for v in row) for row in values)

    def __call__(self, x: float, y: float = 1.0) -> float:
        lv = self._lv
        i, wx = _bracket(self._lx, math.log(x))
        j, wy = _bracket(self._ly, math.log(y))
        i1 = min(i + 1, len(self._lx) - 1)
        j1 = min(j + 1, len(self._ly) - 1)
        top = lv[i][j] * (1 - wy) + lv[i][j1] * wy
        bottom = lv[i1][j] * (1 - wy) + lv[i1][j1] * wy
        return math.exp(top * (1 - wx) + bottom * wx)
