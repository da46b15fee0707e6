"""Scale: 8 simulated devices give the same statistics and W as one; two processes on loopback give the
same class-level W as one process over all the images."""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chipjax import distributed as dist
from chipjax.errors import InputError

ROOT = Path(__file__).resolve().parents[1]

# A tiny tap shared by the subprocess scripts: features are the input, tail = tanh(mean ⊙ U) V.
TINY = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from chipjax.tap import Tap
    K, C, H = 6, 4, 3
    rng = np.random.default_rng(0)
    VARIABLES = {"U": rng.normal(size=(K, K)).astype(np.float32), "V": rng.normal(size=(K, C)).astype(np.float32)}
    def head_fn(variables, x):
        return x
    def tail_fn(variables, a):
        return jnp.tanh(a.mean(axis=(1, 2)) @ variables["U"]) @ variables["V"]
    TAP = Tap(layer="features", head_fn=head_fn, tail_fn=tail_fn, variables=VARIABLES)
    IMAGES = rng.uniform(0.5, 1.5, (10, H, H, K)).astype(np.float32)
    LABELS = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 2])
""")


def run_python(code: str, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=ROOT)


EIGHT_DEVICES = TINY + textwrap.dedent("""
    import json
    from chipjax import perturb, chip, solvers
    from chipjax import stats as st
    assert len(jax.local_devices()) == 8, jax.local_devices()
    A = jnp.asarray(IMAGES[:2])
    key = jax.random.key(3)
    out = {}
    for N in (40, 37, 5):   # divisible by 8, padded, fewer masks than devices
        many = perturb.perturbation_stats(tail_fn, VARIABLES, A, key, num_masks=N, chunk=3)
        one = perturb.perturbation_stats(tail_fn, VARIABLES, A, key, num_masks=N, chunk=3,
                                         devices=jax.local_devices()[:1])
        out[f"stats_{N}"] = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
                                for a, b in zip(many, one))
        W_many = solvers.chip_weights(many, 0.05)   # (B, K, C) one lasso per image
        W_one = solvers.chip_weights(one, 0.05)
        if N > 6:  # more masks than channels: W is well determined
            out[f"W_{N}"] = float(jnp.max(jnp.abs(W_many - W_one)) / jnp.max(jnp.abs(W_one)))
        else:  # fewer masks than channels: G is singular, only the lasso objective is determined
            G, R = st.gram(one), st.cross(one)
            lam = 0.05 * jnp.max(jnp.abs(R), axis=1, keepdims=True)
            def objective(W):
                return (0.5 * jnp.einsum("bkc,bkl,blc->bc", W, G, W) - jnp.einsum("bkc,bkc->bc", R, W)
                        + lam[:, 0] * jnp.abs(W).sum(1))
            f_many, f_one = objective(W_many), objective(W_one)
            out[f"objective_{N}"] = float(jnp.max(jnp.abs(f_many - f_one)) / jnp.max(jnp.abs(f_one)))
    # image-level CHIP end to end (sharding is automatic inside the engine)
    jaxpr = str(jax.make_jaxpr(lambda A: perturb.perturbation_stats(tail_fn, VARIABLES, A, key, num_masks=40,
                                                                    chunk=3))(A))
    out["sharded"] = "shard_map" in jaxpr
    from chipjax.tap import Tap
    tap = Tap("x", lambda v, x: x, tail_fn, VARIABLES)
    W8, _ = chip.image_weights(tap, A, jnp.array([1, 2]), key, num_masks=64, chunk=5, keep_prob=0.5,
                               design="iid", score="prob", lam_ratio=0.05, nonneg=False)
    np.save(OUT, np.asarray(W8))
    print(json.dumps(out))
