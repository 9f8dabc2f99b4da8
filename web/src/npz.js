/**
 * NumPy's .npz: a zip archive of .npy files, one per array, named "<key>.npy". Written stored (no compression), as
 * np.savez writes it; read stored or deflated (np.savez_compressed). The zip itself is fflate's.
 */
import { unzipSync, zipSync } from "fflate";

import { RWKVEdgeError } from "./errors.js";
import { readNpy, writeNpy } from "./npy.js";

/**
 * @param {Uint8Array} bytes
 * @param {string} [what]  named in errors
 * @returns {Record<string, import("./npy.js").NpyArray>}  by key, ".npy" dropped
 */
export function readNpz(bytes, what = "npz") {
  /** @type {Record<string, Uint8Array>} */
  let files;
  try {
    files = unzipSync(bytes);
  } catch (e) {
    throw new RWKVEdgeError(`${what}: not a zip archive (${/** @type {Error} */ (e).message})`);
  }
  /** @type {Record<string, import("./npy.js").NpyArray>} */
  const out = {};
  for (const [name, data] of Object.entries(files)) {
    const key = name.endsWith(".npy") ? name.slice(0, -4) : name;
    out[key] = readNpy(data, `${what}: ${name}`);
  }
  return out;
}

/**
 * @param {Record<string, import("./npy.js").NpyArray>} arrays  by key; each is stored as "<key>.npy"
 * @returns {Uint8Array}
 */
export function writeNpz(arrays) {
  /** @type {Record<string, [Uint8Array, {level: 0}]>} */
  const files = {};
  for (const [key, array] of Object.entries(arrays)) files[key + ".npy"] = [writeNpy(array), { level: 0 }];
  return zipSync(files);
}
