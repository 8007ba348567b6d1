"""numpy semantics of the Core ML MIL ops that pocketvlm's packages contain (the reference evaluator's op table).

Each op takes its named, already-evaluated inputs (numpy arrays, Python scalars or lists for tuple inputs) and returns
one array or a tuple of arrays. Float math runs in float32 (float64 where a reduction needs it); the evaluator rounds
each output to the op's declared dtype, so fp16 storage between ops is emulated, fp16 accumulation inside an op is
not (that is device numerics, which only a Mac can measure).

Semantics follow the MIL op reference (coremltools ``mil/ops/defs``): argument names, defaults and masks as there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

OPS: dict[str, Callable[..., Any]] = {}


def op(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name in names:
            OPS[name] = fn
        return fn

    return register


def _f(x: Any) -> np.ndarray:
    """Float inputs compute in float32 (fp16 stays fp16 only between ops)."""
    array = np.asarray(x)
    return array.astype(np.float32) if array.dtype == np.float16 else array


def _axes(axes: Any, rank: int) -> tuple[int, ...] | None:
    if axes is None:
        return None
    return tuple(int(a) % rank if rank else int(a) for a in np.atleast_1d(axes))


# -- elementwise -------------------------------------------------------------------------------------------------------
_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide, "maximum": np.maximum,
    "minimum": np.minimum, "equal": np.equal, "not_equal": np.not_equal, "greater": np.greater,
    "greater_equal": np.greater_equal, "less": np.less, "less_equal": np.less_equal, "logical_and": np.logical_and,
    "logical_or": np.logical_or, "logical_xor": np.logical_xor,
}
for _name, _fn in _BINARY.items():
    OPS[_name] = lambda x, y, _fn=_fn: _fn(_f(x), _f(y))


@op("pow")
def _pow(x: Any, y: Any) -> np.ndarray:
    return np.power(_f(x), _f(y))


@op("floor_div")
def _floor_div(x: Any, y: Any) -> np.ndarray:
    return np.floor_divide(_f(x), _f(y))


@op("mod")
def _mod(x: Any, y: Any) -> np.ndarray:
    return np.mod(_f(x), _f(y))


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x.astype(np.float64)).astype(np.float32)


_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "abs": np.abs, "ceil": np.ceil, "floor": np.floor, "round": np.round, "sign": np.sign, "cos": np.cos,
    "sin": np.sin, "tan": np.tan, "tanh": np.tanh, "exp": np.exp, "exp2": np.exp2, "sqrt": np.sqrt,
    "square": np.square, "logical_not": np.logical_not, "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)), "silu": lambda x: x / (1.0 + np.exp(-x)), "erf": _erf,
    "softplus": lambda x: np.logaddexp(0, x),
}
for _name, _fn1 in _UNARY.items():
    OPS[_name] = lambda x, _fn1=_fn1: _fn1(_f(x))


@op("log")
def _log(x: Any, epsilon: float = 1e-45) -> np.ndarray:
    return np.log(_f(x) + epsilon)


@op("rsqrt")
def _rsqrt(x: Any, epsilon: float = 1e-12) -> np.ndarray:
    return 1.0 / np.sqrt(_f(x) + epsilon)


@op("inverse")
def _inverse(x: Any, epsilon: float = 1e-4) -> np.ndarray:
    return 1.0 / (_f(x) + epsilon)


@op("clip")
def _clip(x: Any, alpha: float, beta: float) -> np.ndarray:
    return np.clip(_f(x), alpha, beta)


@op("gelu")
def _gelu(x: Any, mode: str = "EXACT") -> np.ndarray:
    x = _f(x)
    if mode == "EXACT":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x / (1.0 + np.exp(-1.702 * x))
    raise NotImplementedError(f"gelu mode {mode}")


@op("select")
def _select(cond: Any, a: Any, b: Any) -> np.ndarray:
    return np.where(np.asarray(cond).astype(bool), _f(a), _f(b))


_DTYPES = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "int16": np.int16, "int8": np.int8,
           "uint8": np.uint8, "uint16": np.uint16, "bool": np.bool_, "int64": np.int64, "fp64": np.float64}


@op("cast")
def _cast(x: Any, dtype: str) -> np.ndarray:
    if dtype not in _DTYPES:
        raise NotImplementedError(f"cast to {dtype}")
    array = np.asarray(x)
    if np.issubdtype(_DTYPES[dtype], np.integer) and np.issubdtype(array.dtype, np.floating):
        array = np.trunc(array)
    return array.astype(_DTYPES[dtype])


# -- linear algebra and normalisation ----------------------------------------------------------------------------------
@op("linear")
def _linear(x: Any, weight: Any, bias: Any = None) -> np.ndarray:
    out = np.matmul(_f(x), _f(weight).T)
    return out if bias is None else out + _f(bias)


@op("matmul")
def _matmul(x: Any, y: Any, transpose_x: bool = False, transpose_y: bool = False) -> np.ndarray:
    a, b = _f(x), _f(y)
    if transpose_x:
        a = np.swapaxes(a, -1, -2) if a.ndim > 1 else a
    if transpose_y:
        b = np.swapaxes(b, -1, -2) if b.ndim > 1 else b
    return np.matmul(a, b)


@op("layer_norm")
def _layer_norm(x: Any, axes: Any = None, gamma: Any = None, beta: Any = None, epsilon: float = 1e-5) -> np.ndarray:
    x = _f(x).astype(np.float64)
    axes_t = _axes(axes, x.ndim) if axes is not None else tuple(range(x.ndim))
    mean = x.mean(axis=axes_t, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes_t, keepdims=True)
    out = (x - mean) / np.sqrt(var + epsilon)
    if gamma is not None:
        out = out * _f(gamma)
    if beta is not None:
        out = out + _f(beta)
    return out.astype(np.float32)


@op("softmax")
def _softmax(x: Any, axis: int = -1) -> np.ndarray:
    x = _f(x)
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


@op("scaled_dot_product_attention")
def _sdpa(query: Any, key: Any, value: Any, attn_mask: Any = None) -> np.ndarray:
    q, k, v = _f(query), _f(key), _f(value)
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        mask = np.asarray(attn_mask)
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + _f(mask)
    return np.matmul(_softmax(scores, -1), v)


def _reduce(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def reduce(x: Any, axes: Any = None, keep_dims: bool = False) -> np.ndarray:
        x = _f(x)
        return fn(x, axis=_axes(axes, x.ndim), keepdims=bool(keep_dims))

    return reduce


for _name, _red in {"reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min,
                    "reduce_prod": np.prod}.items():
    OPS[_name] = _reduce(_red)


@op("reduce_argmax")
def _argmax(x: Any, axis: int = -1, keep_dims: bool = False, output_dtype: str = "int32",
            _min: bool = False) -> np.ndarray:
    x = _f(x)
    out = (np.argmin if _min else np.argmax)(x, axis=int(axis))
    return (np.expand_dims(out, int(axis)) if keep_dims else out).astype(_DTYPES[str(output_dtype)])


OPS["reduce_argmin"] = lambda x, axis=-1, keep_dims=False, output_dtype="int32": _argmax(x, axis, keep_dims,
                                                                                         output_dtype, _min=True)


@op("cumsum")
def _cumsum(x: Any, axis: int = 0, exclusive: bool = False, reverse: bool = False) -> np.ndarray:
    x = _f(x)
    if reverse:
        x = np.flip(x, axis)
    out = np.cumsum(x, axis=axis)
    if exclusive:
        out = out - x
    return np.flip(out, axis) if reverse else out


# -- shapes and indexing -----------------------------------------------------------------------------------------------
@op("reshape")
def _reshape(x: Any, shape: Any) -> np.ndarray:
    x = np.asarray(x)
    dims = [x.shape[i] if int(d) == 0 else int(d) for i, d in enumerate(np.atleast_1d(shape))]
    return x.reshape(dims)


@op("transpose")
def _transpose(x: Any, perm: Any) -> np.ndarray:
    return np.transpose(np.asarray(x), [int(p) for p in perm])


@op("expand_dims")
def _expand_dims(x: Any, axes: Any) -> np.ndarray:
    x = np.asarray(x)
    rank = x.ndim + len(np.atleast_1d(axes))
    return np.expand_dims(x, tuple(sorted(int(a) % rank for a in np.atleast_1d(axes))))


@op("squeeze")
def _squeeze(x: Any, axes: Any = None) -> np.ndarray:
    x = np.asarray(x)
    return np.squeeze(x, axis=_axes(axes, x.ndim))


@op("shape")
def _shape(x: Any) -> np.ndarray:
    return np.asarray(np.shape(x), dtype=np.int32)


def _slices(shape: tuple[int, ...], begin: Any, end: Any, stride: Any, begin_mask: Any, end_mask: Any) -> list[slice]:
    rank = len(shape)
    begin = np.atleast_1d(begin).astype(int)
    end = np.atleast_1d(end).astype(int)
    stride = np.ones(rank, int) if stride is None else np.atleast_1d(stride).astype(int)
    begin_mask = np.zeros(rank, bool) if begin_mask is None else np.atleast_1d(begin_mask)
    end_mask = np.zeros(rank, bool) if end_mask is None else np.atleast_1d(end_mask)
    return [slice(None if begin_mask[i] else int(begin[i]), None if end_mask[i] else int(end[i]), int(stride[i]))
            for i in range(rank)]


@op("slice_by_index")
def _slice_by_index(x: Any, begin: Any, end: Any, stride: Any = None, begin_mask: Any = None, end_mask: Any = None,
                    squeeze_mask: Any = None) -> np.ndarray:
    x = np.asarray(x)
    out = x[tuple(_slices(x.shape, begin, end, stride, begin_mask, end_mask))]
    if squeeze_mask is not None and np.any(squeeze_mask):
        out = np.squeeze(out, axis=tuple(int(i) for i in np.flatnonzero(squeeze_mask)))
    return out


@op("slice_update")
def _slice_update(x: Any, update: Any, begin: Any, end: Any, stride: Any = None, begin_mask: Any = None,
                  end_mask: Any = None, squeeze_mask: Any = None) -> np.ndarray:
    out = np.array(x, copy=True)
    index = tuple(_slices(out.shape, begin, end, stride, begin_mask, end_mask))
    target_shape = out[index].shape
    out[index] = np.asarray(update).reshape(target_shape)
    return out


@op("slice_by_size")
def _slice_by_size(x: Any, begin: Any, size: Any) -> np.ndarray:
    x = np.asarray(x)
    index = tuple(slice(int(b), None if int(s) == -1 else int(b) + int(s)) for b, s in zip(begin, size))
    return x[index]


@op("concat")
def _concat(values: Any, axis: int, interleave: bool = False) -> np.ndarray:
    arrays = [np.asarray(v) for v in values]
    if interleave:
        raise NotImplementedError("concat with interleave=True")
    common = np.result_type(*arrays)
    return np.concatenate([a.astype(common) for a in arrays], axis=int(axis))


@op("stack")
def _stack(values: Any, axis: int) -> np.ndarray:
    return np.stack([np.asarray(v) for v in values], axis=int(axis))


@op("split")
def _split(x: Any, num_splits: int | None = None, split_sizes: Any = None, axis: int = 0) -> tuple[np.ndarray, ...]:
    x = np.asarray(x)
    if split_sizes is not None:
        points = np.cumsum(np.atleast_1d(split_sizes))[:-1]
        return tuple(np.split(x, points, axis=int(axis)))
    return tuple(np.split(x, int(num_splits), axis=int(axis)))


@op("tile")
def _tile(x: Any, reps: Any) -> np.ndarray:
    return np.tile(np.asarray(x), [int(r) for r in reps])


@op("fill")
def _fill(shape: Any, value: Any = 0.0) -> np.ndarray:
    return np.full([int(s) for s in shape], value)


@op("fill_like")
def _fill_like(ref_tensor: Any, value: Any = 0.0) -> np.ndarray:
    return np.full(np.shape(ref_tensor), value)


@op("range_1d")
def _range_1d(start: Any, end: Any, step: Any) -> np.ndarray:
    return np.arange(start, end, step)


@op("gather")
def _gather(x: Any, indices: Any, axis: int = 0, batch_dims: int = 0, validate_indices: bool = False) -> np.ndarray:
    x, idx = np.asarray(x), np.asarray(indices).astype(np.int64)
    axis = int(axis) % x.ndim
    if validate_indices and ((idx < -x.shape[axis]) | (idx >= x.shape[axis])).any():
        raise IndexError(f"gather index out of range for axis {axis} of size {x.shape[axis]}")
    if batch_dims == 0:
        return np.take(x, idx, axis=axis)
    lead = x.shape[:batch_dims]
    flat_x = x.reshape(-1, *x.shape[batch_dims:])
    flat_i = idx.reshape(-1, *idx.shape[batch_dims:])
    parts = [np.take(flat_x[b], flat_i[b], axis=axis - batch_dims) for b in range(flat_x.shape[0])]
    return np.stack(parts).reshape(*lead, *parts[0].shape)


@op("gather_nd")
def _gather_nd(x: Any, indices: Any, batch_dims: int = 0, validate_indices: bool = False) -> np.ndarray:
    x, idx = np.asarray(x), np.asarray(indices).astype(np.int64)
    batch_dims = int(batch_dims)
    if batch_dims:
        lead = x.shape[:batch_dims]
        flat_x = x.reshape(-1, *x.shape[batch_dims:])
        flat_i = idx.reshape(-1, *idx.shape[batch_dims:])
        parts = [flat_x[b][tuple(np.moveaxis(flat_i[b], -1, 0))] for b in range(flat_x.shape[0])]
        return np.stack(parts).reshape(*lead, *parts[0].shape)
    return x[tuple(np.moveaxis(idx, -1, 0))]


@op("gather_along_axis")
def _gather_along_axis(x: Any, indices: Any, axis: int = 0, validate_indices: bool = False) -> np.ndarray:
    return np.take_along_axis(np.asarray(x), np.asarray(indices).astype(np.int64), axis=int(axis))


@op("band_part")
def _band_part(x: Any, lower: int = -1, upper: int = -1) -> np.ndarray:
    x = np.asarray(x)
    rows, cols = np.indices(x.shape[-2:])
    keep = np.ones(x.shape[-2:], bool)
    if lower >= 0:
        keep &= rows - cols <= lower
    if upper >= 0:
        keep &= cols - rows <= upper
    return np.where(keep, x, np.zeros((), x.dtype))


@op("pad")
def _pad(x: Any, pad: Any, mode: str = "constant", constant_val: float = 0.0) -> np.ndarray:
    x = np.asarray(x)
    pairs = np.asarray(pad).reshape(-1, 2)
    full = [(0, 0)] * (x.ndim - len(pairs)) + [tuple(int(v) for v in p) for p in pairs]
    if mode == "constant":
        return np.pad(x, full, constant_values=constant_val)
    return np.pad(x, full, mode={"reflect": "reflect", "replicate": "edge"}[mode])


# -- convolution -------------------------------------------------------------------------------------------------------
@op("conv")
def _conv(x: Any, weight: Any, bias: Any = None, strides: Any = None, pad_type: str = "valid", pad: Any = None,
          dilations: Any = None, groups: int = 1) -> np.ndarray:
    """N-d convolution (NC[D]HW), as im2col over sliding windows."""
    x, w = _f(x), _f(weight)
    spatial = x.ndim - 2
    strides = [1] * spatial if strides is None else [int(s) for s in strides]
    dilations = [1] * spatial if dilations is None else [int(d) for d in dilations]
    kernel = w.shape[2:]
    if pad_type == "custom":
        pads = np.asarray(pad).reshape(spatial, 2)
    elif pad_type == "valid":
        pads = np.zeros((spatial, 2), int)
    elif pad_type in ("same", "same_lower"):
        pads = np.zeros((spatial, 2), int)
        for i in range(spatial):
            out = -(-x.shape[2 + i] // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - x.shape[2 + i], 0)
            small, large = total // 2, total - total // 2
            pads[i] = (large, small) if pad_type == "same_lower" else (small, large)
    else:
        raise NotImplementedError(f"conv pad_type {pad_type}")
    x = np.pad(x, [(0, 0), (0, 0), *[tuple(int(v) for v in p) for p in pads]])
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    windows = np.lib.stride_tricks.sliding_window_view(x, span, axis=tuple(range(2, x.ndim)))
    windows = windows[(slice(None), slice(None), *[slice(None, None, s) for s in strides])]
    windows = windows[(Ellipsis, *[slice(None, None, d) for d in dilations])]
    # windows: [N, C, *out, *kernel]
    n, c = x.shape[:2]
    out_shape = windows.shape[2 : 2 + spatial]
    groups, cout = int(groups), w.shape[0]
    cols = np.moveaxis(windows, 1, 1 + spatial).reshape(n, *out_shape, groups, c // groups, int(np.prod(kernel)))
    wg = w.reshape(groups, cout // groups, c // groups, int(np.prod(kernel)))
    out = np.einsum("n...gck,gock->n...go", cols, wg, optimize=True).reshape(n, *out_shape, cout)
    out = np.moveaxis(out, -1, 1)
    if bias is not None:
        out = out + _f(bias).reshape(1, -1, *([1] * spatial))
    return out


# -- compressed weights (constexpr ops) --------------------------------------------------------------------------------
def _expand_blocks(small: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Repeat a per-block parameter (same rank, each dim dividing the weight's) up to the weight's shape."""
    out = small
    for axis, (size, full) in enumerate(zip(small.shape, shape)):
        if size != full:
            out = np.repeat(out, full // size, axis=axis)
    return out


@op("constexpr_blockwise_shift_scale")
def _blockwise_shift_scale(data: Any, scale: Any, offset: Any = None) -> np.ndarray:
    data = np.asarray(data).astype(np.float32)
    shifted = data if offset is None else data - _expand_blocks(np.asarray(offset).astype(np.float32), data.shape)
    return shifted * _expand_blocks(_f(scale), data.shape)


@op("constexpr_lut_to_dense")
def _lut_to_dense(indices: Any, lut: Any, vector_axis: Any = None) -> np.ndarray:
    """iOS 18 palettization: ``lut`` is [*groups per axis, 2**nbits, vector_size]; vector_size 1 only."""
    indices, lut = np.asarray(indices).astype(np.int64), _f(lut)
    if lut.shape[-1] != 1:
        raise NotImplementedError("vector palettization (vector_size > 1)")
    rank = indices.ndim
    group_index = np.meshgrid(*[np.arange(s) // (s // g) for s, g in zip(indices.shape, lut.shape[:rank])],
                              indexing="ij")
    return lut[(*group_index, indices, 0)]


@op("constexpr_affine_dequantize")
def _affine_dequantize(quantized_data: Any, zero_point: Any, scale: Any, axis: int) -> np.ndarray:
    q = np.asarray(quantized_data).astype(np.float32)
    shape = [1] * q.ndim
    shape[int(axis)] = -1
    zp, sc = np.asarray(zero_point).astype(np.float32), _f(scale)
    zp = zp.reshape(shape) if zp.ndim else zp
    sc = sc.reshape(shape) if sc.ndim else sc
    return (q - zp) * sc


@op("constexpr_cast")
def _constexpr_cast(source_val: Any, output_dtype: str) -> np.ndarray:
    return np.asarray(source_val).astype(_DTYPES[output_dtype])
