"""Grid sizes of the CUDA passes, without a GPU (docs/design.md §4.5).

At N=8 every full-size launch of the six passes (the four reductions and the elementwise apply_gates
and input_grad) has at least two CTAs per SM of an H100 (132 SMs), in fp16, in both layouts, at the
four ResNet stage shapes; each pass launches exactly its kernels (tests/cudaemu.py, PASS_KERNELS), so the launch budget does not grow;
and at N=128, where the batch alone fills the device, the grids do not depend on the SM count.

The emulator reports the SM count (CUDACPU_SM_COUNT) and logs every launch (CUDACPU_LAUNCH_LOG)
without running it (CUDACPU_DRY_RUN), in a child process (cudaemu.pass_launches). Kernels named
*finish* fold a few partials per output and are exempt. ``python -m tests.test_cuda_geometry``
prints the table.
"""
import functools

import pytest

from bench.shapes import RESNET50_STAGES

from .conftest import require_backend
from .cudaemu import FULL_SIZE_PASSES, PASS_KERNELS, pass_launches

pytestmark = pytest.mark.emulator

SM_COUNT = 132  # H100 SXM, H200
MIN_CTAS = 2 * SM_COUNT
STAGE_SHAPES = RESNET50_STAGES  # C, H, W
LAYOUTS = ("nchw", "channels_last")


def cases(n):
    return [dict(name=name, shape=[n, *chw], dtype="float16", layout=layout)
            for chw in STAGE_SHAPES for layout in LAYOUTS for name in FULL_SIZE_PASSES]


@functools.lru_cache(maxsize=None)
def measured(n, sm_count=SM_COUNT):
    """[(case, launches)] of cases(n) on a device of ``sm_count`` SMs."""
    return list(zip(cases(n), pass_launches(cases(n), sm_count)))


def full_size(launches):
    return [launch for launch in launches if "finish" not in launch.kernel]


def table(n=8, sm_count=SM_COUNT):
    lines = [f"CTAs per launch at {sm_count} SMs (fp16):"]
    for case, launches in measured(n, sm_count):
        shape = "x".join(map(str, case["shape"]))
        for launch in launches:
            lines.append(f"  {case['name']:<14} {shape:<16} {case['layout']:<14} {launch.kernel:<20} {launch.ctas:>6}")
    return "\n".join(lines)


def test_passes_fill_the_gpu_at_batch_8():
    require_backend("cudaemu")
    short = [(case["name"], case["shape"], case["layout"], launch.kernel, launch.ctas)
             for case, launches in measured(8) for launch in full_size(launches) if launch.ctas < MIN_CTAS]
    assert not short, f"fewer than {MIN_CTAS} CTAs: {short}\n{table()}"


def test_launches_per_pass():
    require_backend("cudaemu")
    for case, launches in measured(8):
        assert [launch.kernel for launch in launches] == list(PASS_KERNELS[case["name"]]), case


def test_batch_128_grids_do_not_depend_on_the_sm_count():
    """The batch alone gives more than two CTAs per SM, so no tile is shortened: the grids on 132 SMs
    are those on one SM."""
    require_backend("cudaemu")
    assert [launches for _, launches in measured(128)] == [launches for _, launches in measured(128, 1)]


if __name__ == "__main__":
    print(table())
