"""Guarded YAML for recipes and the run files written from them: ``yaml.safe_load`` with
limits on size, aliases, values and depth.

A recipe file or ``--set`` value is parsed by :class:`_GuardedLoader`, which refuses Python
tags and duplicate keys, counts aliases and values as it composes, and reads ``1e-3`` as a
float. Every failure is a one-line :class:`~zoo.errors.RecipeError` naming the source.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NoReturn

import yaml

from zoo.errors import RecipeError, did_you_mean

MAX_FILE_BYTES = 1 << 20  # a recipe is a page of text; anything bigger is a mistake or an attack
MAX_ALIASES = 50  # anchors are handy for sharing a block; billions of laughs are not
MAX_NODES = 10_000  # values in a document (aliases expanded); a recipe has about 60
MAX_DEPTH = 64  # nesting of mappings and lists

_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that counts aliases, refuses duplicate keys, and reads ``1e-3`` as a float
    (YAML 1.1, which PyYAML follows, wants ``1.0e-3``; people write ``1e-3``)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.alias_count = 0
        self.node_count = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        # Counting as we go stops a huge document early: the pure-Python parser needs ~20 s
        # for a 1 MiB list, but only the nodes it has composed so far are paid for.
        self.node_count += 1
        if self.node_count > MAX_NODES:
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, f"more than {MAX_NODES} values", mark)
        if self.check_event(yaml.AliasEvent):
            self.alias_count += 1
            if self.alias_count > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_ALIASES} aliases (*name)", mark
                )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def kind(value: Any) -> str:
    """How a value reads in an error message: a number, a string, a list, ..."""
    kinds = {bool: "true/false", int: "a number", float: "a number", str: "a string"}
    return kinds.get(type(value), "a list" if isinstance(value, list) else type(value).__name__)


def _fail(source: str, problem: str, fix: str) -> NoReturn:
    raise RecipeError(f"{source}: {problem}; {fix}")


_GuardedLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+.0123456789"))


def parse_yaml(text: str, source: str) -> Any:
    """Parse one YAML document; any failure becomes a RecipeError naming ``source``."""
    loader = None
    try:
        loader = _GuardedLoader(text)  # the reader rejects control characters here
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(e.problem or e.context or "syntax error").split())
        what = "refused YAML" if problem.startswith("more than") else "malformed YAML"
        _fail(source, f"{what}{where}: {problem}", _yaml_fix(problem))
    except RecursionError:
        _fail(source, "YAML nested too deeply", f"keep nesting under {MAX_DEPTH} levels")
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
        problem = " ".join(str(e).split())
        _fail(source, f"malformed YAML: {problem}", "fix the value it names")
    finally:
        if loader is not None:
            loader.dispose()
    _check_size(data, source)
    return data


def _yaml_fix(problem: str) -> str:
    if "values" in problem:
        return "a recipe needs far fewer values"
    if "alias" in problem:
        return "write the values out instead of repeating anchors"
    if "constructor for the tag" in problem:
        return "remove the !tag: recipes hold plain data only"
    if "duplicate key" in problem:
        return "keep one of the duplicate keys"
    return "check indentation, colons and quoting around that place"


def _check_size(data: Any, source: str) -> None:
    """Refuse documents whose alias-expanded size or nesting is absurd (or cyclic)."""
    budget = MAX_NODES
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        budget -= 1
        if budget < 0 or depth > MAX_DEPTH:
            what = f"over {MAX_NODES} values" if budget < 0 else f"over {MAX_DEPTH} levels deep"
            _fail(source, f"YAML expands to {what}", "write a plain recipe without anchors")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def read_yaml_file(path: Path) -> Any:
    source = str(path)
    try:
        if not path.exists():
            siblings = [p.name for p in path.parent.glob("*.y*ml")] if path.parent.is_dir() else []
            hint = did_you_mean(path.name, siblings).strip()
            _fail(source, "recipe file not found", hint or "check the path")
        if not path.is_file():
            _fail(source, "not a regular file", "give the path of a .yaml recipe file")
        if path.stat().st_size > MAX_FILE_BYTES:
            size = path.stat().st_size
            _fail(source, f"file is {size} bytes, over the 1 MiB limit", "use a small recipe")
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        _fail(source, f"cannot read file ({e.strerror or e})", "check that it is readable")
    if len(raw) > MAX_FILE_BYTES:
        _fail(source, "file is over the 1 MiB limit", "use a small recipe")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(source, f"not UTF-8 text (byte {e.start})", "save the recipe as UTF-8")
    data = parse_yaml(text, source)
    if data is None:
        _fail(source, "file is empty", "write a mapping such as `name: x` and `model: {...}`")
    if not isinstance(data, dict):
        _fail(source, f"top level is {kind(data)}, not a mapping", "write `key: value` lines")
    return data
