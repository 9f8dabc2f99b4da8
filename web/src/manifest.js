/**
 * rwkv.json, read and checked as runtime/manifest.py does: the schema (manifest_schema.js) enforced by the small
 * checker below, the first broken field named in one line, defaults filled in, unknown fields dropped.
 */
import { RWKVEdgeError } from "./errors.js";
import { MANIFEST_SCHEMA } from "./manifest_schema.js";

export const FORMAT = "rwkv-edge/1";
export const MANIFEST_NAME = "rwkv.json";

/**
 * @typedef {{version: string, n_layer: number, n_embd: number, n_head: number, head_size: number,
 *   vocab_size: number, n_ffn: number}} Architecture
 * @typedef {{kind: "world" | "neox20b" | "bytes", file: string | null}} TokenizerSpec
 * @typedef {{file: string, kind: "step" | "sequence", precision: string, input: string, output: string,
 *   opset: number, logits: "last" | "all", rescale_every: number, needs: string[] | null,
 *   backends: string[] | null, ort: string | null}} GraphSpec
 * @typedef {{name: string, input: string, output: string, shape: (number | "batch")[], dtype: string,
 *   init: number, init_file: string | null}} StateSpec
 * @typedef {{format: string, architecture: Architecture, tokenizer: TokenizerSpec, graphs: GraphSpec[],
 *   state: StateSpec[], source: Record<string, unknown>}} Manifest
 */

const TYPE_WORDS = {
  object: "an object",
  array: "a list",
  string: "a string",
  integer: "a whole number",
  number: "a number",
  boolean: "true or false",
  null: "null",
};

/** @param {unknown} value @param {string} type */
function isType(value, type) {
  switch (type) {
    case "integer":
      return typeof value === "number" && Number.isInteger(value);
    case "number":
      return typeof value === "number" && Number.isFinite(value);
    case "boolean":
      return typeof value === "boolean";
    case "object":
      return typeof value === "object" && value !== null && !Array.isArray(value);
    case "array":
      return Array.isArray(value);
    case "string":
      return typeof value === "string";
    case "null":
      return value === null;
    default:
      return false;
  }
}

/** @param {unknown} value */
function show(value) {
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object" && value !== null) return "an object";
  const text = JSON.stringify(value) ?? String(value);
  return text.length <= 60 ? text : text.slice(0, 57) + "...";
}

/** @param {string} where @param {string} words @returns {never} */
function refuse(where, words) {
  throw new RWKVEdgeError(where ? `${MANIFEST_NAME}: ${where}: ${words}` : `${MANIFEST_NAME}: ${words}`);
}

/** @param {string} where @param {string} key */
function fieldName(where, key) {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) return `${where}[${JSON.stringify(key)}]`;
  return where ? `${where}.${key}` : key;
}

/**
 * @param {unknown} value
 * @param {any} schema
 * @param {string} where
 * @returns {unknown}
 */
function check(value, schema, where) {
  if ("$ref" in schema) {
    const name = schema.$ref.split("/").pop();
    value = check(value, MANIFEST_SCHEMA.$defs[name], where);
  }
  if ("type" in schema) {
    const types = typeof schema.type === "string" ? [schema.type] : schema.type;
    if (!types.some((/** @type {string} */ t) => isType(value, t))) {
      refuse(
        where,
        `expected ${types.map((/** @type {string} */ t) => TYPE_WORDS[t]).join(" or ")}, found ${show(value)}`,
      );
    }
  }
  if ("const" in schema && value !== schema.const)
    refuse(where, `expected ${show(schema.const)}, found ${show(value)}`);
  if ("enum" in schema && !schema.enum.includes(value)) {
    refuse(where, `expected one of ${schema.enum.map(show).join(", ")}, found ${show(value)}`);
  }
  if ("pattern" in schema && typeof value === "string" && !new RegExp(schema.pattern).test(value)) {
    refuse(where, `expected ${schema.title ?? "a string matching " + schema.pattern}, found ${show(value)}`);
  }
  if ("minimum" in schema && typeof value === "number" && value < schema.minimum) {
    const what = `${TYPE_WORDS[Number.isInteger(value) ? "integer" : "number"]} >= ${schema.minimum}`;
    refuse(where, `expected ${schema.title ?? what}, found ${show(value)}`);
  }
  if (isType(value, "object")) return checkObject(/** @type {Record<string, unknown>} */ (value), schema, where);
  if (Array.isArray(value)) return checkArray(value, schema, where);
  return value;
}

/** @param {Record<string, unknown>} value @param {any} schema @param {string} where */
function checkObject(value, schema, where) {
  const properties = schema.properties ?? {};
  const required = schema.required ?? [];
  /** @type {Record<string, unknown>} */
  const out = {};
  for (const key of [...Object.keys(properties), ...required.filter((/** @type {string} */ k) => !(k in properties))]) {
    const here = fieldName(where, key);
    if (Object.hasOwn(value, key)) out[key] = check(value[key], properties[key] ?? {}, here);
    else if (required.includes(key)) throw new RWKVEdgeError(`${MANIFEST_NAME}: ${here} is missing`);
  }
  const extra = schema.additionalProperties ?? true;
  for (const key of Object.keys(value)) {
    if (key in properties) continue;
    const here = fieldName(where, key);
    if (extra === false) refuse(here, `unknown field (expected one of ${Object.keys(properties).join(", ")})`);
    out[key] = typeof extra === "object" ? check(value[key], extra, here) : value[key];
  }
  return out;
}

