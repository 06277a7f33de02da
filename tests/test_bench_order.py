"""The benchmark session runs each PyTorch peer right after the fastcnn row it is compared with
(benchmarks/conftest.py), so machine drift over minutes does not enter the speed-up."""

from types import SimpleNamespace

from benchmarks import conftest


def item(name, **params):
    return SimpleNamespace(originalname=name, name=f"{name}[{params}]", callspec=SimpleNamespace(params=params))


def test_each_pytorch_peer_runs_right_after_its_numba_row():
    items = [
        item("test_train_step", preset="a", n=conftest.BATCH, impl="numpy"),
        item("test_train_step", preset="a", n=conftest.BATCH, impl="numba"),
        item("test_train_step", preset="b", n=conftest.BATCH, impl="numba"),
        item("test_predict", preset="a", n=1000, impl="numba"),
        item("test_predict", preset="a", n=64, impl="numba"),
        item("test_op"),  # no peer: stays where it was
        item("test_torch_train_step", preset="a"),  # batch: the benchmarks' BATCH
        item("test_torch_train_step", preset="b"),
        item("test_torch_predict", preset="a", n=64),
        item("test_torch_predict", preset="a", n=1000),
        item("test_torch_predict", preset="c", n=64),  # no fastcnn row: stays where it was
    ]
    original = list(items)
    conftest.pytest_collection_modifyitems(None, None, items)
    assert sorted(map(id, items)) == sorted(map(id, original))  # nothing lost or duplicated
    order = [original.index(i) for i in items]
    assert order == [0, 1, 6, 2, 7, 3, 9, 4, 8, 5, 10]


def test_pytorch_and_onnxruntime_peers_both_follow_their_numba_row():
    items = [
        item("test_predict", preset="a", n=64, impl="numba"),
        item("test_op"),
        item("test_torch_predict", preset="a", n=64),
        item("test_ort_predict", preset="a", n=64),
        item("test_ort_predict", preset="b", n=64),  # no fastcnn row: stays where it was
    ]
    original = list(items)
    conftest.pytest_collection_modifyitems(None, None, items)
    assert [original.index(i) for i in items] == [0, 2, 3, 1, 4]
