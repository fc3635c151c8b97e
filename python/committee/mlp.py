"""The forward pass of a C MLP checkpoint (teacher-server fit --model mlp:...) in Python.

Layers fc0 .. fcL of the safetensors file: pre = input · Wᵀ + b, ReLU between layers;
"hidden" is the last ReLU output, "logits" the last pre-activation, as common/cm_model.c.
With exact=True the products go through the same OpenBLAS cblas_sgemm call as
common/cm_layers.c (bias rows first, beta = 1, one thread, in the same 256-row chunks
the C teacher uses), so the outputs are bit-identical to teacher-server serve's; with
exact=False they are NumPy matmuls, equal up to summation order.
"""
import ctypes
import ctypes.util

import numpy as np

from . import safetensors

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
CHUNK = 256  # rows per product, teacher_serve.c's COMPUTE_BATCH


def _openblas():
    for name in ("libopenblas.so.0", ctypes.util.find_library("openblas") or "",
                 "libblas.so.3"):
        if not name:
            continue
        try:
            library = ctypes.CDLL(name)
            library.cblas_sgemm  # noqa: B018 (raises AttributeError when absent)
        except (OSError, AttributeError):
            continue
        if hasattr(library, "openblas_set_num_threads"):
            library.openblas_set_num_threads(1)
        return library
    return None


class Mlp:
    """An MLP checkpoint: spec (its "model" metadata), view, classes, hidden width, forward."""

    def __init__(self, path, exact=True):
        self.tensors, self.metadata = safetensors.load(path)
        self.path = path
        self.spec = self.metadata.get("model", "")
        if not self.spec.startswith("mlp:"):
            raise ValueError(f"{path} holds model '{self.spec}', not an mlp")
        self.view = self.metadata.get("view")
        self.weights, self.biases = [], []
        layer = 0
        while f"fc{layer}.weight" in self.tensors:
            self.weights.append(np.ascontiguousarray(self.tensors[f"fc{layer}.weight"], "<f4"))
            self.biases.append(np.ascontiguousarray(self.tensors[f"fc{layer}.bias"], "<f4"))
            layer += 1
        self.classes = self.weights[-1].shape[0]
        self.hidden_width = self.weights[-1].shape[1]
        self.blas = _openblas() if exact else None
        if exact and self.blas is None:
            raise OSError("exact=True needs OpenBLAS (libopenblas.so.0) for cblas_sgemm")

    def _dense(self, rows, weight, bias):
        out = np.empty((rows.shape[0], weight.shape[0]), dtype=np.float32)
        if self.blas is None:
            return np.matmul(rows, weight.T, out=out) + bias
        out[:] = bias
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        pointer = ctypes.POINTER(ctypes.c_float)
        self.blas.cblas_sgemm(
            _ROW_MAJOR, _NO_TRANS, _TRANS, rows.shape[0], weight.shape[0], weight.shape[1],
            ctypes.c_float(1.0), rows.ctypes.data_as(pointer), weight.shape[1],
            weight.ctypes.data_as(pointer), weight.shape[1], ctypes.c_float(1.0),
            out.ctypes.data_as(pointer), weight.shape[0])
        return out

    def forward(self, rows):
        """{"logits": [n, classes], "hidden": [n, width]} for float32 rows [n, inputs].
        Exact mode runs 256 rows at a time from the first row, as the C teacher does:
        OpenBLAS's results for a row depend on how many rows share the call."""
        rows = np.asarray(rows, dtype=np.float32)
        if self.blas is not None and len(rows) > CHUNK:
            parts = [self.forward(rows[start:start + CHUNK])
                     for start in range(0, len(rows), CHUNK)]
            return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        activation = rows
        hidden = activation
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            pre = self._dense(activation, weight, bias)
            if index + 1 < len(self.weights):
                activation = np.where(pre > 0.0, pre, np.float32(0.0)).astype(np.float32)
                hidden = activation
            else:
                logits = pre
        return {"logits": logits, "hidden": hidden}

    def head(self):
        return self.weights[-1], self.biases[-1]
