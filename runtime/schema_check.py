"""A small, dependency-free JSON Schema (draft 2020-12) validator for the runtime's own schemas.

The thin runtime may not import ``jsonschema``, so this implements exactly the keywords that runtime/schema/*.json
use (``_LEAVES``, ``_APPLY``, ``_WALKED``); annotations (``ANNOTATIONS``) are ignored and any other keyword raises
:class:`SchemaError` when a :class:`Validator` is built, so a schema edit cannot silently weaken validation. ``$ref``
takes local JSON pointers only; ``pattern`` is ``re.search``. JSON semantics: bools are not numbers, ``1.0`` is an
integer, ``1 == 1.0`` but ``True != 1``. Past :data:`MAX_DEPTH` nested subschemas an instance gets ``nested too deeply``
(never a RecursionError), and no JSON-like instance (incl. nan, inf, 10**5000) makes anything here raise. Each error is
one line, ``<path>: <problem>``, e.g. ``components.text_decoder.inputs[0].shape[1]: expected integer or string, ...``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

MAX_DEPTH = 64
SCHEMA_DIR = Path(__file__).parent / "schema"
ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "$comment"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KINDS = ((bool, "boolean "), (str, "string "), (int, "integer "), (float, "number "), ((list, dict, type(None)), ""))
_BOUNDS = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">"}
_SIZES = {"minLength": (str, "at least", "characters"), "minItems": (list, "at least", "items"),
          "maxItems": (list, "at most", "items"), "minProperties": (dict, "at least", "properties")}

Loc = tuple | None  # a linked path: (parent, key or index); None is the root
Found = Iterator[tuple[Loc, str]]


class SchemaError(ValueError):
    """The schema itself is malformed or uses a keyword this validator does not implement."""


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


_TYPES: dict[str, Callable[[Any], bool]] = {
    "null": lambda x: x is None, "boolean": lambda x: isinstance(x, bool), "number": _is_num,
    "integer": lambda x: _is_num(x) and (isinstance(x, int) or x.is_integer()), "string": lambda x: isinstance(x, str),
    "array": lambda x: isinstance(x, list), "object": lambda x: isinstance(x, dict),
}


def _equal(a: Any, b: Any, depth: int = 0) -> bool:
    """JSON equality: 1 == 1.0, True != 1, containers item by item (unequal past MAX_DEPTH levels)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (list, dict)) or isinstance(b, (list, dict)):
        if type(a) is not type(b) or len(a) != len(b) or depth >= MAX_DEPTH:
            return False
        if isinstance(a, list):
            return all(_equal(x, y, depth + 1) for x, y in zip(a, b))
        return a.keys() == b.keys() and all(_equal(v, b[k], depth + 1) for k, v in a.items())
    return a == b


def _literal(value: Any) -> str | None:
    """A value as (at most 60 characters of) JSON, or None when it has no JSON form (e.g. 10**5000, too deep)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return None
    return text if len(text) <= 60 else text[:57] + "..."


def _show(value: Any) -> str:
    """A short one-line rendering of an instance's value; never raises."""
    if isinstance(value, (list, dict)):
        return f"array of {len(value)} items" if isinstance(value, list) else f"object with {len(value)} properties"
    text = _literal(value)
    if text is None:
        return f"<integer of {value.bit_length()} bits>" if isinstance(value, int) else f"<{type(value).__name__}>"
    return text


def _describe(value: Any) -> str:
    kind = next((name for t, name in _KINDS if isinstance(value, t)), None)
    return f"{kind}{_show(value)}" if kind is not None else f"non-JSON {type(value).__name__}"