""")


def test_eight_simulated_devices_give_the_same_stats_and_W_as_one(tmp_path):
    out = tmp_path / "W8.npy"
    proc = run_python(f"OUT = {str(out)!r}\n" + EIGHT_DEVICES,
                      {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["sharded"] is True
    for name, err in result.items():
        if name != "sharded":
            assert err < 1e-5, (name, err)
    # the same image-level W on this (one-device) process
    ns = {}
    exec(TINY, ns)  # noqa: S102 - our own fixture code
    from chipjax import chip

    assert len(jax.local_devices()) == 1
    from chipjax.tap import Tap

    tap = Tap("x", lambda v, x: x, ns["tail_fn"], ns["VARIABLES"])
    W1, _ = chip.image_weights(tap, jnp.asarray(ns["IMAGES"][:2]), jnp.array([1, 2]), jax.random.key(3),
                               num_masks=64, chunk=5, keep_prob=0.5, design="iid", score="prob", lam_ratio=0.05,
                               nonneg=False)
    W8 = np.load(out)
    np.testing.assert_allclose(W8, W1, rtol=1e-5, atol=1e-5 * np.abs(W1).max())


EIGHT_DEVICES_BASELINES = TINY + textwrap.dedent("""
    import json
    from chipjax import cams
    assert len(jax.local_devices()) == 8, jax.local_devices()
    x = jnp.asarray(IMAGES[:3])
    targets = jnp.array([0, 2, 3])
    one = (jax.local_devices()[0],)
    # a tail with a linear entry (a 1x1 product and the identity): Ablation-CAM's rank-1 path
    EV = {"params": {"lin": {"kernel": rng.normal(size=(1, 1, K, 5)).astype(np.float32)}}, "V": VARIABLES["V"]}
    entry_fn = lambda v, a: (a @ v["params"]["lin"]["kernel"][0, 0], a)
    exit_fn = lambda v, e: jnp.tanh(e[0].mean(axis=(1, 2))).sum(-1, keepdims=True) + e[1].mean(axis=(1, 2)) @ v["V"]
    entry = (entry_fn, exit_fn, ((("lin", "kernel"), 1), (None, 1)))
    whole_fn = lambda v, a: exit_fn(v, entry_fn(v, a))
    out = {}
    for chunk in (1, 4):  # 6 channels over 8 devices: padded; chunks of 1 and more
        for name, fn in [
            ("ablation_entry", lambda d: cams.ablation_weights(whole_fn, EV, x, targets, chunk=chunk, devices=d,
                                                               entry=entry)),
            ("ablation", lambda d: cams.ablation_weights(tail_fn, VARIABLES, x, targets, chunk=chunk, devices=d)),
            ("scorecam", lambda d: cams.scorecam_weights(head_fn, tail_fn, VARIABLES, x, x, targets, chunk=chunk,
                                                         devices=d)),
            ("rise", lambda d: cams.rise_saliency(head_fn, tail_fn, VARIABLES, x, targets, jax.random.key(1),
                                                  num_masks=37, chunk=chunk, grid=2, devices=d)),
        ]:
            many, single = fn(None), fn(one)
            out[f"{name}_{chunk}"] = float(jnp.max(jnp.abs(many - single)) / (jnp.max(jnp.abs(single)) + 1e-30))
    plain = cams.ablation_weights(whole_fn, EV, x, targets, chunk=4)
    split = cams.ablation_weights(whole_fn, EV, x, targets, chunk=4, entry=entry)
    out["entry_vs_whole_tail"] = float(jnp.max(jnp.abs(split - plain)) / jnp.max(jnp.abs(plain)))
    jaxpr = str(jax.make_jaxpr(lambda x: cams.ablation_weights(tail_fn, VARIABLES, x, targets, chunk=2))(x))
    out["sharded"] = "shard_map" in jaxpr
    print(json.dumps(out))
""")


def test_every_baseline_on_the_engine_gives_the_same_result_on_eight_devices_as_on_one():
    proc = run_python(EIGHT_DEVICES_BASELINES,
                      {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result.pop("sharded") is True
    assert len(result) == 9
    for name, err in result.items():
        assert err < 1e-5, (name, err)


WORKER = TINY + textwrap.dedent("""
    import sys
    from chipjax import distributed as dist
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid, timeout_s=120)
    assert dist.process_count() == 2 and dist.process_index() == pid
    batches = [(jnp.asarray(IMAGES[i:i + 2]), LABELS[i:i + 2]) for i in range(0, len(IMAGES), 2)]  # 5 batches
    acc = dist.class_statistics(TAP, dist.host_shard(batches), num_masks=48, score="logit", seed=1, chunk_size=16)
    model = acc.to_model("tiny", dict(lam_ratio=0.05, nonneg=False))
    # one batch in all: process 1 streams nothing and must still take part (zeros of the right shapes)
    lone = dist.class_statistics(TAP, dist.host_shard(batches[:1]), num_masks=48, score="logit", seed=1,
                                 chunk_size=16)
    np.savez(out, W=np.asarray(model.weights), n=acc.num_images, counts=np.asarray(acc.class_counts),
             W_lone=np.asarray(lone.to_model("tiny", dict(lam_ratio=0.05, nonneg=False)).weights))
    jax.distributed.shutdown()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_loopback_fit_the_same_class_level_W_as_one(tmp_path):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(pid), str(port), str(tmp_path / f"w{pid}.npz")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for pid in (0, 1)]
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    results = [np.load(tmp_path / f"w{pid}.npz") for pid in (0, 1)]
    np.testing.assert_array_equal(results[0]["W"], results[1]["W"])  # every process holds the same model
    assert int(results[0]["n"]) == 10

    # one process over every image
    ns = {}
    exec(TINY, ns)  # noqa: S102 - our own fixture code
    from chipjax.chip import ClassStatsAccumulator

    def one_process(stop):
        acc = ClassStatsAccumulator(ns["TAP"], num_masks=48, keep_prob=0.5, score="logit", seed=1, chunk_size=16)
        for i in range(0, stop, 2):
            acc.add(jnp.asarray(ns["IMAGES"][i:i + 2]), ns["LABELS"][i:i + 2])
        return np.asarray(acc.to_model("tiny", dict(lam_ratio=0.05, nonneg=False)).weights)

    W, W_lone = one_process(10), one_process(2)
    np.testing.assert_allclose(results[0]["counts"], np.bincount(ns["LABELS"], minlength=4))
    np.testing.assert_allclose(results[0]["W"], W, rtol=1e-5, atol=1e-5 * np.abs(W).max())
    np.testing.assert_allclose(results[1]["W_lone"], W_lone, rtol=1e-5, atol=1e-5 * np.abs(W_lone).max())


