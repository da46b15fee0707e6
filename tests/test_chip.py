"""CHIP: planted truth, class-level fits, refinement, numerical safety."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chipjax as cj
from chipjax import chip
from chipjax.errors import InputError
from chipjax.tap import Tap

K, C, H = 12, 4, 6


def linear_tap(V):
    """Features are the input itself; tail = spatial mean then a linear layer ``V (K, C)``."""

    def head_fn(variables, x):
        return x

    def tail_fn(variables, a):
        return a.mean(axis=(1, 2)) @ variables["V"]

    return Tap(layer="features", head_fn=head_fn, tail_fn=tail_fn, variables={"V": jnp.asarray(V)})


def planted_problem(seed=0):
    rng = np.random.default_rng(seed)
    V = np.zeros((K, C), np.float32)
    support = [1, 4, 7]
    V[support, 2] = [3.0, -2.0, 1.0]
    V[[0, 9], 0] = [1.0, 1.0]
    A = rng.uniform(0.5, 1.5, (1, H, H, K)).astype(np.float32)
    return V, A, support


def test_planted_support_sign_and_order_recovered():
    V, A, support = planted_problem()
    tap = linear_tap(V)
    targets = jnp.array([2])
    W, _ = chip.image_weights(tap, jnp.asarray(A), targets, jax.random.PRNGKey(0), num_masks=512, chunk=64,
                              keep_prob=0.5, design="iid", score="logit", lam_ratio=0.01, nonneg=False)
    w = np.asarray(W[0])
    truth = A[0].mean(axis=(0, 1)) * V[:, 2]  # the exact linear effect of each channel on the target logit
    found = np.flatnonzero(np.abs(w) > 1e-3 * np.abs(w).max())
    assert sorted(found.tolist()) == support
    assert np.all(np.sign(w[support]) == np.sign(truth[support]))
    assert np.argsort(-np.abs(w[support])).tolist() == np.argsort(-np.abs(truth[support])).tolist()
    # with λ → 0 the fit is the exact linear effect (noise-free data), shrunk by λ only
    np.testing.assert_allclose(w[support], truth[support], rtol=0.05)


def test_image_level_maps_batch_with_own_targets_equals_one_by_one():
    V, A, _ = planted_problem()
    rng = np.random.default_rng(1)
    A2 = np.concatenate([A, rng.uniform(0.5, 1.5, A.shape).astype(np.float32)])
    tap = linear_tap(V)
    kw = dict(num_masks=128, chunk_size=64, score="logit", lam_ratio=0.01)
    both = chip.chip_maps(tap, jnp.asarray(A2[..., :3]) * 0 + 1, jnp.array([2, 0]), features=jnp.asarray(A2), **kw)
    first = chip.chip_maps(tap, jnp.ones((1, H, H, 3)), jnp.array([2]), features=jnp.asarray(A2[:1]), **kw)
    second = chip.chip_maps(tap, jnp.ones((1, H, H, 3)), jnp.array([0]), features=jnp.asarray(A2[1:]), **kw)
    np.testing.assert_allclose(np.asarray(both[0]), np.asarray(first[0]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(both[1]), np.asarray(second[0]), atol=1e-5)


def test_explain_path_computes_the_mask_gram_and_lipschitz_once_per_stream():
    from chipjax import perturb

    V, A, _ = planted_problem()
    tap = linear_tap(V)
    rng = np.random.default_rng(5)
    perturb.clear_mask_cache()
    before = dict(perturb.STREAM_COMPUTATIONS)
    for i in range(3):  # three different images, one seed: one mask stream
        feats = jnp.asarray(rng.uniform(0.5, 1.5, A.shape).astype(np.float32))
        chip.chip_maps(tap, jnp.ones((1, H, H, 3)), jnp.array([i]), features=feats, num_masks=96, chunk_size=32)
    grams = perturb.STREAM_COMPUTATIONS["gram"] - before.get("gram", 0)
    lips = perturb.STREAM_COMPUTATIONS["lipschitz"] - before.get("lipschitz", 0)
    assert (grams, lips) == (1, 1)
    chip.chip_maps(tap, jnp.ones((1, H, H, 3)), jnp.array([0]), features=feats, num_masks=96, seed=1)
    assert perturb.STREAM_COMPUTATIONS["gram"] - before.get("gram", 0) == 2  # a new seed is a new stream


def test_auto_computes_each_lipschitz_once_per_stream():
    """num_masks="auto": a second image with the same seed reuses every half's and the union's Lipschitz constant."""
    from chipjax import perturb

    V, A, _ = planted_problem()
    tap = linear_tap(V)
    kw = dict(round_masks=32, max_masks=128, stability=0.999999, score="logit", lam_ratio=0.01)
    perturb.clear_mask_cache()
    before = perturb.STREAM_COMPUTATIONS.copy()
    first = chip.auto_weights(tap, jnp.asarray(A), jnp.array([2]), jax.random.key(0), (H, H), **kw)
    counted = {name: perturb.STREAM_COMPUTATIONS[name] - before[name] for name in ("lipschitz/half", "lipschitz/all")}
    assert first.num_masks == 128 and counted == {"lipschitz/half": 4, "lipschitz/all": 1}  # 2 checks × 2 halves
    feats = jnp.asarray(np.random.default_rng(3).uniform(0.5, 1.5, A.shape).astype(np.float32))
    again = perturb.STREAM_COMPUTATIONS.copy()
    second = chip.auto_weights(tap, feats, jnp.array([1]), jax.random.key(0), (H, H), **kw)
    assert all(perturb.STREAM_COMPUTATIONS[n] == again[n] for n in ("lipschitz/half", "lipschitz/all", "gram"))
    # the cached constants give the weights a fresh computation gives
    perturb.clear_mask_cache()
    fresh = chip.auto_weights(tap, feats, jnp.array([1]), jax.random.key(0), (H, H), **kw)
    np.testing.assert_array_equal(np.asarray(second.weights), np.asarray(fresh.weights))


def test_stream_cache_holds_one_auto_stream_of_the_widest_zoo_tap():
    """A loop over images with num_masks="auto" reuses every round's Gram only if one whole stream fits the LRU:
    at ResNet-50 layer4 (K = 2 048) the default cap is 32 rounds of 16 MiB Grams plus their scalar constants."""
    from chipjax import perturb

    rounds = chip.AUTO["max_masks"] // chip.AUTO["round_masks"]
    assert rounds + 1 <= perturb.GRAM_CACHE_SIZE
    assert rounds * (2048 * 2048 * 4 + 2 * 4) + 2048 * 2048 * 4 <= perturb.GRAM_CACHE_BYTES  # and one fixed stream


def test_batched_solve_equals_separate_lasso_per_image():
    """One multi-output lasso on the shared G == B single-output lassos (solvers.chip_weights on the batched stats)."""
    from chipjax import perturb, solvers

    V, A, _ = planted_problem()
    rng = np.random.default_rng(6)
    A3 = jnp.asarray(np.concatenate([A] + [rng.uniform(0.5, 1.5, A.shape).astype(np.float32) for _ in range(2)]))
    tap = linear_tap(V)
    targets = jnp.array([2, 0, 1])
    W, shared = chip.image_weights(tap, A3, targets, jax.random.key(2), num_masks=300, chunk=50, score="prob")
    one_by_one = solvers.chip_weights(perturb.expand_shared(shared, 3), 0.05, tol=chip.SOLVER_TOL)[..., 0]
    np.testing.assert_allclose(np.asarray(W), np.asarray(one_by_one), rtol=1e-3, atol=1e-4 * float(jnp.abs(W).max()))


def test_rounds_of_one_stream_merge_to_the_whole_stream():
    from chipjax import perturb

    V, A, _ = planted_problem()
    tap, key = linear_tap(V), jax.random.key(4)
    kw = dict(chunk=16, classes=jnp.array([[2]]), score="logit")
    whole = perturb.shared_perturbation_stats(tap.tail_fn, tap.variables, jnp.asarray(A), key, num_masks=96, **kw)
    parts = [perturb.shared_perturbation_stats(tap.tail_fn, tap.variables, jnp.asarray(A), key, num_masks=32,
                                               first=f, **kw) for f in (0, 32, 64)]
    merged = chip._merge_shared(chip._merge_shared(parts[0], parts[1]), parts[2])
    for a, b in zip(merged, whole):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5 * float(jnp.abs(b).max()) + 1e-7)


def test_auto_mask_count_stops_when_maps_are_stable():
    V, A, _ = planted_problem()
    tap = linear_tap(V)
    fit = chip.auto_weights(tap, jnp.asarray(A), jnp.array([2]), jax.random.key(0), (H, H), round_masks=64,
                            max_masks=4096, stability=0.99, score="logit", lam_ratio=0.01)
    assert fit.num_masks % 128 == 0 and 128 <= fit.num_masks <= 4096
    assert fit.stability.min() >= 0.99 or fit.num_masks + 128 > 4096
    fixed, _ = chip.image_weights(tap, jnp.asarray(A), jnp.array([2]), jax.random.key(9), num_masks=4096,
                                  score="logit", lam_ratio=0.01)
    a, b = np.asarray(fit.weights[0]), np.asarray(fixed[0])
    assert np.corrcoef(a, b)[0, 1] > 0.99
    # a score no linear model of the masks explains (the sine of a large logit) keeps streaming up to the cap
    wild = Tap(layer="features", head_fn=tap.head_fn, variables=tap.variables,
               tail_fn=lambda v, a: jnp.sin(10.0 * tap.tail_fn(v, a)))
    capped = chip.auto_weights(wild, jnp.asarray(A), jnp.array([2]), jax.random.key(0), (H, H), round_masks=64,
                               max_masks=256, stability=0.999999, score="logit", lam_ratio=0.01)
    assert capped.num_masks == 256 and capped.stability.min() < 0.999999
    maps = chip.chip_maps(tap, jnp.ones((1, H, H, 3)), jnp.array([2]), features=jnp.asarray(A), num_masks="auto")
    assert maps.shape == (1, H, H) and np.isfinite(np.asarray(maps)).all()
    with pytest.raises(InputError):
        chip.auto_weights(tap, jnp.asarray(A), jnp.array([2]), jax.random.key(0), (H, H), stability=1.5)


def test_no_nan_for_constant_features_zero_scores_and_large_lambda():
    tap = linear_tap(np.zeros((K, C), np.float32))  # every score identical: all-zero signal
    A = jnp.ones((1, H, H, K))
    maps = chip.chip_maps(tap, jnp.ones((1, H, H, 3)), jnp.array([0]), features=A, num_masks=64, score="logit")
    assert np.isfinite(np.asarray(maps)).all() and float(jnp.abs(maps).max()) == 0.0
    V, A2, _ = planted_problem()
    maps = chip.chip_maps(linear_tap(V), jnp.ones((1, H, H, 3)), jnp.array([2]), features=jnp.asarray(A2),
                          num_masks=64, score="prob", lam_ratio=0.999)
    assert np.isfinite(np.asarray(maps)).all()


@pytest.mark.parametrize("bad", [dict(keep_prob=0.0), dict(keep_prob=1.0), dict(num_masks=0), dict(lam_ratio=-0.1),
                                 dict(score="nope"), dict(design="sobol"), dict(num_masks="many"),
                                 dict(lam_ratio="0.05"), dict(chunk_size=0)])
def test_bad_options_raise_input_error(bad):
    V, A, _ = planted_problem()
    with pytest.raises(InputError):
        chip.chip_maps(linear_tap(V), jnp.ones((1, H, H, 3)), jnp.array([2]), features=jnp.asarray(A), **bad)


def test_fuse_maps_geometric_mean_and_range():
    a = jnp.array([[[0.0, 0.5], [1.0, 1.0]]])
    b = jnp.array([[[1.0, 0.5], [0.25, 1.0]]])
    fused = chip.fuse_maps([a, b])
    assert fused.shape == (1, 2, 2)
    assert float(fused.min()) == 0.0 and float(fused.max()) == 1.0
    # by hand: a -> [0, .5, 1, 1], b -> [1, 1/3, 0, 1] after min-max; geometric mean, clipped at 1e-6; min-max again
    an = np.clip(np.array([0.0, 0.5, 1.0, 1.0]), 1e-6, 1)
    bn = np.clip(np.array([1.0, 1 / 3, 0.0, 1.0]), 1e-6, 1)
    g = np.sqrt(an * bn)
    expected = (g - g.min()) / (g.max() - g.min())
    np.testing.assert_allclose(np.asarray(fused).ravel(), expected, atol=1e-5)
    mean = chip.fuse_maps([a, b], fusion="mean")
    m = (np.array([0.0, 0.5, 1.0, 1.0]) + np.array([1.0, 1 / 3, 0.0, 1.0])) / 2
    np.testing.assert_allclose(np.asarray(mean).ravel(), (m - m.min()) / (m.max() - m.min()), atol=1e-5)
    with pytest.raises(InputError):
        chip.fuse_maps([a, b], fusion="bogus")


def test_class_level_fit_recovers_each_class_and_round_trips(tmp_path):
    V, A, support = planted_problem()

    class Toy:
        name = "toy"
        layers = ["features"]

        def tap(self, layer=None):
            return linear_tap(V)

    rng = np.random.default_rng(3)
    feats = [jnp.asarray(rng.uniform(0.5, 1.5, (2, H, H, K)).astype(np.float32)) for _ in range(3)]
    batches = [(f, np.array([2, 0])) for f in feats]
    model = chip.CHIP.fit(Toy(), None, batches, num_masks=256, chunk_size=128, score="logit", lam_ratio=0.01)
    W = np.asarray(model.weights)
    assert W.shape == (K, C)
    assert sorted(np.flatnonzero(np.abs(W[:, 2]) > 1e-3 * np.abs(W[:, 2]).max()).tolist()) == support
    assert sorted(np.flatnonzero(np.abs(W[:, 0]) > 1e-3 * np.abs(W[:, 0]).max()).tolist()) == [0, 9]
    model.save(tmp_path / "cm")
    back = chip.CHIP.load(tmp_path / "cm")
    np.testing.assert_array_equal(np.asarray(back.weights), W)
    assert back.layer == "features" and back.arch == "toy"


def test_user_flax_module_explained_by_layer_name(small_cnn):
    module = small_cnn
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
    variables = module.init(jax.random.PRNGKey(1), x)
    tap = cj.tap_module(module, "conv2", x, variables)
    np.testing.assert_allclose(np.asarray(tap.tail(tap.head(x))), np.asarray(module.apply(variables, x)), atol=1e-5)
    maps = cj.explain(tap, x, method="chip", num_masks=64)
    assert maps.shape == (2, 16, 16)
    assert np.isfinite(np.asarray(maps)).all() and float(maps.min()) >= 0 and float(maps.max()) <= 1
    with pytest.raises(cj.errors.LayerError, match="conv1"):
        cj.tap_module(module, "conv9", x, variables)
    # Refined CHIP on the user's own network: a list of its taps, shallow to deep
    taps = [cj.tap_module(module, name, x, variables) for name in ("conv1", "conv2")]
    fused = cj.explain(taps, x, method="refined-chip", num_masks=64)
    assert fused.shape == (2, 16, 16) and np.isfinite(np.asarray(fused)).all()
    expected = chip.fuse_maps([cj.explain(t, x, method="chip", num_masks=64, target=jnp.argmax(module.apply(variables, x), -1))
                               for t in taps])
    np.testing.assert_allclose(np.asarray(fused), np.asarray(expected), atol=1e-5)
    with pytest.raises(InputError, match="list of its taps"):
        cj.explain(taps, x, method="refined-chip", layer="conv1")
    # per-channel mask counts: conv1 (8 channels) gets half the masks of conv2 (16)
    target = jnp.argmax(module.apply(variables, x), -1)
    fused = cj.explain(taps, x, method="refined-chip", num_masks=128, layer_masks="per-channel")
    expected = chip.fuse_maps([cj.explain(t, x, method="chip", num_masks=n, target=target)
                               for t, n in zip(taps, (64, 128))])
    np.testing.assert_allclose(np.asarray(fused), np.asarray(expected), atol=1e-5)
    with pytest.raises(InputError, match="seed"):
        cj.explain(tap, x, method="chip", num_masks=64, seed="0")


def test_layer_mask_counts_equal_and_per_channel():
    assert chip.layer_mask_counts(2048, [672, 1152, 1280]) == [2048, 2048, 2048]
    # ⌈2048·672/1280⌉ = 1076 -> 1088 and ⌈2048·1152/1280⌉ = 1844 -> 1856 (multiples of 64)
    assert chip.layer_mask_counts(2048, [672, 1152, 1280], "per-channel") == [1088, 1856, 2048]
    assert chip.layer_mask_counts(100, [1, 4], "per-channel") == [64, 100]  # never above num_masks
    with pytest.raises(InputError, match="per-channel"):
        chip.layer_mask_counts(2048, [8, 16], "by-depth")


def class_level_reference(V, feats, labels, num_masks, seed, lam_ratio):
    """Class-level CHIP from first principles: the explicit masks, the toy tail's logits in numpy, and per class
    one scikit-learn lasso on every (mask, image) pair of its images (each image's scores centred: its intercept)."""
    from sklearn.linear_model import Lasso

    from chipjax import perturb

    masks = np.asarray(perturb.sample_masks(jax.random.PRNGKey(seed), jnp.arange(num_masks), K, 0.5))  # (N, K)
    Mc = masks - masks.mean(0)
    W = {}
    for c in sorted(set(labels)):
        ys = []
        for A, y in zip(feats, labels):
            if y == c:
                scores = (A.mean(axis=(0, 1))[None] * masks) @ V[:, c]  # (N,) logit of class c
                ys.append(scores - scores.mean())
        X, y = np.tile(Mc, (len(ys), 1)), np.concatenate(ys)
        lam = lam_ratio * np.abs(X.T @ y / len(y)).max()
        W[c] = Lasso(alpha=lam, fit_intercept=False, tol=1e-10, max_iter=100000).fit(X, y).coef_
    return W


def test_class_level_fit_equals_scikit_learn_and_solves_only_seen_classes():
    V, _, _ = planted_problem()
    rng = np.random.default_rng(5)
    feats = rng.uniform(0.5, 1.5, (6, H, H, K)).astype(np.float32)
    labels = [2, 0, 2, 2, 0, 2]
    tap = linear_tap(V)
    acc = chip.ClassStatsAccumulator(tap, num_masks=256, keep_prob=0.5, score="logit", seed=4, chunk_size=96)
    before = None
    for i in range(0, 6, 3):
        acc.add(jnp.asarray(feats[i:i + 3]), np.array(labels[i:i + 3]))
        if before is not None:
            assert before.is_deleted()  # the running sums are donated to the jitted update, not copied
        before = acc.sums["class_cross_sum"]
    assert acc.mask_stats.mask_comoment.shape == (K, K)  # one mask Gram for all images, not one per image
    cm = acc.to_model("toy", dict(lam_ratio=0.05, nonneg=False))
    W = np.asarray(cm.weights)
    ref = class_level_reference(V, feats, labels, 256, 4, 0.05)
    for c, w in ref.items():
        np.testing.assert_allclose(W[:, c], w, rtol=1e-3, atol=1e-4 * np.abs(w).max())
    assert cm.fitted_classes.tolist() == [True, False, True, False]
    assert not W[:, [1, 3]].any()  # classes without images are not solved
    with pytest.raises(InputError, match="had no images"):
        cm.explain(type("M", (), {"name": "toy", "layers": ["features"], "tap": lambda self, l=None: tap})(),
                   jnp.asarray(feats[:2]), jnp.array([1, 2]))
    # "all" scores every class: the seen classes get the same weights, the others the pooled statistics
    full = chip.ClassStatsAccumulator(tap, num_masks=256, keep_prob=0.5, score="logit", seed=4, chunk_size=96,
                                      classes="all")
    full.add(jnp.asarray(feats), np.array(labels))
    Wall = np.asarray(full.to_model("toy", dict(lam_ratio=0.05, nonneg=False)).weights)
    np.testing.assert_allclose(Wall[:, [0, 2]], W[:, [0, 2]], rtol=1e-4, atol=1e-6)
    assert full.fitted_classes().all()  # every class solved (1 and 3 from the pooled statistics; V gives them 0)


def test_class_level_model_remembers_its_fitted_classes(tmp_path):
    cm = chip.CHIP(weights=jnp.ones((K, C)), arch="toy", layer="features", config={},
                   fitted_classes=np.array([True, False, True, True]))
    cm.save(tmp_path / "m")
    back = chip.CHIP.load(tmp_path / "m")
    assert back.fitted_classes.tolist() == [True, False, True, True]
    with pytest.raises(InputError, match=r"\[1\]"):
        back.check_fitted([0, 1])
