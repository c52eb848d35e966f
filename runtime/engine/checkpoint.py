"""Hugging Face checkpoints (config.json + safetensors) in and out of any layout.

Format: a directory holding config.json and either `model.safetensors` or
shards `model-0000k-of-0000n.safetensors` listed in
`model.safetensors.index.json` (`weight_map`: tensor name -> file), exactly
what `save_pretrained` writes and `from_pretrained` reads. Tensor names are
HF's (model.layers.{i}.self_attn.q_proj.weight, ..., lm_head.weight or
score.weight); a tied checkpoint has no lm_head.weight.

Loading: every rank checks the whole checkpoint's metadata (config fields,
every tensor's presence and shape: header reads only), so all ranks reach
the same verdict without talking; then reads just its own slices with
`safe_open(...).get_slice(name)[slices]` into staging tensors; only when all
have been read are they copied into the model. A bad checkpoint raises
CheckpointError naming the file and the tensor or field, and the model is
left untouched.

Saving: the first dp replica writes, one file per pipeline stage, by the tp
rank 0 of that stage after gathering the tp shards (DTensor.full_tensor);
everything goes to a temporary directory next to the target that is renamed
into place once complete, so a reader never sees a half-written checkpoint.
Per-stage writers need the directory on a filesystem all writers share.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from planner.errors import UserError
from planner.graph.arch import HeadType, ModelArch

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded into the requested model; names what is wrong."""


# ModelArch field -> HF config key (llama and qwen2 use the same names).
_HF_KEYS = {
    "num_layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "vocab_size": "vocab_size",
    "max_positions": "max_position_embeddings",
    "tied_embeddings": "tie_word_embeddings",
    "rms_norm_eps": "rms_norm_eps",
}


def _rope_theta(cfg: dict) -> float:
    # transformers >= 5 nests it in rope_parameters; older configs keep it top-level.
    for key in ("rope_parameters", "rope_scaling"):
        sub = cfg.get(key) or {}
        if "rope_theta" in sub:
            return float(sub["rope_theta"])
        if sub.get("rope_type", "default") not in ("default",):
            raise CheckpointError(f"unsupported RoPE scaling {sub.get('rope_type')!r} in {key}")
    return float(cfg.get("rope_theta", 10000.0))


def arch_from_hf_config(cfg: dict, where: str = CONFIG) -> ModelArch:
    """The ModelArch a Llama/Qwen2 config.json describes."""
    mtype = cfg.get("model_type")
    if mtype not in ("llama", "qwen2"):
        raise CheckpointError(f"{where}: model_type {mtype!r} is not supported (llama, qwen2)")
    try:
        kw = {f: cfg[k] for f, k in _HF_KEYS.items()
              if k in cfg and k not in ("num_key_value_heads", "tie_word_embeddings")}
        kw["num_kv_heads"] = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
        kw["tied_embeddings"] = bool(cfg.get("tie_word_embeddings", False))
        kw["qkv_bias"] = True if mtype == "qwen2" else bool(cfg.get("attention_bias", False))
        kw["rope_theta"] = _rope_theta(cfg)
        arch = ModelArch(**kw)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{where}: not a usable decoder config: {e}") from None
    head_dim = cfg.get("head_dim")
    if head_dim is not None and head_dim != arch.head_dim:
        raise CheckpointError(f"{where}: head_dim {head_dim} != hidden_size/num_attention_heads "
                              f"{arch.head_dim} (unsupported)")
    if mtype == "llama" and cfg.get("mlp_bias"):
        raise CheckpointError(f"{where}: mlp_bias is not supported")
    return arch


def hf_config(arch: ModelArch, head: HeadType = "lm", dtype: torch.dtype = torch.float32) -> dict:
    """A config.json transformers loads as the same model."""
    qwen = arch.qkv_bias
    prefix = "Qwen2" if qwen else "Llama"
    cls = "ForCausalLM" if head == "lm" else "ForSequenceClassification"
    cfg = {"architectures": [prefix + cls], "model_type": "qwen2" if qwen else "llama",
           "hidden_act": "silu", "initializer_range": 0.02,
           "dtype": str(dtype).removeprefix("torch."), "use_cache": True,
           "rope_theta": arch.rope_theta,
           "rope_parameters": {"rope_theta": arch.rope_theta, "rope_type": "default"}}
    cfg.update({k: getattr(arch, f) for f, k in _HF_KEYS.items()})
    if not qwen:
        cfg.update(attention_bias=False, mlp_bias=False, head_dim=arch.head_dim)
    if head != "lm":
        cfg.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    return cfg


def read_config(path: str) -> dict:
    file = os.path.join(path, CONFIG)
    try:
        with open(file) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {CONFIG} (not a Hugging Face checkpoint)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: invalid JSON: {e}") from None


