"""Forward functions for the SDK tests (python3 -m committee serve --forward ...)."""
import numpy as np

_rng = np.random.default_rng(7)
WEIGHT = _rng.standard_normal((49, 16)).astype(np.float32) * 0.2
HEAD = _rng.standard_normal((16, 10)).astype(np.float32) * 0.2


def forward(rows):
    hidden = np.maximum(rows @ WEIGHT, 0)
    return {"logits": hidden @ HEAD, "hidden": hidden}


def by_ids(split, ids):
    """A forward over example ids: logits that encode the id (for the takes='ids' test)."""
    logits = np.zeros((len(ids), 10), dtype=np.float32)
    logits[:, 0] = ids
    logits[:, 1] = 1.0 if split == "test" else 0.0
    return {"logits": logits}


def broken(rows):
    raise RuntimeError("this model always fails")


def wrong_shape(rows):
    return {"logits": np.zeros((len(rows), 3), dtype=np.float32)}
