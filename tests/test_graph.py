"""The functional API, BatchNormalization in models, BN folding, and graph save/resume.

The two-branch model is checked against the same computation written out by
hand with the reference ops: forward, every gradient, and the weights after
two SGD steps.
"""

import numpy as np
import pytest

import fastcnn as fc
import fastcnn.reference as ref
from fastcnn import layers as L
from fastcnn.errors import CheckpointError
from fastcnn.testing import assert_close

SAME = ((1, 1), (1, 1))
VALID = ((0, 0), (0, 0))


def two_branch_model(dtype=np.float64, impl="auto", fuse=True):
    """x -> conv3x3 -> relu (r) ; x -> conv1x1 (s) ; add(r, s) -> concat(add, r) -> BN -> flatten -> dense.

    ``r`` is read by Add and Concatenate: its gradient is the sum along two paths.
    """
    x = fc.Input((5, 5, 2))
    r = L.ReLU(impl=impl)(L.Conv2D(3, 3, padding="same", impl=impl)(x))
    s = L.Conv2D(3, 1, use_bias=False, impl=impl)(x)  # a bias here would get exactly zero gradient (BN)
    a = L.Add(impl=impl)([r, s])
    c = L.Concatenate(impl=impl)([a, r])
    y = L.Dense(4, impl=impl)(L.Flatten(impl=impl)(L.BatchNormalization(momentum=0.9, impl=impl)(c)))
    model = fc.Model(x, y, seed=3, dtype=dtype, fuse=fuse)
    return model.compile(fc.optim.SGD(lr=0.1), loss="softmax_cross_entropy")


def by_hand(w, x, labels):
    """The two-branch model's loss and gradients from the reference ops; returns (logits, loss, grads, stats)."""
    z1, c_conv1 = ref.conv2d_forward(x, w["layers.0.weight"], w["layers.0.bias"], stride=(1, 1), padding=SAME)
    r, c_relu = ref.relu_forward(z1)
    s, c_conv2 = ref.conv2d_forward(x, w["layers.2.weight"], None, stride=(1, 1), padding=VALID)
    a, c_add = ref.add_forward(r, s)
    c, c_cat = ref.concatenate_forward(a, r, axis=3)
    b, c_bn = ref.batch_norm_forward(c, w["layers.5.gamma"], w["layers.5.beta"], epsilon=1e-3)
    f, c_flat = ref.flatten_forward(b)
    logits, c_dense = ref.dense_forward(f, w["layers.7.weight"], w["layers.7.bias"])
    loss, dlogits = ref.softmax_cross_entropy(logits, labels)
    g = {}
    df, g["layers.7.weight"], g["layers.7.bias"] = ref.dense_backward(dlogits, c_dense)
    db = ref.flatten_backward(df, c_flat)
    dc, g["layers.5.gamma"], g["layers.5.beta"] = ref.batch_norm_backward(db, c_bn)
    da, dr_cat = ref.concatenate_backward(dc, c_cat)
    dr_add, ds = ref.add_backward(da, c_add)
    _, g["layers.2.weight"], _ = ref.conv2d_backward(ds, c_conv2)
    dz1 = ref.relu_backward(dr_add + dr_cat, c_relu)  # r's two paths, summed
    _, g["layers.0.weight"], g["layers.0.bias"] = ref.conv2d_backward(dz1, c_conv1)
    return logits, loss, g, (c_bn[0], c_bn[1])


