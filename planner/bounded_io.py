"""Reading user files with bounds: size, nesting, YAML aliases, number literals.

Python's YAML and JSON parsers happily build whatever a file describes: an
anchor bomb expands to billions of nodes, `a: &a [*a]` is a cycle, a JSON
array nested 100,000 deep overflows the stack, a 5000-digit integer or
`Infinity` parses fine and crashes a consumer later. These readers refuse
each of them first with a `BoundsError` that says where (line, and field
path where known); the spec and plan loaders turn it into their own one-line
error. The bounds live in planner/limits.py.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from planner import limits as L

Loc = tuple[Any, ...]


class BoundsError(Exception):
    """Input past a bound, or a value that cannot be a number; `line` is 1-based."""

    def __init__(self, message: str, *, line: int | None = None, loc: Loc | None = None) -> None:
        self.message = message
        self.line = line
        self.loc = loc
        super().__init__(message)


def read_bounded(path: str | Path, max_bytes: int, what: str) -> str:
    """The file's text; BoundsError past `max_bytes`. OSError/UnicodeDecodeError pass on."""
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise BoundsError(f"the {what} is larger than {max_bytes // 1024} KiB; "
                          f"a {what} this large is not supported")
    return raw.decode("utf-8")


def read_input_file(path: str | Path, max_bytes: int, what: str,
                    error: Callable[[str], Exception]) -> str:
    """read_bounded with every failure raised as `error("<path>: <why>")`: one line
    naming the file (plans, profiles)."""
    try:
        return read_bounded(path, max_bytes, what)
    except BoundsError as err:
        raise error(f"{path}: {err.message}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: cannot read {what}: not UTF-8 text") from None
    except OSError as err:
        raise error(f"{path}: cannot read {what}: {err.strerror or err}") from None


# --------------------------------------------------------------------------- YAML


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that bounds nesting and alias expansion and refuses recursive aliases.

    Aliases share one node while composing, so the expanded size is counted, not
    built: each node's weight is 1 + its children's weights, an alias weighing what
    its anchor does. The document's weight is what the consumers would walk.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._open_anchors: set[str] = set()
        self._weight: dict[int, int] = {}
        self.node_loc: dict[int, Loc] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise BoundsError(f"alias *{event.anchor} refers to a node that contains it "
                                  "(recursive anchors are not supported)", line=line)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > L.MAX_NESTING:
            raise BoundsError(f"nested more than {L.MAX_NESTING} levels deep", line=line)
        anchor = getattr(event, "anchor", None)
        if anchor:
            self._open_anchors.add(anchor)
        node = super().compose_node(parent, index)
        if anchor:
            self._open_anchors.discard(anchor)
        self._depth -= 1
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        weight = 1 + sum(self._weight.get(id(c), 1) for c in children)
        if weight > L.MAX_YAML_NODES:
            raise BoundsError(f"the document expands to more than {L.MAX_YAML_NODES} nodes "
                              "(aliases counted at every use)", line=line)
        self._weight[id(node)] = weight
        return node

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = str(node.value).lstrip("+-").replace("_", "")
        if len(digits) > L.MAX_INT_DIGITS:
            raise BoundsError(f"integer of {len(digits)} digits; at most {L.MAX_INT_DIGITS} "
                              "are supported", line=node.start_mark.line + 1,
                              loc=self.node_loc.get(id(node)))
        return super().construct_yaml_int(node)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as err:  # e.g. a timestamp out of range
            text = str(getattr(node, "value", ""))[:40]
            raise BoundsError(f"cannot read value {text!r}: {err}",
                              line=node.start_mark.line + 1,
                              loc=self.node_loc.get(id(node))) from None


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def _record_locs(node: yaml.Node, loader: _BoundedLoader) -> None:
    """Field path of every node (the first path, for a shared alias node)."""
    stack: list[tuple[yaml.Node, Loc]] = [(node, ())]
    while stack:
        n, loc = stack.pop()
        if id(n) in loader.node_loc:
            continue
        loader.node_loc[id(n)] = loc
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                loader.node_loc.setdefault(id(k), loc + (str(k.value),))
                stack.append((v, loc + (str(k.value),)))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                stack.append((item, loc + (i,)))


def load_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    """(data, root node) of a one-document YAML text, within the bounds.

    Raises BoundsError for a bound or a bad scalar, yaml.YAMLError for bad syntax.
    """
    try:
        loader = _BoundedLoader(text)
    except yaml.reader.ReaderError as err:  # a control character: the reader knows where
        raise BoundsError(f"{err.reason} (character {err.character!r})",
                          line=text[:err.position].count("\n") + 1) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _record_locs(node, loader)
        return loader.construct_document(node), node
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- JSON


class _Bad:
    """A JSON literal that is not a usable number (NaN, Infinity, a huge integer)."""

    def __init__(self, text: str, why: str) -> None:
        self.text = text
        self.why = why


def _int(text: str) -> Any:
    if len(text.lstrip("-")) > L.MAX_INT_DIGITS:
        return _Bad(text, f"an integer of {len(text.lstrip('-'))} digits; at most "
                          f"{L.MAX_INT_DIGITS} are supported")
    return int(text)


def _float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _Bad(text, "a number too large to be finite")


def _constant(text: str) -> Any:
    return _Bad(text, f"{text} is not a finite number")


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """Deepest object/array nesting of a JSON text, without parsing it (no recursion)."""
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text))
    depth = deepest = 0
    for ch in brackets:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def load_json(text: str) -> Any:
    """Parse JSON within the bounds; json.JSONDecodeError passes on for bad syntax."""
    if json_depth(text) > L.MAX_NESTING:
        raise BoundsError(f"nested more than {L.MAX_NESTING} levels deep")
    data = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    bad = _first_bad(data)
    if bad is not None:
        loc, value = bad
        pos = text.find(value.text)
        raise BoundsError(value.why, line=text[:pos].count("\n") + 1 if pos >= 0 else None,
                          loc=loc)
    return data


def _first_bad(data: Any) -> tuple[Loc, _Bad] | None:
    stack: list[tuple[Any, Loc]] = [(data, ())]
    while stack:
        node, loc = stack.pop()
        if isinstance(node, _Bad):
            return loc, node
        if isinstance(node, dict):
            stack.extend((v, loc + (k,)) for k, v in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((v, loc + (i,)) for i, v in reversed(list(enumerate(node))))
    return None
