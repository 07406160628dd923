"""Named shape sets [N, C, H, W] for the sweep."""
from __future__ import annotations

# The five shapes at which the CPU targets (runner.TARGETS) are set, fp32.
CPU_TARGETS = [(8, 256, 56, 56), (8, 512, 28, 28), (8, 1024, 14, 14), (8, 2048, 7, 7), (32, 64, 56, 56)]

# Outputs of the four ResNet-50 stages (224x224 input), where CBAM sits in CBAM-ResNet: C, H, W.
RESNET50_STAGES = [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]

SHAPE_SETS: dict[str, list[tuple[int, int, int, int]]] = {
    "targets": CPU_TARGETS,
    "resnet50": [(n, *chw) for n in (8, 32) for chw in RESNET50_STAGES],
    # MobileNetV2-like light blocks (few channels; C=24 gives a hidden width of 1 at r=16).
    "mobilenet": [(32, 24, 56, 56), (32, 32, 28, 28), (32, 96, 14, 14), (32, 320, 7, 7)],
    # Detector neck (FPN levels P3..P5) on a 384x640 landscape image: non-square H x W.
    "neck": [(8, 256, 48, 80), (8, 256, 24, 40), (8, 256, 12, 20)],
    # Smoke tests only.
    "tiny": [(2, 32, 8, 8), (2, 48, 5, 9)],
}

DEFAULT_SETS = ("targets", "resnet50", "mobilenet", "neck")


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``"8x256x56x56"`` -> ``(8, 256, 56, 56)``."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"bad shape {text!r}; expected NxCxHxW, e.g. 8x256x56x56") from None
    if len(dims) != 4 or min(dims) < 1:
        raise ValueError(f"bad shape {text!r}; expected four positive sizes NxCxHxW")
    return dims  # type: ignore[return-value]


def resolve(names: list[str]) -> list[tuple[int, int, int, int]]:
    """Shapes of the named sets (or literal ``NxCxHxW`` shapes), in order, without duplicates."""
    out: list[tuple[int, int, int, int]] = []
    for name in names:
        if name in SHAPE_SETS:
            shapes = SHAPE_SETS[name]
        elif name == "default":
            shapes = [s for n in DEFAULT_SETS for s in SHAPE_SETS[n]]
        elif name[:1].isdigit():
            shapes = [parse_shape(name)]
        else:
            raise ValueError(f"unknown shape set {name!r}; expected one of "
                             f"{sorted(SHAPE_SETS) + ['default']} or a shape NxCxHxW")
        for s in shapes:
            if s not in out:
                out.append(s)
    return out


def sets_containing(shape) -> list[str]:
    return [name for name, shapes in SHAPE_SETS.items() if tuple(shape) in shapes]
