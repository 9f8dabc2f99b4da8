"""rwkv::WKV4, one step of RWKV-4's time mixing, in three forms that tests hold equal:
a torch custom op, an onnxscript function (the model-local body ORT inlines), and a numpy twin.

RWKV-4 keeps, per channel, a decaying weighted sum of values a / b with a running max exponent p
(the numerically stable form: every exp() argument is <= 0):
    wkv = (e^(p-q) a + e^(u+k-q) v) / (e^(p-q) b + e^(u+k-q)),   q = max(p, u + k)
    a'  = e^(w+p-q') a + e^(k-q') v,   b' = e^(w+p-q') b + e^(k-q'),   p' = q' = max(w + p, k)
with u = time_first and w = -exp(time_decay) (< 0). Shapes: k, v, a, b, p [B, C]; u, w [C].
"""

from __future__ import annotations

import numpy as np
import torch
from onnxscript import opset18 as op
from onnxscript import script

from .domain import register_schema, rwkv_opset

INPUTS = ["k", "v", "a", "b", "p", "u", "w"]
OUTPUTS = ["wkv", "a_out", "b_out", "p_out"]


def wkv4_numpy(k, v, a, b, p, u, w):
    uk = u + k
    q = np.maximum(p, uk)
    e1, e2 = np.exp(p - q), np.exp(uk - q)
    wkv = (e1 * a + e2 * v) / (e1 * b + e2)
    wp = w + p
    q2 = np.maximum(wp, k)
    e1, e2 = np.exp(wp - q2), np.exp(k - q2)
    return wkv, e1 * a + e2 * v, e1 * b + e2, q2


@torch.library.custom_op("rwkv_edge::wkv4", mutates_args=())
def wkv4(
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    p: torch.Tensor,
    u: torch.Tensor,
    w: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    uk = u + k
    q = torch.maximum(p, uk)
    e1, e2 = torch.exp(p - q), torch.exp(uk - q)
    wkv = (e1 * a + e2 * v) / (e1 * b + e2)
    wp = w + p
    q2 = torch.maximum(wp, k)
    e1, e2 = torch.exp(wp - q2), torch.exp(k - q2)
    return wkv, e1 * a + e2 * v, e1 * b + e2, q2


@wkv4.register_fake
def _wkv4_fake(k, v, a, b, p, u, w):
    return torch.empty_like(k), torch.empty_like(a), torch.empty_like(b), torch.empty_like(p)


@script(rwkv_opset, default_opset=op)
def WKV4(k, v, a, b, p, u, w):
    uk = u + k
    q = op.Max(p, uk)
    e1 = op.Exp(p - q)
    e2 = op.Exp(uk - q)
    wkv = (e1 * a + e2 * v) / (e1 * b + e2)
    wp = w + p
    q2 = op.Max(wp, k)
    f1 = op.Exp(wp - q2)
    f2 = op.Exp(k - q2)
    a_out = f1 * a + f2 * v
    b_out = f1 * b + f2
    return wkv, a_out, b_out, q2


def translate_wkv4(k, v, a, b, p, u, w):
    """Exporter translation: emit one rwkv::WKV4 node (not the inlined body)."""
    return rwkv_opset.WKV4(k, v, a, b, p, u, w, _num_outputs=4)


register_schema("WKV4", INPUTS, OUTPUTS)
