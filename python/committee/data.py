"""Datasets, their views and their fingerprint, exactly as common/cm_dataset.c.

A dataset is a dataset FOLDER (DIR/dataset.json, the manifest, and DIR/<split>/labels.npy,
optional ids.npy and one <view>.npy per stored view; see common/cm_manifest.h) or the
built-in "fashion-mnist", read from Debian's gzip-compressed IDX files and turned into the
arrays its export (`teacher-server data export fashion-mnist DIR`) would write: uint8
pixels [N,28,28] in view "full" normalized by {divide 255, mean 0.286, std 0.353},
int64 labels [N], and the derived views pool14 (avgpool:2) and pool7 (avgpool:4).

THE FINGERPRINT (proto/README.md section 12) is the lower-case hex SHA-256 of
"committee-dataset-fingerprint/1\\n", the canonical manifest, "\\n", then one line
"<split>/<file> <size> <sha256 of the file>\\n" per data file (splits train, test, valid,
transfer as listed; in each labels.npy, ids.npy if present, then the stored views' .npy in
the byte order of their names).  A built-in hashes the bytes its export writes, so it has
its folder's fingerprint; max_train/max_test never change it.

Files are opened with numpy.load(mmap_mode="r"); a view's float32 features are computed
on demand (Split.gather) with the C loader's arithmetic, so both give the same bits:
uint8 views with one normalization go through the table float32((sum / (divide * K*K)
- mean) / std) of block sums, everything else through double arithmetic (block sums
accumulated row by row, column by column) rounded once to float32.  A view {"from": X,
"transform": "standardize"} then subtracts each feature's mean and divides by its std in
float32; both come from one pass over every stored train row of X at load (Welford's
update in double, population std, a std not above 1e-12 becomes 1, rounded to float32),
and Dataset.preprocessing holds the view as the C loader records it in checkpoints
(canonical JSON with those statistics), so the two can be compared.

Loading checks what the C loader checks: headers, counts, ids, labels and targets, and
the values of the files the view reads (NaN/Inf in dense values, tokens beyond the
vocabulary, categories beyond their cardinality), each problem one DatasetError sentence
naming the file, the sentences of cm_dataset.c.
"""
import gzip
import hashlib
import json
import os
import struct

import numpy as np

DEFAULT_DIRECTORY = "/usr/share/datasets/fashion-mnist"
FORMAT = "committee-dataset/1"
PREAMBLE = b"committee-dataset-fingerprint/1\n"
SPLITS = ("train", "test", "valid", "transfer")
SIDE = 28
FASHION_MANIFEST = (
    '{"format": "committee-dataset/1", "name": "fashion-mnist",\n'
    ' "task": {"type": "classification", "classes": 10, "class_names": ["T-shirt/top", '
    '"Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", '
    '"Ankle boot"]},\n'
    ' "splits": ["train", "test"],\n'
    ' "views": {"full": {"kind": "dense", "normalize": {"divide": 255, "mean": '
    '[0.286], "std": [0.353]}},\n'
    '           "pool14": {"from": "full", "transform": "avgpool:2"},\n'
    '           "pool7": {"from": "full", "transform": "avgpool:4"}}}\n')
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_DENSE = (np.dtype("<f4"), np.dtype("<f2"), np.dtype("u1"))
_INTEGER = (np.dtype("u1"), np.dtype("<i2"), np.dtype("<i4"), np.dtype("<i8"))


class DatasetError(Exception):
    """A dataset file that is missing or wrong; the message names the file."""


# ---- The canonical manifest ----

def _canonical_string(text):
    out = ['"']
    for byte in text.encode("utf-8"):
        if byte in (0x22, 0x5C):
            out.append("\\" + chr(byte))
        elif byte < 0x20:
            out.append(f"\\u{byte:04x}")
        else:
            out.append(chr(byte))
    out.append('"')
    # bytes >= 0x80 were appended one by one as code points: put the UTF-8 back together
    return "".join(out).encode("latin-1").decode("utf-8")


