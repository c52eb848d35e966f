"""Load a spec from YAML (or a Python dict) into a checked `Spec`.

Every error becomes one `SpecError` line: `FILE:LINE FIELD.PATH: message`.
Line numbers come from PyYAML's node marks, recorded per field path while
the document is composed; pydantic's error locations are mapped onto them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import BaseModel, ValidationError

from planner import limits as L
from planner.bounded_io import BoundsError, load_yaml, read_bounded
from planner.errors import SpecError
from planner.graph.algorithms import ALGORITHMS, DATASET_KEYS, expand
from planner.graph.spec import Spec, staleness_problem

Loc = tuple[Any, ...]
Locator = Callable[[Loc], tuple[int | None, str]]


def format_path(loc: Loc) -> str:
    """('calls', 3, 'inputs', 1) -> 'calls[3].inputs[1]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# --------------------------------------------------------------------------- YAML


def _line_map(node: yaml.Node, file: str) -> dict[Loc, int]:
    """Line (1-based) of every mapping key and sequence item, by field path."""
    lines: dict[Loc, int] = {(): node.start_mark.line + 1}

    def walk(n: yaml.Node, path: Loc) -> None:
        if isinstance(n, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in n.value:
                key = str(key_node.value)
                if key in seen:
                    raise SpecError(f"duplicate key '{key}'", file=file,
                                    line=key_node.start_mark.line + 1,
                                    field=format_path(path + (key,)))
                seen.add(key)
                lines[path + (key,)] = key_node.start_mark.line + 1
                walk(value_node, path + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))

    walk(node, ())
    return lines


def parse_yaml(text: str, file: str) -> tuple[Any, dict[Loc, int]]:
    """The document's data and its line map; malformed or unbounded YAML is a SpecError."""
    try:
        data, node = load_yaml(text)
    except BoundsError as err:
        raise SpecError(err.message, file=file, line=err.line,
                        field=format_path(err.loc) if err.loc else None) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(f"malformed YAML: {problem}", file=file,
                        line=mark.line + 1 if mark else None) from None
    lines = _line_map(node, file) if node is not None else {}
    return data, lines


# ---------------------------------------------------------------------- locating


def make_locator(lines: dict[Loc, int], data: Any, expanded: dict[str, int]) -> Locator:
    """Map a field path to (line, printable field).

    `expanded[section]` = how many leading items of `section` the user wrote;
    items past that came from the algorithm shorthand and are reported at the
    `algorithm` line.
    """

    def locate(loc: Loc) -> tuple[int | None, str]:
        loc = _data_path(data, loc)
        field = format_path(loc)
        if loc and loc[0] in expanded and len(loc) > 1 and isinstance(loc[1], int) \
                and loc[1] >= expanded[loc[0]]:
            return lines.get(("algorithm",)), f"algorithm(expanded {field})"
        for n in range(len(loc), -1, -1):
            key = tuple(p if isinstance(p, int) else str(p) for p in loc[:n])
            if key in lines:
                return lines[key], field
        return None, field

    return locate


def _data_path(data: Any, loc: Loc) -> Loc:
    """Drop pydantic's union-member tags (e.g. 'ModelArch', 'str') from a location."""
    out: list[Any] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
            out.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            out.append(part)
        elif isinstance(part, str) and _is_union_tag(part):
            continue
        else:
            out.append(part)  # a missing or unknown field: name it, stop descending
            node = None
    return tuple(out)


def _is_union_tag(part: str) -> bool:
    """pydantic names union members in locations: 'ModelArch', 'str', 'function-after[...]'."""
    return part[:1].isupper() or "[" in part or part in ("str", "int", "float", "dict", "list")


def pydantic_message(err: dict[str, Any], model: type[BaseModel] | None) -> str:
    kind = err["type"]
    loc = err["loc"]
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else "?"
        hint = ""
        if model is not None:
            homes = _field_homes(model)
            spec_homes = _field_homes(Spec)  # the algorithm shorthand's model is not Spec's
            if name in homes or name in spec_homes:
                # a real field, in another section: say which, not "did you mean"
                hint = f" (it is a field of {' and '.join(homes.get(name) or spec_homes[name])})"
            else:
                match = difflib.get_close_matches(name, list(homes), n=1)
                hint = f" (did you mean '{match[0]}'?)" if match else ""
        return f"unknown field '{name}'{hint}"
    if kind == "missing":
        return f"missing required field '{loc[-1]}'"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    value = err.get("input")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return f"{msg[0].lower()}{msg[1:]}, got {value!r}"
    return msg[0].lower() + msg[1:]


