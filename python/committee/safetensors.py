"""A small safetensors reader on NumPy: 8-byte little-endian header length, a JSON header
({name: {dtype, shape, data_offsets}, "__metadata__": {...}}), then the tensor bytes."""
import json
import struct

import numpy as np

_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I32": "<i4", "I64": "<i8", "U8": "u1",
           "I8": "i1", "I16": "<i2", "BOOL": "?"}


class SafetensorsError(Exception):
    """A file that is not a sound safetensors file; the message names it."""


def load(path):
    """(tensors {name: ndarray}, metadata {str: str}) of the safetensors file at `path`."""
    with open(path, "rb") as file:
        blob = file.read()
    if len(blob) < 8:
        raise SafetensorsError(f"{path}: too short for a safetensors header")
    length = struct.unpack("<Q", blob[:8])[0]
    if 8 + length > len(blob):
        raise SafetensorsError(f"{path}: header of {length} bytes runs past the end of the file")
    try:
        header = json.loads(blob[8:8 + length])
    except ValueError as error:
        raise SafetensorsError(f"{path}: header is not JSON ({error})") from None
    metadata = header.pop("__metadata__", {}) or {}
    body = memoryview(blob)[8 + length:]
    tensors = {}
    for name, info in header.items():
        dtype = _DTYPES.get(info.get("dtype"))
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if dtype is None:
            raise SafetensorsError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        if not 0 <= begin <= end <= len(body) or \
                end - begin != int(np.prod(shape)) * np.dtype(dtype).itemsize:
            raise SafetensorsError(f"{path}: tensor {name} has offsets that disagree with its "
                                   "shape or the file")
        tensors[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape).copy()
    return tensors, metadata
