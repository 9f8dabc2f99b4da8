/** The tokenizer rwkv.json names: bytes (id = byte value) or world (RWKV World vocab v20230424). */
import { RWKVEdgeError } from "../errors.js";
import { BytesTokenizer } from "./bytes.js";
import { WORLD_VOCAB_NAME, WorldTokenizer } from "./world.js";

export { BytesTokenizer, WorldTokenizer };

/**
 * @param {import("../manifest.js").TokenizerSpec} spec
 * @param {import("../sources.js").Source} files  the export directory
 * @returns {Promise<BytesTokenizer | WorldTokenizer>}
 */
export async function loadTokenizer(spec, files) {
  if (spec.kind === "bytes") return new BytesTokenizer();
  if (spec.kind === "world") {
    const name = spec.file ?? WORLD_VOCAB_NAME;
    if (!(await files.exists(name))) {
      throw new RWKVEdgeError(`world tokenizer file ${JSON.stringify(name)} not found in ${files.where}`);
    }
    const text = new TextDecoder().decode(await files.read(name));
    return WorldTokenizer.fromText(text, `${files.where}/${name}`);
  }
  throw new RWKVEdgeError(
    `tokenizer kind ${JSON.stringify(spec.kind)} is not supported in rwkv-edge-web (it reads bytes and world); ` +
      "encode the prompt with the Python runtime and pass token ids",
  );
}
