/**
 * Python-written fixtures for the tests: only where RWKV_EDGE_PYTHON names a Python with numpy (and, for the
 * runtime's own files, rwkv-edge) installed; elsewhere the tests that need it are skipped.
 */
import { spawnSync } from "node:child_process";

export const PYTHON = process.env.RWKV_EDGE_PYTHON || null;
export const SKIP_PYTHON = PYTHON ? false : "RWKV_EDGE_PYTHON is not set";

/**
 * Run a Python snippet; returns its stdout. Throws with Python's stderr when it fails.
 * @param {string} code
 * @param {string[]} [args]  sys.argv[1:]
 * @param {string | Uint8Array} [input]  stdin
 */
export function runPython(code, args = [], input) {
  const result = spawnSync(/** @type {string} */ (PYTHON), ["-c", code, ...args], {
    input,
    encoding: "utf-8",
    maxBuffer: 64 * 1024 * 1024,
  });
  if (result.status !== 0) throw new Error(`python failed: ${result.stderr || result.error}`);
  return result.stdout;
}
