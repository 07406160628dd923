"""More than 2^31 elements: the CPU backend on a bf16 tensor of about 4.3 GB, forward and backward.

The oracle cannot be the reference module run on the whole tensor (it would need fp64 copies of
tens of GB), so ``ChunkedReference`` computes the same math channel by channel in fp64: the pools,
the MLP and the conv exactly, then y and gx at sampled positions and the weight gradients in full.
Its formulas are docs/design.md §2; ``test_chunked_oracle_matches_reference`` checks them against
``cbam_fused.reference`` (autograd in fp64) on a small tensor, and ``test_sampled_check_small`` runs the
whole large-tensor check on a small tensor on every fast backend, so both halves are exercised in
every CI run. The big one is marked slow.

Backward uses ``gy = y`` (the gradient of ``0.5 * sum(y**2)``) so that only x, y and gx are full size:
about 13 GB at the big shape.
"""
import os
import resource
import time

import pytest
import torch
import torch.nn.functional as F

import cbam_fused as cf
from cbam_fused import reference as R

from .conftest import IN_CI, device_of

BIG_SHAPE = (1, 256, 2897, 2897)  # 2,148,507,904 elements > 2^31 (4.3 GB in bf16); C, H*W < 2^24
K = 7


def _weights(c, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    cr = max(1, c // 16)
    rnd = lambda *s, scale: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)  # noqa: E731
    return dict(w1=rnd(cr, c, scale=c ** -0.5), w2=rnd(c, cr, scale=cr ** -0.5), b1=rnd(cr, scale=0.1),
                b2=rnd(c, scale=0.1), k=rnd(1, 2, K, K, scale=0.2), kb=rnd(1, scale=0.1))


class ChunkedReference:
    """CBAM forward and backward for one sample, a channel at a time.

    Elementwise work on full channels is in fp32 (fp64 for fp64 x) with fp64 sums; everything on
    pooled vectors (MLP, conv, gates) is fp64. Three reads of x: the pools over pixels; the pools
    over channels with gs; the channel gradient ga.
    """

    def __init__(self, x, wt, n):
        self.x, self.n = x, n
        self.work = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.wt = {k: v.to(torch.float64) for k, v in wt.items()}
        _, c, h, w = x.shape
        self.c, self.h, self.w, self.p = c, h, w, h * w
        self._pool_pixels()

    def _chan(self, t, c):
        return t[self.n, c].reshape(-1).to(self.work)

    def _mlp(self, v, w1, w2, b1, b2):
        return F.linear(F.relu(F.linear(v, w1, b1)), w2, b2)

    def _pool_pixels(self):
        wt = self.wt
        avg, mx, j = (torch.empty(self.c, dtype=torch.float64) for _ in range(3))
        for c in range(self.c):
            v = self.x[self.n, c].reshape(-1)  # in x's dtype: max and sum need no converted copy
            avg[c] = v.sum(dtype=torch.float64) / self.p
            mx[c], j[c] = v.max(dim=0)  # the first index of the maximum
        self.avg, self.mx, self.j = avg, mx, j.long()
        self.m = self._mlp(avg, wt["w1"], wt["w2"], wt["b1"], wt["b2"]) + self._mlp(mx, wt["w1"], wt["w2"],
                                                                                    wt["b1"], wt["b2"])
        self.a = torch.sigmoid(self.m)

    def run(self, gy):
        """Pools over channels, the spatial gate and, for the incoming gradient ``gy`` (same shape as x),
        everything gx needs; returns the weight gradients of this sample."""
        wt, work = self.wt, self.work
        total = torch.zeros(self.p, dtype=work)
        best = torch.full((self.p,), float("-inf"), dtype=work)
        k = torch.zeros(self.p, dtype=torch.long)
        gs = torch.zeros(self.p, dtype=work)
        for c in range(self.c):
            v = self._chan(self.x, c) * self.a[c]
            total += v
            better = v > best  # strict: the first channel keeps a tie, as torch.max does
            best = torch.where(better, v, best)
            k.masked_fill_(better, c)
            gs += self._chan(gy, c) * v
        self.k_arg = k
        q = torch.stack([total / self.c, best]).to(torch.float64).reshape(1, 2, self.h, self.w).requires_grad_()
        kw, kb = wt["k"].clone().requires_grad_(), wt["kb"].clone().requires_grad_()
        l = F.conv2d(q, kw, kb, padding=K // 2)
        self.s = torch.sigmoid(l.detach()).reshape(-1)
        gl = gs.to(torch.float64) * self.s * (1 - self.s)
        gq, gk, gkb = torch.autograd.grad(l, [q, kw, kb], gl.reshape(l.shape))
        self.u_c, self.v_c = gq[0, 0].reshape(-1) / self.c, gq[0, 1].reshape(-1)
        s_w, u_w, v_w = self.s.to(work), self.u_c.to(work), self.v_c.to(work)
        ga = torch.empty(self.c, dtype=torch.float64)
        for c in range(self.c):  # ga[c] = sum_p x * gx1, gx1 = gy * s + u_c + [k == c] * v_c
            gx1 = self._chan(gy, c) * s_w + u_w + torch.where(k == c, v_w, 0.0)
            ga[c] = (self._chan(self.x, c) * gx1).sum(dtype=torch.float64)
        self.gy = gy[self.n].reshape(self.c, -1)  # read again at sampled positions only
        gm = ga * self.a * (1 - self.a)
        leaves = {name: wt[name].clone().requires_grad_() for name in ("w1", "w2", "b1", "b2")}
        avg, mx = self.avg.clone().requires_grad_(), self.mx.clone().requires_grad_()
        m = self._mlp(avg, leaves["w1"], leaves["w2"], leaves["b1"], leaves["b2"]) + self._mlp(
            mx, leaves["w1"], leaves["w2"], leaves["b1"], leaves["b2"])
        g = torch.autograd.grad(m, [avg, mx] + list(leaves.values()), gm)
        self.g_avg, self.g_mx = g[0], g[1]
        return dict(zip(leaves, g[2:]), k=gk, kb=gkb)

    def y_at(self, c, p):
        """y at channels ``c`` and pixels ``p`` (index tensors of the same length)."""
        xv = self.x[self.n].reshape(self.c, -1)[c, p].to(torch.float64)
        return xv * self.a[c] * self.s[p]

    def gx_at(self, c, p):
        gy = self.gy[c, p].to(torch.float64)
        gx1 = gy * self.s[p] + self.u_c[p] + torch.where(self.k_arg[p] == c, self.v_c[p], torch.zeros_like(gy))
        hit = torch.where(self.j[c] == p, self.g_mx[c], torch.zeros_like(gy))
        return gx1 * self.a[c] + self.g_avg[c] / self.p + hit


def _positions(shape, chunked, extra_flat=()):
    """Sampled (n, c, p): corners, the flat indices around 2^31, the argmax pixels, random ones."""
    n_, c_, h, w = shape
    p_total, per_sample = h * w, shape[1] * h * w
    flats = {0, per_sample - 1, n_ * per_sample - 1, *extra_flat}
    g = torch.Generator().manual_seed(3)
    flats |= set(torch.randint(0, n_ * per_sample, (24,), generator=g).tolist())
    out = [(f // per_sample, (f % per_sample) // p_total, f % p_total) for f in flats]
    for n, ref in enumerate(chunked):
        out += [(n, c, int(ref.j[c])) for c in (0, c_ // 2, c_ - 1)]  # where the max-pool gradient lands
    return sorted(set(out))


def _peak_rss_gb(reset=True):
    """Peak resident memory since the last reset (Linux: VmHWM, reset through clear_refs), else 0."""
    try:
        with open("/proc/self/status") as f:
            peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2 ** 20
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        return peak
    except (OSError, StopIteration):
        return 0.0


def sampled_check(x, wt, backend, with_backward=True, extra_flat=()):
    """Run the fused block on x (bf16 is typical) and compare sampled outputs and gradients."""
    dtype = x.dtype
    fused_w = {k: v.to(dtype).to(x.device) for k, v in wt.items()}
    if with_backward:
        x.requires_grad_()
        for v in fused_w.values():
            v.requires_grad_()
    times = {}
    _peak_rss_gb()
    t0 = time.perf_counter()
    y = cf.cbam(x, fused_w["w1"], fused_w["w2"], fused_w["k"], fused_w["b1"], fused_w["b2"], fused_w["kb"],
                backend=backend)
    times["forward_s"] = time.perf_counter() - t0
    times["forward_peak_gb"] = _peak_rss_gb()
    grads = None
    if with_backward:
        t0 = time.perf_counter()
        names = ["w1", "w2", "b1", "b2", "k", "kb"]
        grads = torch.autograd.grad(y, [x] + [fused_w[k] for k in names], y.detach())
        times["backward_s"] = time.perf_counter() - t0
        times["backward_peak_gb"] = _peak_rss_gb()
        grads = dict(zip(["x"] + names, grads))
        x = x.detach()
    t0 = time.perf_counter()
    ref_w = {k: v.to(dtype) for k, v in wt.items()}  # the oracle sees the same rounded weights
    chunked = [ChunkedReference(x, ref_w, n) for n in range(x.shape[0])]
    pos = _positions(tuple(x.shape), chunked, extra_flat)
    picks = {}  # n -> (channels, pixels, y there, gx there)
    for n in range(x.shape[0]):
        sel = [(c, p) for nn_, c, p in pos if nn_ == n]
        if sel:
            c, p = torch.tensor([s_[0] for s_ in sel]), torch.tensor([s_[1] for s_ in sel])
            gx_n = grads["x"][n].reshape(x.shape[1], -1)[c, p] if with_backward else None
            picks[n] = (c, p, y.detach()[n].reshape(x.shape[1], -1)[c, p], gx_n)
    if with_backward:
        del grads["x"]  # only the samples are needed: frees a full-size tensor before the oracle runs
    gy = y.detach() if with_backward else torch.zeros_like(x[:1]).expand_as(x)
    per_sample = [ref.run(gy) for ref in chunked]
    ref_wgrads = {k: sum(d[k] for d in per_sample) for k in per_sample[0]}
    times["oracle_s"] = time.perf_counter() - t0
    times["oracle_peak_gb"] = _peak_rss_gb()

    tol = dict(atol=2e-2, rtol=2e-2) if dtype in (torch.bfloat16, torch.float16) else dict(atol=1e-5, rtol=1e-4)
    for n, (c, p, y_n, gx_n) in picks.items():
        torch.testing.assert_close(y_n.to(torch.float64), chunked[n].y_at(c, p), **tol,
                                   msg=lambda m: f"y at sample {n}: {m}")
        if with_backward:
            torch.testing.assert_close(gx_n.to(torch.float64), chunked[n].gx_at(c, p), **tol,
                                       msg=lambda m: f"gx at sample {n}: {m}")
    if with_backward:
        for k, g_ref in ref_wgrads.items():
            g = grads[k].to(torch.float64)
            scale = g_ref.abs().max().item()
            torch.testing.assert_close(g, g_ref, atol=tol["atol"] * max(1.0, scale), rtol=tol["rtol"],
                                       msg=lambda m: f"grad {k}: {m}")
    return times


def test_chunked_oracle_matches_reference():
    """The chunked oracle against cbam_fused.reference with autograd, everything in fp64."""
    x = torch.randn(2, 20, 9, 11, dtype=torch.float64)
    x[0, 4] = 0  # ties in a max
    wt = _weights(20, torch.float64)
    xr = x.clone().requires_grad_()
    leaves = {k: v.clone().requires_grad_() for k, v in wt.items()}
    y = R.cbam(xr, leaves["w1"], leaves["w2"], leaves["k"], leaves["b1"], leaves["b2"], leaves["kb"])
    names = list(leaves)
    g = torch.autograd.grad(y, [xr] + [leaves[k] for k in names], y.detach())
    chunked = [ChunkedReference(x, wt, n) for n in range(2)]
    wgrads = [ref.run(y.detach()) for ref in chunked]
    c = torch.arange(20).repeat_interleave(99)
    p = torch.arange(99).repeat(20)
    for n, ref in enumerate(chunked):
        torch.testing.assert_close(ref.y_at(c, p), y[n].reshape(20, -1)[c, p])
        torch.testing.assert_close(ref.gx_at(c, p), g[0][n].reshape(20, -1)[c, p])
    for i, k in enumerate(names):
        torch.testing.assert_close(sum(w[k] for w in wgrads), g[1 + i], msg=lambda m: f"{k}: {m}")


def test_sampled_check_small(backend):
    """The large-tensor check itself, on a small bf16 tensor (runs on every backend in CI)."""
    shape = (2, 24, 17, 19) if backend not in ("triton", "cudaemu") else (1, 8, 6, 7)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).to(device_of(backend))
    if backend == "cuda":
        pytest.skip("the sampled oracle reads x on the CPU; the GPU runs the fused suite instead")
    sampled_check(x, _weights(shape[1], torch.float64), backend)


def _mem_available_gb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2 ** 20
    return 0.0


@pytest.mark.slow
def test_more_than_2_31_elements_bf16(capsys):
    from .conftest import require_backend

    require_backend("cpu")
    need_gb = 17.0  # measured peaks: 13.2 GB in the backward pass (x, y, gx), 15.4 GB in the oracle
    if _mem_available_gb() < need_gb:
        msg = f"needs about {need_gb} GB of free memory, {_mem_available_gb():.1f} GB available"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    n, c, h, w = BIG_SHAPE
    assert n * c * h * w > 2 ** 31
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    x = torch.empty(BIG_SHAPE, dtype=torch.bfloat16)
    for ch in range(c):  # a channel at a time: no full-size fp32 temporary
        x[0, ch].normal_(generator=g)
    setup_s = time.perf_counter() - t0
    # flat indices just below, at and above 2^31, and the last element
    extra = (2 ** 31 - 1, 2 ** 31, 2 ** 31 + 1, 2 ** 31 + h * w // 2)
    times = sampled_check(x, _weights(c, torch.float64), "cpu", extra_flat=extra)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    with capsys.disabled():
        print(f"\n[large] shape {BIG_SHAPE} bf16, {n * c * h * w} elements; setup {setup_s:.1f} s, "
              + ", ".join(f"{k} {v:.1f}" for k, v in times.items())
              + f"; process peak RSS {peak_gb:.1f} GB; {os.cpu_count()} cores, {torch.get_num_threads()} threads")
