/** Errors a user can cause (a bad path, a wrong file, a token id outside the vocabulary): one clear line. */
export class RWKVEdgeError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "RWKVEdgeError";
  }
}

/**
 * The first line of an error from another library (ONNX Runtime's are long and multi-line).
 * @param {unknown} error
 * @returns {string}
 */
export function firstLine(error) {
  const text = error instanceof Error ? error.message : String(error);
  const line =
    text
      .trim()
      .split("\n")
      .find((l) => l.trim()) ?? "";
  return line.trim() || (error instanceof Error ? error.name : "unknown error");
}
