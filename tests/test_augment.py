"""Augmentation ops and layers: bit-equal implementations, the reference's semantics and
gradients, training-only behaviour, seeding, save/resume, validation."""

import math

import numpy as np
import pytest

import fastcnn as fc
from fastcnn import layers as L, registry
from fastcnn.reference import augment as ref_augment
from fastcnn.testing import assert_close, gradcheck

DTYPES = [np.float64, np.float32]
AUG_OPS = ("flip2d", "translate2d", "crop2d", "zero_pad2d", "rotate2d")


def draws(op, rng, shape, fill_mode="reflect"):
    """Keyword arguments of ``op`` for a batch of ``shape``: random draws like the layers make."""
    N, H, W, _ = shape
    if op == "flip2d":
        return {"flip": rng.random((N, 2)) < 0.5}
    if op == "translate2d":  # shifts past the border too: every fill mode wraps around more than once
        return {"shift": rng.integers(-2 * H, 2 * H + 1, size=(N, 2)), "fill_mode": fill_mode, "fill_value": 0.25}
    if op == "crop2d":
        size = (max(1, H - 2), max(1, W - 1))
        return {"offset": rng.integers(0, (H - size[0] + 1, W - size[1] + 1), size=(N, 2)), "size": size}
    if op == "zero_pad2d":
        return {"padding": ((1, 2), (0, 3))}
    return {"angle": rng.uniform(-math.pi, math.pi, N), "fill_mode": fill_mode, "fill_value": -0.5}


CASES = [(op, mode) for op in AUG_OPS for mode in
         (("constant", "nearest", "reflect", "wrap") if op in ("translate2d", "rotate2d") else (None,))]


# The prange twins are the same source as the serial ones: float32 shows them (float64 would only compile).
TWIN_CASES = [pytest.param(op, mode, dtype, twin, id=f"{op}-{mode}-{np.dtype(dtype).name}-{twin}")
              for op, mode in CASES for dtype in DTYPES for twin in ("serial", "parallel")
              if twin == "serial" or (dtype == np.float32 and op != "zero_pad2d")]


@pytest.mark.parametrize("op,fill_mode,dtype,twin", TWIN_CASES)
def test_every_implementation_is_bit_equal_to_the_reference(monkeypatch, op, fill_mode, dtype, twin):
    """Same draws, same dtype: the forward copies are bit-equal; the Numba backward too (it sums
    in the reference's order); NumPy's backward sums in another order, within rounding."""
    if twin == "parallel":  # every batch through the Numba kernels' prange twins
        import fastcnn.kernels._jit

        monkeypatch.setattr(fastcnn.kernels._jit, "PARALLEL_MIN_SIZE", 0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 6, 7, 2)).astype(dtype)[:, :, ::-1]  # a non-contiguous view
    kwargs = draws(op, rng, x.shape, fill_mode)
    y_ref, cache_ref = registry.get(op, "reference").forward(x, **kwargs)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    dx_ref = registry.get(op, "reference").backward(dy, cache_ref)
    assert y_ref.dtype == dx_ref.dtype == dtype
    impls = registry.implementations(op)[1:]
    assert impls == (["numpy"] if op == "zero_pad2d" else ["numpy", "numba"])
    for impl in impls:
        fn = registry.get(op, impl)
        y, cache = fn.forward(x, **kwargs)
        assert y.dtype == dtype and y.flags.c_contiguous
        np.testing.assert_array_equal(y, y_ref, err_msg=f"{op}/{impl} forward")
        dx = fn.backward(dy, cache)
        assert dx.dtype == dtype
        if impl == "numba":
            np.testing.assert_array_equal(dx, dx_ref, err_msg=f"{op}/{impl} backward")
        else:
            assert_close(dx, dx_ref, dtype=dtype, name=f"{op}/{impl} backward")


@pytest.mark.parametrize("op,fill_mode", CASES)
def test_reference_gradcheck(op, fill_mode):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 5, 2))
    kwargs = draws(op, rng, x.shape, fill_mode)
    forward = registry.get(op, "reference").forward
    gradcheck(lambda a: forward(a, **kwargs), registry.get(op, "reference").backward, [x])


# -- the reference's semantics, on numbers worked out by hand -----------------------------
def image(H, W):
    return np.arange(H * W, dtype=np.float64).reshape(1, H, W, 1)


