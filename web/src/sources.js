/**
 * Where an export directory's files come from: a URL base (fetch), a Node path (fs), or {files: {name: bytes}}.
 * Every source answers the same questions: a file's bytes, its size without reading it, and (Node paths only) a
 * path that onnxruntime-node can open itself, mapping the graph's external data instead of copying it.
 */
import { RWKVEdgeError } from "./errors.js";

/**
 * @typedef {object} Source
 * @property {string} where             the directory, for messages
 * @property {(name: string) => Promise<Uint8Array>} read
 * @property {(name: string) => Promise<number | null>} size   null: unknown (no Content-Length)
 * @property {(name: string) => Promise<boolean>} exists
 * @property {((name: string) => string) | null} localPath      a file system path, or null for other sources
 */

const IS_NODE = typeof process !== "undefined" && !!process.versions?.node;

/** @param {string} text */
function looksLikeUrl(text) {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(text) || /^(blob|data):/i.test(text);
}

/**
 * @param {string | URL | {files: Record<string, Uint8Array | ArrayBuffer>}} source
 * @returns {Promise<Source>}
 */
export async function openSource(source) {
  if (source instanceof URL) return urlSource(source.href);
  if (typeof source === "string") {
    if (!source) throw new RWKVEdgeError("model source is empty: give a URL, a directory or {files}");
    if (IS_NODE && !looksLikeUrl(source)) return pathSource(source);
    if (IS_NODE && source.startsWith("file:")) {
      const { fileURLToPath } = await import("node:url");
      return pathSource(fileURLToPath(source));
    }
    const base = typeof location !== "undefined" ? new URL(source, location.href).href : source;
    return urlSource(base);
  }
  if (source && typeof source === "object" && "files" in source && source.files && typeof source.files === "object") {
    return filesSource(source.files);
  }
  throw new RWKVEdgeError(
    `model source must be a URL, a directory path or {files: {name: Uint8Array}}, found ${describe(source)}`,
  );
}

/** @param {unknown} value */
function describe(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  return typeof value === "object" ? "an object without files" : typeof value;
}

/** @param {string} base */
function urlSource(base) {
  const root = base.endsWith("/") ? base : base + "/";
  /** @param {string} name */
  const url = (name) => new URL(name, root).href;
  /** @param {string} name @param {string} method */
  const request = async (name, method) => {
    try {
      return await fetch(url(name), { method });
    } catch (e) {
      throw new RWKVEdgeError(`${url(name)}: cannot fetch it (${/** @type {Error} */ (e).message})`);
    }
  };
  return {
    where: root,
    localPath: null,
    async read(name) {
      const response = await request(name, "GET");
      if (!response.ok) throw missing(url(name), response.status);
      return new Uint8Array(await response.arrayBuffer());
    },
    async size(name) {
      const response = await request(name, "HEAD");
      if (!response.ok) throw missing(url(name), response.status);
      const length = response.headers.get("content-length");
      return length === null ? null : Number(length);
    },
    async exists(name) {
      return (await request(name, "HEAD")).ok;
    },
  };
}

/** @param {string} where @param {number} status */
function missing(where, status) {
  return new RWKVEdgeError(`${where}: not found (HTTP ${status})`);
}

/** @param {string} dir */
async function pathSource(dir) {
  const fs = await import("node:fs/promises");
  const path = await import("node:path");
  const stat = await fs.stat(dir).catch(() => null);
  if (!stat) throw new RWKVEdgeError(`${dir}: no such directory`);
  if (!stat.isDirectory()) throw new RWKVEdgeError(`${dir}: expected an export directory, found a file`);
  /** @param {string} name */
  const full = (name) => path.join(dir, ...name.split("/"));
  return {
    where: dir,
    localPath: full,
    async read(name) {
      try {
        const bytes = await fs.readFile(full(name));
        return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      } catch {
        throw new RWKVEdgeError(`${full(name)}: no such file`);
      }
    },
    async size(name) {
      const s = await fs.stat(full(name)).catch(() => null);
      if (!s || !s.isFile()) throw new RWKVEdgeError(`${full(name)}: no such file`);
      return s.size;
    },
    async exists(name) {
      const s = await fs.stat(full(name)).catch(() => null);
      return !!s && s.isFile();
    },
  };
}

/** @param {Record<string, Uint8Array | ArrayBuffer>} files */
function filesSource(files) {
  /** @param {string} name @returns {Uint8Array} */
  const get = (name) => {
    const value = Object.hasOwn(files, name) ? files[name] : undefined;
    if (value instanceof Uint8Array) return value;
    if (value instanceof ArrayBuffer) return new Uint8Array(value);
    if (value === undefined) throw new RWKVEdgeError(`${name}: not among the given files`);
    throw new RWKVEdgeError(`files[${JSON.stringify(name)}] must be a Uint8Array or an ArrayBuffer`);
  };
  return {
    where: "the given files",
    localPath: null,
    async read(name) {
      return get(name);
    },
    async size(name) {
      return get(name).byteLength;
    },
    async exists(name) {
      return Object.hasOwn(files, name);
    },
  };
}