def format_path(loc: Loc) -> str:
    """Render a linked path as ``a.b[0]["odd key"]`` (iteratively; ``(root)`` for the root)."""
    parts: list[str] = []
    while loc is not None:
        loc, key = loc
        if isinstance(key, int) and not isinstance(key, bool):
            parts.append(f"[{key}]")
        elif isinstance(key, str) and _IDENT.fullmatch(key):
            parts.append("." + key)
        else:
            parts.append(f"[{json.dumps(key) if isinstance(key, str) else _show(key)}]")
    return "".join(reversed(parts)).lstrip(".") or "(root)"


# leaf problems: (keyword value, instance) -> message, or None when the instance passes
def _type_problem(names: str | list[str], x: Any) -> str | None:
    names = [names] if isinstance(names, str) else names
    return None if any(_TYPES[n](x) for n in names) else f"expected {' or '.join(names)}, got {_describe(x)}"


def _bound_problem(kw: str, bound: float, x: Any) -> str | None:
    if isinstance(x, bool) or not (x < bound if kw == "minimum" else x > bound if kw == "maximum" else x <= bound):
        return None  # nan compares False both ways, so it passes bounds, as in jsonschema
    return f"expected {_BOUNDS[kw]} {_show(bound)}, got {_describe(x)}"


def _size_problem(kw: str, n: int, x: Any) -> str | None:
    _, least, noun = _SIZES[kw]
    bad = len(x) < n if least == "at least" else len(x) > n
    return f"expected {least} {n} {noun}, got {len(x)}" if bad else None


def _required_problem(names: list[str], x: dict) -> str | None:
    missing = [_literal(n) for n in names if n not in x]
    return f"missing required propert{'ies' if len(missing) > 1 else 'y'} {', '.join(missing)}" if missing else None


def _pattern_ok(v: Any) -> bool:
    try:
        return isinstance(v, str) and re.compile(v) is not None
    except (re.error, OverflowError, RecursionError):
        return False


# leaf keyword -> (instance types it applies to, its problem function, the check of its value in the schema)
_LEAVES: dict[str, tuple[Any, Callable[[Any, Any], str | None], Callable[[Any], bool]]] = {
    "type": (object, _type_problem, lambda v: bool(v) and all(isinstance(n, str) and n in _TYPES for n in (
        [v] if isinstance(v, str) else v if isinstance(v, list) else [None]))),
    "const": (object, lambda v, x: None if _equal(x, v) else f"expected {_literal(v)}, got {_describe(x)}",
              lambda v: _literal(v) is not None),
    "enum": (object, lambda v, x: None if any(_equal(x, e) for e in v) else
             f"expected one of {', '.join(map(_literal, v))}; got {_describe(x)}",
             lambda v: isinstance(v, list) and all(_literal(e) is not None for e in v)),
    "pattern": (str, lambda v, x: None if re.search(v, x) else
                f"expected a string matching {_literal(v)}, got {_describe(x)}", _pattern_ok),
    "required": (dict, _required_problem, lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v)),
    **{kw: (gate, functools.partial(_size_problem, kw),
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0) for kw, (gate, _, _) in _SIZES.items()},
    **{kw: ((int, float), functools.partial(_bound_problem, kw), _is_num) for kw in _BOUNDS},
}
# keywords holding subschemas, walked at construction: one schema, a map of them, or a non-empty list of them
_WALKED = {**dict.fromkeys(("additionalProperties", "propertyNames", "items", "not", "if", "then", "else"), "one"),
           **dict.fromkeys(("properties", "patternProperties", "$defs"), "map"),
           **dict.fromkeys(("prefixItems", "allOf", "oneOf"), "list")}


