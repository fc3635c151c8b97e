"""committee.data computes the same fingerprint and the same view features as the C code."""
import hashlib
import json
import os
import re
import subprocess

import numpy as np
import pytest

import committee
import processes
from committee.data import DatasetError, load, load_fashion_mnist, npy_header
from committee.mlp import Mlp
from committee.safetensors import load as load_safetensors
from committee.wire import pb


def c_fingerprint(data):
    """The fingerprint `teacher-server data check DATA` prints."""
    done = subprocess.run([os.path.join(processes.BIN, "teacher-server"), "data", "check", data],
                          capture_output=True, text=True, check=True)
    return re.search(r"^fingerprint\s+([0-9a-f]{64})$", done.stdout, re.M).group(1)


def test_fingerprint_of_a_subset_matches_the_c_checkpoint(workdir):
    path = processes.fit_mlp(workdir, "mlp:49-8-10", "pool7", "fp-subset", "--max-test", "500")
    _, metadata = load_safetensors(path)
    data = load_fashion_mnist("pool14", max_train=2000, max_test=500)  # any view: the same
    assert metadata["fingerprint"] == data.fingerprint
    assert data.fingerprint == load_fashion_mnist("pool7").fingerprint  # subsets: the same
    assert not any(key.startswith("crc32:") for key in metadata)


def test_builtin_fingerprint_is_that_of_data_check_and_of_its_export(workdir):
    builtin = load_fashion_mnist("pool7")
    assert builtin.fingerprint == c_fingerprint("fashion-mnist")
    exported = os.path.join(workdir, "fashion-mnist-export")
    if not os.path.exists(exported):
        subprocess.run([os.path.join(processes.BIN, "teacher-server"), "data", "export",
                        "fashion-mnist", exported], check=True, capture_output=True)
    folder = load(exported, "pool7")
    assert folder.fingerprint == builtin.fingerprint
    rows = np.arange(0, 60000, 611)
    assert np.array_equal(folder.splits["train"].gather(rows),
                          builtin.splits["train"].gather(rows))
    assert np.array_equal(folder.splits["train"].labels, builtin.splits["train"].labels)


def readme_block(readme, opening, after=""):
    """The text of the first code block opened by `opening` after the text `after`."""
    begin = readme.index(opening, readme.index(after)) + len(opening)
    return readme[begin:readme.index("```", begin)]


def test_worked_example_of_proto_readme(tmp_path):
    """Builds the folder proto/README.md section 12 describes; C, Python and the page agree
    on the canonical manifest, every file line and the fingerprint."""
    with open(os.path.join(processes.ROOT, "proto", "README.md")) as file:
        readme = file.read()
    section = readme[readme.index("## 12. The dataset fingerprint"):]
    folder = tmp_path / "tiny"
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True)
    (folder / "dataset.json").write_text(readme_block(section, "```json\n"))
    table = re.findall(r"^\| `(\w+/\w+\.npy)` \| `([<>\w]+)`, `\(([\d, ]*)\)` \| ([-\d, ]+) \|$",
                       section, re.M)
    assert len(table) == 4
    for name, dtype, shape, values in table:
        shape = tuple(int(dim) for dim in shape.split(",") if dim.strip())
        array = np.array([float(v) for v in values.split(",")], dtype=dtype).reshape(shape)
        (folder / name).write_bytes(npy_header(array.dtype, shape) + array.tobytes())
    hashed = readme_block(section, "```\n", "The text hashed").splitlines()
    documented = re.search(r"^fingerprint: `([0-9a-f]{64})`$", section, re.M).group(1)
    data = load(str(folder), "x")
    assert hashed[0] == "committee-dataset-fingerprint/1"
    assert hashed[1] == data.manifest.canonical
    for line in hashed[2:]:
        name, size, digest = line.split()
        content = (folder / name).read_bytes()
        assert (int(size), digest) == (len(content), hashlib.sha256(content).hexdigest())
    assert hashlib.sha256(("\n".join(hashed) + "\n").encode()).hexdigest() == documented
    assert data.fingerprint == documented == c_fingerprint(str(folder))
    assert load_fashion_mnist("pool7").fingerprint in section


