"""Checks of the CUDA kernels on the CPU emulator that only the emulator has: the Python wrapper's
argument checks, the launchers under AddressSanitizer and the channel MLP kernels against autograd.
The passes' comparison with the spec is the ``cudaemu`` pass set of tests/test_passes.py. Run each
thread order as its own process: ``CUDACPU_ORDER=fwd|rev|rand pytest -m emulator``.
"""
import os
import subprocess

import numpy as np
import pytest
import torch

from .conftest import require_backend

pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def emu():
    require_backend("cudaemu")
    from tests import cudaemu

    return cudaemu


def tol(dtype):
    return (1e-12, 1e-10) if dtype == torch.float64 else (1e-5, 1e-5)


def close(actual, expected, dtype, what):
    atol, rtol = tol(dtype)
    scale = max(1.0, expected.abs().max().item() if expected.numel() else 0.0)
    torch.testing.assert_close(actual, expected, atol=atol * scale, rtol=rtol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def test_bad_input_is_rejected(emu):
    e = emu.EmuPasses()
    x = torch.randn(2, 4, 3, 5)
    with pytest.raises(ValueError, match="NCHW-contiguous or channels_last"):
        e.pool_hw(x[:, :, :, ::2])
    with pytest.raises(ValueError, match="a must be"):
        e.pool_c(x, torch.ones(2, 5))
    with pytest.raises(ValueError, match="split-style ties need x"):
        e.input_grad(x, None, None, None, None, None, None, None, None, None, None, None, True)


def test_asan_driver(emu, tmp_path):
    """Every launcher on odd and misaligned shapes under AddressSanitizer, checked by host loops."""
    driver = emu.ROOT / "tests" / "cudaemu" / "asan_driver.cu"
    try:
        exe = emu.build(("-fsanitize=address", "-g", "-O1", "-fno-strict-aliasing"), source=driver, shared=False,
                        tag="asan_driver")
    except RuntimeError as e:
        pytest.fail(f"the ASan driver did not build: {e}")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0")
    proc = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"ASan driver failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert "asan_driver: all checks passed" in proc.stdout


# (n, c, hidden): C past the block's 256 threads, N and hidden past the kernels' chunk of 64, a 1x1x1
# MLP, no samples
MLP_SHAPES = {"small": (2, 16, 4), "c300": (3, 300, 5), "n70": (70, 8, 3), "h130": (2, 5, 130), "one": (1, 1, 1),
              "n0": (0, 6, 2)}
# (ATen's hardsigmoid backward scales fp64 by a float 1/6: clamp / 6 is the exact definition)
MLP_GATES = {"sigmoid": torch.sigmoid, "hard_sigmoid": lambda z: torch.clamp(z + 3.0, 0.0, 6.0) / 6.0,
             "keras_hard_sigmoid": lambda z: torch.clamp(z * 0.2 + 0.5, 0.0, 1.0)}


def mlp_reference(pooled, w1, b1, w2, b2, pools, gate):
    """m and a by plain autograd-able torch ops (the definition in csrc/pass_args.h)."""
    avg, mx = pooled[0], pooled[1]
    inputs = {"avg+max": [avg, mx], "avg": [avg], "max": [mx], "light": [(avg + mx) / 2]}[pools]
    m = sum(torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(v, w1, b1)), w2, b2) for v in inputs)
    return m, MLP_GATES[gate](m)


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("gate", list(MLP_GATES))
@pytest.mark.parametrize("pools", ["avg+max", "avg", "max", "light"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape_name", list(MLP_SHAPES))
def test_channel_mlp_matches_torch(emu, shape_name, dtype, pools, gate, bias):
    """The CUDA MLP kernels vs autograd: m, a, and from ga the pools' gradient operands u = g_avg / P and
    v = g_max (/ count with split ties) and the weight gradients; bitwise the same on a second run."""
    n, c, r = MLP_SHAPES[shape_name]
    pixels = 7
    g = torch.Generator().manual_seed(n * 1000 + c * 10 + r)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    pooled, w1, w2 = rnd(2, n, c), rnd(r, c) * c ** -0.5 * 3, rnd(c, r) * r ** -0.5 * 3
    b1, b2 = (rnd(r), rnd(c)) if bias else (None, None)
    ga = rnd(n, c)
    count = torch.randint(1, 4, (n, c), generator=g, dtype=torch.int32)
    m, a = emu.channel_mlp(pooled, w1, b1, w2, b2, pools, gate)
    leaves = [t.detach().clone().requires_grad_() for t in (pooled, w1, w2)]
    bleaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (b1, b2)]
    m_ref, a_ref = mlp_reference(leaves[0], leaves[1], bleaves[0], leaves[2], bleaves[1], pools, gate)
    close(m, m_ref.detach(), dtype, "m")
    close(a, a_ref.detach(), dtype, "a")
    wanted = [t for t in leaves + bleaves if t is not None]
    grads = torch.autograd.grad(a_ref, wanted, ga, allow_unused=True, materialize_grads=True) if n else \
        [torch.zeros_like(t) for t in wanted]
    g_pooled, gw1_ref, gw2_ref = grads[:3]
    for cnt in (None, count):
        u, v, gw1, gb1, gw2, gb2 = emu.channel_mlp_grad(pooled, w1, b1, w2, b2, m, a, ga, cnt, pixels, pools, gate)
        close(u, g_pooled[0] / pixels, dtype, "u")
        close(v, g_pooled[1] / (1 if cnt is None else cnt), dtype, f"v count={cnt is not None}")
        close(gw1, gw1_ref, dtype, "gw1")
        close(gw2, gw2_ref, dtype, "gw2")
        if bias:
            close(gb1, grads[3], dtype, "gb1")
            close(gb2, grads[4], dtype, "gb2")
        again = emu.channel_mlp_grad(pooled, w1, b1, w2, b2, m, a, ga, cnt, pixels, pools, gate)
        for first, second in zip((u, v, gw1, gb1, gw2, gb2), again):
            assert first is None or torch.equal(first, second), "not bitwise the same on a second run"
    assert all(torch.equal(t, t2) for t, t2 in zip((m, a), emu.channel_mlp(pooled, w1, b1, w2, b2, pools, gate)))


def test_channel_mlp_rejects_bad_arguments(emu):
    lib = emu._load()
    # no pooled vector for N * C > 0, and a pools value out of range
    assert lib.cbam_emu_channel_mlp(2, 3, 1, 0, 0, 0, None, None, None, None, None, None, None) != 0
    x = torch.zeros(2, 2, 3)
    w1, w2, m = torch.zeros(1, 3), torch.zeros(3, 1), torch.zeros(2, 3)
    assert lib.cbam_emu_channel_mlp(2, 3, 1, 0, 9, 0, x.data_ptr(), w1.data_ptr(), None, w2.data_ptr(), None,
                                    m.data_ptr(), m.data_ptr()) != 0


def row_lanes(columns, vec):
    """Lanes per row (docs/design.md §4.5): the fewest of 32, 16, 8, 4 that hold the row's chunks of
    vec columns, but at least 4; 32 for rows longer than 16 chunks."""
    lanes = 32
    while lanes > 4 and (lanes // 2) * vec >= columns:
        lanes //= 2
    return lanes


def lane_tree_sum(row, vec):
    """A row's sum as reduce_tiles forms it (csrc/cuda/passes.cuh, docs/design.md §4.5), in float32:
    per column tile of `lanes` lanes x vec (row_lanes), each lane adds its vec columns in order, the
    lanes merge in the tree (l, l ^ lanes/2), then ^ lanes/4, ..., 1; the finishing kernel adds the
    tiles in tile order."""
    f = np.float32
    lanes = row_lanes(len(row), vec)
    total = None
    for t0 in range(0, len(row), lanes * vec):
        sums = []
        for lane in range(lanes):
            s = f(0)
            for v in row[t0 + lane * vec:t0 + lane * vec + vec]:
                s = f(s + v)
            sums.append(s)
        d = lanes // 2
        while d:
            sums = [f(sums[lane] + sums[lane ^ d]) for lane in range(lanes)]
            d //= 2
        total = sums[0] if total is None else f(total + sums[0])
    return total


@pytest.mark.parametrize("columns", [300, 49, 13])
@pytest.mark.parametrize("rows", [0, 8])
def test_sums_along_a_row_are_the_lane_tree(emu, rows, columns):
    """The documented order of a sum along the contiguous axis, bitwise, where the warp merges rows
    four at a time (43 rows: groups of four, short groups of one and two) and one at a time (8-row
    tiles): pool_hw in NCHW and pool_c in channels_last, fp32, 300 columns (3 tiles of 32 lanes, the
    last short), 49 (rows of 16 lanes, two per warp) and 13 (rows of 4 lanes, eight per warp), values
    over 9 decades so that any other order shows in the last bits."""
    g = torch.Generator().manual_seed(1)
    rows_x = torch.randn(43, columns, generator=g) * 10.0 ** torch.randint(-4, 5, (43, columns), generator=g).float()
    want = torch.tensor([lane_tree_sum(r.numpy(), 4) / np.float32(columns) for r in rows_x])
    e = emu.EmuPasses(rows=rows)
    nchw = rows_x.reshape(1, 43, 1, columns)
    nhwc = rows_x.t().reshape(1, columns, 1, 43).contiguous(memory_format=torch.channels_last)
    assert torch.equal(e.pool_hw(nchw)[0][0], want)
    assert torch.equal(e.pool_c(nhwc, None)[0][0], want)
