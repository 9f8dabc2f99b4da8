/**
 * Just enough of ONNX's protobuf encoding to write small test graphs from JS (no Python, no onnx package):
 * models with initializers (inline or as external data), nodes with int/float/string attributes, and value infos
 * with fixed or named dimensions.
 */

export const FLOAT = 1;
export const INT64 = 7;

/** @param {number} value  >= 0 */
function varint(value) {
  const out = [];
  let v = value;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return out;
}

/** @param {number} value  any int64 that fits a double; negatives as ten-byte two's complement */
function varintSigned(value) {
  if (value >= 0) return varint(value);
  let v = BigInt.asUintN(64, BigInt(value));
  const out = [];
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return out;
}

class Message {
  constructor() {
    /** @type {number[] | Uint8Array[]} */
    this.parts = [];
  }

  /** @param {number} field @param {number} value */
  int(field, value) {
    this.parts.push(Uint8Array.from([...varint(field * 8), ...varintSigned(value)]));
    return this;
  }

  /** @param {number} field @param {number} value */
  float(field, value) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    this.parts.push(Uint8Array.from([...varint(field * 8 + 5), ...b]));
    return this;
  }

  /** @param {number} field @param {Uint8Array | string | Message} value */
  bytes(field, value) {
    const data =
      value instanceof Message ? value.encode() : typeof value === "string" ? new TextEncoder().encode(value) : value;
    this.parts.push(Uint8Array.from([...varint(field * 8 + 2), ...varint(data.length)]));
    this.parts.push(data);
    return this;
  }

  encode() {
    const total = this.parts.reduce((n, p) => n + p.length, 0);
    const out = new Uint8Array(total);
    let at = 0;
    for (const p of /** @type {Uint8Array[]} */ (this.parts)) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

/**
 * @typedef {{name: string, type: number, dims: number[], data: Float32Array | BigInt64Array}} Initializer
 * @typedef {number | string | {float: number}} Attribute
 * @typedef {{op: string, inputs: string[], outputs: string[], attributes?: Record<string, Attribute>}} Node
 * @typedef {{name: string, type: number, shape: (number | string)[]}} ValueInfo
 */

/** @param {ValueInfo} v */
function valueInfo(v) {
  const shape = new Message();
  for (const d of v.shape) shape.bytes(1, typeof d === "number" ? new Message().int(1, d) : new Message().bytes(2, d));
  const tensor = new Message().int(1, v.type).bytes(2, shape);
  return new Message().bytes(1, v.name).bytes(2, new Message().bytes(1, tensor));
}

/** @param {Node} node @param {number} index */
function nodeProto(node, index) {
  const m = new Message();
  for (const i of node.inputs) m.bytes(1, i);
  for (const o of node.outputs) m.bytes(2, o);
  m.bytes(3, `${node.op.toLowerCase()}_${index}`).bytes(4, node.op);
  for (const [name, value] of Object.entries(node.attributes ?? {})) {
    const a = new Message().bytes(1, name);
    if (typeof value === "number") a.int(3, value).int(20, 2);
    else if (typeof value === "string") a.bytes(4, value).int(20, 3);
    else a.float(2, value.float).int(20, 1);
    m.bytes(5, a);
  }
  return m;
}

/**
 * An ONNX model. With `external`, initializers of at least `external.minBytes` bytes are referenced at their
 * offsets in `external.location` (the bytes come back in `data`, to write beside the graph).
 * @param {{name: string, nodes: Node[], inputs: ValueInfo[], outputs: ValueInfo[], initializers: Initializer[],
 *   opset?: number, external?: {location: string, minBytes?: number, existing?: Map<string, [number, number]>}}} spec
 * @returns {{model: Uint8Array, data: Uint8Array, placed: Map<string, [number, number]>}}
 */
export function writeModel(spec) {
  const graph = new Message();
  spec.nodes.forEach((n, i) => graph.bytes(1, nodeProto(n, i)));
  graph.bytes(2, spec.name);
  /** @type {Uint8Array[]} */
  const chunks = [];
  let offset = 0;
  /** @type {Map<string, [number, number]>} */
  const placed = new Map();
  for (const init of spec.initializers) {
    const t = new Message();
    for (const d of init.dims) t.int(1, d);
    t.int(2, init.type).bytes(8, init.name);
    const raw = new Uint8Array(init.data.buffer, init.data.byteOffset, init.data.byteLength);
    const ext = spec.external;
    if (ext && raw.length >= (ext.minBytes ?? 0)) {
      const known = ext.existing?.get(init.name);
      const [at, length] = known ?? [offset, raw.length];
      if (!known) {
        chunks.push(raw);
        offset += raw.length;
      }
      placed.set(init.name, [at, length]);
      for (const [k, v] of [
        ["location", ext.location],
        ["offset", String(at)],
        ["length", String(length)],
      ]) {
        t.bytes(13, new Message().bytes(1, k).bytes(2, v));
      }
      t.int(14, 1);
    } else t.bytes(9, raw);
    graph.bytes(5, t);
  }
  for (const v of spec.inputs) graph.bytes(11, valueInfo(v));
  for (const v of spec.outputs) graph.bytes(12, valueInfo(v));
  const model = new Message()
    .int(1, 8)
    .bytes(2, "rwkv-edge-web tests")
    .bytes(7, graph)
    .bytes(8, new Message().bytes(1, "").int(2, spec.opset ?? 18));
  const data = new Uint8Array(offset);
  let at = 0;
  for (const c of chunks) {
    data.set(c, at);
    at += c.length;
  }
  return { model: model.encode(), data, placed };
}