def test_flip_reverses_rows_and_columns():
    x = image(2, 3)
    for flip, want in (([0, 1], x[:, :, ::-1]), ([1, 0], x[:, ::-1]), ([1, 1], x[:, ::-1, ::-1]), ([0, 0], x)):
        y, _ = ref_augment.flip2d_forward(x, flip=np.array([flip], dtype=bool))
        np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("fill_mode,row", [
    ("constant", [9, 9, 0, 1, 2]),  # shifted right by 2
    ("nearest", [0, 0, 0, 1, 2]),
    ("reflect", [1, 0, 0, 1, 2]),
    ("wrap", [3, 4, 0, 1, 2]),
])
def test_translate_fill_modes(fill_mode, row):
    x = image(1, 5)
    y, _ = ref_augment.translate2d_forward(x, shift=np.array([[0, 2]]), fill_mode=fill_mode, fill_value=9.0)
    np.testing.assert_array_equal(y[0, 0, :, 0], row)


def test_translate_down_and_left():
    x = image(3, 3)
    y, _ = ref_augment.translate2d_forward(x, shift=np.array([[1, -1]]), fill_mode="constant", fill_value=-1.0)
    np.testing.assert_array_equal(y[0, :, :, 0], [[-1, -1, -1], [1, 2, -1], [4, 5, -1]])


def test_reflect_beyond_twice_the_size_is_periodic():
    assert [ref_augment.source_index(k, 3, "reflect") for k in range(-7, 10)] == \
        [0, 0, 1, 2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0, 1, 2, 2]  # -7..-1 | 0 1 2 | 3..9


def test_crop_and_zero_pad():
    x = image(4, 5)
    y, _ = ref_augment.crop2d_forward(x, offset=np.array([[1, 2]]), size=(2, 3))
    np.testing.assert_array_equal(y, x[:, 1:3, 2:5])
    y, cache = ref_augment.zero_pad2d_forward(x, padding=((1, 0), (2, 1)))
    np.testing.assert_array_equal(y, np.pad(x, ((0, 0), (1, 0), (2, 1), (0, 0))))
    np.testing.assert_array_equal(ref_augment.zero_pad2d_backward(y, cache), x)


@pytest.mark.parametrize("turns,k", [(0.25, 1), (0.5, 2), (-0.25, -1)])
def test_quarter_turns_are_exact_rotations(turns, k):
    """Counter-clockwise, like np.rot90 on (H, W)."""
    x = np.random.default_rng(2).standard_normal((1, 5, 5, 2))
    for impl in registry.implementations("rotate2d"):
        y, _ = registry.get("rotate2d", impl).forward(
            x, angle=np.array([turns * 2 * math.pi]), fill_mode="constant", fill_value=0.0)
        np.testing.assert_array_equal(y, np.rot90(x, k, axes=(1, 2)), err_msg=impl)


def test_translate_backward_sums_repeated_sources():
    """"nearest" copies the edge pixel three times: its gradient is the sum of the three."""
    x = image(1, 4)
    y, cache = ref_augment.translate2d_forward(x, shift=np.array([[0, 2]]), fill_mode="nearest", fill_value=0.0)
    dx = ref_augment.translate2d_backward(np.ones_like(y), cache)
    np.testing.assert_array_equal(dx[0, 0, :, 0], [3, 1, 0, 0])


# -- layers -------------------------------------------------------------------------------
def batch(N=4, H=6, W=6, C=2, dtype=np.float32):
    return np.random.default_rng(3).random((N, H, W, C)).astype(dtype)


RANDOM_LAYERS = [
    lambda seed=None: L.RandomFlip("horizontal_and_vertical", seed=seed),
    lambda seed=None: L.RandomTranslation(0.3, (-0.2, 0.4), seed=seed),
    lambda seed=None: L.RandomRotation(0.2, fill_mode="constant", seed=seed),
    lambda seed=None: L.RandomCrop(4, 5, seed=seed),
]


