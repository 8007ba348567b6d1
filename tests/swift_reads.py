"""What the iOS kit's Swift code reads from ``manifest.json`` and ``golden.json``, found statically (tree-sitter-swift).

There is no Swift compiler here, so the fields the app reads are checked from its sources. The Swift side follows one
convention (``ios-demo/README.md``, "What is checked here"): only functions annotated as JSON readers read JSON, with a
line comment above the declaration naming where their ``JSONNode`` parameter sits::

    // json: manifest:components.* where format=mlpackage
    init(_ node: JSONNode) throws { ... node["static"]["kv_capacity"].int() ... node.opt("coreml") ... }

(``*``: any member of an object, ``[]``: any item of a list; ``where key=a|b``: only such nodes). Inside a reader,
``x["literal"]`` is a required field and ``x.opt("literal")`` an optional one, where ``x`` is the parameter or an
alias of a read (``let``/``var``, ``if let``/``guard let``, ``for ... in <read>.obj()/.list()``, closures over
``.obj()``/``.list()``). Every ``["literal"]`` subscript inside a reader must resolve to a read, and every function
with a ``JSONNode`` parameter must be annotated: a read the checker cannot see is an error, not a pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tree_sitter_swift
from tree_sitter import Language, Node, Parser

PARSER = Parser(Language(tree_sitter_swift.language()))
ANNOTATION = re.compile(r"^//\s*json:\s*(manifest|golden|tokenizer)(?::(\S+))?(?:\s+where\s+(\w+)=(\S+))?\s*$")
ELEMENT_METHODS = {"map", "compactMap", "flatMap", "forEach", "filter", "first", "allSatisfy", "contains", "reduce",
                   "mapValues", "sorted", "min", "max"}
Step = tuple[str, bool]  # (key, "*" or "[]"; required)


def syntax_errors(source: bytes) -> list[tuple[int, str]]:
    """(line, what) of every ERROR or MISSING node tree-sitter-swift finds."""
    tree = PARSER.parse(source)
    found, stack = [], [tree.root_node]
    while stack:
        node = stack.pop()
        # an empty leaf that has an error is a token tree-sitter had to make up (e.g. the name of `let = 1`)
        made_up = node.has_error and node.child_count == 0 and node.start_byte == node.end_byte
        if node.type == "ERROR" or node.is_missing or made_up:
            found.append((node.start_point[0] + 1, "syntax error" if node.type == "ERROR" else f"missing {node.type}"))
        elif node.has_error:
            stack.extend(node.children)
    return sorted(found)


@dataclass(frozen=True)
class Read:
    doc: str  # "manifest", "golden" or "tokenizer"
    base: tuple[Step, ...]  # the reader's annotated path
    where: tuple[str, tuple[str, ...]] | None
    steps: tuple[Step, ...]  # from the base
    at: str  # file:line

    @property
    def path(self) -> str:
        return ".".join(k for k, _ in self.base + self.steps).replace(".[]", "[]")


@dataclass
class Reader:
    doc: str
    base: tuple[Step, ...]
    where: tuple[str, tuple[str, ...]] | None
    at: str
    reads: list[Read] = field(default_factory=list)


@dataclass
class Scan:
    readers: list[Reader] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def reads(self) -> list[Read]:
        return [r for reader in self.readers for r in reader.reads]


@dataclass(frozen=True)
class Ref:
    """What an expression is, when it is JSON: a node at ``steps``, a list or object of them, or an object's pair."""

    steps: tuple[Step, ...]
    kind: str = "node"  # node | list | obj | pair


def parse_base(text: str | None) -> tuple[Step, ...]:
    steps: list[Step] = []
    for part in (text or "").split("."):
        if not part:
            continue
        key, items = part.split("[]", 1)[0], part.count("[]")
        if key:
            steps.append((key, True))
        steps.extend([("[]", True)] * items)
    return tuple(steps)


def _text(node: Node) -> str:
    return node.text.decode()


