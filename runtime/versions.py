"""Policy versions: which policy sampled a batch, how far behind the trainer it is.

A policy version is the number of train calls applied to a model's home
engine (worker.py counts them; the driver counts the train calls it submits
and names the version with each realloc, which carries it with the weights to
devices that never held the policy; the home's ranks check it). A generate call stamps each
sequence it samples with its version (`policy_version` in the sequences
batch, so it travels with the data) and names it on its trace event. The
actor's train call reads the batch's version (RLAlgorithm.actor_options); a
worker whose policy is newer recomputes proximal log-probs (decoupled PPO,
runtime/losses.py). The train call's metrics of the iteration:

    async/staleness          trainer version - batch version (max over the
                             generate calls of the trained model; <= max_staleness)
    async/policy_version     the oldest version that sampled the batch
    async/behaviour_weight_* mean pi_prox / pi_behav over response tokens and the
                             fraction above the loss's cap (only when stale)
    timing_s/<call>_proximal the proximal pass before the call's first step (only
                             when stale; part of timing_s/<call>)
"""

from __future__ import annotations

from typing import Any

from planner.graph.spec import CallSpec, Spec


def batch_version(seqs: dict[str, Any] | None) -> int | None:
    """The oldest policy version among a sequences batch's rows (None: not sampled)."""
    if not isinstance(seqs, dict) or "policy_version" not in seqs:
        return None
    return int(seqs["policy_version"].min())


def train_metrics(spec: Spec, call: CallSpec, store: dict[str, Any], trainer_version: int,
                  behaviour: dict[str, float] | None) -> dict[str, float]:
    """The async/ metrics of train call `call`, from the batches it read (`store`)."""
    sampled = [batch_version(store.get(c.outputs[0])) for c in spec.calls
               if c.type == "generate" and c.model == call.model]
    sampled = [v for v in sampled if v is not None]
    if not sampled:
        return {}
    m: dict[str, float] = {"async/staleness": trainer_version - min(sampled),
                           "async/policy_version": min(sampled)}
    behaviour = dict(behaviour or {})
    if "proximal_s" in behaviour:
        m[f"timing_s/{call.name}_proximal"] = behaviour.pop("proximal_s")
    for k, v in behaviour.items():
        m[f"async/behaviour_weight_{k}"] = v
    return m
