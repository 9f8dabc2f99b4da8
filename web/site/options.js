/**
 * What the page is asked to do, read from its URL:
 *   ?prompt=...&max_tokens=N&temperature=T[&top_p=P][&seed=S][&precision=...][&backend=wasm|webgpu]
 * and which of the model's precisions it runs. No prompt: the page waits for the form.
 */

export const BACKENDS = ["wasm", "webgpu"];

/**
 * The precision a backend gets when the URL names none: the first of these that the model has and that its
 * manifest does not rule out for the backend (graphs[].backends). One list per backend, fastest first.
 */
export const DEFAULT_PRECISIONS = {
  wasm: ["int8-dynamic", "int8", "fp32"],
  webgpu: ["int8", "fp32"],
};

export const DEFAULT_MAX_TOKENS = 64;
export const DEFAULT_TEMPERATURE = 1.0;

/**
 * @typedef {object} PageOptions
 * @property {string | null} prompt
 * @property {number} maxTokens
 * @property {number} temperature
 * @property {number} topP
 * @property {number | null} seed
 * @property {string | null} precision   null: DEFAULT_PRECISIONS decides
 * @property {"wasm" | "webgpu"} backend
 */

/**
 * @param {string} search  location.search
 * @returns {PageOptions}  throws an Error naming the bad parameter
 */
export function readOptions(search) {
  const query = new URLSearchParams(search);
  const backend = query.get("backend") || "wasm";
  if (!BACKENDS.includes(backend)) {
    throw new Error(`backend=${backend}: expected one of ${BACKENDS.join(", ")}`);
  }
  return {
    prompt: query.get("prompt"),
    maxTokens: number(query, "max_tokens", DEFAULT_MAX_TOKENS, { integer: true, min: 1 }),
    temperature: number(query, "temperature", DEFAULT_TEMPERATURE, { min: 0 }),
    topP: number(query, "top_p", 1, { min: 0, max: 1 }),
    seed: query.has("seed") ? number(query, "seed", 0, { integer: true, min: 0 }) : null,
    precision: query.get("precision") || null,
    backend: /** @type {"wasm" | "webgpu"} */ (backend),
  };
}

/**
 * @param {URLSearchParams} query @param {string} name @param {number} fallback
 * @param {{integer?: boolean, min?: number, max?: number}} rule
 */
function number(query, name, fallback, rule) {
  const text = query.get(name);
  if (text === null || text === "") return fallback;
  const value = Number(text);
  const ok =
    Number.isFinite(value) &&
    (!rule.integer || Number.isInteger(value)) &&
    (rule.min === undefined || value >= rule.min) &&
    (rule.max === undefined || value <= rule.max);
  if (!ok) {
    const what = rule.integer ? "a whole number" : "a number";
    const range = [rule.min !== undefined && `>= ${rule.min}`, rule.max !== undefined && `<= ${rule.max}`];
    throw new Error(`${name}=${text}: expected ${what} ${range.filter(Boolean).join(" and ")}`.trim());
  }
  return value;
}

/**
 * The precisions of the model's step graphs, in manifest order.
 * @param {{graphs: {kind: string, precision: string}[]}} manifest
 */
export function modelPrecisions(manifest) {
  return [...new Set(manifest.graphs.filter((g) => g.kind === "step").map((g) => g.precision))];
}

/**
 * The precision to load: the one asked for (it must be in the model), else DEFAULT_PRECISIONS' first that the
 * model has and may run on `backend`, else any it may run there.
 * @param {{graphs: {kind: string, precision: string, backends?: string[] | null}[]}} manifest
 * @param {"wasm" | "webgpu"} backend @param {string | null} asked
 */
export function choosePrecision(manifest, backend, asked) {
  const have = modelPrecisions(manifest);
  if (asked !== null) {
    if (!have.includes(asked)) throw new Error(`precision=${asked}: the model has ${have.join(", ")}`);
    return asked; // a graph the backend cannot run is the runtime's error to report, in its words
  }
  const runs = (/** @type {string} */ precision) =>
    manifest.graphs.every((g) => g.precision !== precision || !g.backends || g.backends.includes(backend));
  const choice = DEFAULT_PRECISIONS[backend].find((p) => have.includes(p) && runs(p)) ?? have.find(runs);
  if (choice === undefined) {
    throw new Error(`no graph of this model runs on backend ${backend} (it has ${have.join(", ")})`);
  }
  return choice;
}
