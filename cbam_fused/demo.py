"""Training demo: a small CBAM-ResNet trained twice from one init, with reference and with fused CBAM.

``python -m cbam_fused.demo`` trains on synthetic data (offline, no downloads) for a few hundred
steps, once with ``cbam_fused.reference.CBAM`` blocks and once with fused ``cbam_fused.CBAM`` blocks
carrying the same weights, on the same batches (the two models take turns at every step). It prints the time per step of each run and the
largest difference between the two loss curves, and writes the curves to a PNG and a JSON file.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import reference
from .convert import convert
from .ops import resolve_backend


class BasicBlock(nn.Module):
    """ResNet basic block with CBAM on the residual branch, before the addition (as in the CBAM paper)."""

    def __init__(self, cin: int, cout: int, stride: int, reduction: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.cbam = reference.CBAM(cout, reduction)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.cbam(self.bn2(self.conv2(out)))
        return F.relu(out + self.shortcut(x))


class CBAMResNet(nn.Module):
    """A small CIFAR-style CBAM-ResNet: a stem, three stages of ``blocks`` basic blocks, a linear head."""

    def __init__(self, width: int = 32, blocks: int = 1, classes: int = 10, reduction: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1, reduction))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        return self.head(self.layers(self.stem(x)).mean(dim=(2, 3)))


def synthetic_data(samples: int, image_size: int, classes: int, seed: int):
    """Images = a fixed random pattern per class, randomly shifted, plus noise; learnable but not trivial."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, 3, image_size, image_size, generator=g)
    labels = torch.randint(classes, (samples,), generator=g)
    shifts = torch.randint(-image_size // 4, image_size // 4 + 1, (samples, 2), generator=g)
    images = torch.stack([torch.roll(patterns[y], (int(dy), int(dx)), dims=(1, 2))
                          for y, (dy, dx) in zip(labels.tolist(), shifts)])
    images = images + 1.5 * torch.randn(images.shape, generator=g)
    return images, labels


def train_side_by_side(models: dict, images, labels, steps: int, batch_size: int, lr: float, seed: int) -> dict:
    """SGD on one fixed sequence of batches, the models taking turns at every step (so that both see
    the same machine load); returns, per model, the losses and the seconds per step."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    runs = {}
    for name, model in models.items():
        model.train()
        runs[name] = {"opt": torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4),
                      "losses": [], "step_s": []}
    for step in range(steps):
        start_idx = (step * batch_size) % (len(images) - batch_size + 1)
        idx = order[start_idx:start_idx + batch_size]
        batch, target = images[idx], labels[idx]
        for name, model in models.items():
            run = runs[name]
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(batch), target)
            run["opt"].zero_grad(set_to_none=True)
            loss.backward()
            run["opt"].step()
            run["step_s"].append(time.perf_counter() - t0)
            run["losses"].append(loss.item())
    for run in runs.values():
        del run["opt"]
    return runs


def run_demo(steps: int = 300, batch_size: int = 32, image_size: int = 16, width: int = 16, blocks: int = 1,
             samples: int = 4096, lr: float = 0.03, seed: int = 0, backend: Optional[str] = None,
             out: Optional[str] = "bench_out/demo", plot: bool = True, log=print) -> dict:
    torch.manual_seed(seed)
    model_ref = CBAMResNet(width, blocks)
    model_fused = copy.deepcopy(model_ref)
    report = convert(model_fused, backend=backend)
    log(str(report))
    images, labels = synthetic_data(samples, image_size, 10, seed)
    resolved = resolve_backend(backend, images)
    cbams = sum(isinstance(m, reference.CBAM) for m in model_ref.modules())
    log(f"CBAM-ResNet: width {width}, {cbams} CBAM blocks, {sum(p.numel() for p in model_ref.parameters())} "
        f"parameters; {steps} steps of batch {batch_size} at {image_size}x{image_size}; "
        f"fused backend {resolved!r}; {torch.get_num_threads()} threads")

    runs = train_side_by_side({"reference": model_ref, "fused": model_fused}, images, labels, steps, batch_size,
                              lr, seed)
    for name, run in runs.items():
        steady = run["step_s"][min(steps - 1, 5):]  # the first steps warm up allocators and caches
        run["median_step_s"] = statistics.median(steady)
        log(f"{name:>9}: final loss {run['losses'][-1]:.4f}, median time per step {run['median_step_s'] * 1e3:.2f} ms")
    diffs = [abs(a - b) for a, b in zip(runs["reference"]["losses"], runs["fused"]["losses"])]
    # Rounding differs between the fused kernels and the reference; training amplifies it step by step.
    apart = next((i for i, d in enumerate(diffs) if d > 1e-4), None)
    result = {"steps": steps, "batch_size": batch_size, "image_size": image_size, "width": width,
              "blocks": blocks, "cbam_blocks": cbams, "backend": resolved, "threads": torch.get_num_threads(),
              "runs": runs, "max_loss_diff": max(diffs), "first_loss_diff": diffs[0],
              "first_step_diff_above_1e-4": apart}
    log(f"max |loss_reference - loss_fused| over {steps} steps: {result['max_loss_diff']:.3g} "
        f"(step 0: {diffs[0]:.3g}; first above 1e-4 at step {apart}); step time reference/fused: "
        f"{runs['reference']['median_step_s'] / runs['fused']['median_step_s']:.2f}x")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "demo.json"), "w") as f:
            json.dump(result, f)
        if plot:
            result["plot"] = _plot(result, os.path.join(out, "demo_loss.png"))
            log(f"plot: {result['plot']}")
    return result


def _plot(result: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref, fused = result["runs"]["reference"], result["runs"]["fused"]
    fig, (ax, ax_diff) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(ref["losses"], label=f"reference CBAM ({ref['median_step_s'] * 1e3:.1f} ms/step)", linewidth=2)
    ax.plot(fused["losses"], "--", label=f"fused CBAM, backend {result['backend']} "
                                         f"({fused['median_step_s'] * 1e3:.1f} ms/step)", linewidth=1.5)
    ax.set_ylabel("training loss")
    ax.set_title(f"CBAM-ResNet on synthetic data, same init and batches ({result['threads']} threads)")
    ax.legend()
    ax.grid(alpha=0.3)
    diff = [abs(a - b) for a, b in zip(ref["losses"], fused["losses"])]
    ax_diff.semilogy([max(d, 1e-12) for d in diff])
    ax_diff.set_ylabel("|difference|")
    ax_diff.set_xlabel("step")
    ax_diff.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cbam_fused.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--width", type=int, default=16, help="channels of the first stage (then 2x, 4x)")
    p.add_argument("--blocks", type=int, default=1, help="basic blocks per stage")
    p.add_argument("--samples", type=int, default=4096, help="size of the synthetic training set")
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default=None, help="fused backend (default: the best for CPU tensors)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="bench_out/demo", help="directory for demo_loss.png and demo.json")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "image_size", "width", "blocks", "samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.samples < args.batch_size:
        p.error("--samples must be >= --batch-size")
    if args.threads:
        torch.set_num_threads(args.threads)
    run_demo(args.steps, args.batch_size, args.image_size, args.width, args.blocks, args.samples, args.lr,
             args.seed, args.backend, args.out, not args.no_plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
