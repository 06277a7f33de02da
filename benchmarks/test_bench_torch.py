"""The peer: the same presets in PyTorch on the CPU, with the same thread count.

Skipped cleanly when PyTorch is not installed (``pip install torch`` — the CPU
build is enough). The networks are written the way a PyTorch user would write
them (NCHW, ``nn.Sequential``, a BasicBlock module for resnet_mini, the optimizer and hyperparameters of the
fastcnn preset) and start from the fastcnn preset's weights, converted to
PyTorch's layouts. Groups are named like benchmarks/test_bench_models.py's,
so each PyTorch row sits beside fastcnn's rows.

Checks: inference must agree with the float64 fastcnn model holding the same
weights, within ``fastcnn.testing.RTOL[float32]``. A timed training step runs
PyTorch's own dropout, whose masks cannot match fastcnn's, so the step is
checked through its twin: the loss and every gradient of one forward/backward
of a float64 copy of the PyTorch network from the same weights with dropout
off, against fastcnn in float64 with dropout off, within
``fastcnn.testing.RTOL[float64]`` (in float32, resnet_mini's stem gradient is
ill-conditioned for PyTorch and fastcnn alike).
"""

import copy

import numpy as np
import pytest

from fastcnn.testing import assert_close, max_rel_error

from benchmarks import _presets
from benchmarks._common import BATCH, PRESET_LAYERS, PRESETS, THREADS, model_gflop, run_info
from benchmarks.test_bench_models import PREDICT_BATCHES, TRAIN_ROUNDS, predict_group, train_group

torch = pytest.importorskip("torch")
nn = torch.nn


class BasicBlock(nn.Module):
    """resnet_mini's residual block as a PyTorch user writes it (torchvision's BasicBlock), with
    fastcnn's (TensorFlow's) "same" padding: at stride 2 on an even size the extra row and
    column are padded at the bottom and right only, where ``padding=1`` would pad both sides."""

    def __init__(self, c_in, filters, stride):
        super().__init__()
        pad = nn.ZeroPad2d((0, 1, 0, 1)) if stride == 2 else nn.ZeroPad2d(1)
        self.conv1 = nn.Sequential(pad, nn.Conv2d(c_in, filters, 3, stride=stride, bias=False))
        self.bn1 = nn.BatchNorm2d(filters, eps=1e-3, momentum=0.1)  # fastcnn/Keras momentum 0.9
        self.conv2 = nn.Conv2d(filters, filters, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(filters, eps=1e-3, momentum=0.1)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != filters:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, filters, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(filters, eps=1e-3, momentum=0.1))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class ResNetMini(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16, eps=1e-3, momentum=0.1), nn.ReLU())
        blocks, c_in = [], 16
        for stage, filters in enumerate((16, 32, 64)):
            for block in range(2):
                blocks.append(BasicBlock(c_in, filters, 2 if stage > 0 and block == 0 else 1))
                c_in = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def torch_net(preset):
    """The preset's architecture in PyTorch (NCHW input ``(N, 1, 28, 28)``)."""
    if preset == "resnet_mini":
        return ResNetMini()
    if preset == "tutorial_cnn":
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, bias=False), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(8 * 13 * 13, 10),
        )
    if preset == "mnist_cnn":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(),
            nn.Conv2d(32, 64, 3), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(0.25),
            nn.Flatten(), nn.Linear(64 * 12 * 12, 128), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(128, 10),
        )
    if preset == "vgg_mini":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(0.25),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(0.25),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(),
            nn.Linear(256, 10),
        )
    raise ValueError(preset)


def torch_optimizer(fastcnn_model, net):
    """PyTorch's optimizer with the preset's settings (fastcnn SGD/Adam follow PyTorch's update rules)."""
    opt = fastcnn_model.optimizer
    if type(opt).__name__ == "Adam":
        return torch.optim.Adam(net.parameters(), lr=opt.lr, betas=(opt.beta_1, opt.beta_2), eps=opt.epsilon)
    return torch.optim.SGD(net.parameters(), lr=opt.lr, momentum=getattr(opt, "momentum", 0.0))


def flatten_shapes(model):
    """``(H, W, C)`` feeding each Dense that follows a Flatten, keyed by the Dense's index."""
    shapes = {}
    for i, layer in enumerate(model.layers[:-1]):
        if type(layer).__name__ == "Flatten" and len(layer.input_shape) == 3:
            shapes[i + 1] = layer.input_shape
    return shapes


def to_torch(name, a, flat):
    """A fastcnn parameter in PyTorch's layout (HWIO -> OIHW; (IN, OUT) -> (OUT, IN))."""
    index = int(name.split(".")[1])
    if a.ndim == 4:
        return a.transpose(3, 2, 0, 1)
    if a.ndim == 2:
        if index in flat:  # NHWC flatten order (h, w, c) -> NCHW order (c, h, w)
            H, W, C = flat[index]
            return a.reshape(H, W, C, -1).transpose(3, 2, 0, 1).reshape(a.shape[1], -1)
        return a.T
    return a


