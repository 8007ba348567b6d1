"""A reference evaluator of Core ML ``.mlpackage`` mlprograms in numpy, for checking packages where Core ML cannot run.

Core ML executes only on Apple platforms. On Linux this evaluator reads a package without compiling it (the MIL
program in ``model.mlmodel`` and the weights in ``weights/weight.bin``), walks its ops in order and computes each
with numpy (``mil_ops``): compressed weights are decompressed exactly as the constexpr ops define (block-wise int4 /
int8 shift-scale, palettized look-up tables), each output is rounded to the dtype the op declares (so fp16 storage
between ops is emulated), and ``read_state`` / ``coreml_update_state`` act on state buffers the caller owns.

What it checks, honestly: the converted graph and the compressed weights. What it does not: Neural Engine or GPU
numerics (fp16 accumulation, fused kernels), which only a Mac or an iPhone can measure. An op it does not know is a
``CoreMLEvaluatorError`` naming the op, never a silent skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.targets.coreml.mil_ops import OPS
from pocketvlm.runtime.errors import PocketVLMError

WEIGHTS_PREFIX = "@model_path/"
BLAS_THREADS = 1
STATE_OPS = ("const", "read_state", "write_state", "coreml_update_state")
BLOB_SENTINEL = 0xDEADBEEF
_NUMPY = {"BOOL": np.bool_, "FLOAT16": np.float16, "FLOAT32": np.float32, "FLOAT64": np.float64, "INT8": np.int8,
          "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16,
          "UINT32": np.uint32, "UINT64": np.uint64}
_SUB_BYTE = {"INT4": (4, True), "UINT4": (4, False), "UINT1": (1, False), "UINT2": (2, False), "UINT3": (3, False),
             "UINT6": (6, False)}


class CoreMLEvaluatorError(PocketVLMError):
    """The package uses something the reference evaluator does not implement (named in the message)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # MIL data type name, e.g. FLOAT16
    shape: tuple[int, ...]


def unpack_sub_byte(raw: bytes, count: int, bits: int, signed: bool) -> np.ndarray:
    """Sub-byte values as Core ML's blob storage packs them: little-endian bit order, element i at bit i * bits."""
    flat = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[: count * bits].reshape(count, bits)
    values = (flat.astype(np.int16) << np.arange(bits, dtype=np.int16)).sum(axis=1)
    if signed:
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return values.astype(np.int8 if signed else np.uint8)


class BlobFile:
    """Core ML's weight blob file: a 64-byte header, then per blob a 64-byte metadata record (sentinel, data type,
    size in bytes, data offset) followed by its data."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data = np.memmap(path, dtype=np.uint8, mode="r")

    def read(self, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        meta = np.frombuffer(self._data[offset : offset + 24].tobytes(), np.uint32)
        if int(meta[0]) != BLOB_SENTINEL:
            raise CoreMLEvaluatorError(f"{self.path.name}: no blob at offset {offset}",
                                       "the package is damaged; re-export it")
        size, start = (int(v) for v in np.frombuffer(self._data[offset + 8 : offset + 24].tobytes(), np.uint64))
        raw = self._data[start : start + size].tobytes()
        count = int(np.prod(shape)) if shape else 1
        if dtype in _SUB_BYTE:
            return unpack_sub_byte(raw, count, *_SUB_BYTE[dtype]).reshape(shape)
        if dtype not in _NUMPY:
            raise CoreMLEvaluatorError(f"weights of type {dtype} are not supported by the reference evaluator",
                                       "use fp16, int8, int4 or palette4 weights")
        return np.frombuffer(raw, _NUMPY[dtype])[:count].reshape(shape)


def _type_name(dtype: int) -> str:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Name(dtype)


def _tensor_spec(name: str, value_type: Any) -> TensorSpec:
    kind = value_type.WhichOneof("type")
    if kind == "stateType":
        value_type = value_type.stateType.wrappedType
    elif kind != "tensorType":
        raise CoreMLEvaluatorError(f"'{name}' has MIL type {kind}, which the reference evaluator does not support",
                                   "export with tensor inputs and outputs")
    tensor = value_type.tensorType
    dims = []
    for dim in tensor.dimensions:
        if dim.WhichOneof("dimension") != "constant":
            raise CoreMLEvaluatorError(f"'{name}' has a flexible dimension; the evaluator needs static shapes",
                                       "export with static shapes (pocketvlm's coreml target always does)")
        dims.append(int(dim.constant.size))
    return TensorSpec(name, _type_name(tensor.dataType), tuple(dims))


def read_spec(package: Path) -> Any:
    """The package's ``Model`` protobuf (``model.mlmodel``), parsed without compiling."""
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    try:
        spec.ParseFromString((package / "Data" / "com.apple.CoreML" / "model.mlmodel").read_bytes())
    except (OSError, ValueError) as exc:
        raise CoreMLEvaluatorError(f"cannot read the Core ML spec of {package.name}: {exc}",
                                   "re-export the package") from exc
    return spec


