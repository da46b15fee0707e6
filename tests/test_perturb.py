"""The perturbation engine: mask stream, streamed statistics against a float64 reference, memory budget, bf16."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chipjax import perturb
from chipjax import stats as st
from chipjax.errors import InputError, ResourceError

B, H, K, C = 2, 3, 6, 5


def tiny_tail(variables, a):
    """A non-linear tail: ``(n, H, H, K) -> (n, C)``."""
    return jnp.tanh(a.mean(axis=(1, 2)) @ variables["U"]) @ variables["V"] + variables["b"]


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    variables = {"U": rng.normal(size=(K, K)).astype(np.float32), "V": rng.normal(size=(K, C)).astype(np.float32),
                 "b": rng.normal(size=(C,)).astype(np.float32)}
    A = rng.uniform(0.5, 1.5, (B, H, H, K)).astype(np.float32)
    return variables, A


def reference_stats(variables, A, masks, score, classes=None):
    """Float64 numpy: build every perturbed output explicitly, then the centred moments per image."""
    v = {k: np.asarray(x, np.float64) for k, x in variables.items()}
    m = np.asarray(masks, np.float64)  # (N, K)
    perturbed = np.asarray(A, np.float64)[None] * m[:, None, None, None, :]  # (N, B, H, H, K)
    logits = np.tanh(perturbed.mean(axis=(2, 3)) @ v["U"]) @ v["V"] + v["b"]  # (N, B, C)
    if score == "logit":
        y = logits
    else:
        z = logits - logits.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        y = np.exp(logp) if score == "prob" else logp
    if classes is not None:
        y = np.take_along_axis(y, np.asarray(classes)[None], axis=-1)
    out = []
    for b in range(A.shape[0]):
        dm, dy = m - m.mean(0), y[:, b] - y[:, b].mean(0)
        out.append([len(m), m.mean(0), y[:, b].mean(0), dm.T @ dm, dm.T @ dy, (dy ** 2).sum(0)])
    return [np.stack(f) for f in zip(*out)]


def assert_stats_close(got, want, rtol=2e-5):
    for name, g, w in zip(st.Stats._fields, got, want):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        assert g.shape == w.shape, (name, g.shape, w.shape)
        scale = max(np.abs(w).max(), 1e-30)
        assert np.abs(g - w).max() <= rtol * scale, (name, np.abs(g - w).max() / scale)


# ------------------------------------------------------------------------------------------ masks


sample = jax.jit(perturb.sample_masks, static_argnums=(2, 3, 4))


def test_mask_stream_does_not_depend_on_chunks():
    key = jax.random.key(7)
    for design in perturb.DESIGNS:
        whole = sample(key, jnp.arange(64), 33, 0.4, design)
        parts = [sample(key, jnp.arange(s, min(s + 3, 64)), 33, 0.4, design) for s in range(0, 64, 3)]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
        assert set(np.unique(whole).tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("K_, p", [(6, 0.5), (7, 0.5), (33, 0.3), (2048, 0.5), (100, 0.9)])
def test_balanced_masks_keep_exactly_round_pK_channels(K_, p):
    masks = np.asarray(sample(jax.random.key(1), jnp.arange(400), K_, p, "balanced"))
    assert np.all(masks.sum(1) == round(p * K_))
    if K_ <= 100:  # every channel equally likely to stay on: frequency p ± 5 standard errors
        freq = masks.mean(0)
        assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / 400) + 1e-9)
    subsets = math.comb(K_, round(p * K_))
    assert len({row.tobytes() for row in masks}) >= min(subsets, 390)  # every subset turns up, none dominates


def test_unknown_design_is_refused():
    with pytest.raises(InputError, match="unknown mask design"):
        perturb.sample_masks(jax.random.key(0), jnp.arange(4), 8, 0.5, "antithetic")


def test_bernoulli_masks_have_the_keep_probability():
    masks = np.asarray(sample(jax.random.key(2), jnp.arange(2000), 50, 0.3, "iid"))
    assert abs(masks.mean() - 0.3) < 0.01


def test_fair_bit_masks_are_independent_bernoulli_halves():
    """keep_prob 0.5 draws one random bit per channel (32 channels per random word): every channel on
    half the time and no two channels correlated, within and across words, beyond sampling noise."""
    N = 4000
    masks = np.asarray(sample(jax.random.key(9), jnp.arange(N), 70, 0.5, "iid"))
    assert set(np.unique(masks).tolist()) == {0.0, 1.0}
    assert np.all(np.abs(masks.mean(0) - 0.5) < 5 * np.sqrt(0.25 / N))
    r = np.corrcoef(masks.T) - np.eye(70)
    assert np.abs(r).max() < 5 / np.sqrt(N)
    assert len({row.tobytes() for row in masks}) == N  # 2^70 masks: no repeats


# ------------------------------------------------------------------------------------------ stats


@pytest.mark.parametrize("score, design", [("prob", "iid"), ("logit", "balanced"), ("logprob", "iid")])
def test_stats_equal_direct_float64_computation(problem, score, design):
    variables, A = problem
    key, N = jax.random.key(3), 37
    got = perturb.perturbation_stats(tiny_tail, variables, jnp.asarray(A), key, num_masks=N, chunk=5, score=score,
                                     design=design)
    masks = perturb.sample_masks(key, jnp.arange(N), K, 0.5, design)
    assert_stats_close(got, reference_stats(variables, A, masks, score))


def test_stats_of_selected_classes(problem):
    variables, A = problem
    key, N = jax.random.key(4), 40
    classes = jnp.array([[3], [0]])
    got = perturb.perturbation_stats(tiny_tail, variables, jnp.asarray(A), key, num_masks=N, chunk=8,
                                     classes=classes)
    masks = perturb.sample_masks(key, jnp.arange(N), K)
    assert_stats_close(got, reference_stats(variables, A, masks, "prob", classes))


def test_stats_do_not_depend_on_chunk_size(problem):
    variables, A = problem
    key = jax.random.key(5)
    runs = [perturb.perturbation_stats(tiny_tail, variables, jnp.asarray(A), key, num_masks=50, chunk=c)
            for c in (3, 7, 64)]
    for other in runs[1:]:
        np.testing.assert_array_equal(other.mask_comoment, runs[0].mask_comoment)  # exact integer sums
        assert_stats_close(other, runs[0], rtol=1e-5)


def test_scores_far_from_zero_keep_their_precision(problem):
    """The shifted sums must not lose the co-moments under a large common offset of the scores."""
    variables, A = problem
    shifted = dict(variables, b=variables["b"] + 3000.0)
    key, N = jax.random.key(6), 256
    got = perturb.perturbation_stats(tiny_tail, shifted, jnp.asarray(A), key, num_masks=N, chunk=16, score="logit")
    masks = perturb.sample_masks(key, jnp.arange(N), K)
    want = reference_stats(shifted, A, masks, "logit")
    # the offset itself is exact to float32 only; the centred moments must stay accurate
    np.testing.assert_allclose(got.score_mean, want[2], rtol=1e-6)
    for field in (4, 5):
        np.testing.assert_allclose(got[field], want[field], rtol=2e-3, atol=2e-3 * np.abs(want[field]).max())


def test_shared_layout_is_the_batched_layout_without_copies(problem):
    variables, A = problem
    kw = dict(num_masks=20, chunk=6)
    shared = perturb.shared_perturbation_stats(tiny_tail, variables, jnp.asarray(A), jax.random.key(0), **kw)
    batched = perturb.perturbation_stats(tiny_tail, variables, jnp.asarray(A), jax.random.key(0), **kw)
    assert shared.mask_comoment.shape == (K, K) and batched.mask_comoment.shape == (B, K, K)
    for a, b in zip(perturb.expand_shared(shared, B), batched):
        np.testing.assert_array_equal(a, b)


def test_mask_gram_is_exact_cached_and_the_same_as_in_the_loop(problem):
    variables, A = problem
    perturb.clear_mask_cache()
    key = jax.random.key(11)
    gram = perturb.mask_gram(key, num_masks=70, num_channels=K)
    m = np.asarray(sample(key, jnp.arange(70), K, 0.5, "iid"), np.float64)
    np.testing.assert_array_equal(gram, m.T @ m)
    assert perturb.mask_gram(key, num_masks=70, num_channels=K) is gram  # from the cache
    assert perturb.mask_gram(jax.random.key(12), num_masks=70, num_channels=K) is not gram
    # eager call (cached Gram) == traced key inside jit (Gram computed in the sweep)
    eager = perturb.perturbation_stats(tiny_tail, variables, jnp.asarray(A), key, num_masks=70, chunk=16)
    traced = jax.jit(lambda k: perturb.perturbation_stats(tiny_tail, variables, jnp.asarray(A), k, num_masks=70,
                                                          chunk=16))(key)
    for a, b in zip(eager, traced):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    for _ in range(perturb.GRAM_CACHE_SIZE + 1):
        perturb.mask_gram(jax.random.key(_ + 100), num_masks=8, num_channels=3)
    assert len(perturb._STREAM_CACHE) == perturb.GRAM_CACHE_SIZE  # bounded
    with pytest.raises(InputError, match="concrete"):
        jax.jit(lambda k: perturb.mask_gram(k, num_masks=8, num_channels=3))(key)


def test_bf16_mask_gram_is_exact():
    masks = perturb.sample_masks(jax.random.key(0), jnp.arange(300), 70)
    weighted = masks * (jnp.arange(300) < 250)[:, None]
    np.testing.assert_array_equal(perturb._mask_gram(weighted, masks, "bf16"),
                                  perturb._mask_gram(weighted, masks, "f32"))
    assert perturb.mask_gram_mode("gpu") == "bf16" and perturb.mask_gram_mode("cpu") == "f32"


def test_bf16_compute_is_close_to_float32(problem):
    variables, A = problem
    kw = dict(num_masks=256, chunk=64, score="logit")
    f32 = perturb.perturbation_stats(tiny_tail, variables, jnp.asarray(A), jax.random.key(8), **kw)
    bf16 = perturb.perturbation_stats(tiny_tail, variables, jnp.asarray(A), jax.random.key(8),
                                      compute_dtype=jnp.bfloat16, **kw)
    np.testing.assert_array_equal(bf16.mask_comoment, f32.mask_comoment)  # same masks, exact
    assert bf16.cross_comoment.dtype == jnp.float32
    R32, R16 = np.asarray(st.cross(f32)), np.asarray(st.cross(bf16))
    assert np.abs(R16 - R32).max() < 0.03 * np.abs(R32).max()
    assert np.corrcoef(R16.ravel(), R32.ravel())[0, 1] > 0.999


def test_bad_arguments_are_refused(problem):
    variables, A = problem
    call = lambda **kw: perturb.perturbation_stats(tiny_tail, variables, jnp.asarray(A), jax.random.key(0),  # noqa: E731
                                                   **{"num_masks": 8, "chunk": 4, **kw})
    with pytest.raises(InputError, match="num_masks"):
        call(num_masks=1)
    with pytest.raises(InputError, match="2\\*\\*24"):
        call(num_masks=2 ** 24 + 1)
    with pytest.raises(InputError, match="keep_prob"):
        call(keep_prob=1.0)
    with pytest.raises(InputError, match="chunk"):
        call(chunk=0)
    with pytest.raises(InputError, match="score"):
        call(score="softmax")
    with pytest.raises(InputError, match="classes"):
        call(classes=jnp.zeros((3, 1), jnp.int32))


# ------------------------------------------------------------------------------------------ memory


def conv_tail(variables, a):
    """A small conv tail: 3×3 conv (K -> 32), ReLU, mean, dense."""
    h = jax.lax.conv_general_dilated(a, variables["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(h).mean(axis=(1, 2)) @ variables["d"]


@pytest.fixture(scope="module")
def conv_problem():
    rng = np.random.default_rng(1)
    variables = {"w": rng.normal(size=(3, 3, 16, 32)).astype(np.float32) * 0.1,
                 "d": rng.normal(size=(32, 10)).astype(np.float32)}
    return variables, jnp.asarray(rng.uniform(size=(2, 12, 12, 16)).astype(np.float32))


def test_memory_estimate_follows_the_live_activations_and_chunk_fits_the_budget(conv_problem):
    variables, A = conv_problem
    need = perturb.tail_memory(conv_tail, variables, A)
    # per evaluation: the masked input, then the conv output and its ReLU alive together (float32),
    # then the small pooled / logit / score rows
    input_bytes, conv_bytes = 12 * 12 * 16 * 4, 12 * 12 * 32 * 4
    live = input_bytes + perturb.ACTIVATION_MARGIN * 2 * conv_bytes
    assert live <= need.per_eval <= live + 1024
    chunks = []
    for budget in (need.fixed + 3 * (2 * need.per_eval + need.per_mask), 2 ** 22, 2 ** 26):
        chunk = perturb.chunk_for_memory(conv_tail, variables, A, num_masks=10_000, memory_budget=budget)
        assert need.fixed + chunk * (2 * need.per_eval + need.per_mask) <= budget
        chunks.append(chunk)
    assert chunks[0] == 3 and chunks[0] < chunks[1] < chunks[2]
    assert perturb.chunk_for_memory(conv_tail, variables, A, num_masks=10, memory_budget=2 ** 30) == 10


def test_memory_budget_picks_the_chunk_and_gives_the_same_stats(conv_problem):
    variables, A = conv_problem
    key = jax.random.key(0)
    budget = 2 ** 21
    chunk = perturb.chunk_for_memory(conv_tail, variables, A, num_masks=40, memory_budget=budget)
    assert 1 <= chunk < 40
    by_budget = perturb.perturbation_stats(conv_tail, variables, A, key, num_masks=40, memory_budget=budget)
    by_chunk = perturb.perturbation_stats(conv_tail, variables, A, key, num_masks=40, chunk=chunk)
    for a, b in zip(by_budget, by_chunk):
        np.testing.assert_array_equal(a, b)


def test_request_that_cannot_fit_raises_before_running(conv_problem):
    variables, A = conv_problem
    calls = []

    def watched_tail(v, a):
        calls.append(a)
        return conv_tail(v, a)

    with pytest.raises(ResourceError, match="memory budget"):
        perturb.perturbation_stats(watched_tail, variables, A, jax.random.key(0), num_masks=64,
                                   memory_budget=10_000)
    assert all(isinstance(a, jax.core.Tracer) for a in calls)  # only traced shapes, nothing computed
    with pytest.raises(InputError, match="memory_budget"):
        perturb.chunk_for_memory(conv_tail, variables, A, num_masks=8, memory_budget=-1)


def test_bf16_halves_the_per_evaluation_estimate(conv_problem):
    variables, A = conv_problem
    f32 = perturb.tail_memory(conv_tail, variables, A)
    bf16 = perturb.tail_memory(conv_tail, variables, A, compute_dtype=jnp.bfloat16)
    assert bf16.per_eval < 0.75 * f32.per_eval


def test_default_chunk_is_about_256_evaluations_and_at_most_the_mask_count():
    assert perturb.default_chunk(1000, 4) == 64
    assert perturb.default_chunk(10, 1) == 10


def test_tail_cost_counts_only_the_weights_the_tail_reads():
    used, unused = jnp.ones((64, 32)), jnp.ones((1000, 1000))
    tail = lambda v, a: a.mean(axis=(1, 2)) @ v["used"]  # noqa: E731
    cost = perturb.tail_cost(tail, {"used": used, "head_only": unused}, jnp.ones((3, 8, 8, 64)))
    assert cost.weight_bytes == 64 * 32 * 4
    assert cost.flops >= 2 * 64 * 32


def test_heavy_tails_with_big_weights_take_steps_that_amortise_them():
    """A heavy tail dominated by a big dense layer (VGG's classifier) gets larger CPU steps, up to the default."""
    big = jnp.zeros((16 * 16 * 64, 1536))  # 100 MB of weights, 50 MFLOP per evaluation: 0.5 FLOP per byte
    tail = lambda v, a: a.reshape(a.shape[0], -1) @ v  # noqa: E731
    features = jnp.ones((1, 16, 16, 64))
    cost = perturb.tail_cost(tail, big, features)
    assert cost.flops >= perturb.HEAVY_TAIL_FLOPS and cost.weight_bytes == big.size * 4
    # 160 FLOP per byte × 100 MB / 50 MFLOP = 320 evaluations per step: capped at the default 256
    assert perturb.STEP_WEIGHT_INTENSITY == 160 and cost.flops == 2 * big.size
    assert perturb.cpu_evals_per_step(tail, big, features, "cpu") == perturb.DEFAULT_EVALS_PER_STEP == 256
    assert perturb.cpu_evals_per_step(tail, big, features, "gpu") == perturb.DEFAULT_EVALS_PER_STEP
    # a conv-like 134 MFLOP on 1 MB plus a 50 MB dense layer: 160 × 51.4 MB / 159 MFLOP ≈ 52 → 64 per step
    conv, dense = jnp.zeros((64, 4096)), jnp.zeros((16 * 16 * 64, 768))

    def mixed(v, a):
        return jax.nn.relu(a @ v[0]).mean(axis=(1, 2)) + (a.reshape(a.shape[0], -1) @ v[1]).sum(-1, keepdims=True)

    mixed_cost = perturb.tail_cost(mixed, (conv, dense), features)
    assert 40 < perturb.STEP_WEIGHT_INTENSITY * mixed_cost.weight_bytes / mixed_cost.flops <= 64
    assert perturb.cpu_evals_per_step(mixed, (conv, dense), features, "cpu") == 64


def test_heavy_tails_take_small_steps_on_cpu_only():
    """XLA's cost analysis decides: a tail of ≥ HEAVY_TAIL_FLOPS per evaluation gets HEAVY_TAIL_EVALS per step on CPU."""
    light = jnp.ones((64, 10))
    heavy = jnp.ones((64, 4096))
    light_tail = lambda v, a: a.mean(axis=(1, 2)) @ v  # noqa: E731  (a few kFLOP per evaluation)
    heavy_tail = lambda v, a: jax.nn.relu(a @ v).mean(axis=(1, 2))  # noqa: E731  (16·16·64·4096·2 ≈ 134 MFLOP)
    features = jnp.ones((2, 16, 16, 64))
    assert perturb.tail_cost(heavy_tail, heavy, features).flops >= perturb.HEAVY_TAIL_FLOPS
    assert perturb.tail_cost(light_tail, light, features).flops < perturb.HEAVY_TAIL_FLOPS
    assert perturb.cpu_evals_per_step(heavy_tail, heavy, features, "cpu") == perturb.HEAVY_TAIL_EVALS
    assert perturb.cpu_evals_per_step(light_tail, light, features, "cpu") == perturb.LIGHT_TAIL_EVALS_CPU == 128
    assert perturb.cpu_evals_per_step(heavy_tail, heavy, features, "gpu") == 256
    # the baselines' item sweeps take the same rule, unless the user names a chunk or a budget
    cpu = jax.local_devices()[:1]
    assert perturb.items_per_step(heavy_tail, heavy, features, num_items=500, chunk_size=None, default=64,
                                  devices=cpu) == perturb.HEAVY_TAIL_EVALS // 2
    assert perturb.items_per_step(light_tail, light, features, num_items=500, chunk_size=None, default=64,
                                  devices=cpu) == 32
    assert perturb.items_per_step(heavy_tail, heavy, features, num_items=500, chunk_size=128, default=64,
                                  devices=cpu) == 64
    # the chunk changes the step, never the statistics
    key = jax.random.PRNGKey(0)
    small = perturb.shared_perturbation_stats(heavy_tail, heavy, features, key, num_masks=40, score="logit")
    big = perturb.shared_perturbation_stats(heavy_tail, heavy, features, key, num_masks=40, score="logit", chunk=40)
    for a, b in zip(small, big):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-3)