def canonical_json(value):
    """The canonical text of a parsed JSON value (common/cm_manifest.h): no whitespace,
    keys sorted by their UTF-8 bytes, only '"', '\\\\' and control characters escaped,
    integers in decimal, reals as printf("%.17g") (-0.0 as 0)."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: key.encode("utf-8"))
        return "{" + ",".join(_canonical_string(key) + ":" + canonical_json(value[key])
                              for key in keys) + "}"
    if isinstance(value, list):
        return "[" + ",".join(canonical_json(item) for item in value) + "]"
    if isinstance(value, str):
        return _canonical_string(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    return "%.17g" % (0.0 if value == 0.0 else value)


def npy_header(dtype, shape):
    """The .npy header (format 1.0, padded to 64 bytes) that cm_npy and NumPy write."""
    dims = ", ".join(str(int(dim)) for dim in shape) + ("," if len(shape) == 1 else "")
    text = f"{{'descr': '{np.dtype(dtype).str}', 'fortran_order': False, 'shape': ({dims}), }}"
    total = (10 + len(text) + 1 + 63) // 64 * 64
    body = text + " " * (total - 10 - len(text) - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", total - 10) + body.encode("latin-1")


# ---- The manifest ----

def _is_count(value):
    """An integer in [1, 2^24] (categories and tokens travel as exact floats)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1 << 24


class View:
    """One view of the manifest: kind, source ("from"), pool, normalization, ..."""

    def __init__(self, name, spec, source):
        if not isinstance(spec, dict):
            raise DatasetError(f"{source}: view \"{name}\" is not an object")
        self.name = name
        self.source = spec.get("from", "")
        self.pool = 0
        self.standardize = False
        self.kind = spec.get("kind", "dense")
        self.divide, self.mean, self.std = 1.0, [], []
        if self.source:
            transform = str(spec.get("transform", ""))
            if transform == "standardize":
                self.pool, self.standardize = 1, True
            elif not transform.startswith("avgpool:") or not transform[8:].isdigit() or \
                    not 1 <= int(transform[8:]) <= 64:
                raise DatasetError(f'{source}: view "{name}" has transform "{transform}"; '
                                   "known transforms: avgpool:K (K 1..64), standardize")
            else:
                self.pool = int(transform[8:])
        elif self.kind == "dense":
            normalize = spec.get("normalize") or {}
            self.divide = float(normalize.get("divide", 1))
            mean, std = normalize.get("mean", []), normalize.get("std", [])
            if "mean" in normalize and (not isinstance(mean, list) or not mean):
                raise DatasetError(f"{source}: normalize.mean must be a non-empty list of "
                                   "numbers")
            self.mean = [float(x) for x in mean]
            self.std = [float(x) for x in std] if isinstance(std, list) else []
            if len(self.mean) != len(self.std):
                raise DatasetError(f'{source}: view "{name}" has {len(self.mean)} means but '
                                   f"{len(self.std)} standard deviations")
        elif self.kind == "categorical":
            self.cardinality = spec.get("cardinality")
            if not isinstance(self.cardinality, list) or not 1 <= len(self.cardinality) <= 64 \
                    or not all(_is_count(value) for value in self.cardinality):
                raise DatasetError(f'{source}: categorical view "{name}" needs "cardinality": '
                                   "a list of 1 to 64 integers (one per column)")
        elif self.kind == "tokens":
            self.vocab, self.pad = spec.get("vocab"), spec.get("pad")
            if not _is_count(self.vocab):
                raise DatasetError(f'{source}: view "{name}" vocab must be an integer in '
                                   f"[1, {1 << 24}]")
            if not isinstance(self.pad, int) or isinstance(self.pad, bool) or \
                    not 0 <= self.pad < self.vocab:
                raise DatasetError(f'{source}: tokens view "{name}" needs "pad", an integer '
                                   f"below vocab {self.vocab}")
        else:
            raise DatasetError(f'{source}: view "{name}" has kind "{self.kind}"; known kinds: '
                               "dense, categorical, tokens")