def test_two_branch_model_matches_the_reference_ops_by_hand():
    model = two_branch_model()
    assert [type(layer).__name__ for layer in model.layers] == [
        "Conv2D", "ReLU", "Conv2D", "Add", "Concatenate", "BatchNormalization", "Flatten", "Dense"]
    assert type(model.steps[0]).__name__ == "ConvReLU"  # fusion inside the graph's linear chain
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((4, 5, 5, 2)), rng.integers(0, 4, size=4)
    w = model.get_weights()
    moving_mean, moving_var = w["layers.5.moving_mean"].copy(), w["layers.5.moving_variance"].copy()
    for step in range(2):
        logits, loss, grads, (mean, var) = by_hand(w, x, labels)
        with model._mode(True):
            assert_close(model(x), logits, name=f"step {step} forward")
        got = model.train_on_batch(x, labels)
        assert abs(got - loss) <= 1e-10 * abs(loss)
        for name, _, grad in model.params():
            assert_close(grad, grads[name], name=f"step {step} gradient {name}")
        for name in grads:
            w[name] = w[name] - 0.1 * grads[name]
        # model(x) in training mode above updated the moving statistics once, the step a second time
        for _ in range(2):
            moving_mean = 0.9 * moving_mean + 0.1 * mean
            moving_var = 0.9 * moving_var + 0.1 * var
    trained = model.get_weights()
    for name in grads:
        assert_close(trained[name], w[name], name=f"trained {name}")
    assert_close(trained["layers.5.moving_mean"], moving_mean, name="moving_mean")
    assert_close(trained["layers.5.moving_variance"], moving_var, name="moving_variance")
    assert "layers.5.moving_mean" not in {name for name, _, _ in model.params()}  # never optimized


def test_sequential_is_the_chain_special_case_of_model():
    model = fc.Sequential([L.Conv2D(2, 3), L.ReLU(), L.Flatten(), L.Dense(3)], input_shape=(5, 5, 1), seed=0)
    assert isinstance(model, fc.Model)
    assert model._inputs_of == [[0], [1], [2], [3]]
    with pytest.raises(TypeError, match="merges several tensors; build the graph with fc.Input"):
        fc.Sequential([L.Add()])


def residual_model(seed=0, dtype=np.float32, fuse=True):
    """A small ResNet: conv-BN-ReLU stem, one identity block, one strided block with a conv-BN shortcut."""
    x = fc.Input((8, 8, 1))
    y = L.ReLU()(L.BatchNormalization()(L.Conv2D(4, 3, padding="same", use_bias=False)(x)))
    y = fc.models.residual_block(y, 4)
    y = fc.models.residual_block(y, 6, stride=2)
    y = L.Dense(3)(L.GlobalAvgPool2D()(y))
    model = fc.Model(x, y, name="tiny_resnet", seed=seed, dtype=dtype, fuse=fuse)
    return model.compile(fc.optim.Adam(1e-2), loss="softmax_cross_entropy", metrics=["accuracy"])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    return rng.random((40, 8, 8, 1), dtype=np.float32), rng.integers(0, 3, size=40)


def test_add_then_relu_runs_as_one_fused_step_with_exactly_the_unfused_results(data):
    """A residual block's ReLU(Add(...)) is one AddReLU step in training and inference plans;
    the kernel sums as NumPy does and hands one masked gradient to both inputs, so two
    training steps and the predictions equal the unfused model's bit for bit."""
    x, y = data
    fused, unfused = residual_model(fuse=True), residual_model(fuse=False)
    for steps in (fused.steps, fused.inference_steps()):
        kinds = [type(step).__name__ for step in steps]
        assert kinds.count("AddReLU") == 2 and "Add" not in kinds
    add_relu = next(step for step in fused.steps if type(step).__name__ == "AddReLU")
    assert [type(layer).__name__ for layer in add_relu.layers] == ["Add", "ReLU"]
    assert "AddReLU" not in [type(step).__name__ for step in unfused.steps]
    for model in (fused, unfused):
        for start in (0, 16):
            model.train_on_batch(x[start:start + 16], y[start:start + 16])
    a, b = fused.get_weights(), unfused.get_weights()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    np.testing.assert_array_equal(fused.predict(x), unfused.predict(x))
    # An Add whose sum another layer also reads, or that no ReLU follows, stays an Add.
    assert "Add" in [type(step).__name__ for step in two_branch_model().steps]
    inp = fc.Input((4, 4, 2))
    total = L.Add()([inp, L.Conv2D(2, 3, padding="same")(inp)])
    both = fc.Model(inp, L.Concatenate()([L.ReLU()(total), total]), seed=0)
    assert [type(step).__name__ for step in both.steps] == ["Conv2D", "Add", "ReLU", "Concatenate"]


