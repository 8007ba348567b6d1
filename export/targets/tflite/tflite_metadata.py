"""TFLite model metadata for MediaPipe Tasks, written without MediaPipe's metadata writer (it does not import in the
PyPI ``mediapipe`` 1.2.2 wheel: its ``_pywrap_metadata_version`` extension is missing) and without tflite-support
(not installable here).

The metadata is a ``ModelMetadata`` flatbuffer (file identifier ``M001``) laid out as tflite-support's
``metadata_schema.fbs`` declares it, built field by field with the ``flatbuffers`` package; a union field takes two
slots, its type then its value. It is stored as a model buffer that the model's ``metadata`` entry
``TFLITE_METADATA`` names. The model is re-serialised with ai-edge-litert's schema and its large buffers go after
the flatbuffer, 16-byte aligned, as ai-edge-quantizer writes them (so models over 2 GB stay writable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.targets.base import require_tool

METADATA_NAME = "TFLITE_METADATA"
IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"  # every table written here (NormalizationOptions, ImageProperties, Stats) is in 1.0.0
EXTERNAL_FROM = 1024  # bytes: buffers at least this large are stored after the flatbuffer
# union type ids (metadata_schema.fbs): ContentProperties, ProcessUnitOptions; ColorSpaceType
FEATURE_PROPERTIES, IMAGE_PROPERTIES, NORMALIZATION_OPTIONS, RGB = 1, 2, 1, 1


def _vector(builder: Any, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _floats(builder: Any, values: list[float]) -> int:
    builder.StartVector(4, len(values), 4)
    for value in reversed(values):
        builder.PrependFloat32(value)
    return builder.EndVector()


def _table(builder: Any, fields: int, offsets: dict[int, int], small: dict[int, int] | None = None) -> int:
    """A table of ``fields`` slots: offset fields ``{slot: offset}`` (built before) and 1-byte fields
    ``{slot: value}``."""
    builder.StartObject(fields)
    for slot, offset in offsets.items():
        builder.PrependUOffsetTRelativeSlot(slot, offset, 0)
    for slot, value in (small or {}).items():
        builder.PrependUint8Slot(slot, value, 0)
    return builder.EndObject()


def _image_tensor(builder: Any, name: str, description: str, mean: float, std: float,
                  value_range: tuple[float, float]) -> int:
    """TensorMetadata (0 name, 1 description, 3 content, 4 process_units, 5 stats) of an RGB image input whose
    ``NormalizationOptions`` (0 mean, 1 std) map 0..255 to ``value_range``."""
    texts = {0: builder.CreateString(name), 1: builder.CreateString(description)}
    properties = _table(builder, 2, {}, {0: RGB})  # ImageProperties: 0 color_space, 1 default_size
    content = _table(builder, 3, {1: properties}, {0: IMAGE_PROPERTIES})  # Content: 0 type, 1 properties, 2 range
    normalization = _table(builder, 2, {0: _floats(builder, [mean]), 1: _floats(builder, [std])})
    unit = _table(builder, 2, {1: normalization}, {0: NORMALIZATION_OPTIONS})  # ProcessUnit: 0 type, 1 options
    low, high = value_range
    stats = _table(builder, 2, {0: _floats(builder, [high]), 1: _floats(builder, [low])})  # Stats: 0 max, 1 min
    return _table(builder, 7, {**texts, 3: content, 4: _vector(builder, [unit]), 5: stats})


def _feature_tensor(builder: Any, name: str, description: str) -> int:
    texts = {0: builder.CreateString(name), 1: builder.CreateString(description)}
    content = _table(builder, 3, {1: _table(builder, 0, {})}, {0: FEATURE_PROPERTIES})
    return _table(builder, 7, {**texts, 3: content})


def image_model_metadata(name: str, description: str, image: tuple[str, str], mean: float, std: float,
                         output: tuple[str, str]) -> bytes:
    """The ``ModelMetadata`` flatbuffer of a model with one RGB image input (``image``: name, description) and one
    feature output (``output``: name, description). ModelMetadata slots: 0 name, 1 description,
    3 subgraph_metadata, 7 min_parser_version; SubGraphMetadata: 2 input, 3 output tensor metadata."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    value_range = ((0.0 - mean) / std, (255.0 - mean) / std)
    inputs = _vector(builder, [_image_tensor(builder, *image, mean, std, value_range)])
    outputs = _vector(builder, [_feature_tensor(builder, *output)])
    subgraph = _table(builder, 10, {2: inputs, 3: outputs})
    root = _table(builder, 8, {0: builder.CreateString(name), 1: builder.CreateString(description),
                               3: _vector(builder, [subgraph]), 7: builder.CreateString(MIN_PARSER_VERSION)})
    builder.Finish(root, file_identifier=IDENTIFIER)
    return bytes(builder.Output())


def _bytes(data: Any) -> memoryview:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return memoryview(data).cast("B")
    return memoryview(np.ascontiguousarray(data).view(np.uint8).ravel())


def _aligned(offset: int) -> int:
    return (offset + 15) & ~15


def with_metadata(source: Path, dest: Path, metadata: bytes) -> None:
    """``source`` with ``metadata`` as its ``TFLITE_METADATA`` buffer (replacing one it has), written to ``dest``."""
    tools = require_tool("ai_edge_litert.tools.flatbuffer_utils", "tflite", "tflite")
    schema = require_tool("ai_edge_litert.schema_py_generated", "tflite", "tflite")
    model = tools.read_model(str(source))  # buffers stored after the flatbuffer are read in
    names = (METADATA_NAME, METADATA_NAME.encode())
    model.metadata = [entry for entry in (model.metadata or []) if entry.name not in names]
    model.buffers.append(schema.BufferT(data=np.frombuffer(metadata, dtype=np.uint8)))
    model.metadata.append(schema.MetadataT(name=METADATA_NAME, buffer=len(model.buffers) - 1))
    external = {}
    for index, buffer in enumerate(model.buffers):
        if buffer.data is not None and len(buffer.data) >= EXTERNAL_FROM:
            external[index] = _bytes(buffer.data)
            buffer.data, buffer.offset, buffer.size = None, 1, 1  # non-default, so written; patched below
    packed = bytearray(tools.convert_object_to_bytearray(model))
    flat = schema.Model.GetRootAs(packed, 0)
    places, end = {}, _aligned(len(packed))
    for index, data in external.items():
        places[index] = end
        end = _aligned(end + len(data))
    for index, offset in places.items():
        tools.update_packed_buffer(flat.Buffers(index), offset=offset, size=len(external[index]))
    partial = dest.with_name(dest.name + ".partial")
    with partial.open("wb") as handle:
        handle.write(packed)
        for index, offset in places.items():
            handle.write(b"\0" * (offset - handle.tell()))
            handle.write(external[index])
        handle.write(b"\0" * (end - handle.tell()))
    partial.replace(dest)


def read_metadata(path: Path) -> bytes | None:
    """The ``TFLITE_METADATA`` buffer of a ``.tflite`` file, or None."""
    tools = require_tool("ai_edge_litert.tools.flatbuffer_utils", "tflite", "tflite")
    model = tools.read_model(str(path))
    for entry in model.metadata or []:
        if entry.name in (METADATA_NAME, METADATA_NAME.encode()):
            return bytes(_bytes(model.buffers[entry.buffer].data))
    return None
