"""The runtime's algorithm registry: what each algorithm reads, trains and reports.

An algorithm is a registered `Algorithm` in its own module (ppo.py, grpo.py,
remax.py, dpo.py, sft.py, rm.py): the dataset it reads, the data keys it
needs, the loss of each train call (by model head), its advantage or target
computation and its metrics. The controller asks the registry which one a
spec runs and never looks at key names to decide:

- a spec from the `algorithm:` shorthand records its name (`algorithm_name`),
  and that algorithm runs (refused if the calls lack what it needs);
- a hand-written spec without a name runs the algorithm whose needs its calls
  meet; when several do, the one that needs the most keys (a ReMax graph
  also meets GRPO's needs); when none does, it is refused, naming what the
  closest algorithm lacks.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from planner.errors import UserError
from planner.graph.dataflow import key_producers
from planner.graph.spec import CallSpec, Spec
from runtime.data.records import encode_pairs, encode_sequences, load_records

Store = dict[str, Any]


class UnsupportedSpec(UserError):
    pass


class Algorithm:
    """One algorithm as the runtime runs it. Subclasses set the class attributes;
    dataset-driven ones (DPO, SFT, RM) inherit `first_batch` as is and name the
    `train_columns` of their dataset batch, RL ones implement `train_inputs`."""

    name: str
    data: str  # what the dataset gives: prompts | pairs | sequences (runtime/data/records.py)
    keys: tuple[str, ...]  # data keys read by name, the dataset's included
    losses: dict[str, str]  # model head of each train call -> runtime/losses.py function
    tokens_key: str  # the token batch perf/ metrics count
    train_columns: tuple[str, ...] = ()  # columns of the dataset batch a train call is sent

    @property
    def seqs_per_record(self) -> int:
        """A pair is two sequences in the calls' num_seqs."""
        return 2 if self.data == "pairs" else 1

    # -- shape --------------------------------------------------------------
    def missing(self, spec: Spec) -> list[str]:
        """What the spec lacks for this algorithm ([] when it runs)."""
        out = []
        if self.data not in spec.dataset.keys:
            out.append(f"dataset key '{self.data}'")
        produced = key_producers(spec)
        out += [f"key '{k}'" for k in self.keys if k != self.data and k not in produced]
        heads = sorted(spec.models[c.model].head for c in spec.calls if c.type == "train")
        if heads != sorted(self.losses):
            out.append(f"train calls of heads [{', '.join(sorted(self.losses))}] "
                       f"(has [{', '.join(heads)}])")
        return out or self.check_calls(spec)

    def check_calls(self, spec: Spec) -> list[str]:
        """Further needs of the calls (sizes that must agree); [] when fine."""
        readers = [c for c in spec.calls if self.data in c.inputs]
        per_record = self.seqs_per_record
        sizes = {(c.num_seqs, c.total_len) for c in readers}
        if len(sizes) > 1:
            return [f"calls reading '{self.data}' that agree on num_seqs and seq_len"]
        odd = [c.name for c in readers if c.seqs_per_record != per_record]
        if odd:  # the planner keeps a record whole on one dp rank and micro-batch only then
            return [f"seqs_per_record: {per_record} in {', '.join(odd)} "
                    f"(a record of '{self.data}' is {per_record} sequences)"]
        few = [c.name for c in readers
               if c.type == "train" and c.minibatches > c.num_seqs // per_record]
        return [f"minibatches <= records in {', '.join(few)}"] if few else []

    # -- one iteration ----------------------------------------------------------
    def first_batch(self, spec: Spec, sampler, tokenizer) -> Store:
        """The store's dataset entries of one iteration: token batches of the
        records, [n, 2, seq_len] for pairs, [n, seq_len] for sequences."""
        call = next(c for c in spec.calls if self.data in c.inputs)
        records = sampler.next_batch(call.num_seqs // self.seqs_per_record)
        encode = encode_pairs if self.data == "pairs" else encode_sequences
        return {self.data: encode(tokenizer, records, call.total_len)}

    def load_data(self, path: str | None) -> list:
        return load_records(self.data, path)

    def train_inputs(self, spec: Spec, call: CallSpec, store: Store
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The batch a train call is sent and its options ({"loss", "loss_kwargs"}):
        by default the `train_columns` of the dataset batch."""
        if not self.train_columns:
            raise NotImplementedError
        data = store[self.data]
        return {k: data[k] for k in self.train_columns}, self.loss_options(spec, call)

    def metrics(self, spec: Spec, store: Store) -> dict[str, float]:
        """Metrics of one iteration beyond timings, token counts and train stats."""
        return {}

    def loss_options(self, spec: Spec, call: CallSpec, **loss_kwargs) -> dict[str, Any]:
        return {"loss": self.losses[spec.models[call.model].head], "loss_kwargs": loss_kwargs}


REGISTRY: dict[str, Algorithm] = {}
BUILTIN = ("ppo", "grpo", "remax", "dpo", "sft", "rm")


def register(algorithm: Algorithm) -> Algorithm:
    assert algorithm.name not in REGISTRY, algorithm.name
    REGISTRY[algorithm.name] = algorithm
    return algorithm


def algorithm_for(spec: Spec) -> Algorithm:
    """The algorithm a spec runs, or UnsupportedSpec naming what is missing."""
    for module in BUILTIN:  # each registers itself on import
        importlib.import_module(f"runtime.algorithms.{module}")
    if spec.algorithm_name is not None:
        alg = REGISTRY.get(spec.algorithm_name)
        if alg is None:
            raise UnsupportedSpec(f"algorithm_name: unknown algorithm '{spec.algorithm_name}'; "
                                  f"the runtime runs {', '.join(sorted(REGISTRY))}")
        lacks = alg.missing(spec)
        if lacks:
            raise UnsupportedSpec(f"calls: {alg.name} needs {'; '.join(lacks)}")
        return alg
    algs = [REGISTRY[n] for n in sorted(REGISTRY)]  # import order must not matter
    fits = [a for a in algs if not a.missing(spec)]
    if fits:
        return max(fits, key=lambda a: len(a.keys))
    closest = min(algs, key=lambda a: len(a.missing(spec)))
    raise UnsupportedSpec(f"calls: the runtime recognises none of "
                          f"{', '.join(sorted(REGISTRY))} in these calls; the closest, "
                          f"{closest.name}, needs {'; '.join(closest.missing(spec))}")