def test_save_load_mid_training_then_resume_equals_an_uninterrupted_run(tmp_path, data):
    x, y = data
    straight = residual_model()
    straight.fit(x, y, epochs=2, batch_size=16, verbose=0)
    first = residual_model()
    first.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = first.save(tmp_path / "resnet")
    resumed = fc.load_model(path)
    assert type(resumed) is fc.Model and resumed.name == "tiny_resnet"
    assert resumed._inputs_of == first._inputs_of
    resumed.fit(x, y, epochs=2, batch_size=16, verbose=0, initial_epoch=1)
    a, b = straight.get_weights(), resumed.get_weights()
    assert set(a) == set(b) and any(name.endswith("moving_variance") for name in a)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    other = residual_model()
    other.load(path)  # load_into a model of the same graph
    np.testing.assert_array_equal(other.predict(x), first.predict(x))


def test_a_tampered_graph_description_is_rejected(tmp_path):
    import json

    from fastcnn import saving

    model = residual_model()
    path = model.save(tmp_path / "m")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    desc = json.loads(arrays[saving.META_KEY].tobytes())
    desc["model"]["inputs"][1] = [5]  # a layer reading a later layer's output
    arrays[saving.META_KEY] = np.frombuffer(json.dumps(desc).encode(), dtype=np.uint8)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(CheckpointError, match=r"layers\[1\] reads tensors \[5\]"):
        fc.load_model(bad)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_batchnorm_folding_equals_unfolded_and_follows_weight_changes(dtype, data):
    x, y = data
    model = residual_model(dtype=dtype)
    folded_kinds = [type(step).__name__ for step in model.inference_steps(fold=True)]
    assert "BatchNormalization" not in folded_kinds and "ConvReLU" in folded_kinds
    assert "BatchNormalization" in [type(step).__name__ for step in model.inference_steps(fold=False)]
    for _ in range(3):  # move the moving statistics and the weights away from their initial values
        model.train_on_batch(x[:16], y[:16])
    for check in range(3):
        folded, unfolded = model.predict(x, fold=True), model.predict(x, fold=False)
        assert_close(folded, unfolded, dtype=dtype, name=f"fold, check {check}")
        a, b = model.evaluate(x, y), model.evaluate(x, y, fold=False)
        assert abs(a["loss"] - b["loss"]) <= (1e-10 if dtype == np.float64 else 1e-4) * b["loss"]
        if check == 0:
            model.train_on_batch(x[16:32], y[16:32])  # the cached folded weights must follow
        elif check == 1:
            w = model.get_weights()
            w["layers.1.moving_mean"] += 0.5
            model.set_weights(w)
    model.fold = False
    assert "BatchNormalization" in [type(step).__name__ for step in model.inference_steps()]


def test_dense_batchnorm_folding_in_a_sequential():
    model = fc.Sequential([L.Dense(5), L.BatchNormalization(), L.Dense(3)], input_shape=(6,), seed=2,
                          dtype=np.float64).compile("sgd")
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((16, 6))
    model.train_on_batch(xs, rng.integers(0, 3, 16))
    assert [type(s).__name__ for s in model.inference_steps()] == ["Dense", "Dense"]
    assert_close(model.predict(xs), model.predict(xs, fold=False), name="dense fold")
    assert model.summary_string().endswith("Trainable params: 63\nNon-trainable params: 10")


def test_summary_counts_non_trainable_state_and_shows_inputs():
    model = residual_model()
    text = model.summary_string()
    bn_state = sum(a.size for _, a in model.states())
    assert bn_state == 2 * (4 + 4 + 4 + 6 + 6 + 6)
    total = model.count_params()
    assert f"Total params: {total:,}" in text
    assert f"Trainable params: {total - bn_state:,}" in text
    assert f"Non-trainable params: {bn_state:,}" in text
    assert text.splitlines()[0] == "Model 'tiny_resnet': input (None, 8, 8, 1), float32"
    assert "Connected to" in text.splitlines()[1]
    assert any(line.startswith("layers.8 (Add)") and line.endswith("layers.7, layers.2") for line in text.splitlines())