def _field_homes(model: type[BaseModel]) -> dict[str, list[str]]:
    """Every field name of `model` and the models nested in it -> the sections it is
    a field of ('calls[]', 'models.*', 'cluster'; '' for the top level)."""
    homes: dict[str, list[str]] = {}
    stack: list[tuple[type[BaseModel], str]] = [(model, "")]
    seen: set[type[BaseModel]] = set()
    while stack:
        m, where = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        for name, info in m.model_fields.items():
            homes.setdefault(name, []).append(where or "the top level")
            ann = info.annotation
            origin = getattr(ann, "__origin__", None)
            suffix = "[]" if origin is list else ".*" if origin is dict else ""
            for cand in getattr(ann, "__args__", ()) + (ann,):
                if isinstance(cand, type) and issubclass(cand, BaseModel):
                    stack.append((cand, f"{where}.{name}{suffix}".lstrip(".")))
    return homes


_UNION_MISMATCH = {"string_type", "model_type", "dict_type", "model_attributes_type"}


def _raise_validation(exc: ValidationError, file: str | None, locate: Locator,
                      model: type[BaseModel], prefix: Loc = ()) -> None:
    errs = exc.errors()
    # A union field (arch: preset name | numbers) reports a type error for each
    # member it did not match; the member that matched the input's type says more.
    specific = [e for e in errs if e["type"] not in _UNION_MISMATCH]
    located = []
    for e in specific or errs:
        line, field = locate(prefix + tuple(e["loc"]))
        # A typo gives "unknown field" and "missing field": the first says more.
        located.append((e["type"] == "missing", line or 0, field, pydantic_message(e, model)))
    _, line, field, msg = min(located, key=lambda t: t[:2])
    raise SpecError(msg, file=file, line=line or None, field=field) from None


# ----------------------------------------------------------------------- loading


def load_spec(path: str | Path, *, check_dataset: bool = False) -> Spec:
    """Read, parse and check a YAML spec file; `check_dataset` also checks that
    dataset.path is a readable file (`planner validate`: the search never reads it, and
    may run where the data is not)."""
    file = str(path)
    try:
        text = read_bounded(path, L.MAX_SPEC_BYTES, "spec")
    except BoundsError as err:
        raise SpecError(err.message, file=file) from None
    except IsADirectoryError:
        raise SpecError("cannot read spec: it is a directory", file=file) from None
    except OSError as err:
        raise SpecError(f"cannot read spec: {err.strerror}", file=file) from None
    except UnicodeDecodeError:
        raise SpecError("cannot read spec: not UTF-8 text", file=file) from None
    data, lines = parse_yaml(text, file)
    spec = spec_from_data(data, file=file, lines=lines)
    _check_hardware(spec, file, lines)
    if check_dataset:
        _check_dataset(spec, file, lines)
    return spec


def _check_dataset(spec: Spec, file: str, lines: dict[Loc, int]) -> None:
    """dataset.path opens for reading, read as the runtime reads it (runtime/data/records.py:
    a relative path from the working directory, not from the spec's)."""
    path = spec.dataset.path
    if path is None:
        return
    where = "" if Path(path).is_absolute() else f" (relative to the working directory {Path.cwd()})"
    problem = None
    if Path(path).is_dir():
        problem = "is a directory"
    elif Path(path).exists() and not Path(path).is_file():
        problem = "is not a regular file"  # a FIFO would block the open below
    else:
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            problem = err.strerror.lower() if err.strerror else str(err)
    if problem:
        raise SpecError(f"{path}: {problem}{where}; expected a readable .jsonl file", file=file,
                        line=lines.get(("dataset", "path")), field="dataset.path")


def _check_hardware(spec: Spec, file: str, lines: dict[Loc, int]) -> None:
    """The hardware profile the spec names exists and reads, and the memory headroom the
    spec keeps free leaves some of its device memory."""
    from planner.cost_model.profile import ProfileError, load_spec_profile, memory_headroom_bytes

    try:
        profile = load_spec_profile(spec.cluster.hardware, spec.cluster.gpu_memory_gib, None if
                          not spec.cluster.hardware.endswith(".json") else file)
    except ProfileError as err:
        msg = str(err)
        prefix = f"{file} cluster.hardware: "
        raise SpecError(msg[len(prefix):] if msg.startswith(prefix) else msg, file=file,
                        line=lines.get(("cluster", "hardware")), field="cluster.hardware") \
            from None
    headroom_gib = spec.cluster.memory_headroom_gib
    override_bytes = spec.cluster.memory_headroom_override_bytes
    if override_bytes is not None and memory_headroom_bytes(profile, override_bytes) \
            >= profile.memory_bytes:
        raise SpecError(f"{headroom_gib:g} GiB kept free leaves nothing of the device's "
                        f"{profile.memory_bytes / 2**30:g} GiB ({spec.cluster.hardware}); expected "
                        f"less than {profile.memory_bytes / 2**30:g}", file=file,
                        line=lines.get(("cluster", "memory_headroom_gib")),
                        field="cluster.memory_headroom_gib")