@pytest.mark.parametrize("make", RANDOM_LAYERS, ids=["flip", "translation", "rotation", "crop"])
def test_layers_transform_in_training_only_and_are_seeded(make):
    x = batch(N=16)
    a, b, c = make(seed=5), make(seed=5), make(seed=6)
    ya, yb, yc = a(x), b(x), c(x)
    np.testing.assert_array_equal(ya, yb)  # same seed, same draws
    assert not np.array_equal(ya, yc)
    assert not np.array_equal(a(x), ya)  # the next batch gets new draws
    assert ya.dtype == x.dtype
    a.eval()
    if isinstance(a, L.RandomCrop):
        np.testing.assert_array_equal(a(x), x[:, 1:5, 0:5])  # the centre window
    else:
        assert a(x) is x
        assert a.backward(x) is x


@pytest.mark.parametrize("make", RANDOM_LAYERS, ids=["flip", "translation", "rotation", "crop"])
def test_slices_of_a_batch_get_the_whole_batch_draws(make):
    # fastcnn.distributed's protocol (as Dropout's): each rank sets batch_rows = (start, total)
    # and transforms its rows with the draws one process makes for the whole batch.
    x = batch(N=7)
    whole, rank = make(seed=3), make(seed=3)
    for _ in range(2):  # two batches in a row
        state = rank.rng.bit_generator.state
        parts = []
        for start, stop in ((0, 3), (3, 3), (3, 7)):  # an empty slice too, as a rank may get
            rank.rng.bit_generator.state = state  # every rank holds the same generator state
            rank.batch_rows = (start, 7)
            parts.append(rank(x[start:stop]))
        np.testing.assert_array_equal(np.concatenate(parts), whole(x))


def test_layer_draws_follow_the_documented_formulas():
    x = batch(N=5, H=10, W=20)
    layer = L.RandomTranslation((-0.2, 0.3), 0.1, seed=0, impl="numpy")  # its cache holds the index maps
    layer(x)
    u = np.random.default_rng(0).random((5, 2))
    np.testing.assert_array_equal(layer._cache[0][:, 0],  # row map of output row 0: 0 - shift, reflected
                                  ref_source(-np.rint((-0.2 + 0.5 * u[:, 0]) * 10).astype(int), 10))
    flip = L.RandomFlip("horizontal", seed=1, impl="numpy")
    flip(x)
    want = np.random.default_rng(1).random((5, 1))[:, 0] < 0.5
    np.testing.assert_array_equal(flip._cache[1][:, 0] == 19, want)  # column map: reversed where drawn


def ref_source(k, L_):
    return np.array([ref_augment.source_index(int(v), L_, "reflect") for v in k])


def test_repr_shows_non_defaults():
    assert repr(L.RandomFlip()) == "RandomFlip()"
    assert repr(L.RandomFlip("horizontal")) == "RandomFlip('horizontal')"
    assert repr(L.RandomTranslation(0.1, (-0.2, 0.3), fill_mode="constant")) == \
        "RandomTranslation(0.1, (-0.2, 0.3), fill_mode='constant')"
    assert repr(L.ZeroPadding2D(((1, 2), (3, 4)))) == "ZeroPadding2D(((1, 2), (3, 4)))"


def test_padding_and_crop_recipe_round_trips_in_evaluation():
    model = fc.Sequential([L.ZeroPadding2D(2), L.RandomCrop(6, 6), L.Flatten(), L.Dense(3)],
                          input_shape=(6, 6, 2), seed=0)
    x = batch()
    model.eval()
    out = x
    for layer in model.layers[:2]:
        out = layer.forward(out)
    np.testing.assert_array_equal(out, x)
    assert [layer.needs_input_grad for layer in model.layers] == [False, False, False, True]


def test_first_trainable_layer_after_augmentation_skips_its_input_gradient():
    model = fc.Sequential([L.RandomFlip(), L.Conv2D(2, 3), L.ReLU(), L.Flatten(), L.Dense(2)],
                          input_shape=(6, 6, 1), seed=0)
    assert [layer.needs_input_grad for layer in model.layers] == [False, False, True, True, True]
    model.compile("sgd")
    model.train_on_batch(batch(C=1), np.array([0, 1, 0, 1]))


def make_model(seed=0):
    model = fc.Sequential([
        L.ZeroPadding2D(1), L.RandomCrop(6, 6), L.RandomFlip(), L.RandomTranslation(0.2, 0.2),
        L.RandomRotation(0.05), L.Conv2D(3, 3), L.ReLU(), L.Flatten(), L.Dense(3),
    ], input_shape=(6, 6, 1), seed=seed)
    return model.compile(fc.optim.Adam(1e-2))


