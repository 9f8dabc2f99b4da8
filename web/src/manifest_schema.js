/** The JSON Schema of rwkv.json: a copy of runtime/manifest.schema.json (test/manifest.test.js holds them equal). */
export const MANIFEST_SCHEMA = {
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "rwkv.json (rwkv-edge/1)",
  "description":
    "The manifest of an rwkv-edge export directory: what an app needs to drive the exported RWKV graphs with plain ONNX Runtime. rwkv_edge.runtime.manifest enforces the same rules when it loads one.",
  "type": "object",
  "required": ["format", "architecture", "tokenizer", "graphs", "state"],
  "properties": {
    "format": {
      "description": "The manifest format and its version.",
      "type": "string",
      "const": "rwkv-edge/1",
    },
    "architecture": {
      "$ref": "#/$defs/architecture",
    },
    "tokenizer": {
      "$ref": "#/$defs/tokenizer",
    },
    "graphs": {
      "description": "The ONNX graphs of the export, at most one per kind and precision.",
      "type": "array",
      "minItems": 1,
      "items": {
        "$ref": "#/$defs/graph",
      },
    },
    "state": {
      "description": "The recurrent state, in graph input order: each output feeds its input at the next call.",
      "type": "array",
      "minItems": 1,
      "items": {
        "$ref": "#/$defs/state",
      },
    },
    "source": {
      "$ref": "#/$defs/source",
    },
  },
  "$comment":
    "Unknown top-level fields are allowed (a reader ignores them: a new optional field keeps the format); inside architecture, tokenizer, graphs and state entries they are refused.",
  "$defs": {
    "relative_path": {
      "title": "a plain relative path inside the export directory",
      "description":
        "A file of the export directory: '/'-separated, no leading '/', no '.' or '..' component, no backslash or control character. Applies to strings only: each use says its type.",
      "pattern": "^(?!.*(^|/)\\.\\.?(/|$))[^/\\\\\\x00-\\x1f]+(/[^/\\\\\\x00-\\x1f]+)*$",
    },
    "count": {
      "type": "integer",
      "minimum": 1,
    },
    "architecture": {
      "type": "object",
      "required": ["version", "n_layer", "n_embd", "n_head", "head_size", "vocab_size", "n_ffn"],
      "properties": {
        "version": {
          "description": "The RWKV generation.",
          "type": "string",
          "enum": ["4", "5", "5.1", "5.2", "6", "7"],
        },
        "n_layer": {
          "description": "Number of blocks.",
          "$ref": "#/$defs/count",
        },
        "n_embd": {
          "description": "Model width C.",
          "$ref": "#/$defs/count",
        },
        "n_head": {
          "description": "WKV heads H (RWKV-4: 1, its WKV is per channel).",
          "$ref": "#/$defs/count",
        },
        "head_size": {
          "description": "N = C / H (RWKV-4: C).",
          "$ref": "#/$defs/count",
        },
        "vocab_size": {
          "description": "Rows of the embedding: the logits' last axis.",
          "$ref": "#/$defs/count",
        },
        "n_ffn": {
          "description": "Width of the channel-mixing hidden layer.",
          "$ref": "#/$defs/count",
        },
      },
    },
    "tokenizer": {
      "type": "object",
      "required": ["kind"],
      "properties": {
        "kind": {
          "type": "string",
          "enum": ["world", "neox20b", "bytes"],
        },
        "file": {
          "description":
            "The tokenizer's file in the export directory; null for bytes (and world falls back to the bundled vocabulary).",
          "type": ["string", "null"],
          "$ref": "#/$defs/relative_path",
          "default": null,
        },
      },
    },
    "graph": {
      "type": "object",
      "required": ["file", "kind", "precision"],
      "properties": {
        "file": {
          "type": "string",
          "$ref": "#/$defs/relative_path",
        },
        "kind": {
          "description": "step: input_ids [batch]; sequence: input_ids [batch, seq] (prefill).",
          "type": "string",
          "enum": ["step", "sequence"],
        },
        "precision": {
          "type": "string",
          "enum": ["fp32", "fp16", "int8", "int4", "int8-dynamic", "int8-rowwise"],
        },
        "input": {
          "description": "The token ids' input name.",
          "type": "string",
          "default": "input_ids",
        },
        "output": {
          "description": "The logits' output name.",
          "type": "string",
          "default": "logits",
        },
        "opset": {
          "description": "The default-domain ONNX opset.",
          "type": "integer",
          "minimum": 1,
          "default": 18,
        },
        "logits": {
          "description":
            "Sequence graphs: the last position's logits [batch, vocab] or every position's [batch, seq, vocab]. Step graphs: last.",
          "type": "string",
          "enum": ["last", "all"],
          "default": "last",
        },
        "rescale_every": {
          "description":
            "fp16 RWKV-4..6: the residual stream is halved after every this many layers, inside the graph (logits and state mean what fp32's do). 0 or absent: not rescaled.",
          "type": "integer",
          "minimum": 0,
          "default": 0,
        },
        "needs": {
          "description":
            "The kernels the graph uses beyond standard ONNX and the model-local rwkv functions, as DOMAIN.OP[:bits=B], e.g. com.microsoft.MatMulNBits:bits=8; [] for fp32. null or absent: not recorded (a reader tries).",
          "type": ["array", "null"],
          "items": {
            "type": "string",
          },
          "default": null,
        },
        "backends": {
          "description":
            "The backends known to run the graph, e.g. cpu, cuda (native ONNX Runtime), node (onnxruntime-node), wasm, webgpu (onnxruntime-web's WebGPU build), webgpu-jsep (the default onnxruntime-web import's WebGPU). null or absent: not recorded (a reader tries).",
          "type": ["array", "null"],
          "items": {
            "type": "string",
          },
          "default": null,
        },
        "ort": {
          "description":
            "The graph in ONNX Runtime's ORT format (rwkv-export ort), beside required_operators.config. null or absent: none.",
          "type": ["string", "null"],
          "$ref": "#/$defs/relative_path",
          "default": null,
        },
      },
    },
    "state": {
      "type": "object",
      "required": ["name", "input", "output", "shape"],
      "properties": {
        "name": {
          "description": "Kind of state: att_x, att_a, att_b, att_p, ffn_x (RWKV-4) or att_x, wkv, ffn_x (5+).",
          "type": "string",
        },
        "input": {
          "description": "The graph input name.",
          "type": "string",
        },
        "output": {
          "description": "The graph output holding the next call's value.",
          "type": "string",
        },
        "shape": {
          "description": 'The tensor\'s shape; the one entry "batch" marks the dynamic batch axis.',
          "type": "array",
          "items": {
            "title": '"batch" or a whole number >= 1',
            "type": ["string", "integer"],
            "pattern": "^batch$",
            "minimum": 1,
          },
          "contains": {
            "const": "batch",
          },
          "minContains": 1,
          "maxContains": 1,
        },
        "dtype": {
          "description": "A numpy dtype name.",
          "type": "string",
          "default": "float32",
        },
        "init": {
          "description": "Every element's initial value (RWKV-4's att_p: -1e38).",
          "type": "number",
          "default": 0.0,
        },
        "init_file": {
          "description":
            "State tuning: a .npy in the export directory with one sequence's initial value (the shape without the batch axis, same dtype); every row of a new state starts from it. null: every element starts at init.",
          "type": ["string", "null"],
          "$ref": "#/$defs/relative_path",
          "default": null,
        },
      },
    },
    "source": {
      "description": "Provenance, free-form: the fields below are typed where present; other fields are allowed.",
      "type": "object",
      "properties": {
        "checkpoint": {
          "description": "The checkpoint's file name.",
          "type": "string",
        },
        "sha256": {
          "type": ["string", "null"],
        },
        "rwkv_edge": {
          "description": "Package versions of the export (null: not installed).",
          "type": ["string", "null"],
        },
        "torch": {
          "type": ["string", "null"],
        },
        "onnx": {
          "type": ["string", "null"],
        },
        "variant": {
          "description": "A checkpoint variant, e.g. deepembed.",
          "type": "string",
        },
        "initial_state": {
          "description": "Where the state-tuned initial state came from.",
          "type": "object",
          "properties": {
            "file": {
              "type": "string",
            },
            "sha256": {
              "type": "string",
            },
            "from": {
              "type": "string",
            },
          },
        },
        "quantization": {
          "description": "One entry per quantized or fp16 graph, keyed by its file.",
          "type": "object",
          "additionalProperties": {
            "$ref": "#/$defs/quantization",
          },
        },
      },
    },
    "quantization": {
      "type": "object",
      "properties": {
        "scheme": {
          "description": "The scheme named to rwkv-export quantize.",
          "type": "string",
        },
        "method": {
          "description": "weight_only, dynamic or fp16.",
          "type": "string",
        },
        "block_size": {
          "type": ["integer", "null"],
          "minimum": 1,
        },
        "policy": {
          "type": "string",
        },
        "from": {
          "description": "The fp32 graph it was made from.",
          "type": "string",
        },
        "bytes": {
          "type": "integer",
          "minimum": 0,
        },
        "onnxruntime": {
          "type": ["string", "null"],
        },
        "quantized": {
          "description": "Weight groups quantized: name -> bits, tensors, elements.",
          "type": "object",
          "additionalProperties": {
            "type": "object",
            "properties": {
              "bits": {
                "type": "integer",
                "minimum": 1,
              },
              "tensors": {
                "type": "integer",
                "minimum": 0,
              },
              "elements": {
                "type": "integer",
                "minimum": 0,
              },
            },
          },
        },
      },
    },
  },
};
