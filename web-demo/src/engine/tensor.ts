/** A backend-neutral tensor (the engine's own; sessions convert to and from onnxruntime-web tensors). */

export type TensorData = Float32Array | BigInt64Array;

export interface Tensor {
  dtype: "float32" | "int64";
  dims: number[];
  data: TensorData;
}

export const f32 = (data: Float32Array, dims: number[]): Tensor => ({ dtype: "float32", dims, data });
export const i64 = (data: BigInt64Array, dims: number[]): Tensor => ({ dtype: "int64", dims, data });

export function i64From(values: ArrayLike<number>, dims: number[]): Tensor {
  const data = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) data[i] = BigInt(values[i]);
  return i64(data, dims);
}

export const size = (dims: number[]): number => dims.reduce((a, b) => a * b, 1);

/** The first `count` entries along `axis` (0 or 1) as a new tensor. */
export function sliceAxis(t: Tensor, axis: 0 | 1, count: number): Tensor {
  const dims = [...t.dims];
  dims[axis] = count;
  if (axis === 0) return { ...t, dims, data: t.data.slice(0, size(dims)) } as Tensor;
  const outer = t.dims[0], inner = size(t.dims.slice(2));
  const out = new (t.data.constructor as { new (n: number): TensorData })(size(dims));
  for (let o = 0; o < outer; o++) {
    const from = o * t.dims[1] * inner;
    (out as Float32Array).set((t.data as Float32Array).subarray(from, from + count * inner), o * count * inner);
  }
  return { ...t, dims, data: out } as Tensor;
}

/** Tensor values as plain numbers (int64 through Number). */
export function numbers(t: Tensor): number[] {
  return Array.from(t.data as ArrayLike<number | bigint>, (v) => Number(v));
}

/** Zeros for a manifest input spec: symbolic dims become 1. */
export function zerosFor(spec: { dtype: string; shape: (number | string)[] }): Tensor {
  const dims = spec.shape.map((d) => (typeof d === "number" ? d : 1));
  return spec.dtype === "int64" ? i64(new BigInt64Array(size(dims)), dims) : f32(new Float32Array(size(dims)), dims);
}
