"""chipjax CHIP against the same method written by hand in PyTorch, one image, same weights and layer.

The PyTorch CHIP is what a careful user writes (:func:`torch_chip`): the head once; the tail
alone on masked feature maps ``A ⊙ m`` in batches of 64 under ``torch.no_grad``; the softmax
score of the target; scikit-learn's ``Lasso`` (coordinate descent) on the centred masks with
the Gram matrix precomputed, λ = ``lam_ratio · λ_max``; the heat map ``ReLU(Σ w_k A_k)``
upsampled bilinearly and min-max normalised. chipjax runs ``cj.explain(..., method="chip")``
end to end (head, unperturbed tail, sweep with streamed statistics, lasso, map). Same mask
count, keep probability 0.5, lam_ratio 0.05, target = top-1 of the torch logits.

Taps: ResNet-50 ``layer3`` and ``layer4`` (torchvision, random init seeded; saved as ``.pth``
and loaded into chipjax with ``cj.load_model(..., weights=path)``) and EfficientNet-Lite0
``head`` and ``blocks.15.expand`` (the shipped ImageNet weights on both sides; the torch side
is ``efficientnet_lite_pytorch``). Rows with ``num_masks="auto"`` time chipjax streaming masks
until its maps are stable (``chip.auto_weights``) against the torch CHIP at the fixed count.
Two more rows per ResNet-50 ``layer3`` run: pytorch-grad-cam's ``AblationCAM`` and chipjax's
``ablationcam`` per perturbed evaluation. Cases alternate (:func:`benchmarks.common.interleaved`); medians.

    python -m benchmarks.vs_torch_chip --quick
    python -m benchmarks.vs_torch_chip --taps resnet50:layer3,resnet50:layer4,lite0:head,lite0:blocks.15.expand
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from benchmarks import common
from benchmarks.vs_pytorch import EvalCounter

os.environ.setdefault("TQDM_DISABLE", "1")


# ------------------------------------------------------------------------------------------------
# The two networks, split at the tap
# ------------------------------------------------------------------------------------------------


def resnet_split(net, layer: str):
    """torchvision ResNet -> (head, tail) at ``layer3`` / ``layer4``: ``(B,3,S,S)->A`` and ``A->logits``."""
    import torch

    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    cut = {"layer3": 3, "layer4": 4}[layer]

    def head(x):
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for stage in stages[:cut]:
            x = stage(x)
        return x

    def tail(a):
        for stage in stages[cut:]:
            a = stage(a)
        return net.fc(torch.flatten(net.avgpool(a), 1))

    return head, tail


def lite_split(net, layer: str):
    """efficientnet_lite_pytorch EfficientNet -> (head, tail) at ``head`` or ``blocks.15.expand``."""
    import torch

    def stem(x):
        return net._swish(net._bn0(net._conv_stem(x)))

    def top(x):
        x = net._swish(net._bn1(net._conv_head(x)))
        return x

    def classify(a):
        return net._fc(torch.flatten(net._avg_pooling(a), 1))

    if layer == "head":
        return (lambda x: net.extract_features(x)), classify
    index = int(layer.split(".")[1])
    block = net._blocks[index]
    assert layer.endswith(".expand") and block._block_args.expand_ratio != 1

    def head(x):
        x = stem(x)
        for b in net._blocks[:index]:
            x = b(x)
        return block._swish(block._bn0(block._expand_conv(x)))

    def tail(a):
        x = block._project_conv(block._swish(block._bn1(block._depthwise_conv(a))))
        x = block._bn2(x)
        args = block._block_args
        assert not (block.id_skip and args.stride == 1 and args.input_filters == args.output_filters)
        for b in net._blocks[index + 1:]:
            x = b(x)
        return classify(top(x))

    return head, tail


def build(name: str, layer: str, size: int):
    """(torch head, torch tail, chipjax model, x NHWC numpy, xt NCHW torch, target, logit parity)."""
    import jax.numpy as jnp
    import skimage.data
    import torch
    from PIL import Image

    import chipjax as cj

    photo = Image.fromarray(skimage.data.chelsea())
    if name == "lite0":
        import efficientnet_lite_pytorch as ref

        from chipjax.models import efficientnet

        net = ref.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=efficientnet.pretrained_path(0),
                                               image_size=None).eval()
        model = cj.load_model("efficientnet_lite0")
        head, tail = lite_split(net, layer)
        x = np.asarray(model.preprocess(photo), np.float32)
    else:
        torch.manual_seed(0)
        import torchvision

        net = getattr(torchvision.models, name)(weights=None).eval()
        path = os.path.join(tempfile.mkdtemp(prefix="chipjax-bench-"), f"{name}.pth")
        torch.save(net.state_dict(), path)
        model = cj.load_model(name, weights=path)
        head, tail = resnet_split(net, layer)
        x = np.asarray(model.spec.normalize(np.asarray(photo.resize((size, size)))))[None].astype(np.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        torch_logits = tail(head(xt)).numpy()
    jax_logits = np.asarray(model(jnp.asarray(x)))
    parity = float(np.abs(torch_logits - jax_logits).max() / np.abs(torch_logits).max())
    return net, head, tail, model, x, xt, int(torch_logits[0].argmax()), parity


# ------------------------------------------------------------------------------------------------
# CHIP by hand in PyTorch
# ------------------------------------------------------------------------------------------------


def torch_chip(head, tail, xt, target: int, num_masks: int, *, batch: int = 64, keep_prob: float = 0.5,
               lam_ratio: float = 0.05, seed: int = 0, bf16: bool = False) -> np.ndarray:
    """CHIP as a careful PyTorch user writes it; returns the ``(S, S)`` map in [0, 1].

    ``bf16``: the head and the perturbed tails under ``torch.autocast("cpu", torch.bfloat16)``
    (oneDNN's bf16 convolutions), scores read back in float32.
    """
    import contextlib

    import torch
    import torch.nn.functional as F
    from sklearn.linear_model import Lasso

    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        A = head(xt)  # (1, K, H, W)
        K = A.shape[1]
        gen = torch.Generator().manual_seed(seed)
        M = (torch.rand(num_masks, K, generator=gen) < keep_prob).float()
        Y = torch.empty(num_masks)
        for start in range(0, num_masks, batch):
            m = M[start:start + batch]
            Y[start:start + batch] = torch.softmax(tail(A * m[:, :, None, None]).float(), dim=-1)[:, target]
    Mc = (M - M.mean(0)).numpy().astype(np.float64)
    yc = (Y - Y.mean()).numpy().astype(np.float64)
    gram = Mc.T @ Mc
    alpha = lam_ratio * np.abs(Mc.T @ yc).max() / num_masks
    w = Lasso(alpha=alpha, fit_intercept=False, precompute=gram).fit(Mc, yc).coef_
    with torch.no_grad():
        cam = F.relu(torch.einsum("k,khw->hw", torch.from_numpy(w).float(), A[0].float()))
        cam = F.interpolate(cam[None, None], size=xt.shape[2:], mode="bilinear", align_corners=False)[0, 0]
        lo, hi = cam.min(), cam.max()
        return ((cam - lo) / (hi - lo) if hi > lo else torch.zeros_like(cam)).numpy()


# ------------------------------------------------------------------------------------------------
# The comparison
# ------------------------------------------------------------------------------------------------


def run_tap(name: str, layer: str, size: int, num_masks: int, reps: int, ablation: bool,
            auto: bool = True, bf16: bool = False) -> tuple[list, dict]:
    import jax
    import jax.numpy as jnp

    import chipjax as cj
    from chipjax import chip
    from chipjax.heatmaps import heatmap

    net, head, tail, model, x, xt, target, parity = build(name, layer, size)
    xj = jnp.asarray(x)
    tap = model.tap(layer)
    fit_counts = []

    def chip_fixed():
        return cj.explain(model, xj, method="chip", layer=layer, target=target, num_masks=num_masks)

    def chip_auto():
        A = tap.head(xj)
        fit = chip.auto_weights(tap, A, jnp.array([target]), jax.random.PRNGKey(0), xj.shape[1:3])
        fit_counts.append(fit.num_masks)
        return heatmap(A, fit.weights, xj.shape[1:3])

    def chip_bf16():
        return cj.explain(model, xj, method="chip", layer=layer, target=target, num_masks=num_masks,
                          compute_dtype="bfloat16")

    cases = {"chipjax CHIP": chip_fixed, "torch CHIP": lambda: torch_chip(head, tail, xt, target, num_masks)}
    if bf16:
        cases["chipjax CHIP bf16"] = chip_bf16
        cases["torch CHIP bf16 autocast"] = lambda: torch_chip(head, tail, xt, target, num_masks, bf16=True)
    if auto:
        cases["chipjax CHIP auto"] = chip_auto
    if ablation:
        from pytorch_grad_cam import AblationCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        stage = getattr(net, layer)
        counter = EvalCounter(net.fc)
        channels = int(tap.head(xj).shape[-1])
        cam = AblationCAM(net, [stage], batch_size=32, ratio_channels_to_ablate=64 / channels)  # ≈ 128 evaluations
        run_cam = lambda: cam(input_tensor=xt, targets=[ClassifierOutputTarget(target)])  # noqa: E731
        ablation_evals = counter.measure(run_cam) - 2
        cases["pytorch-grad-cam AblationCAM"] = run_cam
        cases["chipjax AblationCAM"] = lambda: cj.explain(model, xj, method="ablationcam", layer=layer, target=target)
    times = common.interleaved(cases, reps=reps, warmup=1,
                                   lead_in=[case for case in cases if case.startswith("chipjax")])
    a = np.asarray(chip_fixed())[0]
    b = torch_chip(head, tail, xt, target, num_masks)
    from chipjax.metrics import rank_correlation

    agreement = rank_correlation(a, b)
    bf16_agreement = None
    if bf16:  # each bf16 map against its own side's float32 map
        bf16_agreement = (float(rank_correlation(np.asarray(chip_bf16())[0], a)),
                          float(rank_correlation(torch_chip(head, tail, xt, target, num_masks, bf16=True), b)))
    masks_auto = int(np.median(fit_counts)) if fit_counts else 0
    rows = []
    base = times["torch CHIP"]
    for case, ts in times.items():
        evals = {"chipjax CHIP auto": masks_auto}.get(case, num_masks)
        if case == "pytorch-grad-cam AblationCAM":
            evals = ablation_evals
        if case == "chipjax AblationCAM":
            evals = channels  # one ablated copy per channel
        rows.append(dict(tap=f"{name} {layer}", method=case, evals=evals, per_image=common.median(ts),
                         per_eval=common.median(ts) / max(1, evals), speedup=common.median_ratio(base, ts)))
    print(f"{name} {layer}: " + ", ".join(f"{r['method']} {r['per_image']:.2f}s" for r in rows), flush=True)
    jax.clear_caches()
    return rows, dict(parity=parity, agreement=agreement, K=int(tap.head(xj).shape[-1]), bf16=bf16_agreement)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.standard_args(p)
    p.add_argument("--taps", default=None, help="comma list of NET:LAYER (NET: resnet50, resnet18, lite0)")
    p.add_argument("--masks", type=int, default=None, help="mask count (default 2048; 256 with --quick)")
    p.add_argument("--size", type=int, default=None, help="ResNet input side (default 224; 112 with --quick)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--no-auto", action="store_true", help="skip the num_masks='auto' rows")
    p.add_argument("--no-ablation", action="store_true", help="skip pytorch-grad-cam's AblationCAM")
    p.add_argument("--bf16", action="store_true",
                   help="add bfloat16 rows: chipjax compute_dtype='bfloat16' and the torch CHIP under CPU autocast")
    args = p.parse_args(argv)
    common.set_threads(args.threads)
    taps = (args.taps or ("resnet18:layer3,lite0:head" if args.quick else
                          "resnet50:layer3,resnet50:layer4,lite0:head,lite0:blocks.15.expand")).split(",")
    num_masks = args.masks or (256 if args.quick else 2048)
    size = args.size or (112 if args.quick else 224)
    reps = args.reps or 3
    rows, facts = [], {}
    for spec in taps:
        name, layer = spec.split(":")
        tap_rows, facts[spec] = run_tap(name, layer, size, num_masks, reps, auto=not args.no_auto, bf16=args.bf16,
                                        ablation=name.startswith("resnet") and layer == "layer3" and not args.no_ablation)
        rows += tap_rows
    headers = ["tap", "method", "perturbed evals", "s / image", "ms / eval", "torch CHIP time / this"]
    body = common.table(headers, [[r["tap"], r["method"], r["evals"], r["per_image"], 1e3 * r["per_eval"],
                                   r["speedup"]] for r in rows])
    notes = ("Per tap: " + "; ".join(f"{k} (K={v['K']}): logits parity {v['parity']:.1e} (max rel.), Spearman r of the "
                                     f"two CHIP maps {v['agreement']:.3f}"
                                     + ("" if v["bf16"] is None else f", bf16 map against its own float32 map: chipjax "
                                        f"{v['bf16'][0]:.3f}, torch {v['bf16'][1]:.3f}") for k, v in facts.items())
             + f". {num_masks} masks, keep 0.5, lam_ratio 0.05, softmax target score, one image (skimage chelsea), "
             f"torch threads {args.threads}. 'torch CHIP time / this' > 1: faster than the hand-written torch CHIP "
             f"(median of per-repetition ratios, {reps} interleaved repetitions after a warm-up; a chipjax case shorter "
             f"than {common.LEAD_IN_BELOW_S:g} s runs once untimed right before each timed call, as in a loop over "
             "images, and the torch cases follow a chipjax call, where they run fastest: "
             "benchmarks.common.LEAD_IN_BELOW_S). 'auto' rows: "
             "chipjax streaming masks in rounds of 256 until the predicted seed stability (Spearman-Brown of the "
             "split-half map correlation) reaches 0.99, perturbed evals = masks it used; the ratio is against the "
             "torch CHIP at the fixed count. AblationCAM rows: ms / eval is per perturbed evaluation (each a full "
             "forward pass up to the ablated layer and the tail); chipjax AblationCAM ablates every channel once (the "
             "tail only, on the engine).")
    common.report("vs_torch_chip", body, notes, write=not args.no_write)
    return rows


if __name__ == "__main__":
    main()