def check_arch(expected: ModelArch, found: ModelArch, where: str) -> None:
    """Refuse a checkpoint whose architecture differs (max_positions aside: it sizes no tensor)."""
    for field in ModelArch.model_fields:
        if field == "max_positions":
            continue
        a, b = getattr(found, field), getattr(expected, field)
        if a != b:
            raise CheckpointError(f"{where}: {field} is {a} in the checkpoint but the model "
                                  f"has {b}")


@dataclass
class TensorIndex:
    """Which file holds each tensor, and its shape (from the headers)."""

    files: dict[str, str]
    shapes: dict[str, tuple[int, ...]]


def read_index(path: str) -> TensorIndex:
    index_file = os.path.join(path, INDEX)
    if os.path.exists(index_file):
        try:
            with open(index_file) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index_file}: bad index ({e})") from None
        names = sorted(set(weight_map.values()))
    elif os.path.exists(os.path.join(path, SINGLE)):
        names = [SINGLE]
    else:
        names = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
        if not names:
            raise CheckpointError(f"{path}: no *.safetensors files")
    files: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name in names:
        file = os.path.join(path, name)
        try:
            with safe_open(file, "pt") as f:
                for key in f.keys():
                    files[key] = file
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: {name} is listed in {INDEX} but missing") from None
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"{file}: unreadable safetensors file ({e})") from None
    return TensorIndex(files, shapes)


def validate(path: str, arch: ModelArch, rules: dict) -> TensorIndex:
    """Check config and every tensor the model needs; raise CheckpointError otherwise."""
    check_arch(arch, arch_from_hf_config(read_config(path), os.path.join(path, CONFIG)),
               os.path.join(path, CONFIG))
    index = read_index(path)
    for name, rule in rules.items():
        if name not in index.shapes:
            raise CheckpointError(f"{path}: tensor {name} is missing")
        if index.shapes[name] != rule.shape:
            raise CheckpointError(f"{path}: tensor {name} has shape {list(index.shapes[name])}, "
                                  f"expected {list(rule.shape)}")
    return index


@torch.no_grad()
def load_checkpoint(engine, path: str) -> None:
    """Load an HF checkpoint directory into `engine`, each rank reading its slices."""
    index = validate(path, engine.arch, engine.rules)
    staged: dict[str, torch.Tensor] = {}
    handles = {}
    name = None
    try:
        for name, sl in engine.local_slices().items():
            file = index.files[name]
            if file not in handles:
                handles[file] = safe_open(file, "pt")
            part = handles[file].get_slice(name)[sl]
            staged[name] = part.to(engine.dtype)
    except Exception as e:
        raise CheckpointError(f"{path}: reading {name} failed ({e})") from None
    finally:
        handles.clear()
    with engine.full_params():  # ZeRO-3: written whole, re-sharded on exit
        local = engine.local_tensors()
        for name, t in staged.items():
            local[name].copy_(t)


def _barrier(engine) -> None:
    if engine.layout.world_size > 1:
        dist.barrier(group=engine.groups.layout_group)


def _stage_file(p: int, pp: int) -> str:
    return SINGLE if pp == 1 else f"model-{p + 1:05d}-of-{pp:05d}.safetensors"


@torch.no_grad()
def save_checkpoint(engine, path: str, dtype: torch.dtype | None = None) -> None:
    """Write the model as an HF checkpoint directory (collective over the layout)."""
    g = engine.groups
    dtype = dtype or engine.dtype
    path = os.path.abspath(path)
    tmp = path + ".partial"
    if g.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier(engine)
    tensors: dict[str, torch.Tensor] = {}
    # ZeRO-3: gathering is collective over dp, and the tensors below may be the
    # gathered storage itself (freed on exit): written inside.
    with engine.full_params():
        for name, p in engine.params.items():
            if g.d != 0 or (engine.tied_copy and name == "model.embed_tokens.weight"):
                continue  # the first dp replica writes; stage 0 writes a tied embedding
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            tensors[name] = full.detach().to("cpu", dtype).contiguous()
        if g.d == 0 and g.t == 0:
            save_file(tensors, os.path.join(tmp, _stage_file(g.p, engine.pp)),
                      metadata={"format": "pt"})
    _barrier(engine)
    if g.rank == 0:
        with open(os.path.join(tmp, CONFIG), "w") as f:
            json.dump(hf_config(engine.arch, engine.head, dtype), f, indent=2, sort_keys=True)
        if engine.pp > 1:
            elem = torch.empty((), dtype=dtype).element_size()
            weight_map, total = {}, 0
            for name, rule in engine.rules.items():
                weight_map[name] = _stage_file(rule.stages(engine.pp)[0], engine.pp)
                total += rule.numel * elem
            with open(os.path.join(tmp, INDEX), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f,
                          indent=2, sort_keys=True)
        _swap_into_place(tmp, path)
    _barrier(engine)


def _swap_into_place(tmp: str, path: str) -> None:
    if os.path.exists(path):
        old = path + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old)
    else:
        os.rename(tmp, path)