def test_same_seed_same_training_and_exact_resume(tmp_path):
    rng = np.random.default_rng(4)
    x, y = rng.random((24, 6, 6, 1)).astype(np.float32), rng.integers(0, 3, 24)
    a, b = make_model(), make_model()
    a.fit(x, y, epochs=1, batch_size=8, verbose=0)
    b.fit(x, y, epochs=1, batch_size=8, verbose=0)
    for (name, p, _), (_, q, _) in zip(a.params(), b.params()):
        np.testing.assert_array_equal(p, q, err_msg=name)
    path = a.save(tmp_path / "m")
    a.fit(x, y, epochs=3, initial_epoch=1, batch_size=8, verbose=0)
    resumed = fc.load_model(path)
    assert type(resumed.layers[3]) is L.RandomTranslation and resumed.layers[3].fill_mode == "reflect"
    resumed.fit(x, y, epochs=3, initial_epoch=1, batch_size=8, verbose=0)
    for (name, p, _), (_, q, _) in zip(a.params(), resumed.params()):
        np.testing.assert_array_equal(p, q, err_msg=name)
    c = make_model(seed=1)
    c.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert not np.array_equal(c.params()[0][1], b.params()[0][1])


@pytest.mark.parametrize("make,error,match", [
    (lambda: L.RandomFlip("diagonal"), ValueError, r"`mode` must be one of \['horizontal', .*received 'diagonal'"),
    (lambda: L.RandomTranslation(1.5, 0.1), ValueError, r"`height_factor` must be within \[-1, 1\], received 1.5"),
    (lambda: L.RandomTranslation(0.1, (0.3, 0.2)), ValueError, r"`width_factor` lower bound 0.3 is greater"),
    (lambda: L.RandomTranslation("a", 0.1), TypeError, r"`height_factor` must be a float or a \(lower, upper\)"),
    (lambda: L.RandomTranslation(0.1, 0.1, fill_mode="mirror"), ValueError, r"`fill_mode` must be one of"),
    (lambda: L.RandomRotation(0.1, interpolation="bilinear"), ValueError,
     r"only interpolation='nearest' is implemented .*received 'bilinear'"),
    (lambda: L.RandomRotation(0.1, fill_value=float("nan")), TypeError, r"`fill_value` must be a finite float"),
    (lambda: L.RandomCrop(0, 3), ValueError, r"RandomCrop: `height` must be a positive int, received 0"),
    (lambda: L.RandomFlip(seed=-1), ValueError, r"`seed` must be a non-negative int or None, received -1"),
    (lambda: L.ZeroPadding2D(-1), ValueError, r"`padding` must be a non-negative int, a pair .*received -1"),
    (lambda: L.ZeroPadding2D(((1, 2), 3)), ValueError, r"`padding` must be"),
])
def test_constructor_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_crop_larger_than_input_is_refused():
    with pytest.raises(ValueError, match=r"RandomCrop: the crop \(7, 3\) is larger than the input \(H, W\) = "
                                         r"\(6, 6\); pad first with ZeroPadding2D"):
        fc.Sequential([L.RandomCrop(7, 3), L.Flatten(), L.Dense(2)], input_shape=(6, 6, 1))


@pytest.mark.parametrize("make", [lambda: L.RandomCrop(4, 4), lambda: L.ZeroPadding2D(1)])
def test_a_built_layer_refuses_other_image_sizes(make):
    layer = make()
    layer(batch(H=6, W=6))
    with pytest.raises(ValueError, match=r"was built for images \(None, 6, 6, 2\); received shape \(4, 5, 6, 2\)"):
        layer(batch(H=5, W=6))


@pytest.mark.parametrize("padding,want", [(2, ((2, 2), (2, 2))), ((1, 3), ((1, 1), (3, 3))),
                                          (((0, 1), (2, 3)), ((0, 1), (2, 3)))])
def test_zero_padding_specs(padding, want):
    layer = L.ZeroPadding2D(padding)
    assert layer.padding == want
    y = layer(batch(N=1))
    assert y.shape == (1, 6 + sum(want[0]), 6 + sum(want[1]), 2)


