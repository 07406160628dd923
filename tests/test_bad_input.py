"""Bad and unusual input: a clear Python exception naming the problem, or the reference's result.

Every case runs in a child process (one per backend, running all cases), so a segfault or an abort
fails the test instead of killing pytest, and a hang hits the timeout. Each case reports back "ok" or
the exception it ended with.

Decisions, by case:
* wrong rank, weight-shape mismatch, even K, non-float dtypes, mixed dtypes or devices: a clear error;
* N = 0: follows the reference (an empty output, zero weight gradients);
* C, H or W = 0: ValueError (the reference fails too, inside its pooling);
* a K larger than the image: follows the reference (zero padding, as conv2d does);
* non-contiguous and overlapping (expanded) x and gy: follow the reference;
* NaN/Inf in x: the same NaN and Inf positions as the reference, the same finite values;
* NaN/Inf in gy: every gradient becomes non-finite exactly where the reference's does (GradScaler);
* double backward: a clear RuntimeError; first derivatives with create_graph=True stay correct.
"""
import contextlib
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import cbam_fused as cf
from cbam_fused import reference as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "CASE-RESULT "


class CaseSkipped(Exception):
    """A case that does not apply to this backend."""


# ----------------------------------------------------------------------------- helpers for cases
def _device(backend):
    return "cuda" if backend == "cuda" else "cpu"