class Manifest:
    """A parsed dataset.json: name, task, splits, views and the canonical text."""

    def __init__(self, text, source):
        try:
            root = json.loads(text)
        except ValueError as error:
            raise DatasetError(f"{source}: not valid JSON ({error})") from None
        if not isinstance(root, dict) or root.get("format") != FORMAT:
            raise DatasetError(f'{source}: "format" must be "{FORMAT}"')
        self.canonical = canonical_json(root)
        self.name = str(root.get("name", ""))
        if not self.name or len(self.name) >= 64 or \
                any(not (c.isascii() and (c.isalnum() or c in "_-.")) for c in self.name):
            raise DatasetError(f'{source}: name "{self.name}" may hold only letters, digits, '
                               "'_', '-' and '.'")
        task = root.get("task") or {}
        self.task = task.get("type")
        if self.task not in ("classification", "regression"):
            raise DatasetError(f'{source}: task type must be "classification" or "regression"')
        self.classes = int(task.get("classes", 0)) if self.task == "classification" else 0
        self.targets = int(task.get("targets", 1)) if self.task == "regression" else 0
        splits = root.get("splits") or []
        unknown = [split for split in splits if split not in SPLITS]
        if unknown or "train" not in splits or "test" not in splits:
            raise DatasetError(f"{source}: \"splits\" must list train and test (and may list "
                               f"valid, transfer); found {splits}")
        self.splits = [split for split in SPLITS if split in splits]
        views = root.get("views") or {}
        names = sorted(views, key=lambda name: name.encode("utf-8"))
        self.views = {name: View(name, views[name], source) for name in names}
        for view in self.views.values():
            if view.source:
                stored = self.views.get(view.source)
                if stored is None or stored.source or stored.kind != "dense":
                    raise DatasetError(f'{source}: view "{view.name}" is derived from '
                                       f'"{view.source}", which is not a stored dense view')
                view.kind = "dense"

    def stored(self):
        """The stored views in the byte order of their names."""
        return [view for view in self.views.values() if not view.source]


# ---- Splits and the dataset ----

