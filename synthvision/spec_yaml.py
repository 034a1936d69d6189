"""Reading specs from YAML: PyYAML's safe loader, made strict where silence would mislead.

- A key given twice in one mapping is an error; PyYAML keeps the last value without a word, so a
  spec edited in two places would build something other than what its reader sees. Merge keys
  (`<<: *base`) may still be overridden: that is what they are for.
- Aliases may share data, but a document whose aliases expand to more than `MAX_VALUES` values
  (an "alias bomb": nine nested lists of nine aliases are 387 million values) or refer to
  themselves is refused before anything walks it.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError

MAX_VALUES = 1_000_000
MAX_CHARS = 64_000_000  # characters of text once aliases are expanded
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _SpecLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if duplicate:
                raise ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


class YAMLTooLarge(yaml.YAMLError):
    """The document expands (through aliases) past `MAX_VALUES`, or contains itself."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = None


def yaml_problem(exc: BaseException) -> tuple[str, str]:
    """(problem, where) of a YAML (or decoding) error, each on one line: PyYAML's problem
    without its multi-line excerpt of the file, and " at line N" when known (else "")."""
    text = str(getattr(exc, "problem", None) or exc).strip()
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark is not None else ""
    return (text.splitlines()[0] if text else type(exc).__name__), where


def load_yaml(text: str) -> Any:
    """Parse one YAML document strictly (see the module docstring); errors are `yaml.YAMLError`."""
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # a SafeLoader subclass: no arbitrary objects
        _count_values(data, {}, set())
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise YAMLTooLarge("it nests mappings or lists too deeply") from None
    return data


def _count_values(
    node: Any, counted: dict[int, tuple[int, int]], open_nodes: set[int]
) -> tuple[int, int]:
    """(values, characters of text) in `node` with every alias expanded; shared sub-trees are
    counted once per use but walked once (memo by identity), so an alias bomb is measured without
    being expanded. Text counts too: a long string aliased many times is few values but expands
    to gigabytes as soon as anything copies or serialises the spec."""
    if not isinstance(node, (dict, list)):
        return 1, len(node) if isinstance(node, (str, bytes)) else 0
    key = id(node)
    if key in counted:
        return counted[key]
    if key in open_nodes:
        raise YAMLTooLarge("an alias refers to a mapping or list that contains it")
    open_nodes.add(key)
    children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
    total, chars = 1, 0
    for child in children:
        n, c = _count_values(child, counted, open_nodes)
        total, chars = total + n, chars + c
        if total > MAX_VALUES:
            raise YAMLTooLarge(
                f"its aliases expand to more than {MAX_VALUES:,} values; write the data out "
                "or use fewer nested aliases"
            )
        if chars > MAX_CHARS:
            raise YAMLTooLarge(
                f"its text (with aliases expanded) is more than {MAX_CHARS:,} characters; "
                "write the data out or use fewer aliases"
            )
    open_nodes.discard(key)
    counted[key] = (total, chars)
    return total, chars