def _string_literal(node: Node) -> str | None:
    """The value of a plain string literal (no interpolation), else None."""
    if node.type != "line_string_literal":
        return None
    parts = [c for c in node.children if c.type not in ('"',)]
    if any(c.type != "line_str_text" for c in parts):
        return None
    return "".join(_text(c) for c in parts)


class _FunctionScan:
    def __init__(self, reader: Reader, param: str, where: str, problems: list[str]) -> None:
        self.reader, self.where, self.problems = reader, where, problems
        self.env: dict[str, Ref] = {param: Ref(())}
        self.seen: set[tuple[int, int]] = set()

    def line(self, node: Node) -> str:
        return f"{self.where}:{node.start_point[0] + 1}"

    def add(self, steps: tuple[Step, ...], node: Node) -> None:
        key = (node.start_byte, node.end_byte)
        if key not in self.seen:
            self.seen.add(key)
            r = self.reader
            r.reads.append(Read(r.doc, r.base, r.where, steps, self.line(node)))

    def resolve(self, node: Node | None) -> Ref | None:
        if node is None:
            return None
        t = node.type
        if t in ("try_expression", "await_expression", "parenthesized_expression"):
            inner = [c for c in node.children if c.is_named and c.type not in ("try_operator",)]
            return self.resolve(inner[-1]) if inner else None
        if t == "postfix_expression":
            return self.resolve(node.children[0])
        if t == "simple_identifier":
            return self.env.get(_text(node))
        if t == "navigation_expression":
            target = self.resolve(node.child_by_field_name("target"))
            suffix = node.child_by_field_name("suffix")
            name = _text(suffix).lstrip("?!.") if suffix is not None else ""
            if target is not None and target.kind == "pair":
                return Ref(target.steps) if name == "value" else None
            return target if target is not None and target.kind == "node" else None
        if t == "call_expression":
            callee, suffix = node.children[0], node.children[-1]
            args = next((c for c in suffix.children if c.type == "value_arguments"), None)
            lambdas = [c for c in suffix.children if c.type == "lambda_literal"]
            if args is not None and args.children and _text(args.children[0]) == "[":
                return self.subscript(callee, args, node)
            if callee.type == "navigation_expression":
                method = _text(callee.child_by_field_name("suffix")).lstrip("?!.")
                target = self.resolve(callee.child_by_field_name("target"))
                if target is None:
                    return None
                if method == "opt" and target.kind == "node" and args is not None:
                    values = [c for c in args.children if c.type == "value_argument"]
                    key = _string_literal(values[0].children[-1]) if len(values) == 1 else None
                    if key is None:
                        self.problems.append(f"{self.line(node)}: .opt() with a key that is not a string literal")
                        return None
                    steps = target.steps + ((key, False),)
                    self.add(steps, node)
                    return Ref(steps)
                if method in ("list", "obj") and target.kind == "node":
                    return Ref(target.steps, method)
                if method in ELEMENT_METHODS and target.kind in ("list", "obj"):
                    for lam in lambdas:
                        self.lambda_over(lam, target)
                    return None
                if method == "enumerated" and target.kind == "list":
                    return None
                return Ref(target.steps) if target.kind == "node" else None
            return None
        return None

    def subscript(self, callee: Node, args: Node, node: Node) -> Ref | None:
        values = [c for c in args.children if c.type == "value_argument"]
        arg = values[0].children[-1] if len(values) == 1 else None
        key = _string_literal(arg) if arg is not None else None
        target = self.resolve(callee)
        if target is None or target.kind != "node":
            if key is not None:
                self.problems.append(f"{self.line(node)}: {_text(node)[:60]!r} subscripts something the checker "
                                     "cannot trace to the reader's JSONNode parameter")
            return None
        if key is not None:
            steps = target.steps + ((key, True),)
        elif arg is not None and arg.type == "integer_literal":
            steps = target.steps + (("[]", True),)
        else:
            self.problems.append(f"{self.line(node)}: a JSON read with a key that is not a string literal")
            return None
        self.add(steps, node)
        return Ref(steps)

    def lambda_over(self, lam: Node, over: Ref) -> None:
        element = Ref(over.steps + (("[]" if over.kind == "list" else "*", True),))
        if over.kind == "obj":
            element = Ref(element.steps, "pair")
        saved = dict(self.env)
        params = []
        for c in lam.children:
            if c.type == "lambda_function_type":
                params = [_text(p) for p in _walk(c) if p.type == "simple_identifier"]
        if over.kind == "obj" and len(params) == 2:
            self.env[params[1]] = Ref(element.steps)
        elif params:
            self.env[params[0]] = element
        self.env["$0"] = element
        if over.kind == "obj":
            self.env["$1"] = Ref(element.steps)
        for c in lam.children:
            if c.type == "statements":
                self.statements(c)
        self.env = saved

    def bind(self, name: str, value: Node | None) -> None:
        ref = self.resolve(value)
        if ref is not None:
            self.env[name] = ref
        else:
            self.env.pop(name, None)

    def statements(self, node: Node) -> None:
        """Walks ``node`` in source order: aliases as they are bound, every read as it is met."""
        t = node.type
        if t == "property_declaration":
            names = [c for c in node.children if c.type == "pattern"]
            value = node.child_by_field_name("value")
            if value is not None:
                self.statements(value)
            if len(names) == 1 and value is not None and len(names[0].children) == 1:
                self.bind(_text(names[0]), value)
            return
        if t in ("if_statement", "guard_statement", "while_statement"):
            kids = node.children
            for i, c in enumerate(kids):
                if c.type == "value_binding_pattern" and i + 3 < len(kids) + 1:
                    rest = kids[i + 1:]
                    name = next((k for k in rest if k.type == "simple_identifier"), None)
                    eq = next((j for j, k in enumerate(rest) if _text(k) == "="), None)
                    if name is not None and eq is not None and eq + 1 < len(rest):
                        self.statements(rest[eq + 1])
                        self.bind(_text(name), rest[eq + 1])
            for c in kids:
                if c.type not in ("value_binding_pattern",):
                    self.statements(c)
            return
        if t == "for_statement":
            collection = node.child_by_field_name("collection")
            item = node.child_by_field_name("item")
            if collection is not None:
                self.statements(collection)
            ref = self.resolve(collection)
            if ref is not None and ref.kind in ("list", "obj") and item is not None:
                names = [c for c in _walk(item) if c.type == "simple_identifier"]
                element = ref.steps + (("[]" if ref.kind == "list" else "*", True),)
                if names:
                    self.env[_text(names[-1])] = Ref(element)
            for c in node.children:
                if c is not collection and c is not item:
                    self.statements(c)
            return
        if t == "call_expression":
            self.resolve(node)
        if t == "lambda_literal" and node.parent is not None and node.parent.type == "call_suffix":
            return  # closures over a JSON list / object are walked by lambda_over; others have no reads
        for c in node.children:
            self.statements(c)