def test_graph_construction_errors():
    x = fc.Input((4, 4, 2))
    with pytest.raises(ValueError, match=r"every input must have the same shape; received \(None, 4, 4, 2\), "
                                         r"\(None, 2, 2, 3\)"):
        L.Add()([x, L.Conv2D(3, 3)(x)])
    with pytest.raises(ValueError, match=r"inputs must match on every axis but axis=-1"):
        L.Concatenate()([x, L.MaxPool2D(2)(x)])
    conv = L.Conv2D(2, 1)
    conv(x)
    with pytest.raises(ValueError, match="already used in a graph"):
        conv(x)
    with pytest.raises(ValueError, match="must be called on a list of two or more tensors"):
        L.Add()(x)
    with pytest.raises(ValueError, match=r"Dense expects inputs of shape \(N, features\); received a symbolic"):
        L.Dense(2)(x)
    with pytest.raises(ValueError, match="outputs depend on an Input of shape"):
        fc.Model(x, L.ReLU()(fc.Input((4, 4, 2))))
    with pytest.raises(ValueError, match="one input and one output"):
        fc.Model([x, fc.Input((3,))], L.ReLU()(x))
    with pytest.raises(ValueError, match="`momentum` must be in"):
        L.BatchNormalization(momentum=1.5)
    with pytest.raises(ValueError, match=r"axis=0 is not a channel axis"):
        L.BatchNormalization(axis=0)(x)


def test_batchnorm_layer_modes_and_initial_state():
    bn = L.BatchNormalization(axis=1, momentum=0.5, center=False)
    x = np.random.default_rng(4).standard_normal((8, 3, 2)) * 2 + 1
    y = bn(x)  # channels on axis 1: statistics over axes 0 and 2
    assert set(bn.params) == {"gamma"} and set(bn.state) == {"moving_mean", "moving_variance"}
    mean, var = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
    np.testing.assert_allclose(y, (x - mean[:, None]) / np.sqrt(var[:, None] + 1e-3), rtol=1e-12)
    np.testing.assert_allclose(bn.state["moving_mean"], 0.5 * mean, rtol=1e-12)
    np.testing.assert_allclose(bn.state["moving_variance"], 0.5 + 0.5 * var, rtol=1e-12)
    bn.eval()
    np.testing.assert_allclose(bn(x), (x - 0.5 * mean[:, None]) / np.sqrt(0.5 + 0.5 * var[:, None] + 1e-3),
                               rtol=1e-12)


def test_a_tensor_read_twice_by_one_add_gets_both_gradients():
    """Add hands one array to both of its inputs: summing them must not add into it in place."""
    x = fc.Input((4,))
    h = L.Dense(3)(x)
    model = fc.Model(x, L.Dense(2)(L.Add()([h, h])), seed=5, dtype=np.float64).compile("sgd")
    twin = fc.Sequential([L.Dense(3), L.Dense(2)], input_shape=(4,), seed=5, dtype=np.float64).compile("sgd")
    w = model.get_weights()
    # Dense(2) on h + h is Dense(2) with doubled weights on h
    twin.set_weights({"layers.0.weight": w["layers.0.weight"], "layers.0.bias": w["layers.0.bias"],
                      "layers.1.weight": 2 * w["layers.2.weight"], "layers.1.bias": w["layers.2.bias"]})
    xs, ys = np.random.default_rng(6).standard_normal((5, 4)), np.array([0, 1, 1, 0, 1])
    assert abs(model.train_on_batch(xs, ys) - twin.train_on_batch(xs, ys)) < 1e-12
    g, g_twin = model.layers[0].grads, twin.layers[0].grads
    assert_close(g["weight"], g_twin["weight"], name="first Dense weight gradient")
    assert_close(g["bias"], g_twin["bias"], name="first Dense bias gradient")
