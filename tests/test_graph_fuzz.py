"""Mutated YAML specs: the loader returns a Spec or raises SpecError, nothing else."""

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.errors import SpecError
from planner.graph.loader import load_spec

SPEC_DIR = Path(__file__).parent.parent / "specs"
TEXTS = [p.read_text() for p in sorted(SPEC_DIR.glob("*.yaml"))]

junk = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**12), st.floats(allow_nan=True),
                 st.text(max_size=8), st.lists(st.integers(-2, 3), max_size=3),
                 st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _set(node, path, value):
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def _delete(node, path):
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]


def _check(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    try:
        load_spec(path)
    except SpecError as err:
        assert "\n" not in str(err)
        assert str(err).startswith(str(path))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, len(TEXTS) - 1), data=st.data())
def test_structural_mutations(tmp_path, which, data):
    doc = yaml.safe_load(TEXTS[which])
    paths = [p for p in _paths(doc) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["set", "delete", "rename"]))
        try:
            if action == "set":
                _set(doc, path, data.draw(junk))
            elif action == "delete":
                _delete(doc, path)
            elif isinstance(path[-1], str):
                parent = doc
                for p in path[:-1]:
                    parent = parent[p]
                parent[path[-1] + data.draw(st.text(min_size=1, max_size=2))] = parent.pop(path[-1])
        except (KeyError, IndexError, TypeError):
            pass  # the path vanished under an earlier mutation
        paths = [p for p in _paths(doc) if p] or [("cluster",)]
    _check(tmp_path, yaml.safe_dump(doc))


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, len(TEXTS) - 1), cut=st.integers(0, 10**6),
       insert=st.text(alphabet=st.sampled_from(list("{}[]:,-'\"&*!|>#% \n\tab1")), max_size=6))
def test_textual_mutations(tmp_path, which, cut, insert):
    text = TEXTS[which]
    i = cut % (len(text) + 1)
    _check(tmp_path, text[:i] + insert + text[i + len(insert):])