def from_torch(name, a, flat):
    """Inverse of :func:`to_torch` (for comparing PyTorch's gradients)."""
    index = int(name.split(".")[1])
    if a.ndim == 4:
        return a.transpose(2, 3, 1, 0)
    if a.ndim == 2:
        if index in flat:
            H, W, C = flat[index]
            return a.reshape(-1, C, H, W).transpose(2, 3, 1, 0).reshape(H * W * C, -1)
        return a.T
    return a


def peer(preset):
    """``(fastcnn float32 model with S0 weights, PyTorch net with the same weights, names, flatten map)``."""
    model = _presets.build(preset)
    model.set_weights(_presets.initial_weights(preset))
    net = torch_net(preset)
    names = [name for name, _, _ in model.params()]
    flat = flatten_shapes(model)
    tensors = list(net.parameters())
    assert len(tensors) == len(names), f"{preset}: PyTorch has {len(tensors)} tensors, fastcnn {len(names)}"
    with torch.no_grad():
        for t, name in zip(tensors, names):
            w = to_torch(name, model.get_weights()[name], flat)
            assert tuple(t.shape) == w.shape, f"{name}: {tuple(t.shape)} vs {w.shape}"
            t.copy_(torch.from_numpy(np.ascontiguousarray(w)))
    return model, net, names, flat


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.fixture(autouse=True)
def _torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def record(benchmark, group, preset, n, training):
    benchmark.group = group
    benchmark.extra_info.update(run_info("torch", torch=True))
    benchmark.extra_info.update(
        kind="model", preset=preset, batch=n, task="train_on_batch" if training else "predict",
        gflop=model_gflop(PRESET_LAYERS[preset], n, training=training), gemm_like=True, dtype="float32",
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_torch_train_step(benchmark, preset):
    model, net, names, flat = peer(preset)
    x, y = _presets.batch(BATCH)
    xt, yt = nchw(x), torch.from_numpy(y)
    loss_fn = nn.CrossEntropyLoss()

    # The check first, from the S0 weights: one forward/backward with dropout off, of a
    # float64 copy of the network (float32 rounding carried back through resnet_mini's
    # BatchNormalization leaves its stem's weight gradient ~2e-3 (rel.) from float64 in
    # PyTorch as in fastcnn, so only float64 shows whether the two networks are the same).
    twin_net = copy.deepcopy(net).double()
    twin_net.train()
    for m in twin_net.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    twin_loss = loss_fn(twin_net(xt.double()), yt)
    twin_loss.backward()
    twin = {name: from_torch(name, t.grad.numpy(), flat) for name, t in zip(names, twin_net.parameters())}
    net.train()

    optimizer = torch_optimizer(model, net)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(xt), yt)
        loss.backward()
        optimizer.step()
        return loss.item()

    step()  # warm up: allocator, optimizer slots
    record(benchmark, train_group(preset, BATCH), preset, BATCH, training=True)
    loss = benchmark.pedantic(step, rounds=TRAIN_ROUNDS, iterations=1)
    assert np.isfinite(loss)

    truth_loss, truth_grads = _presets.no_dropout_truth(preset, BATCH)
    assert_close(np.float64(twin_loss.item()), truth_loss, dtype=np.float64, name=f"{preset}/torch loss")
    for name, g in twin.items():
        assert g.dtype == np.float64
        assert_close(g, truth_grads[name], dtype=np.float64, name=f"{preset}/torch gradient {name}")
    worst = max(max_rel_error(g, truth_grads[k]) for k, g in twin.items())
    benchmark.extra_info["check"] = (
        f"dropout-off float64 twin step vs float64 fastcnn numpy: max rel error {worst:.1e}"
    )


@pytest.mark.parametrize("n", PREDICT_BATCHES)
@pytest.mark.parametrize("preset", PRESETS)
def test_torch_predict(benchmark, preset, n):
    _, net, _, _ = peer(preset)
    net.eval()
    xt = nchw(_presets.batch(n)[0])

    def predict():
        with torch.inference_mode():
            return torch.softmax(net(xt), dim=1).numpy()

    predict()  # warm up
    record(benchmark, predict_group(preset, n), preset, n, training=False)
    probs = benchmark(predict)

    truth_impl, truth = _presets.predict_truth(preset, n)
    assert probs.dtype == np.float32 and probs.shape == (n, 10)
    assert_close(probs, truth, dtype=np.float32, name=f"{preset}/torch predict")
    benchmark.extra_info["check"] = (
        f"float64 fastcnn {truth_impl}, same weights: max rel error {max_rel_error(probs, truth):.1e}"
    )
