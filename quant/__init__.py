"""int8 / int4 weight quantization, fp16 conversion and quality evaluation (docs/quantization.md).
Imports onnx + onnxruntime only."""
