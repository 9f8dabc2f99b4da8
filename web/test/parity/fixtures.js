/**
 * What tests/test_web_parity.py prepared (tests/web_exports.py writes it): the export, the Python runtime's
 * logits and state files, named by reference.json. The directories come from the environment:
 *   RWKV_EDGE_WEB_EXPORT        the export (World tokenizer, fp32 + int8 graphs)
 *   RWKV_EDGE_WEB_EXPORT_BYTES  the same graphs under a bytes tokenizer
 *   RWKV_EDGE_WEB_EXPORT_ORT    a copy of the export with the ORT-format graphs (rwkv-export ort)
 *   RWKV_EDGE_WEB_FIXTURES      reference.json and the .f32 / .npz files it names
 *   RWKV_EDGE_WEB_OUT           where these tests write what the Python side checks afterwards
 * Without them (a plain `npm test`) every parity test is skipped: pytest is what runs them.
 */
import fs from "node:fs";
import path from "node:path";

const NAMES = [
  "RWKV_EDGE_WEB_EXPORT",
  "RWKV_EDGE_WEB_EXPORT_BYTES",
  "RWKV_EDGE_WEB_EXPORT_ORT",
  "RWKV_EDGE_WEB_FIXTURES",
  "RWKV_EDGE_WEB_OUT",
];
const unset = NAMES.filter((name) => !process.env[name]);

/** false, or why the parity tests cannot run */
export const SKIP_FIXTURES = unset.length
  ? `${unset.join(", ")} not set: run them through pytest tests/test_web_parity.py`
  : false;

const env = (/** @type {string} */ name) => process.env[name] ?? "";
export const EXPORT_DIR = env("RWKV_EDGE_WEB_EXPORT");
export const BYTES_EXPORT_DIR = env("RWKV_EDGE_WEB_EXPORT_BYTES");
export const ORT_EXPORT_DIR = env("RWKV_EDGE_WEB_EXPORT_ORT");
export const FIXTURES = env("RWKV_EDGE_WEB_FIXTURES");
export const OUT = env("RWKV_EDGE_WEB_OUT");

/**
 * @typedef {object} Reference
 * @property {number} vocab_size
 * @property {number} steps
 * @property {number} prefill_chunk
 * @property {Record<string, {steps: Record<string, string>, feed: Record<string, string>}>} precisions
 * @property {Record<string, number[][]>} step_tokens   per batch: [steps][batch]
 * @property {Record<string, number[][]>} feed_tokens   per batch: [batch][length]
 * @property {{file: string, prompt: number[][], next_tokens: number[], next_logits: string}} state
 * @property {{text: string, world: number[], bytes: number[], random_ids: number[], random_ids_bytes: string,
 *   random_text: string, random_text_world: number[]}} tokenizer
 */

/** @type {Reference} */
export const REFERENCE = SKIP_FIXTURES
  ? /** @type {any} */ ({ precisions: {}, step_tokens: {}, feed_tokens: {}, state: {}, tokenizer: {} })
  : JSON.parse(fs.readFileSync(path.join(FIXTURES, "reference.json"), "utf8"));

/** A float32 little-endian file under the fixtures (under logits/ unless the name has a folder). @param {string} name */
export function readF32(name) {
  const file = path.join(FIXTURES, name.includes("/") ? name : path.join("logits", name));
  const bytes = fs.readFileSync(file);
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

/** The bytes of a file under the fixtures. @param {string} name */
export function readFixture(name) {
  return new Uint8Array(fs.readFileSync(path.join(FIXTURES, name)));
}
