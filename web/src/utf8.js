/**
 * A stream of token bytes turned into text that never ends in half a UTF-8 character: tokens split characters
 * freely (a World token may hold the first two bytes of a three-byte CJK character).
 */
export class Utf8Stream {
  constructor() {
    // not fatal: bytes that can never become valid UTF-8 (a random model emits them) turn into U+FFFD, and an
    // incomplete tail is held back until more bytes arrive
    this._decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
  }

  /** @param {Uint8Array} bytes @returns {string} the whole characters completed so far */
  push(bytes) {
    return this._decoder.decode(bytes, { stream: true });
  }

  /** @returns {string} text still held back; an unfinished character at the very end becomes U+FFFD */
  flush() {
    return this._decoder.decode();
  }
}