class Split:
    """One split: labels int32 [count] (or targets float32 [count, k]), optional ids, and
    the view's features computed on demand by gather(rows) (inputs: all of them)."""

    def __init__(self, dataset, name, array, labels, targets, ids, count):
        self._dataset, self.name, self._array = dataset, name, array
        self.labels, self.targets, self.ids = labels, targets, ids
        self.count = count
        self._inputs = None
        self._row_of_id = None
        if ids is not None:
            self._row_of_id = {int(id_): row for row, id_ in enumerate(ids[:count])}

    def rows(self, ids):
        """Rows of example ids (int array); -1 where an id is not in the split."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._row_of_id is None:
            return np.where((ids >= 0) & (ids < self.count), ids, -1).astype(np.int64)
        return np.array([self._row_of_id.get(int(id_), -1) for id_ in ids], dtype=np.int64)

    def gather(self, rows):
        """float32 [len(rows), features] of the view at these rows."""
        return self._dataset._gather(np.asarray(self._array[np.asarray(rows, dtype=np.int64)]))

    @property
    def inputs(self):
        """The whole split in the view, float32 [count, features] (computed once)."""
        if self._inputs is None:
            self._inputs = np.concatenate(
                [self.gather(np.arange(first, min(first + 4096, self.count)))
                 for first in range(0, self.count, 4096)] or
                [np.empty((0, self._dataset.features), np.float32)])
        return self._inputs


class Dataset:
    """A dataset in one view, as teachers and trainers see it."""

    def __init__(self, manifest, source, view_name, fingerprint, arrays, labels, ids,
                 limits):
        self.manifest, self.source = manifest, source
        self.name = manifest.name
        self.task = manifest.task
        self.classes = manifest.classes if manifest.task == "classification" else \
            manifest.targets
        self.fingerprint = fingerprint
        view = manifest.views.get(view_name)
        if view is None:
            raise DatasetError(f'view "{view_name}" is unknown for dataset {self.name}; valid '
                               "views: " + ",".join(manifest.views))
        self.view, self.view_kind = view.name, view.kind
        stored = manifest.views[view.source] if view.source else view
        self._stored, self._pool = stored, view.pool if view.source else 1
        sample = arrays["train"][stored.name]
        shape = list(sample.shape[1:])
        pool = self._pool
        if pool > 1:
            if len(shape) < 2 or shape[-1] % pool or shape[-2] % pool:
                raise DatasetError(f'view "{view.name}": avgpool:{pool} does not divide '
                                   f"the last two axes of {stored.name} {shape}")
            shape[-2] //= pool
            shape[-1] //= pool
        self.shape = tuple(shape)
        self.features = int(np.prod(shape)) if shape else 1
        self.height = shape[-2] if len(shape) >= 2 else 1
        self.width = shape[-1] if shape else 1
        count = len(stored.mean)
        self._span = self.features * pool * pool // count if count > 1 else 1
        self._lookup = None
        if stored.kind == "dense" and sample.dtype == np.uint8 and count <= 1:
            block = pool * pool
            sums = np.arange(255 * block + 1, dtype=np.float64)
            mean, std = (stored.mean[0], stored.std[0]) if count else (0.0, 1.0)
            self._lookup = ((sums / (stored.divide * block) - mean) / std).astype(np.float32)
        self.background = 0.0
        if view.kind == "dense":
            self.background = float(np.float32(self._normalize(np.zeros(1), np.zeros(1))[0]))
        self.standard_mean = self.standard_std = None
        if view.standardize:
            self.standard_mean, self.standard_std = self._standardize(view, sample)
        self.preprocessing = self._preprocessing(view, stored)
        self.splits = {}
        for split in manifest.splits:
            if stored.name not in arrays[split]:
                continue
            stored_rows = len(arrays[split][stored.name])
            most = limits.get(split, 0)
            if most > stored_rows:
                raise DatasetError(f"max_{split} is {most} but the {split} split of {self.name} "
                                   f"has only {stored_rows} examples")
            count = most or stored_rows
            label = labels.get(split)
            is_class = manifest.task == "classification"
            self.splits[split] = Split(
                self, split, arrays[split][stored.name],
                label[:count] if label is not None and is_class else None,
                label[:count] if label is not None and not is_class else None,
                ids.get(split), count)

    def _normalize(self, values, elements):
        stored = self._stored
        values = values / stored.divide
        if not stored.mean:
            return values
        if len(stored.mean) == 1:
            return (values - stored.mean[0]) / stored.std[0]
        channel = (elements // self._span).astype(np.int64)
        return (values - np.asarray(stored.mean)[channel]) / np.asarray(stored.std)[channel]

    def _standardize(self, view, train):
        """Each feature's mean and population std over every stored train row of the
        source, as cm_dataset.c's standardize_view: one pass of Welford's update in double
        over the float32 source features, row by row; a std that is not above 1e-12 (or
        not finite) becomes 1; both rounded to float32."""
        count = len(train)
        if count < 1:
            raise DatasetError(f'view "{view.name}" standardizes with train statistics, but '
                               f"{self.name} has no training examples")
        features = self.features
        mean, square = np.zeros(features), np.zeros(features)
        delta, step = np.empty(features), np.empty(features)
        for first in range(0, count, 4096):
            block = self._gather_source(np.asarray(train[first:first + 4096]))
            for index, row in enumerate(block.astype(np.float64), first + 1):
                np.subtract(row, mean, out=delta)
                np.divide(delta, float(index), out=step)
                mean += step
                np.subtract(row, mean, out=step)
                step *= delta
                square += step
        std = np.sqrt(square / count)
        std[~(std > 1e-12) | ~np.isfinite(std)] = 1.0
        return mean.astype(np.float32), std.astype(np.float32)

    def _preprocessing(self, view, stored):
        """The view as checkpoints record it ("preprocessing", cm_manifest_view_json plus the
        standardize statistics): the canonical JSON text the C loader gives."""
        record = {"view": view.name, "kind": view.kind}
        if view.source:
            record["from"] = view.source
            record["transform"] = "standardize" if view.standardize else f"avgpool:{view.pool}"
        if stored.kind == "dense":
            normalize = {"divide": float(stored.divide)}
            if stored.mean:
                normalize["mean"] = [float(value) for value in stored.mean]
                normalize["std"] = [float(value) for value in stored.std]
            record["normalize"] = normalize
        elif stored.kind == "categorical":
            record["cardinality"] = [int(value) for value in stored.cardinality]
        else:
            record["vocab"], record["pad"] = int(stored.vocab), int(stored.pad)
        if self.standard_mean is not None:
            record["standardize"] = {"mean": [float(value) for value in self.standard_mean],
                                     "std": [float(value) for value in self.standard_std]}
        return canonical_json(record)

    def _gather(self, block):
        out = self._gather_source(block)
        if self.standard_mean is None:
            return out
        return (out - self.standard_mean) / self.standard_std  # in float32, as the C loop

    def _gather_source(self, block):
        rows = len(block)
        if self.view_kind != "dense":
            return block.reshape(rows, -1).astype(np.int64).astype(np.float32)
        pool = self._pool
        if pool <= 1:
            flat = block.reshape(rows, -1)
            if self._lookup is not None:
                return self._lookup[flat]
            elements = np.arange(flat.shape[1])
            return self._normalize(flat.astype(np.float64), elements).astype(np.float32)
        height, width = self.height, self.width
        planes = self.features // (height * width)
        source = block.reshape(rows, planes, height, pool, width, pool)
        if self._lookup is not None:
            sums = source.astype(np.int32).sum(axis=(3, 5))
            return self._lookup[sums.reshape(rows, -1)]
        total = np.zeros((rows, planes, height, width), dtype=np.float64)
        for dy in range(pool):  # the C loop's order: the sum is the same double
            for dx in range(pool):
                total += source[:, :, :, dy, :, dx].astype(np.float64)
        plane = np.arange(planes)[:, None, None]
        first = plane * (height * width * pool * pool) + \
            np.arange(height)[None, :, None] * pool * width * pool + \
            np.arange(width)[None, None, :] * pool
        values = self._normalize(total / (pool * pool), np.broadcast_to(first, total.shape[1:]))
        return values.astype(np.float32).reshape(rows, -1)


# ---- Opening ----

def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _open_npy(path):
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{path}: cannot open: No such file or directory") from None
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: not a usable .npy file ({error})") from None


def _check_values(view, path, array):
    """The values of a stored view's file, as cm_dataset.c's check_values: dense values
    finite (uint8 always is), tokens in [0, vocab), categories in [0, cardinality) per
    column; the first bad value's row and element go into the sentence."""
    if view.kind == "dense" and array.dtype == np.uint8:
        return
    rows = len(array)
    per_row = int(np.prod(array.shape[1:])) if array.ndim > 1 else 1
    step = max(1, (1 << 20) // max(per_row, 1))
    for first in range(0, rows, step):
        block = np.asarray(array[first:first + step]).reshape(-1, per_row)
        if view.kind == "dense":
            bad = ~np.isfinite(block)
        elif view.kind == "tokens":
            block = block.astype(np.int64)
            bad = (block < 0) | (block >= view.vocab)
        else:
            block = block.astype(np.int64)
            cardinality = np.asarray(view.cardinality, dtype=np.int64)
            bad = (block < 0) | (block >= cardinality)
        if not bad.any():
            continue
        row, element = (int(index) for index in np.argwhere(bad)[0])
        value = block[row, element]
        row += first
        if view.kind == "dense":
            raise DatasetError(f"{path}: row {row} holds {'NaN' if np.isnan(value) else 'Inf'} "
                               f"at element {element}; a dense view must be finite")
        if view.kind == "tokens":
            raise DatasetError(f"{path}: row {row} holds token {value} at position {element}, "
                               f"outside the vocabulary [0, {view.vocab})")
        raise DatasetError(f"{path}: row {row} holds category {value} in column {element}, "
                           f"outside its cardinality [0, {view.cardinality[element]})")


def _check_view_header(view, path, array):
    """A stored view file's dtype and shape against its view, as cm_dataset.c's check_header."""
    if view.kind == "dense":
        if array.dtype not in _DENSE:
            raise DatasetError(f"{path}: dtype {array.dtype}; a dense view is float32, float16 "
                               "or uint8")
    elif view.kind == "categorical":
        if array.dtype not in (np.dtype("<i4"), np.dtype("<i8")):
            raise DatasetError(f"{path}: dtype {array.dtype}; a categorical view is int32 or "
                               "int64")
        columns = 1 if array.ndim == 1 else array.shape[1]
        if array.ndim > 2 or columns != len(view.cardinality):
            raise DatasetError(f'{path}: shape does not match view "{view.name}": '
                               f"{len(view.cardinality)} columns ([N,{len(view.cardinality)}]) "
                               "declared")
    else:
        if array.dtype != np.dtype("<i4"):
            raise DatasetError(f"{path}: dtype {array.dtype}; a tokens view is int32")
        if array.ndim != 2 or array.shape[1] < 1:
            raise DatasetError(f"{path}: a tokens view is [N,L] (L tokens per example)")


def _check_labels(manifest, path, labels):
    if manifest.task == "classification":
        if labels.dtype not in _INTEGER or labels.ndim != 1:
            raise DatasetError(f"{path}: classification labels are integers [N] (int64, int32, "
                               f"int16 or uint8), not {labels.dtype} {list(labels.shape)}")
        labels = np.asarray(labels, dtype=np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= manifest.classes))
        if bad.size:
            raise DatasetError(f"{path}: label {labels[bad[0]]} of row {bad[0]} is outside "
                               f"[0, {manifest.classes})")
        return labels.astype(np.int32)
    if labels.dtype != np.dtype("<f4"):
        raise DatasetError(f"{path}: dtype {labels.dtype}; regression targets are float32")
    targets = np.asarray(labels, dtype=np.float32).reshape(len(labels), -1)
    bad = np.argwhere(~np.isfinite(targets))
    if len(bad):
        raise DatasetError(f"{path}: target {bad[0][1]} of row {bad[0][0]} is not finite")
    return targets


