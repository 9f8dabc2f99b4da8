"""The WKV recurrences as rwkv-domain ops: torch custom ops, onnxscript functions, numpy twins."""

from .domain import DOMAIN, OPSET, attach_functions
from .wkv4 import WKV4, translate_wkv4, wkv4, wkv4_numpy
from .wkv7 import WKV7, translate_wkv7, wkv7, wkv7_numpy

# Exporter translation table: torch custom op -> emitter of the rwkv-domain node.
TRANSLATIONS = {
    wkv4._opoverload: translate_wkv4,
    wkv7._opoverload: translate_wkv7,
}

# Model-local function bodies, by op name.
FUNCTIONS = {
    "WKV4": WKV4.to_function_proto(),
    "WKV7": WKV7.to_function_proto(),
}

NUMPY_TWINS = {"WKV4": wkv4_numpy, "WKV7": wkv7_numpy}
