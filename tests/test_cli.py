"""The ``chipjax`` command: real runs on bundled photos, and one-line errors with exit code 2."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from chipjax.cli import main


@pytest.fixture(scope="module")
def coffee_png(tmp_path_factory):
    import skimage.data

    path = tmp_path_factory.mktemp("photos") / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(path)
    return str(path)


def test_predict_prints_sensible_top5(coffee_png, capsys):
    assert main(["predict", coffee_png]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    assert "espresso" in lines[0]
    probs = [float(l.split()[0]) for l in lines]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def test_layers_lists_resnet50_taps(capsys):
    assert main(["layers", "--model", "resnet50"]) == 0
    names = capsys.readouterr().out.split()
    for name in ("maxpool", "layer1.0", "layer3", "layer3.5", "layer4", "avgpool"):
        assert name in names
    assert names.index("layer2") < names.index("layer3.0") < names.index("layer4")


def test_explain_writes_overlay_png(coffee_png, tmp_path, capsys):
    out = tmp_path / "coffee_chip.png"
    assert main(["explain", coffee_png, "--masks", "256", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "espresso" in said and "@ head" in said  # the layer used is reported
    img = np.asarray(Image.open(out))
    assert img.shape[0] > 200 and img.shape[1] > 200


@pytest.mark.parametrize(
    "argv, words",
    [
        (["predict", "/no/such/photo.jpg"], "not found"),
        (["explain", "--demo", "--model", "resnet9000"], "unknown model"),
        (["explain", "--demo", "--layer", "blocks.99"], "unknown layer"),
        (["explain", "--demo", "--class", "1000"], "out of range"),
        (["explain", "--demo", "--class", "not a real class"], "not found"),
        (["explain", "--demo", "--keep-prob", "1.5"], "keep_prob"),
        (["explain", "--demo", "--out", "/no/such/folder/x.png"], "does not exist"),
        (["explain", "--demo", "--method", "magic"], "unknown method"),
        (["explain"], "IMAGE or --demo"),
        (["predict"], "required"),
        (["layers", "--bogus"], "unrecognized"),
    ],
)
def test_bad_input_one_line_exit_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert words in err
    assert "Traceback" not in err


def test_not_an_image_and_truncated_image(tmp_path, coffee_png, capsys):
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    assert main(["predict", str(text)]) == 2
    assert "not an image" in capsys.readouterr().err
    data = open(coffee_png, "rb").read()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    assert main(["predict", str(cut)]) == 2
    assert "truncated" in capsys.readouterr().err


def test_subprocess_never_prints_a_traceback(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    for argv in (["predict", str(tmp_path / "missing.png")],
                 ["convert", "--arch", "resnet18", str(bad), str(tmp_path / "out")],
                 ["explain", "--demo", "--masks", "0"]):
        run = subprocess.run([sys.executable, "-m", "chipjax.cli", *argv], capture_output=True, text=True, env=env,
                             timeout=300)
        assert run.returncode == 2, run.stderr
        assert "Traceback" not in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_readme_demo_picture_is_what_explain_demo_makes_today(tmp_path, capsys):
    readme_picture = os.path.join(os.path.dirname(__file__), "..", "docs", "demo.png")
    assert "docs/demo.png" in open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    out = tmp_path / "demo.png"
    assert main(["explain", "--demo", "--out", str(out)]) == 0
    ours = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32)
    committed = np.asarray(Image.open(readme_picture).convert("RGB"), dtype=np.float32)
    assert ours.shape == committed.shape
    assert np.abs(ours - committed).mean() < 2.0  # same map, same overlay: only rounding may differ


def test_memory_budget_too_small_is_refused_before_running(capsys):
    assert main(["explain", "--demo", "--memory-budget", "1K"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert main(["explain", "--demo", "--memory-budget", "lots"]) == 2
    assert "memory size" in capsys.readouterr().err