def function_names(package: Path) -> list[str]:
    spec = read_spec(package)
    return list(spec.mlProgram.functions) if spec.WhichOneof("Type") == "mlProgram" else []


class MILProgram:
    """One function of an mlprogram package, ready to evaluate."""

    def __init__(self, package: Path | str, function: str | None = None,
                 blob_values: dict[tuple[str, int], np.ndarray] | None = None) -> None:
        """``blob_values``: a cache of weights read from the blob file, shared by the functions of one package
        (their weights are stored once, so they are read and unpacked once)."""
        package = Path(package)
        data = package / "Data" / "com.apple.CoreML"
        spec = read_spec(package)
        function = function or spec.description.defaultFunctionName or "main"
        if spec.WhichOneof("Type") != "mlProgram":
            raise CoreMLEvaluatorError(f"{package.name} is a {spec.WhichOneof('Type')} model, not an mlprogram",
                                       "convert with convert_to='mlprogram'")
        functions = spec.mlProgram.functions
        if function not in functions:
            raise CoreMLEvaluatorError(f"{package.name} has no function '{function}' (has {sorted(functions)})",
                                       "pass one of the package's functions")
        fn = functions[function]
        self.package = package
        self.opset = fn.opset
        self.block = fn.block_specializations[fn.opset]
        self.inputs: dict[str, TensorSpec] = {}
        self.states: dict[str, TensorSpec] = {}
        for named in fn.inputs:
            target = self.states if named.type.WhichOneof("type") == "stateType" else self.inputs
            target[named.name] = _tensor_spec(named.name, named.type)
        self.outputs = tuple(self.block.outputs)
        self.spec_version = int(spec.specificationVersion)
        self._blobs: dict[str, BlobFile] = {}
        self._weights_dir = data / "weights"
        self._constants: dict[str, Any] = {}
        self._blob_values = {} if blob_values is None else blob_values
        self._check_ops()

    @property
    def op_types(self) -> list[str]:
        return [operation.type for operation in self.block.operations]

    def _check_ops(self) -> None:
        missing = sorted({t for t in self.op_types if t not in OPS and t not in STATE_OPS})
        if missing:
            raise CoreMLEvaluatorError(f"{self.package.name} uses MIL op(s) {missing}, which the reference evaluator "
                                       "does not implement",
                                       "add them to export/targets/coreml/mil_ops.py, or check the package on a Mac "
                                       "(MLModel.predict)")
        nested = sorted({operation.type for operation in self.block.operations if len(operation.blocks)})
        if nested:
            raise CoreMLEvaluatorError(f"{self.package.name} has control flow ({nested}), which the reference "
                                       "evaluator does not implement", "export a graph without data-dependent loops")

    # -- values ----------------------------------------------------------------------------------------------------
    def _blob(self, file_name: str) -> BlobFile:
        relative = file_name.removeprefix(WEIGHTS_PREFIX)
        if relative not in self._blobs:
            path = self.package / "Data" / "com.apple.CoreML" / relative
            if not path.is_file():
                raise CoreMLEvaluatorError(f"{self.package.name} references missing weight file {relative}",
                                           "re-export the package")
            self._blobs[relative] = BlobFile(path)
        return self._blobs[relative]

    def _value(self, value: Any) -> Any:
        kind = value.type.WhichOneof("type")
        if kind == "listType" or kind == "tupleType":
            raise CoreMLEvaluatorError("list- or tuple-typed constants are not supported", "report the model")
        spec = _tensor_spec("constant", value.type)
        if value.WhichOneof("value") == "blobFileValue":
            blob = value.blobFileValue
            key = (blob.fileName, int(blob.offset))
            if key not in self._blob_values:  # weights passed inline to constexpr ops: read (and unpack) once
                self._blob_values[key] = self._blob(blob.fileName).read(int(blob.offset), spec.dtype, spec.shape)
            return self._blob_values[key]
        tensor = value.immediateValue.tensor
        field = tensor.WhichOneof("value")
        if field == "strings":
            items: list[Any] = list(tensor.strings.values)
            return items[0] if not spec.shape else items
        if field == "bytes":
            raw = tensor.bytes.values
            count = int(np.prod(spec.shape)) if spec.shape else 1
            if spec.dtype in _SUB_BYTE:
                array = unpack_sub_byte(raw, count, *_SUB_BYTE[spec.dtype])
            else:
                array = np.frombuffer(raw, _NUMPY[spec.dtype])[:count]
        elif field is None:
            array = np.zeros(0, _NUMPY.get(spec.dtype, np.float32))
        else:
            array = np.asarray(list(getattr(tensor, field).values), dtype=_NUMPY.get(spec.dtype, np.float32))
        return array.reshape(spec.shape)

    def _argument(self, binding: Any, env: dict[str, Any]) -> Any:
        if binding.WhichOneof("binding") == "name":
            if binding.name not in env:
                raise CoreMLEvaluatorError(f"value '{binding.name}' is used before it is defined", "re-export")
            return env[binding.name]
        return self._value(binding.value)

    # -- evaluation ------------------------------------------------------------------------------------------------
    def new_state(self) -> dict[str, np.ndarray]:
        """Zero-filled state buffers (Core ML's ``make_state`` starts from zeros too)."""
        return {name: np.zeros(spec.shape, _NUMPY[spec.dtype]) for name, spec in self.states.items()}

    def run(self, feeds: dict[str, np.ndarray], state: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        # one BLAS thread: the ops are small and many, and OpenBLAS threads spinning against a busy second core made
        # a 65x256 @ 256x256 product 50x slower here (4 ms against 80 us)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
            return self._run(feeds, state)

    def _run(self, feeds: dict[str, np.ndarray], state: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        env: dict[str, Any] = {}
        for name, spec in self.inputs.items():
            if name not in feeds:
                raise CoreMLEvaluatorError(f"input '{name}' was not fed", f"feed {sorted(self.inputs)}")
            value = np.asarray(feeds[name])
            if value.shape != spec.shape:
                raise CoreMLEvaluatorError(f"input '{name}' has shape {list(value.shape)}, the package takes "
                                           f"{list(spec.shape)}", "feed the package's static shape")
            env[name] = value.astype(_NUMPY[spec.dtype])
        if self.states:
            if state is None:
                raise CoreMLEvaluatorError(f"{self.package.name} is stateful ({sorted(self.states)})",
                                           "pass a state from new_state()")
            env.update({name: _StateRef(name) for name in self.states})
        for operation in self.block.operations:
            self._run_op(operation, env, state)
        return {name: env[name] for name in self.outputs}

    def _run_op(self, operation: Any, env: dict[str, Any], state: dict[str, np.ndarray] | None) -> None:
        kind = operation.type
        if kind == "const":
            name = operation.outputs[0].name
            if name not in self._constants:
                self._constants[name] = _compute_copy(self._value(operation.attributes["val"]))
            env[name] = self._constants[name]
            return
        args: dict[str, Any] = {}
        for key, argument in operation.inputs.items():
            values = [self._argument(b, env) for b in argument.arguments]
            args[key] = values if len(values) != 1 or key == "values" else values[0]
        if kind == "read_state":
            result: Any = state[args["input"].name].copy()  # type: ignore[index]
        elif kind in ("coreml_update_state", "write_state"):
            target = (args.get("state") or args["input"]).name
            value = np.asarray(args["value"] if "value" in args else args["data"])
            state[target][...] = value.astype(state[target].dtype)  # type: ignore[index]
            if not operation.outputs:
                return
            result = value
        else:
            constexpr = kind.startswith("constexpr_")
            cached = operation.outputs[0].name in self._constants if constexpr else False
            if cached:  # decompressed once; kept as its exact float32 copy (no cast back per call)
                env[operation.outputs[0].name] = self._constants[operation.outputs[0].name]
                return
            else:
                try:
                    result = OPS[kind](**args)
                except (NotImplementedError, TypeError, IndexError) as exc:
                    raise CoreMLEvaluatorError(f"op '{kind}' ({operation.outputs[0].name}) is not supported as used "
                                               f"here: {exc}",
                                               "add the case to export/targets/coreml/mil_ops.py") from exc
                if constexpr:
                    self._constants[operation.outputs[0].name] = None  # filled below, after the dtype cast
        results = result if isinstance(result, tuple) else (result,)
        for output, value in zip(operation.outputs, results, strict=True):
            spec = _tensor_spec(output.name, output.type)
            array = np.asarray(value)
            if spec.dtype in _NUMPY and array.dtype != _NUMPY[spec.dtype]:
                with np.errstate(over="ignore"):  # fp16 saturates to +-inf, as on the device (e.g. mask minima)
                    array = array.astype(_NUMPY[spec.dtype])
            env[output.name] = array
            if output.name in self._constants and self._constants[output.name] is None:
                self._constants[output.name] = array = _compute_copy(array)


def _compute_copy(value: Any) -> Any:
    """Constants are kept as float32 copies of their fp16 values (exact), so ops do not convert weights per call."""
    if isinstance(value, np.ndarray) and value.dtype == np.float16:
        return value.astype(np.float32)
    return value


@dataclass(frozen=True)
class _StateRef:
    name: str
