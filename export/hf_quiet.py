"""Keep transformers' progress bars and advisory warnings off the user's terminal while pocketvlm drives it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def quiet_tool(logger: str | None = None, stderr: bool = True) -> Iterator[None]:
    """A converter's progress lines and warnings off the terminal: its Python logger (``None``: the root logger) at
    ERROR, warnings ignored, stdout (and ``stderr``) captured; all restored on exit."""
    import io
    import logging
    import warnings

    handle = logging.getLogger(logger)
    level = handle.level
    handle.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                (contextlib.redirect_stderr(io.StringIO()) if stderr else contextlib.nullcontext()):
            warnings.simplefilter("ignore")
            yield
    finally:
        handle.setLevel(level)
