"""A layout: an ordered device list and a (dp, tp, pp) split of it.

Rank order inside a layout: tp innermost, then dp, then pp, as in Megatron's
default. Rank r runs on `device_ids[r]` and has coordinates

    t = r % tp,  d = (r // tp) % dp,  p = r // (tp * dp)

so a tp group is `tp` adjacent devices (one NVLink island when tp divides
the node size) and pipeline stage p owns a contiguous block of dp*tp devices.

Short notation, for people (same form as ReaLHF/AReaL allocation strings):
`0-15:d2p2t4` = devices 0..15, dp 2, pp 2, tp 4. The device part may also be
a comma list of ids and ranges (`0-3,8-11:d2t4`); missing factors are 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from planner.limits import MAX_DEVICES


class LayoutError(ValueError):
    """A layout string or layout that cannot be used; the message says why."""


@dataclass(frozen=True)
class Layout:
    device_ids: tuple[int, ...]
    dp: int = 1
    tp: int = 1
    pp: int = 1

    def __post_init__(self) -> None:
        for name in ("dp", "tp", "pp"):
            if getattr(self, name) < 1:
                raise LayoutError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(set(self.device_ids)) != len(self.device_ids):
            raise LayoutError(f"device ids repeat in {self.device_ids}")
        if any(d < 0 for d in self.device_ids):
            raise LayoutError(f"device ids must be >= 0, got {self.device_ids}")
        if self.dp * self.tp * self.pp != len(self.device_ids):
            raise LayoutError(
                f"dp*tp*pp = {self.dp}*{self.tp}*{self.pp} = {self.dp * self.tp * self.pp} "
                f"but the layout has {len(self.device_ids)} devices"
            )

    @property
    def world_size(self) -> int:
        return len(self.device_ids)

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(dp index, tp index, pp index) of a rank of this layout."""
        t = rank % self.tp
        d = (rank // self.tp) % self.dp
        p = rank // (self.tp * self.dp)
        return d, t, p

    def rank_of(self, d: int, t: int, p: int) -> int:
        return (p * self.dp + d) * self.tp + t

    def device_of(self, d: int, t: int, p: int) -> int:
        return self.device_ids[self.rank_of(d, t, p)]

    def __str__(self) -> str:
        return format_layout(self)


def parse_devices(text: str) -> tuple[int, ...]:
    """`0-7,16-23` -> the ids; LayoutError when it is not a device list or too large."""
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise LayoutError(f"bad device list {text!r}: expected ids or ranges like 0-7,16-23")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise LayoutError(f"bad device range {part!r}: end before start")
        if hi >= MAX_DEVICES or len(ids) + hi - lo + 1 > MAX_DEVICES:  # before building it
            raise LayoutError(f"bad device range {part!r}: device ids go up to "
                              f"{MAX_DEVICES - 1} (at most {MAX_DEVICES} devices)")
        ids.extend(range(lo, hi + 1))
    return tuple(ids)


def _format_devices(ids: tuple[int, ...]) -> str:
    parts: list[str] = []
    start = prev = None
    for i in ids:
        if start is None:
            start = prev = i
        elif i == prev + 1:  # type: ignore[operator]
            prev = i
        else:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = i
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ",".join(parts)


def parse_layout(text: str) -> Layout:
    """Parse `0-15:d2p2t4`; raises LayoutError naming what is wrong."""
    if ":" not in text:
        raise LayoutError(f"bad layout {text!r}: expected DEVICES:STRATEGY, e.g. 0-15:d2p2t4")
    dev_text, strat = text.strip().split(":", 1)
    devices = parse_devices(dev_text)
    factors = {"d": 1, "t": 1, "p": 1}
    seen: set[str] = set()
    pos = 0
    for m in re.finditer(r"([dtp])(\d+)", strat):
        if m.start() != pos or m.group(1) in seen:
            break
        seen.add(m.group(1))
        factors[m.group(1)] = int(m.group(2))
        pos = m.end()
    if pos != len(strat):
        raise LayoutError(
            f"bad strategy {strat!r} in {text!r}: expected letters d, p, t each once with a "
            "number, e.g. d2p2t4"
        )
    return Layout(devices, dp=factors["d"], tp=factors["t"], pp=factors["p"])


def format_layout(layout: Layout) -> str:
    strat = "".join(
        f"{k}{v}" for k, v in (("d", layout.dp), ("p", layout.pp), ("t", layout.tp)) if v > 1
    ) or "d1"
    return f"{_format_devices(layout.device_ids)}:{strat}"
