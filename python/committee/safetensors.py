"""A small safetensors reader on NumPy: 8-byte little-endian header length, a JSON header
({name: {dtype, shape, data_offsets}, "__metadata__": {...}}), then the tensor bytes.

Files written by committee (common/cm_safetensors.c) carry in __metadata__ the zlib CRC-32
(8 lower-case hex digits) of every tensor's bytes under "crc32:<tensor name>" and of the
other metadata pairs under "crc32:__metadata__" (keys in byte order, each key and value
followed by a NUL byte).  load verifies every checksum present, refuses a partial set
(the writer stores all of them) and returns the metadata without the "crc32:" keys; a file
without any checksum (written by another program) loads unverified."""
import json
import struct
import zlib

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
    checksums = {key[6:]: value for key, value in metadata.items() if key.startswith("crc32:")}
    metadata = {key: value for key, value in metadata.items() if not key.startswith("crc32:")}
    if checksums:
        missing = [name for name in ["__metadata__", *header] if name not in checksums]
        if missing:
            raise SafetensorsError(f"{path}: __metadata__ has checksums but none for "
                                   f"{missing[0]}: the header is damaged")
        crc = 0
        for key in sorted(metadata, key=lambda key: key.encode("utf-8")):
            crc = zlib.crc32(key.encode("utf-8") + b"\0" + str(metadata[key]).encode("utf-8")
                             + b"\0", crc)
        _verify(path, "the metadata", checksums["__metadata__"], crc)
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
        if checksums:
            _verify(path, f"tensor {name}", checksums[name], zlib.crc32(body[begin:end]))
        tensors[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape).copy()
    return tensors, metadata


def _verify(path, what, stored, computed):
    if not isinstance(stored, str) or len(stored) != 8 or \
            any(c not in "0123456789abcdef" for c in stored):
        raise SafetensorsError(f"{path}: the checksum of {what} is \"{stored}\", not 8 "
                               "lower-case hex digits")
    if int(stored, 16) != computed:
        raise SafetensorsError(f"{path}: {what} is damaged: its CRC-32 is {computed:08x}, the "
                               f"file records {stored}")
