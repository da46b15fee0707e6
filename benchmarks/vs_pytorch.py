"""Time to explain one image at the same layer with the same number of perturbed evaluations:
chipjax CHIP against pytorch-grad-cam's ``AblationCAM`` and ``ScoreCAM``, and a plain PyTorch
Ablation-CAM-style loop over the tail only.

The network is torchvision's ResNet (random init, seeded), saved as a ``.pth`` and loaded into
chipjax with ``cj.load_model(arch, weights=path)`` — the same weights on both sides (the logits
are checked to agree). Layer: ``layer4`` (pytorch-grad-cam's ``target_layers=[model.layer4]``).
Every method explains one real photo (scikit-image's ``chelsea``) for its top-1 class:

* ``chip``: ``chipjax.chip.chip_maps`` end to end (head once, N perturbed tails + statistics,
  lasso, heat map), N = the competitor's evaluation count;
* ``AblationCAM``: pytorch-grad-cam with ``ratio_channels_to_ablate`` (its evaluations: the
  ablated channels; each runs the network up to the replaced layer, then the tail);
* ``ScoreCAM``: pytorch-grad-cam (one full-network evaluation per channel, K of them);
* ``torch tail loop``: ``layer4`` output computed once, then ``avgpool + fc`` re-run on
  ``A ⊙ m`` for N random channel masks in batches of 256, softmax target score kept — the
  fairest Ablation-CAM-style loop PyTorch can do (no statistics, no lasso).

Evaluations are counted on the PyTorch side with a forward hook on ``fc``. torch runs on
2 threads (as many as XLA uses here). Methods are timed alternately after a warm-up
(:func:`benchmarks.common.interleaved`); medians.

    python -m benchmarks.vs_pytorch --quick
    python -m benchmarks.vs_pytorch --arch resnet50 --ratio 0.03
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from benchmarks import common

os.environ.setdefault("TQDM_DISABLE", "1")


def build(arch: str, size: int, seed: int = 0):
    """torchvision ``arch`` (random init) and the same network in chipjax; image, target, parity."""
    import jax.numpy as jnp
    import skimage.data
    import torch
    import torchvision

    import chipjax as cj

    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None).eval()
    path = os.path.join(tempfile.mkdtemp(prefix="chipjax-bench-"), f"{arch}.pth")
    torch.save(net.state_dict(), path)
    model = cj.load_model(arch, weights=path)
    from PIL import Image

    photo = Image.fromarray(skimage.data.chelsea()).resize((size, size))
    x = np.asarray(model.spec.normalize(np.asarray(photo)))[None].astype(np.float32)  # (1, S, S, 3)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        torch_logits = net(xt).numpy()
    jax_logits = np.asarray(model(jnp.asarray(x)))
    parity = float(np.abs(torch_logits - jax_logits).max() / np.abs(torch_logits).max())
    target = int(torch_logits[0].argmax())
    return net, model, x, xt, target, parity


class EvalCounter:
    """Counts the rows passing through ``module`` (one per network evaluation)."""

    def __init__(self, module):
        self.rows = 0
        module.register_forward_hook(lambda m, inp, out: setattr(self, "rows", self.rows + out.shape[0]))

    def measure(self, fn) -> int:
        before = self.rows
        fn()
        return self.rows - before


def torch_tail_loop(net, xt, target: int, num_masks: int, batch: int = 256, seed: int = 0):
    """Ablation-CAM-style loop over the tail only: layer4 output once, then avgpool+fc per mask batch."""
    import torch

    with torch.no_grad():
        h = net.maxpool(net.relu(net.bn1(net.conv1(xt))))
        A = net.layer4(net.layer3(net.layer2(net.layer1(h))))  # (1, K, H, W)
        gen = torch.Generator().manual_seed(seed)
        scores = []
        for start in range(0, num_masks, batch):
            n = min(batch, num_masks - start)
            m = (torch.rand(n, A.shape[1], generator=gen) < 0.5).float()
            a = A * m[:, :, None, None]
            logits = net.fc(torch.flatten(net.avgpool(a), 1))
            scores.append(torch.softmax(logits, dim=-1)[:, target])
        return torch.cat(scores)


def run_arch(arch: str, size: int, ratio: float, reps: int, scorecam: bool) -> tuple[list, float]:
    import jax
    import jax.numpy as jnp
    from pytorch_grad_cam import AblationCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from chipjax import chip

    net, model, x, xt, target, parity = build(arch, size)
    counter = EvalCounter(net.fc)
    targets = [ClassifierOutputTarget(target)]
    tap = model.tap("layer4")
    xj = jnp.asarray(x)
    rows = []

    def chip_case(num_masks: int):
        return lambda: chip.chip_maps(tap, xj, jnp.array([target]), num_masks=num_masks)

    # (name, constructor, attributes, unperturbed forwards per call: BaseCAM's own + AblationCAM's reference)
    groups = [("AblationCAM", lambda: AblationCAM(net, [net.layer4], batch_size=32, ratio_channels_to_ablate=ratio),
               dict(), 2)]
    if scorecam:
        groups.append(("ScoreCAM", lambda: ScoreCAM(net, [net.layer4]), dict(batch_size=32), 1))
    for name, make, attrs, unperturbed in groups:
        cam = make()
        for k, v in attrs.items():
            setattr(cam, k, v)
        run_cam = lambda cam=cam: cam(input_tensor=xt, targets=targets)  # noqa: E731
        perturbed = counter.measure(run_cam) - unperturbed
        cases = {
            "chipjax CHIP": chip_case(max(2, perturbed)),
            f"pytorch-grad-cam {name}": run_cam,
            "torch tail loop": lambda n=perturbed: torch_tail_loop(net, xt, target, n),
        }
        times = common.interleaved(cases, reps=reps, warmup=1,
                                   lead_in=[case for case in cases if case.startswith("chipjax")])
        for case, ts in times.items():
            t = common.median(ts)
            rows.append(dict(arch=arch, size=size, group=name, method=case, evals=perturbed, per_image=t,
                             per_eval=t / perturbed, vs_chip=common.median_ratio(ts, times["chipjax CHIP"])))
        print(f"{arch} {name}: {perturbed} evals; " + ", ".join(
            f"{case} {common.median(ts):.2f}s" for case, ts in times.items()), flush=True)
    jax.clear_caches()
    return rows, parity


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.standard_args(p)
    p.add_argument("--arch", default=None, help="comma list of torchvision ResNets (default: resnet18 quick, "
                                                "resnet50,resnet18 full)")
    p.add_argument("--size", type=int, default=None, help="input side (default 112 quick, 224 full)")
    p.add_argument("--ratio", type=float, default=None,
                   help="AblationCAM ratio_channels_to_ablate (default: about 128 evaluations)")
    p.add_argument("--scorecam", default=None,
                   help="comma list of archs that also run ScoreCAM (K full-network evaluations; default resnet18)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    args = p.parse_args(argv)
    common.set_threads(args.threads)
    archs = (args.arch or ("resnet18" if args.quick else "resnet50,resnet18")).split(",")
    size = args.size or (112 if args.quick else 224)
    reps = args.reps or 3
    scorecam = set((args.scorecam if args.scorecam is not None else "resnet18").split(","))
    rows, parities = [], {}
    for arch in archs:
        channels = 512 if arch in ("resnet18", "resnet34") else 2048
        ratio = args.ratio or 64 / channels  # 2 · int(K · ratio) ≈ 128 ablated channels
        arch_rows, parities[arch] = run_arch(arch, size, ratio, reps, arch in scorecam)
        rows += arch_rows
    headers = ["arch", "input", "comparison", "method", "perturbed evals", "s / image", "ms / eval",
               "time / CHIP's"]
    body = common.table(headers, [[r["arch"], r["size"], r["group"], r["method"], r["evals"], r["per_image"],
                                   1e3 * r["per_eval"], r["vs_chip"]] for r in rows])
    notes = (f"Layer4 of torchvision {', '.join(archs)} (random init, seed 0); logits parity torch vs chipjax "
             + ", ".join(f"{a}: {e:.1e} (max rel.)" for a, e in parities.items())
             + f". torch threads {args.threads}. 'time / CHIP's' > 1: slower than chipjax CHIP (median of "
             f"per-repetition ratios, {reps} interleaved repetitions after a warm-up). CHIP's time includes the head, "
             "the statistics, the lasso and the heat map; the torch tail loop only scores the masks.")
    common.report("vs_pytorch", body, notes, write=not args.no_write)
    return rows


if __name__ == "__main__":
    main()
