"""Built-in Fashion-MNIST, its views and its fingerprint, exactly as common/cm_dataset.c.

The four IDX files are read whole (gzip-compressed, as Debian ships them); their raw
bytes feed the fingerprint in the order train images, train labels, test images, test
labels, followed by the text "fashion-mnist;train=N;test=M" (the split sizes served);
see proto/README.md section 12.  A view turns each 28x28 image into float32 features:
`full` (784), `pool14` (196, 2x2 blocks), `pool7` (49, 4x4 blocks), each the block's
pixel sum mapped through float32((sum / (255 * block) - 0.2860) / 0.3530) computed in
double, which is what the C loader does, so both give the same bits.
"""
import gzip
import hashlib
import os
import struct

import numpy as np

DEFAULT_DIRECTORY = "/usr/share/datasets/fashion-mnist"
VIEWS = {"full": 1, "pool14": 2, "pool7": 4}
SPLITS = ("train", "test")
CLASSES = 10
SIDE = 28
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


class DatasetError(Exception):
    """A dataset file that is missing or wrong; the message names the file."""


class Split:
    """One split: inputs float32 [count, features], labels int32 [count]."""

    def __init__(self, inputs, labels):
        self.inputs = inputs
        self.labels = labels
        self.count = len(labels)


class Dataset:
    """A dataset in one view, as teachers and trainers see it."""

    def __init__(self, name, view, height, width, fingerprint, splits):
        self.name = name
        self.view = view
        self.classes = CLASSES
        self.height, self.width = height, width
        self.features = height * width
        self.fingerprint = fingerprint
        self.splits = splits
        self.background = float(np.float32((0.0 - PIXEL_MEAN) / PIXEL_STD))


def _read_idx(path, raw, magic, dims):
    try:
        body = gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise DatasetError(f"{path}: not a sound gzip file ({error})") from None
    header_bytes = 4 + 4 * dims
    if len(body) < header_bytes:
        raise DatasetError(f"{path}: truncated: the IDX header needs {header_bytes} bytes")
    found = struct.unpack(">I", body[:4])[0]
    if found != magic:
        raise DatasetError(f"{path}: bad magic number 0x{found:08x} (expected 0x{magic:08x})")
    shape = struct.unpack(">" + "I" * dims, body[4:header_bytes])
    expected = int(np.prod(shape))
    if len(body) - header_bytes != expected:
        raise DatasetError(f"{path}: header promises {expected} bytes of data, file holds "
                           f"{len(body) - header_bytes}")
    return np.frombuffer(body, dtype=np.uint8, offset=header_bytes).reshape(shape)


def _view_features(images, pool):
    """uint8 [n, 28, 28] -> float32 [n, (28/pool)^2] as cm_dataset.c computes them."""
    block = pool * pool
    sums = np.arange(block * 255 + 1, dtype=np.float64)
    table = ((sums / (255.0 * block) - PIXEL_MEAN) / PIXEL_STD).astype(np.float32)
    side = SIDE // pool
    if pool == 1:
        return table[images.reshape(len(images), SIDE * SIDE)]
    blocks = images.reshape(len(images), side, pool, side, pool).astype(np.int32).sum(axis=(2, 4))
    return table[blocks.reshape(len(images), side * side)]


def load_fashion_mnist(view, directory=None, max_train=0, max_test=0):
    """Loads Fashion-MNIST in `view` (full, pool14, pool7) from `directory` (default:
    $COMMITTEE_DATA_DIR or /usr/share/datasets/fashion-mnist); max_train/max_test keep
    the first N examples of a split (0: all), which changes the fingerprint as in C."""
    if view not in VIEWS:
        raise DatasetError(f'view "{view}" is unknown for dataset fashion-mnist; valid views: '
                           + ",".join(VIEWS))
    directory = directory or os.environ.get("COMMITTEE_DATA_DIR") or DEFAULT_DIRECTORY
    pool = VIEWS[view]
    digest = hashlib.sha256()
    splits = {}
    for split, most in zip(SPLITS, (max_train, max_test)):
        image_path, label_path = (os.path.join(directory, name) for name in _FILES[split])
        raws = []
        for path in (image_path, label_path):
            try:
                with open(path, "rb") as file:
                    raws.append(file.read())
            except OSError as error:
                raise DatasetError(f"{path}: cannot open: {error.strerror}") from None
            digest.update(raws[-1])
        images = _read_idx(image_path, raws[0], 0x803, 3)
        labels = _read_idx(label_path, raws[1], 0x801, 1)
        if images.shape[1:] != (SIDE, SIDE):
            raise DatasetError(f"{image_path}: images are {images.shape[1]}x{images.shape[2]}, "
                               f"Fashion-MNIST images are 28x28")
        if len(images) != len(labels):
            raise DatasetError(f"{image_path} holds {len(images)} images but {label_path} holds "
                               f"{len(labels)} labels")
        if labels.size and labels.max() >= CLASSES:
            raise DatasetError(f"{label_path}: a label is outside [0, {CLASSES})")
        if most < 0 or most > len(images):
            raise DatasetError(f"max_{split} is {most} but the {split} split of fashion-mnist has "
                               f"{len(images)} examples ({image_path})")
        kept = most or len(images)
        splits[split] = Split(_view_features(images[:kept], pool),
                              labels[:kept].astype(np.int32))
    digest.update(f"fashion-mnist;train={splits['train'].count};test={splits['test'].count}"
                  .encode())
    side = SIDE // pool
    return Dataset("fashion-mnist", view, side, side, digest.hexdigest(), splits)


def load(name, view, directory=None, max_train=0, max_test=0):
    """Loads a dataset by name; today only the built-in "fashion-mnist"."""
    if name != "fashion-mnist":
        raise DatasetError(f'dataset "{name}" is unknown; valid datasets: fashion-mnist '
                           "(dataset folders are not supported by the Python SDK yet)")
    return load_fashion_mnist(view, directory, max_train, max_test)
