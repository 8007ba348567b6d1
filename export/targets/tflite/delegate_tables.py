"""What the LiteRT delegates accept, as data: the NNAPI delegate's per-op checks and the classic GPU delegate's
parsers and version caps. Read from google-ai-edge/LiteRT at commit f67457790c9c2ab67347d6fe53270e8d3df20868:

- NNAPI: ``tflite/delegates/nnapi/nnapi_delegate.cc`` (``NNAPIDelegateKernel::Validate``: ``ExpectMaxOpVersion`` and
  ``ExpectMinAndroidSdkVersion`` per op; ``NNAPIOpBuilder::AddTensor`` for the tensor types NNAPI can hold), with op
  versions as ``tflite/converter/tools/versioning/op_version.cc`` writes them. ``min_api`` 1000006 / 1000007 are NNAPI
  feature levels 6 / 7, not Android API numbers. An op absent here has no ``case`` in Validate and always runs on CPU.
- GPU: ``tflite/delegates/gpu/common/model_builder.cc`` (``NewOperationParser``, ``IsAllAllowedTensors``, the
  ``CheckMaxSupportedOpVersion`` caps) and ``tflite/tools/versioning/gpu_compatibility.cc``.

These are the delegates' own static checks; a device driver (NNAPI) or GPU can still refuse a node at run time.
"""

from __future__ import annotations

# op -> (minimum NNAPI level, maximum op version accepted or None when unchecked)
NNAPI_OPS: dict[str, tuple[int, int | None]] = {
    "ADD": (27, 2),
    "MUL": (27, 2),
    "SUB": (28, 3),
    "DIV": (28, 1),
    "SQUARED_DIFFERENCE": (28, 2),
    "MAXIMUM": (29, 3),
    "MINIMUM": (29, 3),
    "POW": (29, 1),
    "ABS": (29, 1),
    "EXP": (29, 1),
    "LOG": (29, 1),
    "SQRT": (29, 1),
    "RSQRT": (29, 2),
    "SIN": (29, 1),
    "COS": (29, 1),
    "NEG": (29, 2),
    "FLOOR": (27, 1),
    "LOGISTIC": (27, 2),
    "TANH": (27, 2),
    "RELU": (27, 2),
    "RELU6": (27, 2),
    "RELU_N1_TO_1": (27, 2),
    "HARD_SWISH": (27, None),
    "ELU": (30, 1),
    "LEAKY_RELU": (29, 1),
    "PRELU": (29, 1),
    "SOFTMAX": (27, 2),
    "LOG_SOFTMAX": (29, 1),
    "L2_NORMALIZATION": (27, 2),
    "LOCAL_RESPONSE_NORMALIZATION": (27, 1),
    "FULLY_CONNECTED": (27, 5),
    "BATCH_MATMUL": (1000006, 2),
    "CONV_2D": (27, 5),
    "DEPTHWISE_CONV_2D": (27, 3),
    "TRANSPOSE_CONV": (29, 4),
    "AVERAGE_POOL_2D": (27, 2),
    "MAX_POOL_2D": (27, 2),
    "L2_POOL_2D": (27, 1),
    "RESHAPE": (27, 1),
    "SQUEEZE": (28, 1),
    "EXPAND_DIMS": (29, 1),
    "TRANSPOSE": (28, 2),
    "CONCATENATION": (27, 2),
    "SLICE": (29, 2),
    "STRIDED_SLICE": (28, 2),
    "SPLIT": (29, 3),
    "SPLIT_V": (30, 2),
    "PACK": (30, 2),
    "UNPACK": (30, 2),
    "TILE": (29, 1),
    "PAD": (28, 2),
    "PADV2": (29, 2),
    "MIRROR_PAD": (1000007, 2),
    "REVERSE_V2": (1000007, 3),
    "GATHER": (29, 2),
    "EMBEDDING_LOOKUP": (27, 1),
    "HASHTABLE_LOOKUP": (27, 1),
    "MEAN": (28, 2),
    "SUM": (29, 1),
    "REDUCE_PROD": (29, 1),
    "REDUCE_MAX": (29, 2),
    "REDUCE_MIN": (29, 2),
    "REDUCE_ANY": (29, 2),
    "ARG_MAX": (29, 2),
    "ARG_MIN": (29, 2),
    "TOPK_V2": (29, 2),
    "CAST": (29, 1),
    "DEQUANTIZE": (27, 2),
    "QUANTIZE": (29, 2),
    "DENSIFY": (30, None),
    "LESS": (29, 2),
    "LESS_EQUAL": (29, 2),
    "GREATER": (29, 2),
    "GREATER_EQUAL": (29, 2),
    "EQUAL": (29, 2),
    "NOT_EQUAL": (29, 2),
    "LOGICAL_AND": (29, 1),
    "LOGICAL_OR": (29, 1),
    "LOGICAL_NOT": (29, 1),
    "SELECT": (29, 2),
    "FILL": (30, 1),
    "RESIZE_BILINEAR": (27, 3),
    "RESIZE_NEAREST_NEIGHBOR": (29, 3),
    "SPACE_TO_BATCH_ND": (28, 2),
    "BATCH_TO_SPACE_ND": (28, 2),
    "SPACE_TO_DEPTH": (27, 2),
    "DEPTH_TO_SPACE": (27, None),
    "LSTM": (28, 3),
    "UNIDIRECTIONAL_SEQUENCE_LSTM": (29, 2),
    "BIDIRECTIONAL_SEQUENCE_LSTM": (29, 1),
    "UNIDIRECTIONAL_SEQUENCE_RNN": (29, 1),
    "RNN": (27, 1),
    "SVDF": (28, 1),
    "LSH_PROJECTION": (27, 1),
}

