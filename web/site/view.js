/**
 * The page's elements and what is shown in them. `document.body.dataset.state` says where the page is:
 * "idle" (before the script), "ready" (waiting for the form), "loading", "generating", then "done" or "error".
 */

export class View {
  /** @param {Document} doc */
  constructor(doc) {
    this.doc = doc;
    /** @param {string} id */
    const get = (id) => /** @type {HTMLElement} */ (doc.getElementById(id));
    this.form = /** @type {HTMLFormElement} */ (get("form"));
    this.prompt = /** @type {HTMLTextAreaElement} */ (get("prompt"));
    this.maxTokens = /** @type {HTMLInputElement} */ (get("max-tokens"));
    this.temperature = /** @type {HTMLInputElement} */ (get("temperature"));
    this.backend = /** @type {HTMLSelectElement} */ (get("backend"));
    this.precision = /** @type {HTMLSelectElement} */ (get("precision"));
    this.button = /** @type {HTMLButtonElement} */ (get("generate"));
    this.error = get("error");
    this.status = get("status");
    this.backendUsed = get("backend-used");
    this.precisionUsed = get("precision-used");
    this.tokenCount = get("token-count");
    this.speed = get("speed");
    this.promptTime = get("prompt-time");
    this.output = get("output");
  }

  /** @param {string} state @param {string} [status] */
  setState(state, status = state) {
    this.doc.body.dataset.state = state;
    this.status.textContent = status;
    this.button.disabled = state === "loading" || state === "generating";
  }

  /** @param {import("./options.js").PageOptions} options */
  fillForm(options) {
    this.prompt.value = options.prompt ?? "";
    this.maxTokens.value = String(options.maxTokens);
    this.temperature.value = String(options.temperature);
    this.backend.value = options.backend;
    if (options.precision) this.addPrecisions([options.precision], options.precision);
  }

  /** @param {string[]} precisions @param {string | null} selected */
  addPrecisions(precisions, selected) {
    for (const p of precisions) {
      if ([...this.precision.options].some((o) => o.value === p)) continue;
      this.precision.add(new Option(p, p));
    }
    if (selected) this.precision.value = selected;
  }

  /** The form's values as the page's URL query. */
  formQuery() {
    const query = new URLSearchParams({
      prompt: this.prompt.value,
      max_tokens: this.maxTokens.value,
      temperature: this.temperature.value,
      backend: this.backend.value,
    });
    if (this.precision.value) query.set("precision", this.precision.value);
    return query;
  }

  /** @param {string} backend @param {string} precision */
  showRun(backend, precision) {
    this.backendUsed.textContent = backend;
    this.precisionUsed.textContent = precision;
  }

  /** @param {number} tokens @param {number} ms */
  showPromptTime(tokens, ms) {
    this.promptTime.textContent = `${tokens} tokens in ${Math.round(ms)} ms`;
  }

  /** @param {string} text */
  append(text) {
    this.output.append(text);
  }

  /** @param {number} tokens @param {number} ms  decoding time so far */
  showSpeed(tokens, ms) {
    this.tokenCount.textContent = String(tokens);
    if (ms > 0) this.speed.textContent = (tokens / (ms / 1000)).toFixed(1);
  }

  /**
   * Done: the generated ids go on #output (data-tokens), for whoever checks the page against another runtime.
   * @param {number[]} tokens @param {string | null} reason
   */
  finish(tokens, reason) {
    this.output.dataset.tokens = JSON.stringify(tokens);
    this.setState("done", `done (${reason})`);
  }

  /** One line on the page; the details go to the console. @param {unknown} error */
  fail(error) {
    const message = error instanceof Error ? error.message : String(error);
    this.error.textContent = message.split("\n")[0];
    this.error.hidden = false;
    this.setState("error");
    console.error(error);
  }
}
