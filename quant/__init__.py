"""int8 / int4 weight quantization, fp16 conversion and quality evaluation (issue 4). Imports onnx + onnxruntime only."""
