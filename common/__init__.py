"""Helpers every room shares (export, quantize, run, validate, measure): files, graphs on disk, timing,
versions. Stdlib and numpy only, except onnx_files.py, which needs onnx and which the runtime never imports."""
