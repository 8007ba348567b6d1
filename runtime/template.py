"""Chat templates from a bundle, rendered in a sandbox that also bounds time and memory.

A chat template is code that arrives with the bundle. Jinja's ``ImmutableSandboxedEnvironment`` already refuses
Python attributes (``__class__``, ``__globals__``) and mutation, but not work: ``range`` nested in ``range``, a
macro that calls itself, ``'x' * 10**9`` or ``'x'.ljust(10**9)`` each hang the runtime or take its memory (the
sandbox's own documentation says so). Here a render is bounded four ways, and every way out is a typed
``BundleError`` in one line:

- **steps**: a per-thread line tracer, installed only on the template's own frames, counts the lines the compiled
  template executes and stops it past ``MAX_STEPS`` or ``MAX_SECONDS`` (loops without end, deep nesting);
- **size**: ``*`` and ``**`` are intercepted and refused when their result would exceed ``MAX_CHARS`` (strings,
  lists) or ``MAX_POWER_BITS`` (integers); calls that take a size (``ljust``, ``center``, ``zfill``, ``replace``,
  ``join``, ``expandtabs``, ``format``, the ``center``/``indent``/``replace``/``format``/``wordwrap`` filters) are
  checked before they run; the rendered text is capped at ``MAX_CHARS``;
- **recursion**: Python's ``RecursionError`` becomes the same typed error;
- **compile**: a template that does not parse is refused when the bundle loads, not at the first request.

Bundled templates render in well under a millisecond and a few hundred steps, so the bounds are far from use.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import jinja2
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pocketvlm.runtime.errors import BundleError

MAX_STEPS = 2_000_000  # template lines executed per render
MAX_SECONDS = 2.0  # wall time per render
MAX_CHARS = 1_000_000  # any string or list the template builds, and the rendered text
MAX_POWER_BITS = 4096  # integers from ``**``
TEMPLATE_FILE = "<template>"  # the co_filename of Jinja's compiled template code
FIX = "re-export the bundle with `pocketvlm export` (its chat template is the checkpoint's, rendered safely)"
_FORMAT_SPEC = re.compile(r"%[-+ #0]*\d*(?:\.\d+)?[a-zA-Z]|\{[^{}]*:[^{}]*\}")  # printf and str.format fields


class TemplateLimitError(Exception):
    """Raised inside a render that went past one of the bounds; turned into ``BundleError`` by ``render``."""


def _sized(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple) else 0


def _width(args: tuple[Any, ...]) -> int:
    """The largest integer among call arguments (a requested width or count)."""
    return max((abs(a) for a in args if isinstance(a, int) and not isinstance(a, bool)), default=0)


def _format_widths(fmt: str) -> int:
    """An upper bound of the characters a ``%``- or ``{}``-format string's widths and precisions ask for."""
    return sum(int(n) for spec in _FORMAT_SPEC.findall(fmt) for n in re.findall(r"\d+", spec))


def _predicted(method: str, text: str, args: tuple[Any, ...]) -> int:
    """Size of ``text.<method>(*args)`` before it runs, for the ``str`` methods whose output can grow."""
    if method in ("ljust", "rjust", "center", "zfill"):
        return max(len(text), _width(args))
    if method == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        hits = text.count(args[0]) if args[0] else len(text) + 1
        return len(text) + hits * max(len(args[1]) - len(args[0]), 0)
    if method == "join" and args:
        items = list(args[0]) if isinstance(args[0], list | tuple | str) else []
        return sum(len(str(i)) for i in items) + len(text) * max(len(items) - 1, 0)
    if method == "expandtabs":
        return len(text) + text.count("\t") * max(_width(args), 8)
    if method in ("format", "format_map"):
        return len(text) + _format_widths(text)
    return 0


def _check(size: int, what: str) -> None:
    if size > MAX_CHARS:
        raise TemplateLimitError(f"{what} would build {size:,} characters (limit {MAX_CHARS:,})")


