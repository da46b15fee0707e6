"""chipjax.stats: streamed centred statistics against float64 numpy on the whole data at once."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_

from chipjax import solvers, stats
from chipjax.errors import InputError

N, K, C = 96, 12, 5


def _data(seed, n=N, k=K, c=C, offset=0.0):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, k)) < 0.5
    scores = (offset + rng.normal(size=(n, c)) + masks[:, :c] * 0.5).astype(np.float32)
    return masks, scores


def _reference(masks, scores):
    """Centred G, R, Var(y) in float64 numpy, straight from the definition."""
    m = masks.astype(np.float64)
    y = scores.astype(np.float64)
    mc, yc = m - m.mean(0), y - y.mean(0)
    n = len(m)
    return mc.T @ mc / n, mc.T @ yc / n, (yc**2).sum(0) / n


def _assert_same_stats(a, b, tol=1e-5):
    """Equal to float32 rounding: within ``tol`` of each field's largest entry."""
    for name, x, y in zip(stats.Stats._fields, a, b):
        y = np.asarray(y)
        np.testing.assert_allclose(np.asarray(x), y, rtol=0, atol=tol * max(1.0, np.abs(y).max()), err_msg=name)


def _stream(masks, scores, cuts):
    s = stats.empty(masks.shape[1], scores.shape[1])
    bounds = [0, *sorted(cuts), len(masks)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        s = stats.update(s, masks[lo:hi], scores[lo:hi])
    return s


def test_from_batch_matches_definition():
    masks, scores = _data(0)
    s = stats.from_batch(masks, scores)
    G, R, v = _reference(masks, scores)
    assert s.count.dtype == jnp.float32 and s.mask_comoment.shape == (K, K) and s.cross_comoment.shape == (K, C)
    assert float(s.count) == N
    np.testing.assert_allclose(stats.gram(s), G, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.cross(s), R, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.score_var(s), v, rtol=1e-5)
    np.testing.assert_allclose(s.mask_mean, masks.mean(0), rtol=1e-6)
    np.testing.assert_allclose(s.score_mean, scores.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 7, 32, N])
def test_streaming_in_chunks_equals_one_pass(chunk):
    masks, scores = _data(1)
    streamed = _stream(masks, scores, range(chunk, N, chunk))
    _assert_same_stats(streamed, stats.from_batch(masks, scores))


