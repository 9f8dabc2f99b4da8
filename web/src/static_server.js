/**
 * A static file server for a built demo site (Node only). Every response carries the headers that make the page
 * cross-origin isolated (COOP same-origin + COEP require-corp), which onnxruntime-web needs for wasm threads.
 */
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer } from "node:http";
import path from "node:path";

import { RWKVEdgeError } from "./errors.js";

export const MIME_TYPES = {
  ".html": "text/html; charset=utf-8",
  ".htm": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json; charset=utf-8",
  ".map": "application/json; charset=utf-8",
  ".wasm": "application/wasm",
  ".txt": "text/plain; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".onnx": "application/octet-stream",
  ".ort": "application/octet-stream",
  ".data": "application/octet-stream",
  ".npy": "application/octet-stream",
  ".npz": "application/octet-stream",
};

const ISOLATION_HEADERS = {
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
  "Cross-Origin-Resource-Policy": "same-origin",
};

/**
 * Serve `root` on host:port; resolves once listening, with the server and its URL (port 0: a free port).
 * @param {string} root
 * @param {{port?: number, host?: string}} [options]
 * @returns {Promise<{server: import("node:http").Server, url: string}>}
 */
export async function serveStatic(root, options = {}) {
  const host = options.host ?? "127.0.0.1";
  const port = options.port ?? 8000;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RWKVEdgeError(`port must be a whole number in [0, 65535], found ${port}`);
  }
  const base = path.resolve(root);
  const info = await stat(base).catch(() => null);
  if (!info || !info.isDirectory()) throw new RWKVEdgeError(`${root}: no such directory (expected a built site)`);

  const server = createServer(async (request, response) => {
    for (const [k, v] of Object.entries(ISOLATION_HEADERS)) response.setHeader(k, v);
    response.setHeader("Cache-Control", "no-cache");
    if (request.method !== "GET" && request.method !== "HEAD") {
      response.writeHead(405, { Allow: "GET, HEAD" }).end();
      return;
    }
    let pathname;
    try {
      pathname = decodeURIComponent(new URL(request.url ?? "/", "http://x").pathname);
    } catch {
      response.writeHead(400).end("bad request\n");
      return;
    }
    let file = path.join(base, pathname);
    if (file !== base && !file.startsWith(base + path.sep)) {
      response.writeHead(403).end("forbidden\n");
      return;
    }
    let s = await stat(file).catch(() => null);
    if (s && s.isDirectory()) {
      file = path.join(file, "index.html");
      s = await stat(file).catch(() => null);
    }
    if (!s || !s.isFile()) {
      response.writeHead(404, { "Content-Type": "text/plain; charset=utf-8" }).end("not found\n");
      return;
    }
    const type = MIME_TYPES[/** @type {keyof typeof MIME_TYPES} */ (path.extname(file).toLowerCase())];
    response.writeHead(200, { "Content-Type": type ?? "application/octet-stream", "Content-Length": s.size });
    if (request.method === "HEAD") {
      response.end();
      return;
    }
    createReadStream(file)
      .on("error", () => response.destroy())
      .pipe(response);
  });
  await new Promise((resolve, reject) => {
    server.once("error", (e) =>
      reject(new RWKVEdgeError(`cannot listen on ${host}:${port} (${/** @type {Error} */ (e).message})`)),
    );
    server.listen(port, host, () => resolve(undefined));
  });
  const address = /** @type {import("node:net").AddressInfo} */ (server.address());
  const shownHost = address.family === "IPv6" ? `[${address.address}]` : address.address;
  return { server, url: `http://${shownHost}:${address.port}/` };
}
