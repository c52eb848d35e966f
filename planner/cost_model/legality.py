"""Which layouts a call may use, and why not: each refusal is one line naming the rule.

Rules (DESIGN.md "Words"): a device mesh is whole contiguous nodes, or an
aligned power-of-two slice inside one node; tp divides the query heads and
the KV heads and stays inside a node (its all-reduces run twice per layer);
pp is at most the number of layers; every dp rank gets at least one sequence
and every micro-batch at least one sequence.
"""

from __future__ import annotations

import math

from planner.errors import UserError
from planner.graph.arch import ModelArch
from planner.layout.layout import Layout


class IllegalLayoutError(UserError):
    """A layout the cost model refuses; the message says which rule it breaks."""


class OverpricedLayoutError(IllegalLayoutError):
    """A layout the cost model prices past what a plan holds (limits.MAX_PRICED_SECONDS
    for one call): out of the search like an illegal one (pp 16 at 131072 micro-batches
    is legal and absurd); when every layout of a call is, the profile is the suspect."""


def mesh_problem(device_ids: tuple[int, ...] | list[int], gpus_per_node: int,
                 num_devices: int | None = None) -> str | None:
    """Why a device set is not a legal mesh, or None when it is."""
    ids = sorted(device_ids)
    n = len(ids)
    if n == 0:
        return "the mesh has no devices"
    if num_devices is not None and ids[-1] >= num_devices:
        return f"device {ids[-1]} does not exist: the cluster has devices 0-{num_devices - 1}"
    if ids != list(range(ids[0], ids[0] + n)):
        return f"devices {ids[0]}..{ids[-1]} are not contiguous"
    start = ids[0]
    if start % gpus_per_node == 0 and n % gpus_per_node == 0:
        return None  # whole contiguous nodes
    if n > gpus_per_node or start // gpus_per_node != (start + n - 1) // gpus_per_node:
        return (f"{n} devices from {start} are neither whole nodes ({gpus_per_node} per node) "
                "nor a slice inside one node")
    if n & (n - 1):
        return f"a slice inside a node must have a power-of-two size, got {n}"
    if start % n:
        return f"a slice of {n} devices must start at a multiple of {n}, got {start}"
    return None


def layout_problem(arch: ModelArch, layout: Layout, gpus_per_node: int,
                   num_devices: int | None = None) -> str | None:
    """Why a model cannot use this layout, or None when it can."""
    why = mesh_problem(layout.device_ids, gpus_per_node, num_devices)
    if why:
        return why
    tp, pp = layout.tp, layout.pp
    if arch.num_heads % tp:
        return f"tp {tp} does not divide the model's {arch.num_heads} attention heads"
    if arch.num_kv_heads % tp:
        return f"tp {tp} does not divide the model's {arch.num_kv_heads} KV heads"
    for what, size in (("intermediate size", arch.intermediate_size),
                       ("vocabulary", arch.vocab_size)):
        if size % tp:
            return f"tp {tp} does not divide the model's {what} {size}"
    if pp > arch.num_layers:
        return f"pp {pp} exceeds the model's {arch.num_layers} layers"
    if tp > 1:
        for r in range(0, layout.world_size, tp):
            nodes = {layout.device_ids[r + t] // gpus_per_node for t in range(tp)}
            if len(nodes) > 1:
                return (f"tp group of ranks {r}-{r + tp - 1} spans nodes {sorted(nodes)}: "
                        f"tp must stay inside a node of {gpus_per_node}")
    return None


# Head sizes vLLM-CPU's attention kernels take (vllm 0.32 cpu_attn.get_supported_head_sizes).
VLLM_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def backend_problem(arch: ModelArch, backend: str, layout: Layout) -> str | None:
    """Why a generation backend cannot run this layout, or None. The runtime's vLLM
    backend runs one single-device engine per dp replica (tp and pp inside vLLM are
    not wired to the realloc'd shards), so vllm calls get tp = pp = 1 layouts."""
    if backend != "vllm":
        return None
    if layout.tp > 1 or layout.pp > 1:
        return f"the vllm backend runs tp=1, pp=1 layouts only (got tp {layout.tp}, pp {layout.pp})"
    head_dim = arch.head_dim
    if head_dim not in VLLM_HEAD_DIMS:
        return (f"the vllm backend needs a head size in {list(VLLM_HEAD_DIMS)}, the model has "
                f"{head_dim}")
    return None


def check_layout(arch: ModelArch, layout: Layout, gpus_per_node: int,
                 num_devices: int | None = None) -> None:
    """Raise IllegalLayoutError with the reason when the layout is not legal for the model."""
    why = layout_problem(arch, layout, gpus_per_node, num_devices)
    if why:
        raise IllegalLayoutError(f"layout {layout}: {why}")


def batch_problem(num_records: int, dp: int, micro_batches: int,
                  seqs_per_record: int = 1) -> str | None:
    """Why `num_records` records (a sequence, or a chosen/rejected pair when
    seqs_per_record is 2: never cut in half) cannot be split over dp ranks and
    micro-batches."""
    unit = "sequences" if seqs_per_record == 1 else f"records of {seqs_per_record} sequences"
    if micro_batches < 1:
        return f"micro-batches must be >= 1, got {micro_batches}"
    if dp > num_records:
        return f"dp {dp} exceeds the {num_records} {unit} of a batch: a dp rank would be idle"
    per_rank = -(-num_records // dp)
    if micro_batches > per_rank:
        return (f"{micro_batches} micro-batches exceed the {per_rank} {unit} per dp rank: "
                "a micro-batch would be empty")
    return None


def step_records(num_records: int, minibatches: int) -> int:
    """Records in one optimizer step (a call that does not train has one step)."""
    return math.ceil(num_records / minibatches)


def rank_records(num_seqs: int, seqs_per_record: int, minibatches: int, dp: int) -> int:
    """Records (sequences, or pairs) one dp rank gets per optimizer step."""
    return math.ceil(step_records(num_seqs // seqs_per_record, minibatches) / dp)


def call_batch_problem(num_seqs: int, seqs_per_record: int, minibatches: int, dp: int,
                       micro_batches: int) -> str | None:
    """Why a call's batch cannot be split over `dp` ranks and `micro_batches`."""
    return batch_problem(step_records(num_seqs // seqs_per_record, minibatches), dp,
                         micro_batches, seqs_per_record)


def call_problem(arch: ModelArch, num_seqs: int, minibatches: int, layout: Layout,
                 micro_batches: int, gpus_per_node: int,
                 num_devices: int | None = None, seqs_per_record: int = 1) -> str | None:
    """Why a call cannot run on `layout` with `micro_batches`, or None: the rule that
    the cost model prices by and that every plan loader checks."""
    return (layout_problem(arch, layout, gpus_per_node, num_devices)
            or call_batch_problem(num_seqs, seqs_per_record, minibatches, layout.dp,
                                  micro_batches))