def _weights(c, k=7, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    cr = max(1, c // 4)
    rnd = lambda *s: (torch.randn(*s, generator=g) * 0.5).to(dtype).to(device)  # noqa: E731
    return dict(w1=rnd(cr, c), w2=rnd(c, cr), conv_weight=rnd(1, 2, k, k), b1=rnd(cr), b2=rnd(c), conv_bias=rnd(1))


def _x(shape, dtype=torch.float32, device="cpu", seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)


def _fused(x, wt, backend, **kw):
    return cf.cbam(x, wt["w1"], wt["w2"], wt["conv_weight"], wt["b1"], wt["b2"], wt["conv_bias"],
                   backend=backend, **kw)


def _ref(x, wt, **kw):
    return R.cbam(x, wt["w1"], wt["w2"], wt["conv_weight"], wt["b1"], wt["b2"], wt["conv_bias"], **kw)


def _expect(exc, words, fn):
    try:
        fn()
    except exc as e:
        msg = str(e)
        missing = [w for w in words if w.lower() not in msg.lower()]
        if missing:
            raise AssertionError(f"{type(e).__name__} raised but its message lacks {missing}: {msg!r}")
        return
    raise AssertionError(f"expected {exc.__name__} naming {words}, nothing was raised")


@contextlib.contextmanager
def _native_conv():
    """ATen's own CPU convolution, not oneDNN's; the flags' TF32 setter warns without an Intel GPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def _both(x, wt, backend, gy=None, native_conv_ref=False, **kw):
    """Forward and gradients (x and every weight) of the fused op and of the reference, same dtype.

    ``native_conv_ref`` runs the reference's convolutions without oneDNN: where a non-finite value
    meets the zero padding, ATen's own convolution (and the fused kernels, csrc/cpu/spatial_conv.cpp)
    multiply the padding zeros on every CPU, while oneDNN does so or not depending on the CPU's ISA.
    """
    names = ["w1", "w2", "conv_weight", "b1", "b2", "conv_bias"]
    out = []
    for impl in ("fused", "ref"):
        xs = x.detach().requires_grad_()
        ws = {k: v.detach().requires_grad_() for k, v in wt.items()}
        with _native_conv() if impl == "ref" and native_conv_ref else contextlib.nullcontext():
            y = _fused(xs, ws, backend, **kw) if impl == "fused" else _ref(xs, ws, **kw)
            g = torch.ones_like(y) if gy is None else gy
            grads = torch.autograd.grad(y, [xs] + [ws[k] for k in names], g, allow_unused=True)
        out.append((y.detach(), grads))
    return out


def _match_ref(x, wt, backend, gy=None, atol=2e-5, rtol=2e-4, **kw):
    (y, grads), (y_ref, grads_ref) = _both(x, wt, backend, gy, **kw)
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=rtol, equal_nan=True)
    for i, (g, gr) in enumerate(zip(grads, grads_ref)):
        gr = torch.zeros_like(g) if gr is None else gr
        torch.testing.assert_close(g, gr, atol=atol, rtol=rtol, equal_nan=True, msg=lambda m: f"grad {i}: {m}")


# ------------------------------------------------------------------------------------- the cases
def case_wrong_rank_3d(backend):
    dev = _device(backend)
    _expect(ValueError, ["4-D"], lambda: _fused(_x((8, 5, 6), device=dev), _weights(8, device=dev), backend))


def case_wrong_rank_5d(backend):
    dev = _device(backend)
    _expect(ValueError, ["4-D"], lambda: _fused(_x((2, 8, 5, 6, 1), device=dev), _weights(8, device=dev), backend))


def case_not_a_tensor(backend):
    _expect(TypeError, ["x must be a Tensor"], lambda: _fused([[1.0]], _weights(8), backend))


def case_channel_weight_mismatch(backend):
    dev = _device(backend)
    _expect(ValueError, ["w1", "C=8"], lambda: _fused(_x((2, 8, 5, 6), device=dev), _weights(9, device=dev), backend))


def case_w2_shape_mismatch(backend):
    dev = _device(backend)
    wt = _weights(8, device=dev)
    wt["w2"] = wt["w2"][:, :1].repeat(1, 3)
    _expect(ValueError, ["w2"], lambda: _fused(_x((2, 8, 5, 6), device=dev), wt, backend))


def case_bias_shape_mismatch(backend):
    dev = _device(backend)
    wt = _weights(8, device=dev)
    wt["b2"] = wt["b2"][:5]
    _expect(ValueError, ["b2"], lambda: _fused(_x((2, 8, 5, 6), device=dev), wt, backend))


def case_conv_weight_in_channels(backend):
    dev = _device(backend)
    wt = _weights(8, device=dev)
    wt["conv_weight"] = torch.zeros(1, 3, 7, 7, device=dev)
    _expect(ValueError, ["conv_weight", "[1, 2, K, K]"], lambda: _fused(_x((2, 8, 5, 6), device=dev), wt, backend))


def case_non_square_kernel(backend):
    dev = _device(backend)
    wt = _weights(8, device=dev)
    wt["conv_weight"] = torch.zeros(1, 2, 7, 5, device=dev)
    _expect(ValueError, ["conv_weight"], lambda: _fused(_x((2, 8, 5, 6), device=dev), wt, backend))


def case_even_kernel(backend):
    dev = _device(backend)
    _expect(ValueError, ["odd", "4"], lambda: _fused(_x((2, 8, 5, 6), device=dev), _weights(8, k=4, device=dev), backend))


def case_even_kernel_module(backend):
    _expect(ValueError, ["odd"], lambda: cf.SpatialAttention(6, backend=backend))


def case_oversized_kernel_follows_reference(backend):
    dev = _device(backend)  # K = 15 on a 5x6 image: the window is mostly zero padding, as in conv2d
    _match_ref(_x((2, 8, 5, 6), device=dev), _weights(8, k=15, device=dev), backend)


def case_integer_x(backend):
    dev = _device(backend)
    x = torch.ones(2, 8, 5, 6, dtype=torch.int32, device=dev)
    _expect(TypeError, ["torch.int32"], lambda: _fused(x, _weights(8, device=dev), backend))


def case_bool_x(backend):
    dev = _device(backend)
    x = torch.ones(2, 8, 5, 6, dtype=torch.bool, device=dev)
    _expect(TypeError, ["torch.bool"], lambda: _fused(x, _weights(8, device=dev), backend))


def case_integer_weight(backend):
    dev = _device(backend)
    wt = _weights(8, device=dev)
    wt["w1"] = wt["w1"].to(torch.int64)
    _expect(TypeError, ["w1", "torch.int64"], lambda: _fused(_x((2, 8, 5, 6), device=dev), wt, backend))


def case_weight_dtype_differs(backend):
    dev = _device(backend)
    wt = _weights(8, device=dev)
    wt["conv_weight"] = wt["conv_weight"].double()
    _expect(TypeError, ["conv_weight", "float64", "float32"], lambda: _fused(_x((2, 8, 5, 6), device=dev), wt, backend))


def case_weight_device_differs(backend):
    dev = _device(backend)
    wt = _weights(8, device=dev)
    wt["w2"] = wt["w2"].to("meta")
    _expect(ValueError, ["w2", "meta"], lambda: _fused(_x((2, 8, 5, 6), device=dev), wt, backend))


def case_weight_device_differs_in_inference_mode(backend):
    """Inference tensors skip the autograd kernel: the device kernel's own check must catch it."""
    dev = _device(backend)
    wt = _weights(8, device=dev)
    wt["conv_weight"] = wt["conv_weight"].to("meta")
    with torch.inference_mode():
        _expect(ValueError, ["conv_weight", "meta"], lambda: _fused(_x((2, 8, 5, 6), device=dev), wt, backend))


def case_weight_shape_checked_in_inference_mode(backend):
    dev = _device(backend)
    wt = _weights(8, device=dev)
    wt["b1"] = wt["b1"][:1]
    with torch.inference_mode():
        _expect(ValueError, ["b1"], lambda: _fused(_x((2, 8, 5, 6), device=dev), wt, backend))


def case_empty_batch_follows_reference(backend):
    dev = _device(backend)
    x, wt = _x((0, 8, 5, 6), device=dev), _weights(8, device=dev)
    (y, grads), (y_ref, grads_ref) = _both(x, wt, backend)
    assert y.shape == y_ref.shape == (0, 8, 5, 6)
    for g, gr in zip(grads, grads_ref):
        assert g.shape == gr.shape and not g.any() and not gr.any()


def case_empty_channels(backend):
    dev = _device(backend)
    _expect(ValueError, ["empty", "C, H or W"], lambda: _fused(_x((2, 0, 5, 6), device=dev), _weights(0, device=dev), backend))


def case_empty_height(backend):
    dev = _device(backend)
    _expect(ValueError, ["empty"], lambda: _fused(_x((2, 8, 0, 6), device=dev), _weights(8, device=dev), backend))


def case_empty_width(backend):
    dev = _device(backend)
    _expect(ValueError, ["empty"], lambda: _fused(_x((2, 8, 5, 0), device=dev), _weights(8, device=dev), backend))


def case_sliced_x(backend):
    dev = _device(backend)
    x = _x((3, 16, 9, 14), device=dev)[::2, 1::2, :, ::3]
    _match_ref(x, _weights(8, device=dev), backend)


def case_sliced_channels_last_x(backend):
    dev = _device(backend)
    x = _x((2, 16, 9, 14), device=dev).contiguous(memory_format=torch.channels_last)[:, :, 1:8, 2:]
    _match_ref(x, _weights(16, device=dev), backend)


def case_expanded_x(backend):
    dev = _device(backend)  # stride 0 over the batch and over the width: overlapping memory
    x = _x((1, 8, 5, 1), device=dev).expand(3, 8, 5, 7)
    _match_ref(x, _weights(8, device=dev), backend)


def case_expanded_x_ties_split(backend):
    dev = _device(backend)  # every pixel of a row ties: split-style gradients share among them
    x = _x((1, 8, 5, 1), device=dev).expand(2, 8, 5, 6)
    _match_ref(x, _weights(8, device=dev), backend, ties="split")


def case_expanded_gy(backend):
    dev = _device(backend)
    x = _x((2, 8, 5, 6), device=dev)
    gy = torch.randn(1, 8, 1, 6, device=dev).expand(2, 8, 5, 6)
    _match_ref(x, _weights(8, device=dev), backend, gy=gy)


def case_transposed_gy(backend):
    dev = _device(backend)
    x = _x((2, 8, 5, 6), device=dev)
    gy = torch.randn(2, 8, 6, 5, device=dev).transpose(2, 3)
    _match_ref(x, _weights(8, device=dev), backend, gy=gy)


def _nonfinite_x(backend, value, where):
    dev = _device(backend)
    x = _x((2, 8, 5, 6), device=dev)
    x[where] = value
    (y, _), (y_ref, _) = _both(x, _weights(8, device=dev), backend)
    assert torch.equal(torch.isnan(y), torch.isnan(y_ref)), "NaN positions differ from the reference"
    assert torch.equal(torch.isinf(y), torch.isinf(y_ref)), "Inf positions differ from the reference"
    assert torch.equal(torch.signbit(y[torch.isinf(y)]), torch.signbit(y_ref[torch.isinf(y_ref)]))
    fin = torch.isfinite(y_ref)
    torch.testing.assert_close(y[fin], y_ref[fin], atol=2e-5, rtol=2e-4)


def case_nan_in_x(backend):
    _nonfinite_x(backend, float("nan"), (1, 3, 2, 4))


def case_inf_in_x(backend):
    _nonfinite_x(backend, float("inf"), (0, 5, 4, 0))


def case_minus_inf_in_x(backend):
    _nonfinite_x(backend, float("-inf"), (1, 0, 0, 5))


def _nonfinite_gy(backend, value):
    dev = _device(backend)
    x, wt = _x((2, 8, 5, 6), device=dev), _weights(8, device=dev)
    gy = torch.randn(2, 8, 5, 6, device=dev)
    gy[1, 2, 3, 4] = value
    (_, grads), (_, grads_ref) = _both(x, wt, backend, gy=gy, native_conv_ref=True)
    for i, (g, gr) in enumerate(zip(grads, grads_ref)):
        assert not torch.isfinite(g).all(), f"gradient {i} hides the non-finite incoming gradient"
        assert torch.equal(torch.isfinite(g), torch.isfinite(gr)), f"gradient {i}: non-finite entries differ"


def case_nan_in_gy(backend):
    _nonfinite_gy(backend, float("nan"))


def case_inf_in_gy(backend):
    _nonfinite_gy(backend, float("inf"))


def case_double_backward(backend):
    dev = _device(backend)
    x = _x((2, 8, 5, 6), device=dev).requires_grad_()
    wt = _weights(8, device=dev)
    gx, = torch.autograd.grad(_fused(x, wt, backend).square().sum(), x, create_graph=True)
    _expect(RuntimeError, ["second derivatives", "double backward"], lambda: gx.square().sum().backward())


def case_create_graph_first_derivatives(backend):
    dev = _device(backend)
    x, wt = _x((2, 8, 5, 6), device=dev), _weights(8, device=dev)
    firsts = []
    for create_graph in (False, True):
        xs = x.clone().requires_grad_()
        gx, = torch.autograd.grad(_fused(xs, wt, backend).sum(), xs, create_graph=create_graph)
        firsts.append(gx.detach())
    assert torch.equal(*firsts)


def case_more_than_2_24_pixels(backend):
    """A kernel may cap C or H*W (the CPU kernels cap both at 2^24): then a clear error, else the reference."""
    if backend in ("triton", "cudaemu"):
        raise CaseSkipped("16.8M pixels are too slow under the interpreter and the emulator")
    dev = _device(backend)
    x, wt = _x((1, 1, 4097, 4097), device=dev), _weights(1, device=dev)
    try:
        (y, grads), (y_ref, grads_ref) = _both(x, wt, backend)
    except (RuntimeError, ValueError) as e:
        if not any(w in str(e).lower() for w in ("pixels", "channels")):
            raise
        return
    # fp32 sums over 16.8M pixels: judge both against the fp64 reference, the fused error at most
    # twice the fp32 reference's own error (plus a small tolerance)
    _, (y64, grads64) = _both(x.double(), {k: v.double() for k, v in wt.items()}, "torch")
    for i, (g, gr, g64) in enumerate(zip((y, *grads), (y_ref, *grads_ref), (y64, *grads64))):
        err = (g.double() - g64).abs().max().item()
        err_ref = (gr.double() - g64).abs().max().item()
        scale = g64.abs().max().item()
        assert err <= 2 * err_ref + 1e-4 * max(1.0, scale), f"output/grad {i}: error {err:.3g} vs reference {err_ref:.3g}"


def case_unknown_gate(backend):
    dev = _device(backend)
    _expect(ValueError, ["gate", "swish"], lambda: _fused(_x((2, 8, 5, 6), device=dev), _weights(8, device=dev), backend, gate="swish"))


def case_unknown_ties(backend):
    dev = _device(backend)
    _expect(ValueError, ["ties", "first"], lambda: _fused(_x((2, 8, 5, 6), device=dev), _weights(8, device=dev), backend, ties="first"))


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


# ------------------------------------------------------------------------- child and parent sides
def run_cases(backend: str) -> None:
    """Child process: run every case, print one result line per case."""
    import tests.conftest  # noqa: F401 - registers the "spec" pass set, as under pytest

    if backend == "cudaemu":
        from tests import cudaemu

        cudaemu.register()
    for name, fn in CASES.items():
        try:
            fn(backend)
            result = "ok"
        except CaseSkipped as e:
            result = f"skip: {e}"
        except Exception as e:  # noqa: BLE001 - reported to the parent verbatim
            result = f"{type(e).__name__}: {e}"
        print(MARK + json.dumps([name, result]), flush=True)


_RESULTS: dict = {}


def _results(backend):
    if backend not in _RESULTS:
        code = "import sys; from tests.test_bad_input import run_cases; run_cases(sys.argv[1])"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        proc = subprocess.run([sys.executable, "-c", code, backend], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=900)
        got = dict(json.loads(line[len(MARK):]) for line in proc.stdout.splitlines() if line.startswith(MARK))
        _RESULTS[backend] = (proc.returncode, got, proc.stderr[-3000:])
    return _RESULTS[backend]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(backend, case):
    returncode, got, stderr = _results(backend)
    if case not in got:
        pytest.fail(f"the child process died before case {case!r} reported (exit code {returncode}); "
                    f"stderr tail:\n{stderr}")
    if got[case].startswith("skip: "):
        pytest.skip(got[case][len("skip: "):])
    assert got[case] == "ok", got[case]
    assert returncode == 0, f"the child exited with {returncode} after all cases reported; stderr:\n{stderr}"