def _walk(node: Node) -> Iterator[Node]:
    yield node
    for c in node.children:
        yield from _walk(c)


def _annotation(decl: Node) -> str | None:
    prev = decl.prev_sibling
    while prev is not None and prev.type in ("comment", "multiline_comment"):
        match = ANNOTATION.match(_text(prev).strip())
        if match:
            return _text(prev).strip()
        prev = prev.prev_sibling
    return None


def _json_parameter(decl: Node) -> str | None:
    for c in decl.children:
        if c.type == "parameter":
            kind = c.child_by_field_name("name")
            types = [k for k in c.children if k.type in ("user_type", "optional_type")]
            if types and re.fullmatch(r"JSONNode\??", _text(types[-1]).replace(" ", "")):
                names = [k for k in c.children if k.type == "simple_identifier"]
                return _text(names[-1]) if names else (_text(kind) if kind is not None else None)
    return None


def scan(files: list[Path], root: Path) -> Scan:
    """Every reader in ``files`` and what it reads; ``problems`` lists what breaks the convention."""
    out = Scan()
    for path in files:
        source = path.read_bytes()
        tree = PARSER.parse(source)
        rel = path.relative_to(root)
        for decl in _walk(tree.root_node):
            if decl.type not in ("function_declaration", "init_declaration"):
                continue
            param = _json_parameter(decl)
            if param is None:
                continue
            at = f"{rel}:{decl.start_point[0] + 1}"
            note = _annotation(decl)
            if note is None:
                out.problems.append(f"{at}: a function with a JSONNode parameter has no '// json: ...' line above it")
                continue
            match = ANNOTATION.match(note)
            assert match is not None
            doc, base, key, values = match.groups()
            where = (key, tuple(values.split("|"))) if key else None
            reader = Reader(doc, parse_base(base), where, at)
            body = decl.child_by_field_name("body")
            if body is not None:
                _FunctionScan(reader, param, str(rel), out.problems).statements(body)
            out.readers.append(reader)
    out.problems = list(dict.fromkeys(out.problems))
    return out