def test_host_shard_splits_round_robin_and_checks_its_arguments():
    items = list(range(11))
    shards = [list(dist.host_shard(iter(items), i, 3)) for i in range(3)]
    assert sorted(sum(shards, [])) == items and shards[1] == [1, 4, 7, 10]
    assert list(dist.host_shard(items)) == items  # one process: everything
    with pytest.raises(InputError):
        list(dist.host_shard(items, 3, 3))
    with pytest.raises(InputError, match="host:port"):
        dist.initialize("localhost", 2, 0)
    with pytest.raises(InputError, match="process_id"):
        dist.initialize("127.0.0.1:1234", 2, 2)


def test_local_mesh_spans_every_local_device():
    assert dist.local_mesh().devices.size == len(jax.local_devices())


# `chipjax.fit.fit_source` in two processes: the loader gives each its share (jax.process_index()), the
# statistics are merged at the end, and both hold the model one process fits over every image.
FIT_TOY = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from PIL import Image
    from chipjax.tap import Tap

    class ToyModel:
        name, weights, layers = "toy", "planted", ["features"]
        P = np.random.default_rng(0).uniform(0, 1, (3, 6)).astype(np.float32)
        V = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
        def preprocess(self, image):
            small = np.asarray(Image.fromarray(np.asarray(image)).resize((4, 4), Image.BOX), np.float32) / 255.0
            return (small @ self.P)[None]
        def tap(self, layer=None):
            return Tap(layer="features", head_fn=lambda v, x: x, tail_fn=lambda v, a: a.mean(axis=(1, 2)) @ v["V"],
                       variables={"V": jnp.asarray(self.V)})

    FIT = dict(batch_size=2, num_masks=48, score="logit", lam_ratio=0.05, progress=False, chunk_size=32)
""")

FIT_WORKER = FIT_TOY + textwrap.dedent("""
    import sys
    from chipjax import distributed as dist
    from chipjax.data import folder_source
    from chipjax.fit import fit_source
    pid, port, root, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    dist.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid, timeout_s=120)
    cm = fit_source(ToyModel(), folder_source(root), checkpoint_dir=out + ".ckpt", checkpoint_every=1, **FIT)
    np.savez(out, W=np.asarray(cm.weights), n=cm.num_images, mine=cm.fit_report["loader"].loaded)
    jax.distributed.shutdown()
""")


def test_two_processes_fit_source_over_a_folder_equals_one_process(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    for i in range(9):
        os.makedirs(tmp_path / "data" / str(i % 3), exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "data" / str(i % 3) / f"{i}.png")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-c", FIT_WORKER, str(pid), str(port), str(tmp_path / "data"),
                               str(tmp_path / f"w{pid}.npz")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=ROOT) for pid in (0, 1)]
    try:
        outputs = [p.communicate(timeout=150) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    results = [np.load(tmp_path / f"w{pid}.npz") for pid in (0, 1)]
    assert [int(r["mine"]) for r in results] == [5, 4]  # each process read its own share
    assert all(int(r["n"]) == 9 for r in results)
    assert not (tmp_path / "w0.npz.ckpt").exists()  # progress checkpoints are single-process only
    np.testing.assert_array_equal(results[0]["W"], results[1]["W"])
    ns = {}
    exec(FIT_TOY, ns)  # noqa: S102 - our own fixture code
    from chipjax.data import folder_source
    from chipjax.fit import fit_source

    W = np.asarray(fit_source(ns["ToyModel"](), folder_source(tmp_path / "data"), **ns["FIT"]).weights)
    np.testing.assert_allclose(results[0]["W"], W, rtol=1e-5, atol=1e-5 * np.abs(W).max())
