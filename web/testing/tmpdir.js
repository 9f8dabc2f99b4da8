/** A temporary directory for one test, removed after it. */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";

/** @param {import("node:test").TestContext} t @returns {string} */
export function tempDir(t) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "rwkv-edge-web-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
