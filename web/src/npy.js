/**
 * NumPy's .npy format (versions 1.0 to 3.0), read and written as np.load / np.save do: little-endian numbers,
 * booleans, and unicode strings ('<U', UTF-32), which np.savez uses for a 0-d string array such as a state
 * file's __meta__. The header is written byte for byte as numpy writes it.
 */
import { RWKVEdgeError } from "./errors.js";

/**
 * @typedef {Float32Array | Float64Array | Uint16Array | Int8Array | Int16Array | Int32Array | BigInt64Array |
 *   Uint8Array | Uint32Array | BigUint64Array} NumericData
 * @typedef {{dtype: string, shape: number[], data: NumericData | string[]}} NpyArray
 *   dtype: a numpy name (float32, float16 as raw Uint16Array bits, int64, bool, ...) or "str" (data: string[])
 */

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
const ARRAY_ALIGN = 64;
const GROWTH_AXIS_MAX_DIGITS = 21; // numpy leaves room to grow the first axis in place

/** descr without the byte-order character -> [dtype name, typed array constructor, item size] */
const NUMERIC = {
  f2: ["float16", Uint16Array, 2],
  f4: ["float32", Float32Array, 4],
  f8: ["float64", Float64Array, 8],
  i1: ["int8", Int8Array, 1],
  i2: ["int16", Int16Array, 2],
  i4: ["int32", Int32Array, 4],
  i8: ["int64", BigInt64Array, 8],
  u1: ["uint8", Uint8Array, 1],
  u2: ["uint16", Uint16Array, 2],
  u4: ["uint32", Uint32Array, 4],
  u8: ["uint64", BigUint64Array, 8],
  b1: ["bool", Uint8Array, 1],
};
const DESCR_OF_DTYPE = Object.fromEntries(
  Object.entries(NUMERIC).map(([code, [name, , size]]) => [name, size === 1 ? "|" + code : "<" + code]),
);

/** @param {number[]} shape */
export function sizeOf(shape) {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * @param {Uint8Array} bytes
 * @param {string} [what]  named in errors, e.g. the file
 * @returns {NpyArray}
 */
export function readNpy(bytes, what = "array") {
  const bad = (/** @type {string} */ why) => new RWKVEdgeError(`${what}: not a .npy array (${why})`);
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) throw bad("no \\x93NUMPY magic");
  const major = bytes[6];
  if (major < 1 || major > 3) throw bad(`format version ${major}.${bytes[7]}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const headerStart = major === 1 ? 10 : 12;
  const dataStart = headerStart + headerLength;
  if (dataStart > bytes.length) throw bad("truncated header");
  const header = new TextDecoder(major === 3 ? "utf-8" : "latin1").decode(bytes.subarray(headerStart, dataStart));
  const descr = /'descr':\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) throw bad("unreadable header");
  const shape = shapeText
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s)
    .map(Number);
  if (shape.some((d) => !Number.isInteger(d) || d < 0)) throw bad(`shape (${shapeText})`);
  const count = sizeOf(shape);
  if (fortran === "True" && shape.filter((d) => d > 1).length > 1) {
    throw bad("Fortran-ordered arrays are not supported; save it with np.ascontiguousarray");
  }
  const order = descr[0];
  const code = descr.slice(1);
  if (order === ">" && !code.endsWith("1")) throw bad(`big-endian dtype ${descr}`);
  const body = bytes.subarray(dataStart);
  if (code[0] === "U") {
    const chars = Number(code.slice(1));
    if (!Number.isInteger(chars) || chars < 0) throw bad(`dtype ${descr}`);
    if (body.length < count * chars * 4) throw bad("truncated data");
    const bodyView = new DataView(body.buffer, body.byteOffset, body.byteLength);
    /** @type {string[]} */
    const strings = [];
    for (let i = 0; i < count; i++) {
      const points = [];
      for (let c = 0; c < chars; c++) points.push(bodyView.getUint32((i * chars + c) * 4, true));
      while (points.length && points[points.length - 1] === 0) points.pop(); // numpy strips trailing NULs
      strings.push(String.fromCodePoint(...points));
    }
    return { dtype: "str", shape, data: strings };
  }
  const entry = NUMERIC[/** @type {keyof typeof NUMERIC} */ (code)];
  if (!entry) throw bad(`unsupported dtype ${descr}`);
  const [dtype, Type, itemSize] = entry;
  if (body.length < count * itemSize) throw bad("truncated data");
  // a copy: aligned for the typed array, and independent of the file's buffer
  const copy = body.slice(0, count * itemSize);
  return { dtype, shape, data: new Type(copy.buffer, 0, count) };
}

/** @param {number[]} shape */
function shapeRepr(shape) {
  if (shape.length === 1) return `(${shape[0]},)`;
  return `(${shape.join(", ")})`;
}

/**
 * @param {NpyArray} array
 * @returns {Uint8Array}
 */
export function writeNpy(array) {
  const { dtype, shape } = array;
  const count = sizeOf(shape);
  /** @type {Uint8Array} */
  let body;
  let descr;
  if (dtype === "str") {
    const strings = /** @type {string[]} */ (array.data);
    if (strings.length !== count) throw new RWKVEdgeError(`array of shape [${shape}] needs ${count} strings`);
    const points = strings.map((s) => Array.from(s, (ch) => /** @type {number} */ (ch.codePointAt(0))));
    const chars = Math.max(1, ...points.map((p) => p.length)); // numpy's '<U0' is read back as '<U1'
    descr = `<U${chars}`;
    body = new Uint8Array(count * chars * 4);
    const view = new DataView(body.buffer);
    points.forEach((p, i) => p.forEach((cp, c) => view.setUint32((i * chars + c) * 4, cp, true)));
  } else {
    descr = DESCR_OF_DTYPE[dtype];
    if (!descr) throw new RWKVEdgeError(`cannot write dtype ${dtype} to .npy`);
    const data = /** @type {NumericData} */ (array.data);
    if (data.length !== count)
      throw new RWKVEdgeError(`array of shape [${shape}] needs ${count} values, has ${data.length}`);
    body = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shapeRepr(shape)}, }`;
  if (shape.length > 0) header += " ".repeat(Math.max(0, GROWTH_AXIS_MAX_DIGITS - String(shape[0]).length));
  let version = 1;
  let prefix = 10;
  if (header.length + 1 + prefix > 0xffff) {
    version = 2;
    prefix = 12;
  }
  const pad = ARRAY_ALIGN - ((prefix + header.length + 1) % ARRAY_ALIGN);
  const full = header + " ".repeat(pad) + "\n"; // numpy pads a whole 64 when already aligned
  const out = new Uint8Array(prefix + full.length + body.length);
  out.set(MAGIC, 0);
  out[6] = version;
  out[7] = 0;
  const view = new DataView(out.buffer);
  if (version === 1) view.setUint16(8, full.length, true);
  else view.setUint32(8, full.length, true);
  for (let i = 0; i < full.length; i++) out[prefix + i] = full.charCodeAt(i);
  out.set(body, prefix + full.length);
  return out;
}