def test_augmentation_inside_a_model_backpropagates_through_its_copy():
    """After a Conv2D, the layer's backward feeds the conv's gradients: the reference and Numba
    implementations of the augmentation give the same gradients on the same draws."""
    grads = []
    for impl in ("reference", "numba"):
        model = fc.Sequential([L.Conv2D(2, 3, padding="same", impl="numpy"),
                               L.RandomTranslation(0.3, 0.3, impl=impl), L.RandomRotation(0.1, impl=impl),
                               L.Flatten(impl="numpy"), L.Dense(3, impl="numpy")],
                              input_shape=(6, 6, 1), seed=0, dtype=np.float64).compile("sgd")
        assert model.layers[1].needs_input_grad
        model.train_on_batch(batch(C=1, dtype=np.float64), np.array([0, 1, 2, 0]))
        grads.append({name: g.copy() for name, _, g in model.params()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        np.testing.assert_array_equal(grads[1][name], grads[0][name], err_msg=name)
    assert np.any(grads[0]["layers.0.weight"] != 0)


# -- functional models ------------------------------------------------------------------------
def functional_model(seed=0):
    """Augmentation in a graph: a branch after the augmentation, a branch from the raw input, an Add,
    and a Concatenate that reads the augmented tensor again."""
    x = fc.Input((6, 6, 1))
    pad, crop, flip = L.ZeroPadding2D(1), L.RandomCrop(6, 6), L.RandomFlip()
    after_aug, from_input, after_add = L.Conv2D(2, 3, padding="same"), L.Conv2D(2, 1), L.Conv2D(2, 3, padding="same")
    add, concat, dense = L.Add(), L.Concatenate(), L.Dense(3)
    a = flip(crop(pad(x)))
    y = after_add(add([after_aug(a), from_input(x)]))
    logits = dense(L.Flatten()(concat([y, a])))
    model = fc.Model(x, logits, seed=seed).compile(fc.optim.Adam(1e-2))
    named = dict(pad=pad, crop=crop, flip=flip, after_aug=after_aug, from_input=from_input, add=add,
                 after_add=after_add, concat=concat, dense=dense)
    return model, named


def test_functional_model_skips_input_gradients_only_before_the_first_computed_tensor():
    model, named = functional_model()
    need = {name: layer.needs_input_grad for name, layer in named.items()}
    assert need == dict(pad=False, crop=False, flip=False, after_aug=False, from_input=False, add=True,
                        after_add=True, concat=True, dense=True)
    # Skipping those gradients changes nothing: the same step with every input gradient computed.
    rng = np.random.default_rng(4)
    x, y = rng.random((8, 6, 6, 1)).astype(np.float32), rng.integers(0, 3, 8)
    full, _ = functional_model()
    for layer in full.layers:
        if not getattr(layer, "accepts_no_gradient", False):
            layer.needs_input_grad = True
    full._replan()
    assert model.train_on_batch(x, y) == full.train_on_batch(x, y)
    for (name, p, g), (_, q, h) in zip(model.params(), full.params()):
        np.testing.assert_array_equal(g, h, err_msg=name)
        np.testing.assert_array_equal(p, q, err_msg=name)
    assert np.any(named["after_aug"].grads["weight"] != 0)


def test_functional_augmentation_is_seeded_by_the_model_and_resumes_exactly(tmp_path):
    rng = np.random.default_rng(5)
    x, y = rng.random((16, 6, 6, 1)).astype(np.float32), rng.integers(0, 3, 16)
    (a, _), (b, _), (c, _) = functional_model(), functional_model(), functional_model(seed=1)
    for m in (a, b, c):
        m.fit(x, y, epochs=1, batch_size=8, verbose=0)
    for (name, p, _), (_, q, _) in zip(a.params(), b.params()):
        np.testing.assert_array_equal(p, q, err_msg=name)
    assert not np.array_equal(a.params()[0][1], c.params()[0][1])
    path = a.save(tmp_path / "g")
    a.fit(x, y, epochs=3, initial_epoch=1, batch_size=8, verbose=0)
    resumed = fc.load_model(path)
    resumed.fit(x, y, epochs=3, initial_epoch=1, batch_size=8, verbose=0)
    for (name, p, _), (_, q, _) in zip(a.params(), resumed.params()):
        np.testing.assert_array_equal(p, q, err_msg=name)
    a.eval()
    np.testing.assert_array_equal(a(x), resumed.eval()(x))  # evaluation: the augmentation is the identity