def _fashion_arrays(directory):
    """The built-in's (split, file, dtype, array) in export order, from the IDX files."""
    out = []
    for split in ("train", "test"):
        parsed = []
        for name, magic, dims in zip(_FILES[split], (0x803, 0x801), (3, 1)):
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as file:
                    body = gzip.decompress(file.read())
            except OSError as error:
                raise DatasetError(f"{path}: cannot open: {error.strerror or error}") from None
            except EOFError as error:
                raise DatasetError(f"{path}: not a sound gzip file ({error})") from None
            header_bytes = 4 + 4 * dims
            if len(body) < header_bytes or struct.unpack(">I", body[:4])[0] != magic:
                raise DatasetError(f"{path}: not an IDX file of magic 0x{magic:08x}")
            shape = struct.unpack(">" + "I" * dims, body[4:header_bytes])
            if len(body) - header_bytes != int(np.prod(shape)):
                raise DatasetError(f"{path}: header promises {int(np.prod(shape))} bytes of "
                                   f"data, file holds {len(body) - header_bytes}")
            parsed.append((path, np.frombuffer(body, np.uint8, offset=header_bytes)
                           .reshape(shape)))
        (image_path, images), (label_path, labels) = parsed
        if images.shape[1:] != (SIDE, SIDE):
            raise DatasetError(f"{image_path}: images are {images.shape[1]}x{images.shape[2]}, "
                               "Fashion-MNIST images are 28x28")
        if len(images) != len(labels):
            raise DatasetError(f"{image_path} holds {len(images)} images but {label_path} holds "
                               f"{len(labels)} labels")
        out.append((split, "labels.npy", labels.astype("<i8")))
        out.append((split, "full.npy", images))
    return out


