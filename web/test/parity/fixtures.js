/**
 * What tests/test_web_parity.py prepared (tests/web_exports.py writes it): the export, the Python runtime's
 * logits and state files, named by reference.json. The directories come from the environment:
 *   RWKV_EDGE_WEB_EXPORT        the export (World tokenizer, fp32 + int8 graphs)
 *   RWKV_EDGE_WEB_EXPORT_BYTES  the same graphs under a bytes tokenizer
 *   RWKV_EDGE_WEB_FIXTURES      reference.json and the .f32 / .npz files it names
 *   RWKV_EDGE_WEB_OUT           where these tests write what the Python side checks afterwards
 */
import fs from "node:fs";
import path from "node:path";

/** @param {string} name */
function directory(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through pytest tests/test_web_parity.py`);
  return value;
}

export const EXPORT_DIR = directory("RWKV_EDGE_WEB_EXPORT");
export const BYTES_EXPORT_DIR = directory("RWKV_EDGE_WEB_EXPORT_BYTES");
export const FIXTURES = directory("RWKV_EDGE_WEB_FIXTURES");
export const OUT = directory("RWKV_EDGE_WEB_OUT");

/**
 * @typedef {object} Reference
 * @property {number} vocab_size
 * @property {number} steps
 * @property {number} prefill_chunk
 * @property {Record<string, {steps: Record<string, string>, feed: Record<string, string>}>} precisions
 * @property {Record<string, number[][]>} step_tokens   per batch: [steps][batch]
 * @property {Record<string, number[][]>} feed_tokens   per batch: [batch][length]
 * @property {{file: string, prompt: number[][], next_tokens: number[], next_logits: string}} state
 * @property {{text: string, world: number[], bytes: number[]}} tokenizer
 */

/** @type {Reference} */
export const REFERENCE = JSON.parse(fs.readFileSync(path.join(FIXTURES, "reference.json"), "utf8"));

/** A float32 little-endian file under the fixtures (under logits/ unless the name has a folder). */
export function readF32(name) {
  const file = path.join(FIXTURES, name.includes("/") ? name : path.join("logits", name));
  const bytes = fs.readFileSync(file);
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

/** The bytes of a file under the fixtures. */
export function readFixture(name) {
  return new Uint8Array(fs.readFileSync(path.join(FIXTURES, name)));
}