@settings(max_examples=20, deadline=None)
@given(st_.lists(st_.integers(0, N // 4).map(lambda i: 4 * i), max_size=6))  # multiples of 4: few compiles
def test_streaming_any_split_equals_one_pass(cuts):
    masks, scores = _data(2)
    _assert_same_stats(_stream(masks, scores, cuts), stats.from_batch(masks, scores))


def test_large_score_offset_stays_accurate():
    # Raw-moment formulas (E[my] - E[m]E[y]) lose every digit here in float32; centred co-moments don't.
    masks, scores = _data(3, offset=1e4)
    s = _stream(masks, scores, range(10, N, 10))
    G, R, v = _reference(masks, scores)
    np.testing.assert_allclose(stats.cross(s), R, atol=2e-3 * np.abs(R).max())
    np.testing.assert_allclose(stats.score_var(s), v, rtol=2e-3)


def test_two_halves_merged_give_same_weights():
    masks, scores = _data(4, n=400, k=20, c=3)
    whole = stats.from_batch(masks, scores)
    halves = stats.merge(stats.from_batch(masks[:150], scores[:150]), stats.from_batch(masks[150:], scores[150:]))
    _assert_same_stats(halves, whole)
    W_whole = solvers.chip_weights(whole, 0.1)
    W_halves = solvers.chip_weights(halves, 0.1)
    np.testing.assert_allclose(W_halves, W_whole, atol=1e-4 * float(jnp.abs(W_whole).max()))


def test_merge_is_order_free_and_associative():
    parts = [stats.from_batch(*_data(seed, n=n)) for seed, n in [(5, 10), (6, 33), (7, 1)]]
    a, b, c = parts
    ab = stats.merge(a, b)
    _assert_same_stats(stats.merge(b, a), ab, tol=1e-6)
    _assert_same_stats(stats.merge(ab, c), stats.merge(a, stats.merge(b, c)))
    _assert_same_stats(stats.merge_many(jax.tree.map(lambda *xs: jnp.stack(xs), *parts)), stats.merge(ab, c))


def test_empty_is_the_identity():
    a = stats.from_batch(*_data(8))
    e = stats.empty(K, C)
    for merged in (stats.merge(a, e), stats.merge(e, a)):
        for x, y in zip(merged, a):
            np.testing.assert_array_equal(x, y)
    ee = stats.merge(e, e)
    assert all(np.all(np.asarray(x) == 0) for x in ee)
    assert np.all(stats.gram(ee) == 0) and np.all(stats.cross(ee) == 0)  # no 0/0


def test_zero_pair_batch_and_zero_weights_are_empty():
    masks, scores = _data(9)
    for s in (stats.from_batch(masks[:0], scores[:0]), stats.from_batch(masks, scores, np.zeros(N))):
        assert all(np.all(np.isfinite(x)) and np.all(np.asarray(x) == 0) for x in s)


def test_weights_skip_padding_and_count_repeats():
    masks, scores = _data(10)
    w = np.r_[np.ones(N - 20), np.zeros(20)]
    _assert_same_stats(stats.from_batch(masks, scores, w), stats.from_batch(masks[:-20], scores[:-20]))
    twice = stats.from_batch(np.r_[masks, masks[:5]], np.r_[scores, scores[:5]])
    _assert_same_stats(stats.from_batch(masks, scores, np.r_[2 * np.ones(5), np.ones(N - 5)]), twice)


def test_batch_of_images_has_prefix_and_pools_to_the_set():
    rng = np.random.default_rng(11)
    masks = rng.random((3, 40, K)) < 0.5
    scores = rng.normal(size=(3, 40, C)).astype(np.float32)
    s = stats.from_batch(masks, scores)
    assert s.count.shape == (3,) and s.mask_comoment.shape == (3, K, K) and stats.cross(s).shape == (3, K, C)
    for b in range(3):
        _assert_same_stats(jax.tree.map(lambda x: x[b], s), stats.from_batch(masks[b], scores[b]))
    _assert_same_stats(stats.merge_many(s), stats.from_batch(masks.reshape(-1, K), scores.reshape(-1, C)))
    more = stats.update(s, masks[:, :5], scores[:, :5])  # batched update, image by image
    _assert_same_stats(jax.tree.map(lambda x: x[1], more), stats.from_batch(np.r_[masks[1], masks[1, :5]], np.r_[scores[1], scores[1, :5]]))


def test_update_is_jittable_and_takes_bool_masks():
    masks, scores = _data(12)
    s = jax.jit(stats.update)(stats.empty(K, C), masks, scores)
    assert s.mask_mean.dtype == jnp.float32
    _assert_same_stats(s, stats.from_batch(masks.astype(np.float32), scores))


def test_psum_merge_equals_merge_many_over_named_axis():
    # A named vmap axis runs the same collective as shard_map's devices, with 4 "shards" on one device.
    masks, scores = _data(13)
    shards = stats.from_batch(masks.reshape(4, -1, K), scores.reshape(4, -1, C))
    pooled = jax.vmap(lambda s: stats.psum_merge(s, "shards"), axis_name="shards")(shards)
    whole = stats.from_batch(masks, scores)
    for i in range(4):
        _assert_same_stats(jax.tree.map(lambda x: x[i], pooled), whole)


def test_psum_merge_under_shard_map_on_local_devices():
    from jax.sharding import NamedSharding, PartitionSpec as P

    masks, scores = _data(14)
    mesh = jax.make_mesh((jax.device_count(),), ("d",))
    n = N - N % jax.device_count()

    @jax.jit
    def pooled(m, y):
        return jax.shard_map(
            lambda m, y: stats.psum_merge(stats.from_batch(m, y), "d"),
            mesh=mesh,
            in_specs=(P("d"), P("d")),
            out_specs=P(),
        )(m, y)

    rows = NamedSharding(mesh, P("d"))
    got = pooled(jax.device_put(masks[:n], rows), jax.device_put(scores[:n], rows))
    _assert_same_stats(got, stats.from_batch(masks[:n], scores[:n]))


def test_psum_merge_on_eight_simulated_devices():
    script = textwrap.dedent(
        """
        import jax, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from chipjax import stats
        assert jax.device_count() == 8, jax.devices()
        rng = np.random.default_rng(0)
        m = rng.random((8 * 13, 6)) < 0.5
        y = rng.normal(size=(8 * 13, 3)).astype(np.float32) + m[:, :3]
        mesh = jax.make_mesh((8,), ("d",))
        f = jax.jit(jax.shard_map(lambda m, y: stats.psum_merge(stats.from_batch(m, y), "d"),
                                  mesh=mesh, in_specs=(P("d"), P("d")), out_specs=P()))
        rows = NamedSharding(mesh, P("d"))
        got, want = f(jax.device_put(m, rows), jax.device_put(y, rows)), stats.from_batch(m, y)
        for name, a, b in zip(stats.Stats._fields, got, want):
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6, err_msg=name)
        print("ok")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_bad_shapes_raise_input_error():
    masks, scores = _data(15)
    with pytest.raises(InputError, match="agree"):
        stats.from_batch(masks, scores[:-1])
    with pytest.raises(InputError, match="shapes"):
        stats.from_batch(masks[0], scores)
    with pytest.raises(InputError, match="weights"):
        stats.from_batch(masks, scores, np.ones(N - 1))
    with pytest.raises(InputError, match="stacked"):
        stats.merge_many(stats.empty(K, C))