class Validator:
    """A checked schema: building it rejects unknown keywords, bad values, bad regexes and dangling $refs."""

    def __init__(self, schema: dict | bool) -> None:
        self.schema = schema
        self._refs: dict[str, Any] = {}
        self._walked: set[int] = set()
        self._walk(schema, "#", 0)

    def iter_errors(self, instance: Any) -> Iterator[str]:
        """Each violation as one line, lazily (so the first costs no more than finding it)."""
        return (f"{format_path(loc)}: {msg}" for loc, msg in self._check(instance, self.schema, None, 0))

    def _walk(self, schema: Any, where: str, depth: int) -> None:
        if isinstance(schema, bool) or id(schema) in self._walked:
            return
        if not isinstance(schema, dict) or depth > MAX_DEPTH:
            raise SchemaError(f"{where}: not a schema (an object or a boolean), or nested too deeply")
        self._walked.add(id(schema))
        for kw, value in schema.items():
            for sub_where, sub in self._subschemas(kw, value, f"{where}/{kw}"):
                self._walk(sub, sub_where, depth + 1)

    def _subschemas(self, kw: str, value: Any, where: str) -> list[tuple[str, Any]]:
        shape = _WALKED.get(kw)
        if kw in ANNOTATIONS:
            return []
        if kw not in _LEAVES and shape is None and kw != "$ref":
            raise SchemaError(f"{where}: unsupported keyword {kw!r} (schema_check implements only its listed keywords)")
        if shape == "one":
            return [(where, value)]
        if shape == "map" and isinstance(value, dict) and (kw != "patternProperties" or all(map(_pattern_ok, value))):
            return [(f"{where}/{k}", v) for k, v in value.items()]
        if shape == "list" and isinstance(value, list) and value:
            return [(f"{where}/{i}", v) for i, v in enumerate(value)]
        if kw == "$ref" and isinstance(value, str):
            return [(value, self._resolve(value, where))]
        if kw in _LEAVES and _LEAVES[kw][2](value):
            return []
        raise SchemaError(f"{where}: invalid value {_show(value)}")

    def _resolve(self, ref: str, where: str) -> Any:
        pointer = unquote(ref[1:]) if ref.startswith("#") else "?"
        if pointer and not pointer.startswith("/"):
            raise SchemaError(f"{where}: only local JSON-pointer $refs ('#/...') are supported, got {ref!r}")
        node: Any = self.schema
        try:
            for token in pointer.split("/")[1:]:
                token = token.replace("~1", "/").replace("~0", "~")
                node = node[int(token) if isinstance(node, list) else token]
        except (KeyError, IndexError, ValueError, TypeError):
            raise SchemaError(f"{where}: $ref {ref!r} does not resolve") from None
        self._refs[ref] = node
        return node

    def _check(self, inst: Any, schema: Any, loc: Loc, depth: int) -> Found:
        if schema is True:
            return
        if schema is False or depth > MAX_DEPTH:
            yield loc, (f"nested too deeply (more than {MAX_DEPTH} levels of subschemas)" if depth > MAX_DEPTH
                        else f"no value allowed here, got {_describe(inst)}")
            return
        for kw, value in schema.items():
            if kw in _LEAVES:
                if isinstance(inst, _LEAVES[kw][0]) and (msg := _LEAVES[kw][1](value, inst)):
                    yield loc, msg
            elif kw in _APPLY and isinstance(inst, _APPLY[kw][0]):
                yield from _APPLY[kw][1](self, value, inst, schema, loc, depth + 1)

    def _valid(self, inst: Any, schema: Any, loc: Loc, depth: int) -> bool:
        return next(self._check(inst, schema, loc, depth), None) is None

    def _each(self, pairs: Iterator[tuple[Any, Any, Any]], loc: Loc, depth: int) -> Found:
        for inst, sub, key in pairs:
            yield from self._check(inst, sub, loc if key is None else (loc, key), depth)

    def _additional(self, sub: Any, inst: dict, schema: dict, loc: Loc, depth: int) -> Found:
        props, pats = schema.get("properties", {}), schema.get("patternProperties", {})
        extra = [k for k in inst if k not in props and not (isinstance(k, str) and any(re.search(p, k) for p in pats))]
        if sub is False:
            yield from ((loc, f"unexpected property {_show(k)}") for k in extra)
        else:
            yield from self._each(((inst[k], sub, k) for k in extra), loc, depth)

    def _one_of(self, subs: list, inst: Any, schema: dict, loc: Loc, depth: int) -> Found:
        found = [list(self._check(inst, sub, loc, depth)) for sub in subs]
        passed = [i for i, errs in enumerate(found) if not errs]
        if not passed:
            best = min(range(len(found)), key=lambda i: len(found[i]))
            at, msg = found[best][0]
            yield loc, f"matches none of the {len(subs)} oneOf alternatives (closest #{best}: {format_path(at)}: {msg})"
        elif len(passed) > 1:
            yield loc, f"matches {len(passed)} oneOf alternatives (#{', #'.join(map(str, passed))}), expected one"