def load(data, view, directory=None, max_train=0, max_test=0):
    """Loads dataset `data` (a folder path or "fashion-mnist") in `view`; directory is
    where the built-in's IDX files are (default $COMMITTEE_DATA_DIR or the Debian path);
    max_train/max_test keep the first rows of a split (0: all; the fingerprint stays)."""
    if max_train < 0 or max_test < 0:
        raise DatasetError(f"max_train ({max_train}) and max_test ({max_test}) must be 0 "
                           "(everything) or positive")
    lines = []
    arrays = {split: {} for split in SPLITS}
    labels, ids = {}, {}
    if data == "fashion-mnist":
        source = data
        manifest = Manifest(FASHION_MANIFEST, "fashion-mnist")
        directory = directory or os.environ.get("COMMITTEE_DATA_DIR") or DEFAULT_DIRECTORY
        for split, file, array in _fashion_arrays(directory):
            header = npy_header(array.dtype, array.shape)
            digest = hashlib.sha256(header)
            digest.update(np.ascontiguousarray(array).data)
            lines.append(f"{split}/{file} {len(header) + array.nbytes} {digest.hexdigest()}\n")
            if file == "labels.npy":
                labels[split] = _check_labels(manifest, f"fashion-mnist {split}/labels.npy",
                                              array)
            else:
                arrays[split]["full"] = array
    else:
        source = os.path.realpath(data)
        if not os.path.isdir(source):
            raise DatasetError(f'dataset "{data}" is neither a built-in dataset (fashion-mnist) '
                               "nor a folder; give a dataset folder with --data")
        manifest_path = os.path.join(source, "dataset.json")
        try:
            with open(manifest_path, "rb") as file:
                text = file.read().decode("utf-8")
        except FileNotFoundError:
            raise DatasetError(f"{manifest_path}: missing: a dataset folder needs its "
                               "manifest") from None
        except (OSError, UnicodeDecodeError) as error:
            raise DatasetError(f"{manifest_path}: cannot read: {error}") from None
        manifest = Manifest(text, manifest_path)
        wanted = manifest.views.get(view)
        if wanted is not None and wanted.source:
            wanted = manifest.views[wanted.source]
        checked = []  # (view, path, array) of the files whose values the view reads
        for split in manifest.splits:
            files = ["labels.npy", "ids.npy"] + [v.name + ".npy" for v in manifest.stored()]
            rows = None
            for file in files:
                path = os.path.join(source, split, file)
                if file in ("labels.npy", "ids.npy") and not os.path.exists(path) and \
                        (file == "ids.npy" or split == "transfer"):
                    continue
                array = _open_npy(path)
                if array.ndim < 1:
                    raise DatasetError(f"{path}: holds a scalar; a data file has one row per "
                                       "example")
                if rows is not None and len(array) != rows[0]:
                    raise DatasetError(f"{path} holds {len(array)} rows but {rows[1]} holds "
                                       f"{rows[0]}")
                rows = rows or (len(array), path)
                lines.append(f"{split}/{file} {os.path.getsize(path)} {_file_sha256(path)}\n")
                if file == "labels.npy":
                    labels[split] = (path, array)
                elif file == "ids.npy":
                    if array.dtype not in (np.dtype("<i4"), np.dtype("<i8")) or array.ndim != 1:
                        raise DatasetError(f"{path}: ids are int32 or int64 [N]")
                    ids[split] = np.asarray(array, dtype=np.int64)
                    if len(np.unique(ids[split])) != len(ids[split]):
                        raise DatasetError(f"{path}: an id appears twice")
                else:
                    stored = manifest.views[file[:-4]]
                    _check_view_header(stored, path, array)
                    if stored is wanted:
                        checked.append((stored, path, array))
                    arrays[split][file[:-4]] = array
        # As the C loader: every header first, then the values of the view read, then labels.
        for stored, path, array in checked:
            _check_values(stored, path, array)
        for split, (path, array) in list(labels.items()):
            labels[split] = _check_labels(manifest, path, array)
    digest = hashlib.sha256(PREAMBLE)
    digest.update(manifest.canonical.encode("utf-8") + b"\n")
    for line in lines:
        digest.update(line.encode("utf-8"))
    return Dataset(manifest, source, view, digest.hexdigest(), arrays, labels, ids,
                   {"train": max_train, "test": max_test})


def load_fashion_mnist(view, directory=None, max_train=0, max_test=0):
    """Loads the built-in Fashion-MNIST in `view` (full, pool14, pool7)."""
    return load("fashion-mnist", view, directory, max_train, max_test)