# -- where a path exists: a JSON Schema, a JSON document ---------------------------------------------------------------

def _alternatives(schema: Any, root: dict) -> Iterator[dict]:
    if not isinstance(schema, dict):
        return
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        yield from _alternatives(target, root)
    yield schema
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key, []):
            yield from _alternatives(sub, root)
    for key in ("then", "else"):
        if key in schema:
            yield from _alternatives(schema[key], root)


def _children(schema: dict, step: str, root: dict) -> list[dict]:
    found = []
    for alt in _alternatives(schema, root):
        if step == "[]":
            if isinstance(alt.get("items"), dict):
                found.append(alt["items"])
            found.extend(alt.get("prefixItems", []))
            continue
        props = alt.get("properties", {})
        if step == "*":
            found.extend(props.values())
        elif step in props:
            found.append(props[step])
        for pattern, sub in alt.get("patternProperties", {}).items():
            if step == "*" or re.search(pattern, step):
                found.append(sub)
        if isinstance(alt.get("additionalProperties"), dict):
            found.append(alt["additionalProperties"])
    return found


def in_schema(schema: dict, steps: tuple[Step, ...]) -> bool:
    """Whether the schema declares the path (a property, a pattern or additionalProperties schema, list items)."""
    level = [schema]
    for key, _ in steps:
        level = [c for s in level for c in _children(s, key, schema)]
        if not level:
            return False
    return True


def matching(doc: Any, steps: tuple[Step, ...], where: tuple[str, tuple[str, ...]] | None) -> list[tuple[str, Any]]:
    """The (path, node) of ``doc`` at ``steps`` (which the annotation says exist) that pass ``where``."""
    level: list[tuple[str, Any]] = [("", doc)]
    for key, _ in steps:
        nxt = []
        for at, node in level:
            if key == "[]" and isinstance(node, list):
                nxt += [(f"{at}[{i}]", v) for i, v in enumerate(node)]
            elif key == "*" and isinstance(node, dict):
                nxt += [(f"{at}.{k}".lstrip("."), v) for k, v in node.items()]
            elif isinstance(node, dict) and node.get(key) is not None:
                nxt.append((f"{at}.{key}".lstrip("."), node[key]))
        level = nxt
    if where:
        key, values = where
        level = [(at, n) for at, n in level if isinstance(n, dict) and str(n.get(key)) in values]
    return level


def missing(node: Any, steps: tuple[Step, ...], at: str) -> list[str]:
    """Where a required step of ``steps`` is absent under ``node`` (an absent optional step ends that branch)."""
    if not steps:
        return []
    (key, required), rest = steps[0], steps[1:]
    if key in ("*", "[]"):
        items = (node.items() if isinstance(node, dict) else []) if key == "*" else (
            enumerate(node) if isinstance(node, list) else [])
        if key == "[]" and not isinstance(node, list) or key == "*" and not isinstance(node, dict):
            return [f"{at} (not a {'list' if key == '[]' else 'object'})"] if required else []
        return [m for k, v in items for m in missing(v, rest, f"{at}[{k}]" if key == "[]" else f"{at}.{k}")]
    if not isinstance(node, dict) or node.get(key) is None:
        return [f"{at}.{key}".lstrip(".")] if required else []
    return missing(node[key], rest, f"{at}.{key}".lstrip("."))