# applicator keyword -> (instance types it applies to, method(validator, value, instance, schema, loc, depth));
# then / else are read by "if", $defs through "$ref"
_APPLY: dict[str, tuple[Any, Callable[..., Found]]] = {
    "properties": (dict, lambda self, props, inst, schema, loc, depth: self._each(
        ((inst[k], sub, k) for k, sub in props.items() if k in inst), loc, depth)),
    "patternProperties": (dict, lambda self, pats, inst, schema, loc, depth: self._each(
        ((inst[k], sub, k) for p, sub in pats.items() for k in inst if isinstance(k, str) and re.search(p, k)),
        loc, depth)),
    "items": (list, lambda self, sub, inst, schema, loc, depth: self._each(
        ((inst[i], sub, i) for i in range(len(schema.get("prefixItems", ())), len(inst))), loc, depth)),
    "prefixItems": (list, lambda self, subs, inst, schema, loc, depth: self._each(
        ((x, sub, i) for i, (x, sub) in enumerate(zip(inst, subs))), loc, depth)),
    "$ref": (object, lambda self, ref, inst, schema, loc, depth: self._check(inst, self._refs[ref], loc, depth)),
    "allOf": (object, lambda self, subs, inst, schema, loc, depth: self._each(
        ((inst, sub, None) for sub in subs), loc, depth)),
    "propertyNames": (dict, lambda self, sub, inst, schema, loc, depth: (
        (at, f"bad property name: {msg}") for k in inst for at, msg in self._check(k, sub, (loc, k), depth))),
    "not": (object, lambda self, sub, inst, schema, loc, depth: [
        (loc, "matches the schema under 'not', which it must not")] if self._valid(inst, sub, loc, depth) else []),
    "if": (object, lambda self, sub, inst, schema, loc, depth: self._check(
        inst, schema.get("then" if self._valid(inst, sub, loc, depth) else "else", True), loc, depth)),
    "additionalProperties": (dict, Validator._additional), "oneOf": (object, Validator._one_of),
}


@functools.cache
def load_schema(name: str) -> dict:
    """runtime/schema/<name>.schema.json ('manifest', 'golden', 'bench'), parsed and checked once; don't mutate it."""
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"schema name must be lowercase letters, digits or '_', got {name!r}")
    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
    _VALIDATORS[id(schema)] = (schema, Validator(schema))
    return schema


_VALIDATORS: dict[int, tuple[Any, Validator]] = {}  # load_schema's schemas (kept alive, so their ids stay unique)


def validator_for(schema: dict | bool) -> Validator:
    """The cached Validator of a load_schema() schema, else a new one (raises SchemaError for a bad schema)."""
    hit = _VALIDATORS.get(id(schema))
    return hit[1] if hit is not None and hit[0] is schema else Validator(schema)


def schema_errors(instance: Any, schema: dict | bool) -> list[str]:
    """Every way `instance` violates `schema`, one line each; [] when valid. Raises only SchemaError."""
    return list(validator_for(schema).iter_errors(instance))


def first_error(instance: Any, schema: dict | bool) -> str | None:
    """The first violation of `schema` by `instance`, or None when valid. Raises only SchemaError."""
    return next(validator_for(schema).iter_errors(instance), None)