/** @param {unknown[]} value @param {any} schema @param {string} where */
function checkArray(value, schema, where) {
  if (value.length < (schema.minItems ?? 0)) {
    refuse(where, `expected at least ${schema.minItems} entry, found ${value.length || "none"}`);
  }
  if ("items" in schema) value = value.map((item, i) => check(item, schema.items, `${where}[${i}]`));
  if ("contains" in schema) {
    const low = schema.minContains ?? 1;
    const high = schema.maxContains;
    const found = value.filter((item) => matches(item, schema.contains)).length;
    if (found < low || (high !== undefined && found > high)) {
      const what = "const" in schema.contains ? show(schema.contains.const) : "matching";
      const count =
        low === 1 && high === 1 ? "exactly one" : high === undefined ? `at least ${low}` : `${low} to ${high}`;
      refuse(where, `expected ${count} ${what} entry, found ${found}`);
    }
  }
  return value;
}

/** @param {unknown} value @param {any} schema */
function matches(value, schema) {
  try {
    check(value, schema, "");
    return true;
  } catch (e) {
    if (e instanceof RWKVEdgeError) return false;
    throw e;
  }
}

/**
 * A parsed rwkv.json checked against the schema. Throws RWKVEdgeError naming the first field that breaks it.
 * @param {unknown} data
 * @returns {Record<string, any>}
 */
export function checkManifestObject(data) {
  return /** @type {Record<string, any>} */ (check(data, MANIFEST_SCHEMA, ""));
}

/** @param {Record<string, any>} fields @param {Record<string, unknown>} defaults */
function known(fields, defaults) {
  /** @type {Record<string, any>} */
  const out = {};
  for (const [key, fallback] of Object.entries(defaults)) out[key] = fields[key] ?? fallback;
  return out;
}

const GRAPH_DEFAULTS = {
  file: undefined,
  kind: undefined,
  precision: undefined,
  input: "input_ids",
  output: "logits",
  opset: 18,
  logits: "last",
  rescale_every: 0,
  needs: null,
  backends: null,
  ort: null,
};
const STATE_DEFAULTS = {
  name: undefined,
  input: undefined,
  output: undefined,
  shape: undefined,
  dtype: "float32",
  init: 0.0,
  init_file: null,
};
const ARCHITECTURE_FIELDS = ["version", "n_layer", "n_embd", "n_head", "head_size", "vocab_size", "n_ffn"];

/**
 * rwkv.json's text or parsed object -> the checked manifest, with every optional field at its default.
 * @param {string | Uint8Array | object} input
 * @returns {Manifest}
 */
export function parseManifest(input) {
  let data = input;
  if (input instanceof Uint8Array) {
    try {
      data = new TextDecoder("utf-8", { fatal: true }).decode(input);
    } catch {
      throw new RWKVEdgeError(`${MANIFEST_NAME}: not valid UTF-8 text`);
    }
  }
  if (typeof data === "string") {
    try {
      data = JSON.parse(data);
    } catch (e) {
      throw new RWKVEdgeError(`${MANIFEST_NAME}: not valid JSON (${/** @type {Error} */ (e).message})`);
    }
  }
  const d = checkManifestObject(data);
  /** @type {Record<string, any>} */
  const architecture = {};
  for (const key of ARCHITECTURE_FIELDS) architecture[key] = d.architecture[key];
  return {
    format: d.format,
    architecture: /** @type {Architecture} */ (architecture),
    tokenizer: /** @type {TokenizerSpec} */ (known(d.tokenizer, { kind: undefined, file: null })),
    graphs: d.graphs.map((/** @type {any} */ g) => /** @type {GraphSpec} */ (known(g, GRAPH_DEFAULTS))),
    state: d.state.map((/** @type {any} */ s) => /** @type {StateSpec} */ (known(s, STATE_DEFAULTS))),
    source: d.source ?? {},
  };
}

/**
 * The graph of a kind and precision; one line naming what the export has when it has none.
 * @param {Manifest} manifest
 * @param {"step" | "sequence"} kind
 * @param {string} precision
 * @returns {GraphSpec}
 */
export function findGraph(manifest, kind, precision) {
  const graph = manifest.graphs.find((g) => g.kind === kind && g.precision === precision);
  if (graph) return graph;
  const have = manifest.graphs.map((g) => `${g.kind}/${g.precision}`).join(", ") || "none";
  throw new RWKVEdgeError(
    `no ${kind} graph of precision ${precision} in this export (it has: ${have}); ` +
      "run `rwkv-export quantize` or pick another precision",
  );
}

/**
 * A state spec's shape with the batch axis filled in.
 * @param {StateSpec} spec
 * @param {number} batch
 * @returns {number[]}
 */
export function concreteShape(spec, batch) {
  return spec.shape.map((d) => (d === "batch" ? batch : d));
}

/** @param {StateSpec} spec */
export function shapeText(spec) {
  return "[" + spec.shape.join(", ") + "]";
}