def spec_from_data(data: Any, *, file: str | None = None,
                   lines: dict[Loc, int] | None = None) -> Spec:
    """Build and check a Spec from plain data (what YAML or JSON gives)."""
    from planner.graph.validate import check_spec  # validate imports dataflow, which needs Spec

    lines = lines or {}
    if not isinstance(data, dict):
        raise SpecError("expected a mapping with cluster, models, calls (or algorithm), dataset",
                        file=file, line=1)
    expanded: dict[str, int] = {}
    if "algorithm" in data:
        data = _expand_algorithm(data, file, lines, expanded)
    locate = make_locator(lines, data, expanded)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        _raise_validation(exc, file, locate, Spec)
    check_spec(spec, file=file, locate=locate)
    return spec


def _expand_algorithm(data: dict, file: str | None, lines: dict[Loc, int],
                      expanded: dict[str, int]) -> dict:
    plain_locate = make_locator(lines, data, {})

    def fail(msg: str, loc: Loc) -> None:
        line, field = plain_locate(loc)
        raise SpecError(msg, file=file, line=line, field=field)

    alg = data["algorithm"]
    if "calls" in data:
        fail("give either calls or algorithm, not both", ("calls",))
    if not isinstance(alg, dict):
        fail("expected a mapping like {name: ppo, batch_size: ...}", ("algorithm",))
    name = alg.get("name")
    if not isinstance(name, str) or name not in ALGORITHMS:
        fail(f"unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}", ("algorithm", "name"))
    if data.get("algorithm_name") not in (None, name):
        fail(f"algorithm_name is for hand-written calls; the shorthand sets it to '{name}'",
             ("algorithm_name",))
    params_model = ALGORITHMS[name][0]
    # max_staleness is a property of the whole spec, accepted here too for convenience.
    staleness = alg.get("max_staleness")
    if "max_staleness" in alg:
        if "max_staleness" in data:
            fail("give max_staleness at the top level or in algorithm, not both",
                 ("algorithm", "max_staleness"))
        problem = staleness_problem(staleness)
        if problem:
            fail(problem, ("algorithm", "max_staleness"))
        alg = {k: v for k, v in alg.items() if k != "max_staleness"}
    try:
        params = params_model.model_validate(alg)
    except ValidationError as exc:
        _raise_validation(exc, file, plain_locate, params_model, prefix=("algorithm",))
    models = data.get("models")
    if isinstance(models, dict):
        for role, model_name in params.roles().items():  # type: ignore[attr-defined]
            if model_name not in models:
                loc = ("algorithm", role) if role in alg else ("algorithm",)
                fail(f"the {role} model '{model_name}' is not in models "
                     f"(models: {', '.join(map(str, models)) or 'none'})", loc)
    try:
        calls, funcs = expand(params)
    except ValidationError as exc:  # parameters that make an impossible call
        e = exc.errors()[0]
        fail(f"expands to an invalid call: {pydantic_message(e, None)}", ("algorithm",))
    out = {k: v for k, v in data.items() if k != "algorithm"}
    if staleness is not None:
        out["max_staleness"] = staleness
        if ("algorithm", "max_staleness") in lines:  # errors about it point at its line
            lines[("max_staleness",)] = lines[("algorithm", "max_staleness")]
    out["algorithm_name"] = name  # what the runtime runs (the calls alone lose it)
    out["calls"] = [c.model_dump(exclude_defaults=True) for c in calls]
    expanded["calls"] = 0
    user_funcs = data.get("functions", [])
    if funcs:
        if not isinstance(user_funcs, list):
            fail("expected a list of functions", ("functions",))
        expanded["functions"] = len(user_funcs)
        out["functions"] = list(user_funcs) + [f.model_dump() for f in funcs]
    ds = out.get("dataset")
    if isinstance(ds, dict) and "keys" not in ds:
        out["dataset"] = {**ds, "keys": DATASET_KEYS[name]}
    return out
