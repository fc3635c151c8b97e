import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import processes  # noqa: E402


@pytest.fixture(scope="session")
def workdir():
    with tempfile.TemporaryDirectory(prefix="committee-python-") as directory:
        yield directory


@pytest.fixture(scope="session")
def pool7():
    from committee.data import load_fashion_mnist
    return load_fashion_mnist("pool7", max_train=2000, max_test=500)
