"""What the Android engine's ``RowLoop`` must reproduce: the Python runtime's ``run_rows``
(``runtime/static_decode.py``), a static-shape encoder exported at batch 1 run once per row of a batch, over a fake
numpy callable.

The fake (``fake_call``, mirrored in RowLoopTest.kt) records each call's feed shapes and returns outputs that depend on
every value fed, on the call's index and on the row, in small integers that float32 holds exactly, so a wrong row, a
wrong order or an input passed sliced instead of whole changes the result. A case that Python refuses records the
error's type and problem; the Kotlin side must refuse it with a typed error too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.runtime.errors import PocketVLMError
from pocketvlm.runtime.static_decode import run_rows

FILE = "rowloop.json"
OUTPUTS = ["embeds", "count"]


def fake_call(calls: list[dict[str, list[int]]]) -> Any:
    """A batch-1 session stand-in: ``embeds`` float32 [n, 2], ``count`` int64 [n, 1] and ``extra`` (not listed in
    the component's outputs), n the first dimension of the first feed by name."""

    def call(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        index = len(calls)
        calls.append({name: list(np.shape(value)) for name, value in feeds.items()})
        first = feeds[sorted(feeds)[0]]
        rows = np.arange(np.shape(first)[0])
        total = sum(float(np.asarray(value, np.float64).sum()) for value in feeds.values())
        embeds = np.stack([total + rows, total * 2 - rows + index], axis=1).astype(np.float32)
        count = (len(feeds) * 100 + index * 10 + rows)[:, None].astype(np.int64)
        return {"embeds": embeds, "count": count, "extra": np.full((1,), index, np.float32)}

    return call


def _tensor(array: np.ndarray) -> dict[str, Any]:
    array = np.asarray(array)
    dtype = "float32" if array.dtype == np.float32 else "int64"
    return {"dtype": dtype, "shape": list(array.shape), "data": array.reshape(-1).tolist()}


def _ids(rows: int, length: int, start: int = 1) -> np.ndarray:
    return (np.arange(rows * length, dtype=np.int64).reshape(rows, length) + start) % 50


def _mask(rows: int, length: int) -> np.ndarray:
    mask = np.ones((rows, length), np.int64)
    for r in range(rows):
        mask[r, length - (r % length) :] = 0  # row r padded by r tokens, as a padded label batch is
    return mask


TEXT = {"input_ids": [1, 4], "attention_mask": [1, 4]}


def cases() -> list[dict[str, Any]]:
    """name -> (loop inputs, static shapes, outputs, feeds)."""
    pixels = np.arange(2 * 2 * 2, dtype=np.float32).reshape(2, 2, 2) - 3
    table: list[tuple[str, list[str], dict[str, list[int]], list[str], dict[str, np.ndarray]]] = [
        ("labels_batch", ["input_ids", "attention_mask"], TEXT, OUTPUTS,
         {"input_ids": _ids(3, 4), "attention_mask": _mask(3, 4)}),
        ("already_static", ["input_ids", "attention_mask"], TEXT, OUTPUTS,
         {"input_ids": _ids(1, 4, 7), "attention_mask": _mask(1, 4)}),
        ("one_row_other_length", ["input_ids", "attention_mask"], TEXT, OUTPUTS,
         {"input_ids": _ids(1, 3), "attention_mask": _mask(1, 3)}),
        ("other_inputs_whole", ["pixel_values"], {"pixel_values": [1, 2, 2], "scale": [2]}, OUTPUTS,
         {"pixel_values": pixels, "scale": np.array([0.5, 4.0], np.float32)}),
        ("no_loop_inputs", [], TEXT, OUTPUTS, {"input_ids": _ids(2, 4), "attention_mask": _mask(2, 4)}),
        ("rows_disagree", ["input_ids", "attention_mask"], TEXT, OUTPUTS,
         {"input_ids": _ids(3, 4), "attention_mask": _mask(2, 4)}),
        ("no_rows", ["input_ids", "attention_mask"], TEXT, OUTPUTS,
         {"input_ids": _ids(0, 4), "attention_mask": _mask(0, 4)}),
        ("loop_input_missing", ["input_ids", "attention_mask"], TEXT, OUTPUTS, {"input_ids": _ids(2, 4)}),
        ("output_missing", ["input_ids", "attention_mask"], TEXT, ["embeds", "pooled"],
         {"input_ids": _ids(2, 4), "attention_mask": _mask(2, 4)}),
    ]
    out = []
    for name, loop, shapes, outputs, feeds in table:
        calls: list[dict[str, list[int]]] = []
        case: dict[str, Any] = {"name": name, "loop": loop, "shapes": shapes, "outputs": outputs,
                                "feeds": {k: _tensor(v) for k, v in feeds.items()}, "result": None, "error": None}
        try:
            result = run_rows(fake_call(calls), feeds, loop, {k: tuple(v) for k, v in shapes.items()}, outputs)
            case["result"] = {k: _tensor(v) for k, v in result.items()}
        except PocketVLMError as exc:
            case["error"] = {"type": type(exc).__name__, "problem": exc.problem}
        except (KeyError, ValueError, IndexError) as exc:  # run_rows does not guard these: numpy / dict errors
            case["error"] = {"type": type(exc).__name__, "problem": str(exc)}
        case["calls"] = calls
        out.append(case)
    return out


def write(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / FILE).write_text(json.dumps({"cases": cases()}, allow_nan=False), encoding="utf-8")