def write_npy(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def synthetic_folder(root):
    """A folder exercising every view kind, ids, a valid split, an unlabelled transfer split
    and canonical escaping."""
    rng = np.random.default_rng(7)
    manifest = {
        "format": "committee-dataset/1", "name": "synthetic",
        "task": {"type": "classification", "classes": 3,
                 "class_names": ["a\tb", "\u00fcber", "\"q\\\u0001"]},
        "splits": ["valid", "transfer", "test", "train"],
        "views": {
            "img": {"kind": "dense", "normalize": {"mean": [0.5, -1.25], "std": [2, 0.75]}},
            "pix": {"kind": "dense", "normalize": {"divide": 255, "mean": [0.1], "std": [0.3]}},
            "half": {"kind": "dense", "normalize": {"divide": 3, "mean": [1e-7], "std": [1.5]}},
            "pool": {"from": "img", "transform": "avgpool:2"},
            "ppool": {"from": "pix", "transform": "avgpool:2"},
            "simg": {"from": "img", "transform": "standardize"},
            "spix": {"from": "pix", "transform": "standardize"},
            "shalf": {"from": "half", "transform": "standardize"},
            "cat": {"kind": "categorical", "cardinality": [3, 5]},
            "tok": {"kind": "tokens", "vocab": 7, "pad": 0}}}
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    for split, rows in (("train", 40), ("test", 12), ("valid", 5), ("transfer", 9)):
        if split != "transfer":  # the transfer split has no labels file at all
            write_npy(root / split / "labels.npy", rng.integers(0, 3, rows).astype(np.int16))
        if split == "train":
            write_npy(root / split / "ids.npy", (rng.permutation(rows) * 1000 + 3).astype("<i8"))
        img = rng.normal(size=(rows, 2, 4, 4)).astype("<f4")
        if split == "train":
            img[:, 1, 2, 3] = 0.75  # a constant train feature: standardize gives it std 1
        write_npy(root / split / "img.npy", img)
        write_npy(root / split / "pix.npy", rng.integers(0, 256, (rows, 4, 4)).astype("u1"))
        write_npy(root / split / "half.npy", rng.normal(size=(rows, 6)).astype("<f2"))
        write_npy(root / split / "cat.npy",
                  np.stack([rng.integers(0, 3, rows), rng.integers(0, 5, rows)], 1).astype("<i4"))
        write_npy(root / split / "tok.npy", rng.integers(0, 7, (rows, 3)).astype("<i4"))
    return root


STORED = {"pool": "img", "ppool": "pix", "simg": "img", "spix": "pix", "shalf": "half"}


def reference_features(data, split, view):
    """The features of `view` computed straightforwardly in double (slow, obviously right);
    a standardized view with the statistics of the source's whole train split."""
    if view.startswith("s"):
        source = reference_features(data, "train", STORED[view])
        mean, std = source.astype(np.float64).mean(0), source.astype(np.float64).std(0)
        std[std <= 1e-12] = 1
        return ((reference_features(data, split, STORED[view]) - mean) / std).astype(np.float32)
    stored = STORED.get(view, view)
    array = np.load(os.path.join(data.source, split, stored + ".npy")).astype(np.float64)
    spec = data.manifest.views[stored]
    if spec.kind != "dense":
        return array.reshape(len(array), -1).astype(np.float32)
    array = array / spec.divide
    if len(spec.mean) > 1:
        shape = (1, len(spec.mean)) + (1,) * (array.ndim - 2)
        array = (array - np.reshape(spec.mean, shape)) / np.reshape(spec.std, shape)
    elif spec.mean:
        array = (array - spec.mean[0]) / spec.std[0]
    if view in ("pool", "ppool"):
        *lead, h, w = array.shape
        array = array.reshape(*lead, h // 2, 2, w // 2, 2).mean(axis=(-3, -1))
    return array.reshape(len(array), -1).astype(np.float32)


def test_folder_fingerprint_and_views_match_data_check(tmp_path):
    folder = str(synthetic_folder(tmp_path / "synthetic"))
    data = load(folder, "img")
    assert data.fingerprint == c_fingerprint(folder)
    assert data.name == "synthetic" and data.classes == 3
    assert '"class_names":["a\\u0009b","\u00fcber","\\"q\\\\\\u0001"]' in data.manifest.canonical
    assert sorted(data.splits) == ["test", "train", "transfer", "valid"]
    for view, features in (("img", 32), ("pix", 16), ("half", 6), ("pool", 8), ("ppool", 4),
                           ("cat", 2), ("tok", 3), ("simg", 32), ("spix", 16), ("shalf", 6)):
        viewed = load(folder, view, max_train=10)
        assert viewed.fingerprint == data.fingerprint  # never the view nor the subset
        assert viewed.features == features and viewed.splits["train"].count == 10
        for split in ("train", "valid", "transfer"):
            got = viewed.splits[split].inputs
            assert got.dtype == np.float32
            expected = reference_features(viewed, split, view)[:len(got)]
            assert np.allclose(got, expected, rtol=1e-6, atol=1e-6), view
    train = data.splits["train"]
    assert train.rows([train.ids[5], 999999, train.ids[0]]).tolist() == [5, -1, 0]


def test_folder_features_match_the_c_teacher_bit_for_bit(tmp_path, workdir):
    """An MLP fitted by teacher-server on a folder view: teacher-server serve's logits
    equal the exact Python forward on committee.data's features, so the bits agree."""
    folder = str(synthetic_folder(tmp_path / "bits"))
    for view, features in (("img", 32), ("pool", 8), ("ppool", 4), ("half", 6)):
        path = str(tmp_path / f"{view}.safetensors")
        subprocess.run([os.path.join(processes.BIN, "teacher-server"), "fit", "--data", folder,
                        "--model", f"mlp:{features}-8-3", "--view", view, "--epochs", "1",
                        "--out", path], check=True, capture_output=True)
        data = load(folder, view)
        model = Mlp(path, exact=True)
        teacher = processes.c_teacher(path, workdir, "--data", folder)
        try:
            with committee.Client(teacher.endpoint, timeout_ms=60000) as client:
                assert client.hello().dataset_fingerprint == data.fingerprint
                ids = data.splits["train"].ids[:17]
                served = client.query(ids, ["logits"], "train")
                local = model.forward(data.splits["train"].gather(data.splits["train"].rows(ids)))
                assert np.array_equal(served["logits"], local["logits"]), view
        finally:
            assert teacher.stop() == 0


def test_python_teacher_serves_a_folder(tmp_path, workdir):
    folder = str(synthetic_folder(tmp_path / "served"))
    path = str(tmp_path / "pool.safetensors")
    subprocess.run([os.path.join(processes.BIN, "teacher-server"), "fit", "--data", folder,
                    "--model", "mlp:8-8-3", "--view", "pool", "--epochs", "1", "--out", path],
                   check=True, capture_output=True)
    c_teacher = processes.c_teacher(path, workdir, "--data", folder)
    py_teacher = processes.python_teacher(workdir, "--mlp", path, "--data", folder)
    try:
        with committee.Client(c_teacher.endpoint, timeout_ms=60000) as c_client, \
                committee.Client(py_teacher.endpoint, timeout_ms=60000) as py_client:
            c_hello, py_hello = c_client.hello(), py_client.hello()
            assert py_hello.dataset_fingerprint == c_hello.dataset_fingerprint
            assert py_hello.dataset_fingerprint == c_fingerprint(folder)
            every_split = [pb.SPLIT_TRAIN, pb.SPLIT_TEST, pb.SPLIT_VALID, pb.SPLIT_TRANSFER]
            assert list(c_hello.splits) == list(py_hello.splits) == every_split
            data = load(folder, "pool")
            assert data.splits["transfer"].labels is None and data.splits["transfer"].count == 9
            ids = data.splits["train"].ids[::3]
            for split, wanted in (("train", ids), ("test", np.arange(12)), ("valid", np.arange(5)),
                                  ("transfer", np.arange(9)[::-1])):
                served = py_client.query(wanted, ["logits", "hidden"], split)
                reference = c_client.query(wanted, ["logits", "hidden"], split)
                assert np.array_equal(served["logits"], reference["logits"])
                assert np.array_equal(served["hidden"], reference["hidden"])
            with pytest.raises(committee.TeacherError, match="OUT_OF_RANGE|not among"):
                py_client.query([1], ["logits"], "train")  # not an id of the folder
    finally:
        assert py_teacher.stop() == 0
        assert c_teacher.stop() == 0


def test_standardized_views_match_the_c_loader_bit_for_bit(tmp_path, workdir):
    """Views standardized from float32 (two channel means), uint8 and float16 sources: the
    checkpoint teacher-server fit writes records exactly the statistics committee.data
    computes (its "preprocessing" text is Dataset.preprocessing), and teacher-server
    serve's logits equal the exact Python forward on committee.data's features, on every
    split; the Python teacher serves the same checkpoint with the same values."""
    folder = str(synthetic_folder(tmp_path / "standardized"))
    for view, features in (("simg", 32), ("spix", 16), ("shalf", 6)):
        path = str(tmp_path / f"{view}.safetensors")
        subprocess.run([os.path.join(processes.BIN, "teacher-server"), "fit", "--data", folder,
                        "--model", f"mlp:{features}-8-3", "--view", view, "--epochs", "1",
                        "--out", path], check=True, capture_output=True)
        data = load(folder, view, max_train=10)  # a subset: the same statistics
        model = Mlp(path, exact=True)
        assert model.metadata["preprocessing"] == data.preprocessing, view
        assert '"transform":"standardize"' in data.preprocessing
        if view == "simg":
            constant = 1 * 16 + 2 * 4 + 3  # img[:, 1, 2, 3] is 0.75 on every train row
            assert data.standard_std[constant] == 1.0
            assert not data.splits["train"].inputs[:, constant].any()
        teachers = [processes.c_teacher(path, workdir, "--data", folder)]
        if view == "simg":
            teachers.append(processes.python_teacher(workdir, "--mlp", path, "--data", folder))
        try:
            clients = [committee.Client(teacher.endpoint, timeout_ms=60000)
                       for teacher in teachers]
            for client in clients:
                hello = client.hello()
                assert hello.view == view and hello.dataset_fingerprint == data.fingerprint
            for split, wanted in (("train", data.splits["train"].ids[:10]),
                                  ("test", np.arange(12)), ("valid", np.arange(5))):
                rows = data.splits[split].rows(wanted)
                local = model.forward(data.splits[split].gather(rows))
                for client in clients:
                    served = client.query(wanted, ["logits", "hidden"], split)
                    assert np.array_equal(served["logits"], local["logits"]), (view, split)
                    assert np.array_equal(served["hidden"], local["hidden"]), (view, split)
            for client in clients:
                client.close()
        finally:
            for teacher in teachers:
                assert teacher.stop() == 0


def test_standardize_needs_training_examples(tmp_path):
    folder = tmp_path / "empty-train"
    manifest = {"format": "committee-dataset/1", "name": "empty-train",
                "task": {"type": "classification", "classes": 2}, "splits": ["train", "test"],
                "views": {"x": {"kind": "dense"}, "s": {"from": "x", "transform": "standardize"}}}
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps(manifest))
    for split, rows in (("train", 0), ("test", 3)):
        write_npy(folder / split / "labels.npy", np.zeros(rows, "<i8"))
        write_npy(folder / split / "x.npy", np.ones((rows, 4), "<f4"))
    assert load(str(folder), "x").features == 4
    with pytest.raises(DatasetError, match='view "s" standardizes with train statistics, but '
                       "empty-train has no training examples"):
        load(str(folder), "s")


def c_check_error(folder, cache):
    """The sentence `teacher-server data check` fails with (it checks every view)."""
    done = subprocess.run([os.path.join(processes.BIN, "teacher-server"), "data", "check",
                           folder], capture_output=True, text=True,
                          env=dict(os.environ, COMMITTEE_CACHE_DIR=cache))
    assert done.returncode == 1, done.stdout
    prefix = "teacher-server data check: "
    assert done.stderr.startswith(prefix) and done.stderr.count("\n") == 1, done.stderr
    return done.stderr[len(prefix):].rstrip("\n")


def spoil(file, edit):
    array = np.load(file)
    edit(array)
    np.save(file, array)


BAD_VALUES = {
    "nan": ("train/img.npy", lambda a: a.__setitem__((3, 1, 0, 1), np.nan), ["img", "pool", "simg"],
            "row 3 holds NaN at element 17; a dense view must be finite"),
    "inf": ("test/half.npy", lambda a: a.__setitem__((4, 5), -np.inf), ["half", "shalf"],
            "row 4 holds Inf at element 5; a dense view must be finite"),
    "token": ("valid/tok.npy", lambda a: a.__setitem__((2, 1), 7), ["tok"],
              "row 2 holds token 7 at position 1, outside the vocabulary [0, 7)"),
    "negative token": ("train/tok.npy", lambda a: a.__setitem__((0, 2), -1), ["tok"],
                       "row 0 holds token -1 at position 2, outside the vocabulary [0, 7)"),
    "category": ("transfer/cat.npy", lambda a: a.__setitem__((8, 1), 5), ["cat"],
                 "row 8 holds category 5 in column 1, outside its cardinality [0, 5)"),
    "negative category": ("test/cat.npy", lambda a: a.__setitem__((1, 0), -2), ["cat"],
                          "row 1 holds category -2 in column 0, outside its cardinality [0, 3)"),
    "label": ("valid/labels.npy", lambda a: a.__setitem__(4, 3), ["img", "tok", "spix"],
              "label 3 of row 4 is outside [0, 3)"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_are_named_as_the_c_loader_names_them(tmp_path, case):
    """Each bad value of a file the view reads is one DatasetError sentence naming the file,
    the sentence `teacher-server data check` prints; views that do not read the file load."""
    file, edit, views, sentence = BAD_VALUES[case]
    folder = synthetic_folder(tmp_path / "bad")
    spoil(folder / file, edit)
    expected = f"{os.path.realpath(folder / file)}: {sentence}"
    assert c_check_error(str(folder), str(tmp_path / "cache")) == expected
    for view in views:
        with pytest.raises(DatasetError) as raised:
            load(str(folder), view)
        assert str(raised.value) == expected, view
    if not file.endswith("labels.npy"):
        assert load(str(folder), "pix").features == 16  # pix does not read the spoilt file


def test_regression_targets_must_be_finite(tmp_path):
    folder = tmp_path / "regression"
    manifest = {"format": "committee-dataset/1", "name": "regression",
                "task": {"type": "regression", "targets": 2}, "splits": ["train", "test"],
                "views": {"x": {"kind": "dense"}}}
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps(manifest))
    for split, rows in (("train", 6), ("test", 4)):
        write_npy(folder / split / "labels.npy", np.zeros((rows, 2), "<f4"))
        write_npy(folder / split / "x.npy", np.ones((rows, 3), "<f4"))
    assert load(str(folder), "x").splits["test"].targets.shape == (4, 2)
    spoil(folder / "test" / "labels.npy", lambda a: a.__setitem__((3, 1), np.nan))
    expected = f"{os.path.realpath(folder / 'test' / 'labels.npy')}: target 1 of row 3 is not " \
        "finite"
    assert c_check_error(str(folder), str(tmp_path / "cache")) == expected
    with pytest.raises(DatasetError) as raised:
        load(str(folder), "x")
    assert str(raised.value) == expected


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


def test_safetensors_checksums_are_verified(workdir, tmp_path):
    """A checkpoint of teacher-server fit loads with its crc32: keys verified and hidden; a
    flipped byte in a tensor or in the metadata is named; a file without any checksum loads."""
    path = processes.fit_mlp(workdir, "mlp:49-8-10", "pool7", "crc")
    blob = open(path, "rb").read()
    tensors, metadata = load_safetensors(path)
    assert metadata["fingerprint"] and not any(key.startswith("crc32:") for key in metadata)
    length = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + length])
    assert any(key.startswith("crc32:") for key in header["__metadata__"])
    damaged = bytearray(blob)
    damaged[-1] ^= 1  # the last tensor's last byte
    (tmp_path / "tensor.safetensors").write_bytes(bytes(damaged))
    with pytest.raises(committee.safetensors.SafetensorsError, match="tensor .* is damaged"):
        load_safetensors(str(tmp_path / "tensor.safetensors"))

    def rewrite(name, edit):
        changed = json.loads(blob[8:8 + length])
        edit(changed["__metadata__"])
        text = json.dumps(changed).encode()
        (tmp_path / name).write_bytes(len(text).to_bytes(8, "little") + text + blob[8 + length:])
        return str(tmp_path / name)

    with pytest.raises(committee.safetensors.SafetensorsError, match="metadata is damaged"):
        load_safetensors(rewrite("meta.safetensors",
                                 lambda meta: meta.update(view=meta["view"] + "x")))
    with pytest.raises(committee.safetensors.SafetensorsError, match="none for"):
        load_safetensors(rewrite("partial.safetensors",
                                 lambda meta: meta.pop("crc32:__metadata__")))
    bare = rewrite("bare.safetensors", lambda meta: [meta.pop(key) for key in list(meta)
                                                    if key.startswith("crc32:")])
    assert all(np.array_equal(tensors[name], load_safetensors(bare)[0][name]) for name in tensors)