# NNAPI tensor types (AddTensor): anything else (int64, int4, float64, ...) fails while the delegate builds its
# model, and then the whole graph falls back to CPU, not only the op that touched it
NNAPI_TENSOR_TYPES = frozenset({"FLOAT32", "FLOAT16", "UINT8", "INT8", "INT32", "BOOL", "INT16"})
NNAPI_RANK_LIMITED = frozenset({"ADD", "MUL", "SUB", "DIV", "SQUARED_DIFFERENCE", "SOFTMAX", "RESHAPE",
                                "CONCATENATION", "MEAN", "UNPACK", "BATCH_MATMUL"})

# ops the classic GPU delegate has a parser for
GPU_OPS = frozenset([
    "ABS", "ADD", "ADD_N", "AVERAGE_POOL_2D", "BATCH_MATMUL", "CAST", "CONCATENATION", "CONV_2D", "COS", "CUMSUM",
    "DENSIFY", "DEPTHWISE_CONV_2D", "DEPTH_TO_SPACE", "DEQUANTIZE", "DIV", "EQUAL", "ELU", "EXP", "FLOOR",
    "FLOOR_DIV", "FLOOR_MOD", "FULLY_CONNECTED", "GATHER", "GELU", "GREATER", "GREATER_EQUAL", "HARD_SWISH",
    "LESS", "LESS_EQUAL", "LOGISTIC", "LOG", "LOGICAL_AND", "LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM",
    "MIRROR_PAD", "MUL", "NEG", "NOT_EQUAL", "ONE_HOT", "PACK", "PAD", "PADV2", "POW", "REDUCE_MAX", "REDUCE_MIN",
    "REDUCE_PROD", "QUANTIZE", "RELU", "RELU6", "RELU_0_TO_1", "RELU_N1_TO_1", "LEAKY_RELU", "PRELU", "RESHAPE",
    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SELECT", "SELECT_V2", "SIGN", "SIN", "SLICE",
    "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SPLIT_V", "SQRT", "SQUARE", "SQUARED_DIFFERENCE", "STRIDED_SLICE",
    "SUB", "SUM", "TANH", "TILE", "TRANSPOSE", "TRANSPOSE_CONV", "UNPACK"
])
GPU_MAX_VERSION = {"FULLY_CONNECTED": 9, "CONV_2D": 6, "DEPTHWISE_CONV_2D": 6, "DEQUANTIZE": 3, "TRANSPOSE": 4,
                   "STRIDED_SLICE": 4, "LSTM": 4, "RESIZE_BILINEAR": 3, "RESIZE_NEAREST_NEIGHBOR": 3,
                   "TRANSPOSE_CONV": 3, "SOFTMAX": 2, "SLICE": 2, "PAD": 2, "CONCATENATION": 2, "QUANTIZE": 2,
                   "AVERAGE_POOL_2D": 2, "MAX_POOL_2D": 2, "RELU": 2, "SPACE_TO_DEPTH": 2, "GATHER": 1, "RESHAPE": 1,
                   "CUMSUM": 1, "ONE_HOT": 1, "SELECT_V2": 1, "PRELU": 1, "DENSIFY": 1}
# IsAllAllowedTensors: non-constant tensors float32/float16 (int8/uint8 for quantized ops), with these exceptions
GPU_ACTIVATION_TYPES = frozenset({"FLOAT32", "FLOAT16", "INT8", "UINT8"})
GPU_EXTRA_TYPES = {"BOOL": frozenset({"LOGICAL_AND", "CAST", "SELECT", "SELECT_V2"}),
                   "INT32": frozenset({"CAST", "ONE_HOT", "GATHER"})}
