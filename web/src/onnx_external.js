/**
 * The external data files an ONNX graph points at (TensorProto.external_data "location"), read straight from the
 * protobuf wire format: onnxruntime-web needs each one handed over as `externalData: [{path, data}]`, and the
 * sequence graph of an export reads the step graph's data file, so the names come from the graph, not a convention.
 */

// field numbers of onnx.proto
const MODEL_GRAPH = 7;
const MODEL_FUNCTIONS = 25;
const GRAPH_NODE = 1;
const GRAPH_INITIALIZER = 5;
const GRAPH_SPARSE_INITIALIZER = 15;
const FUNCTION_NODE = 7;
const NODE_ATTRIBUTE = 5;
const ATTRIBUTE_TENSOR = 5;
const ATTRIBUTE_GRAPH = 6;
const ATTRIBUTE_TENSORS = 10;
const ATTRIBUTE_GRAPHS = 11;
const SPARSE_VALUES = 1;
const SPARSE_INDICES = 2;
const TENSOR_EXTERNAL_DATA = 13;
const ENTRY_KEY = 1;
const ENTRY_VALUE = 2;

const WIRE_VARINT = 0;
const WIRE_I64 = 1;
const WIRE_LEN = 2;
const WIRE_I32 = 5;

/**
 * Calls `visit(field, start, end)` for each length-delimited field of the message in bytes[start, end).
 * @param {Uint8Array} bytes
 * @param {number} start
 * @param {number} end
 * @param {(field: number, start: number, end: number) => void} visit
 */
function eachLenField(bytes, start, end, visit) {
  let pos = start;
  const varint = () => {
    let value = 0;
    let scale = 1;
    for (;;) {
      if (pos >= end) throw new Error("truncated protobuf");
      const b = bytes[pos++];
      value += (b & 0x7f) * scale;
      if (b < 0x80) return value;
      scale *= 128;
    }
  };
  while (pos < end) {
    const key = varint();
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === WIRE_VARINT) varint();
    else if (wire === WIRE_I64) pos += 8;
    else if (wire === WIRE_I32) pos += 4;
    else if (wire === WIRE_LEN) {
      const length = varint();
      if (pos + length > end) throw new Error("truncated protobuf");
      visit(field, pos, pos + length);
      pos += length;
    } else throw new Error(`unsupported protobuf wire type ${wire}`);
  }
}

/**
 * The distinct external data locations of an ONNX model, in the order first seen. Throws a plain Error when the
 * bytes are not a protobuf (the caller names the file).
 * @param {Uint8Array} model
 * @returns {string[]}
 */
export function externalDataLocations(model) {
  /** @type {Set<string>} */
  const found = new Set();
  const decoder = new TextDecoder();
  /** @param {number} s @param {number} e */
  const tensor = (s, e) =>
    eachLenField(model, s, e, (field, fs, fe) => {
      if (field !== TENSOR_EXTERNAL_DATA) return;
      let key = "";
      let value = "";
      eachLenField(model, fs, fe, (f, a, b) => {
        if (f === ENTRY_KEY) key = decoder.decode(model.subarray(a, b));
        if (f === ENTRY_VALUE) value = decoder.decode(model.subarray(a, b));
      });
      if (key === "location") found.add(value);
    });
  /** @param {number} s @param {number} e */
  const sparse = (s, e) =>
    eachLenField(model, s, e, (field, fs, fe) => {
      if (field === SPARSE_VALUES || field === SPARSE_INDICES) tensor(fs, fe);
    });
  /** @param {number} s @param {number} e */
  const node = (s, e) =>
    eachLenField(model, s, e, (field, fs, fe) => {
      if (field !== NODE_ATTRIBUTE) return;
      eachLenField(model, fs, fe, (f, a, b) => {
        if (f === ATTRIBUTE_TENSOR || f === ATTRIBUTE_TENSORS) tensor(a, b);
        if (f === ATTRIBUTE_GRAPH || f === ATTRIBUTE_GRAPHS) graph(a, b);
      });
    });
  /** @param {number} s @param {number} e */
  const graph = (s, e) =>
    eachLenField(model, s, e, (field, fs, fe) => {
      if (field === GRAPH_INITIALIZER) tensor(fs, fe);
      else if (field === GRAPH_SPARSE_INITIALIZER) sparse(fs, fe);
      else if (field === GRAPH_NODE) node(fs, fe);
    });
  eachLenField(model, 0, model.length, (field, s, e) => {
    if (field === MODEL_GRAPH) graph(s, e);
    else if (field === MODEL_FUNCTIONS) {
      eachLenField(model, s, e, (f, a, b) => {
        if (f === FUNCTION_NODE) node(a, b);
      });
    }
  });
  return [...found];
}
