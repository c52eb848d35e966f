"""Device meshes a call may run on, and the order the search prefers their positions in.

A mesh is a contiguous device range (DESIGN.md "Words"): whole contiguous
nodes (k nodes from any node), or an aligned power-of-two slice inside one
node (1, 2, 4, ... devices starting at a multiple of the size). Any
gpus_per_node works; a node's full width counts as "whole nodes".

Meshes of one *shape* (same size, same kind) cost the same wherever they sit:
the estimator depends on a layout only through (dp, tp, pp) and which link
tiers its groups cross, and those are the same for every position of a
shape. So the search estimates a shape once, on its first position, and then
places it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MeshShape:
    """A mesh size and kind: `num_nodes` whole nodes, or a `size`-device slice of one node."""

    size: int
    whole_nodes: bool

    def label(self, gpus_per_node: int) -> str:
        if self.whole_nodes:
            k = self.size // gpus_per_node
            return f"{k} node{'s' if k > 1 else ''}"
        return f"{self.size}-device slice"


def node_counts(num_nodes: int) -> list[int]:
    """Node counts of multi-node meshes the search uses, largest first: powers of two and
    their complements (N - 2^j), so every "2^j nodes + the rest" split is reachable.

    Every count is legal (any k contiguous nodes is a mesh); the others (e.g. 5 of 16)
    only add positions that overlap these without opening a new split of the cluster.
    """
    counts = set()
    k = 1
    while k <= num_nodes:
        counts.add(k)
        if num_nodes - k > 0:
            counts.add(num_nodes - k)
        k *= 2
    counts.add(num_nodes)
    return sorted(counts, reverse=True)


# Up to this many nodes every node count is priced by default: 16 nodes (128 GPUs)
# cost about 1 s more than the 2^j / N-2^j counts, and the bound then covers every
# legal mesh (measured: `planner search specs/ppo-llama2-70b-128gpu.yaml`).
EVERY_NODE_COUNT_MAX_NODES = 16


def covers_every_node_count(num_nodes: int, every_node_count: bool) -> bool:
    """Whether the priced mesh shapes include every node count from 1 to num_nodes."""
    return every_node_count or len(node_counts(num_nodes)) == num_nodes


def mesh_shapes(num_nodes: int, gpus_per_node: int, *, every_node_count: bool = False
                ) -> list[MeshShape]:
    """The mesh shapes the search uses, largest first: node_counts (or every count from
    1 to num_nodes with `every_node_count`), then the power-of-two slices of a node."""
    counts = range(num_nodes, 0, -1) if every_node_count else node_counts(num_nodes)
    shapes = [MeshShape(k * gpus_per_node, True) for k in counts]
    n = 1
    slices = []
    while n < gpus_per_node:
        slices.append(MeshShape(n, False))
        n *= 2
    return shapes + slices[::-1]


def _preference(starts: list[int], unit: int) -> list[int]:
    """Starts ordered so that the first few are spread out and aligned: the first, the last,
    then by alignment (more trailing zeros of start/unit first), then ascending.

    A search that keeps only the first positions of a shape then still has disjoint
    ones at both ends of the cluster and a buddy-aligned middle.
    """
    if not starts:
        return []

    def tz(x: int) -> int:
        return 64 if x == 0 else (x & -x).bit_length() - 1

    first, last = starts[0], starts[-1]
    rest = sorted(set(starts) - {first, last}, key=lambda s: (-tz(s // unit), s))
    return [first] + ([last] if last != first else []) + rest


def mesh_starts(shape: MeshShape, num_nodes: int, gpus_per_node: int) -> list[int]:
    """First device of every legal position of a shape, in preference order."""
    total = num_nodes * gpus_per_node
    if shape.whole_nodes:
        k = shape.size // gpus_per_node
        starts = [s * gpus_per_node for s in range(num_nodes - k + 1)]
        return _preference(starts, gpus_per_node)
    n = shape.size
    inside = [s for s in range(0, total, n) if s // gpus_per_node == (s + n - 1) // gpus_per_node]
    return _preference(inside, n)


def all_meshes(num_nodes: int, gpus_per_node: int, *, every_node_count: bool = False
               ) -> list[tuple[int, int]]:
    """Every mesh the search uses, as (first device, size) pairs."""
    out = []
    for shape in mesh_shapes(num_nodes, gpus_per_node, every_node_count=every_node_count):
        out.extend((s, shape.size) for s in mesh_starts(shape, num_nodes, gpus_per_node))
    return out
