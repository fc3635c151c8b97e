"""committee.data computes the same fingerprint and the same view features as the C code."""
import os
import subprocess

import numpy as np
import pytest

import committee
import processes
from committee.data import DatasetError, load_fashion_mnist
from committee.mlp import Mlp
from committee.safetensors import load as load_safetensors


def test_fingerprint_of_a_subset_matches_the_c_checkpoint(workdir):
    path = processes.fit_mlp(workdir, "mlp:49-8-10", "pool7", "fp-subset", "--max-test", "500")
    _, metadata = load_safetensors(path)
    data = load_fashion_mnist("pool14", max_train=2000, max_test=500)  # any view: the same
    assert metadata["fingerprint"] == data.fingerprint


def test_worked_example_of_proto_readme():
    data = load_fashion_mnist("pool7")
    with open(os.path.join(processes.ROOT, "proto", "README.md")) as file:
        readme = file.read()
    assert data.fingerprint == "b98a5543b2d653ce97a6e05bbbaf3809b71b00acedc5ce08ea9bb1dcbafbe89e"
    assert data.fingerprint in readme
    subset = load_fashion_mnist("pool7", max_train=2000)
    assert subset.fingerprint in readme


@pytest.mark.parametrize("view", ["full", "pool14", "pool7"])
def test_views_match_the_c_teacher_bit_for_bit(workdir, view):
    """The C teacher's logits on its own view equal the exact Python MLP forward on the view
    committee.data computes: the features are the same bits (and so is the forward)."""
    inputs = {"full": 784, "pool14": 196, "pool7": 49}[view]
    path = processes.fit_mlp(workdir, f"mlp:{inputs}-16-10", view, f"view-{view}")
    data = load_fashion_mnist(view)
    model = Mlp(path, exact=True)
    teacher = processes.c_teacher(path, workdir)
    try:
        with committee.Client(teacher.endpoint, timeout_ms=60000) as client:
            hello = client.hello()
            assert hello.dataset_fingerprint == data.fingerprint
            for split in ("train", "test"):
                ids = np.arange(0, data.splits[split].count, 97)[:300]
                served = client.query(ids, ["logits", "hidden"], split)
                local = model.forward(data.splits[split].inputs[ids])
                assert np.array_equal(served["logits"], local["logits"])
                assert np.array_equal(served["hidden"], local["hidden"])
    finally:
        assert teacher.stop() == 0
    assert data.splits["train"].inputs.dtype == np.float32
    assert data.splits["train"].inputs.shape == (60000, inputs)


def test_missing_files_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz"):
        load_fashion_mnist("full", directory=str(tmp_path))


def test_unknown_view_lists_the_views():
    with pytest.raises(DatasetError, match="full,pool14,pool7"):
        load_fashion_mnist("pool3")


def test_corrupt_file_named(tmp_path):
    source = "/usr/share/datasets/fashion-mnist"
    for name in os.listdir(source):
        os.symlink(os.path.join(source, name), tmp_path / name)
    os.unlink(tmp_path / "t10k-labels-idx1-ubyte.gz")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz"):
        load_fashion_mnist("pool7", directory=str(tmp_path))