def _bounded_filter(original: Callable[..., Any], name: str) -> Callable[..., Any]:
    """A built-in filter with its output size checked before it runs."""

    def bounded(*args: Any, **kwargs: Any) -> Any:
        plain = [a for a in args if not isinstance(a, jinja2.nodes.EvalContext | jinja2.Environment)]
        text = str(plain[0]) if plain else ""  # the filtered value; the filter's own arguments follow
        rest = tuple(plain[1:])
        if name == "format":
            _check(len(text) + _format_widths(text) + sum(_sized(a) for a in rest), "the format filter")
        elif name == "replace":
            _check(_predicted("replace", text, rest), "the replace filter")
        else:  # center, indent, wordwrap: a width or an indent per line
            per_line = max(_width(rest), *(_sized(a) for a in rest), 0)
            _check(len(text) + per_line * (text.count("\n") + 1), f"the {name} filter")
        return original(*args, **kwargs)

    return bounded


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with ``*`` / ``**`` and sized calls checked (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, autoescape=False)
        for name in ("center", "indent", "replace", "format", "wordwrap"):
            self.filters[name] = _bounded_filter(self.filters[name], name)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            count = right if isinstance(left, str | list | tuple) else left
            if isinstance(count, int) and not isinstance(count, bool):
                _check(max(_sized(left), _sized(right)) * max(count, 0), "'*'")
        huge = isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1 and \
            abs(left).bit_length() * right > MAX_POWER_BITS
        if operator == "**" and huge:
            raise TemplateLimitError(f"'**' would build an integer of over {MAX_POWER_BITS} bits")
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format`` reaches templates through this wrapper, not through ``call``: its widths are checked."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        text = value.__self__

        def bounded(*args: Any, **kwargs: Any) -> str:
            _check(_predicted("format", text, args), "str.format")
            return wrapped(*args, **kwargs)

        return bounded

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # jinja2's signature
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            _check(_predicted(getattr(__obj, "__name__", ""), owner, args), f"str.{__obj.__name__}")
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, str | list | tuple):
            _check(len(result), "a call")
        return result


class _Budget:
    """A line tracer for the compiled template's frames: counts steps, checks the clock every 1,024."""

    def __init__(self) -> None:
        self.steps = 0
        self.deadline = time.perf_counter() + MAX_SECONDS

    def on_call(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        return self.on_line if frame.f_code.co_filename == TEMPLATE_FILE else None

    def on_line(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TemplateLimitError(f"the template ran over {MAX_STEPS:,} steps")
        if not self.steps & 1023 and time.perf_counter() > self.deadline:
            raise TemplateLimitError(f"the template ran over {MAX_SECONDS:g} s")
        return self.on_line


@contextmanager
def _budgeted() -> Iterator[_Budget]:
    budget, previous = _Budget(), sys.gettrace()
    sys.settrace(budget.on_call)  # this thread only; another thread's render has its own budget
    try:
        yield budget
    finally:
        sys.settrace(previous)


class ChatTemplate:
    """A bundle's chat template, compiled once, rendered with bounds."""

    def __init__(self, source: str, name: str = "chat template") -> None:
        self.name = name
        try:  # an environment of its own: nothing shared between templates or threads
            self._template = BoundedEnvironment().from_string(source)
        except (jinja2.TemplateError, RecursionError, MemoryError, ValueError) as exc:
            raise BundleError(f"the bundle's {name} does not compile: {_short(exc)}", FIX) from exc

    @classmethod
    def from_file(cls, path: Path) -> ChatTemplate:
        try:
            source = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise BundleError(f"chat template {path.name} is not UTF-8 text", FIX) from exc
        except OSError as exc:
            raise BundleError(f"cannot read chat template {path.name}: {exc.strerror or exc}", FIX) from exc
        return cls(source, f"chat template {path.name}")

    def render(self, **variables: Any) -> str:
        pieces, size = [], 0
        try:
            with _budgeted():
                for piece in self._template.generate(**variables):
                    size += len(piece)
                    _check(size, "the rendered prompt")
                    pieces.append(piece)
        except TemplateLimitError as exc:
            raise BundleError(f"the bundle's {self.name} was stopped: {exc}", FIX) from exc
        except RecursionError as exc:
            raise BundleError(f"the bundle's {self.name} recursed without end", FIX) from exc
        except (jinja2.TemplateError, OverflowError, TypeError, ValueError, KeyError, IndexError,
                AttributeError, ZeroDivisionError) as exc:  # the template's own errors, at render time
            raise BundleError(f"the bundle's {self.name} failed: {_short(exc)}", FIX) from exc
        return "".join(pieces)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."

