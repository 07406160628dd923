"""The CUDA kernels on paper: writes docs/gpu_kernels.md from the code, without a GPU.

    python scripts/cuda_model.py            # (re)write docs/gpu_kernels.md
    python scripts/cuda_model.py --check    # exit 1 if the doc differs from what the code gives now

Every number in the tables is measured from the code, nothing is timed:

- grids and partials: each full-size pass runs once on the cudacpu emulator in a dry run
  (tests/cudaemu.py, ``pass_runs``): the launch log gives every kernel's grid, the launcher's
  ``workspace_bytes`` the partials. "After" is a device of 132 SMs; "before" the same code told of
  one SM, where ``shorten_to_fill`` never shortens a tile (N x tiles >= N >= 2 CTAs already): for
  the reductions the tiling of the code before commit c3b2aef (its parent's passes.cuh on the
  emulator gave the same launches and partials on 132 SMs, checked once);
- full-size bytes: bench/budget.py's ``PASS_TRAFFIC``;
- registers, shared memory and loads in flight: nvcc -Xptxas -v and cuobjdump -sass of the kernel
  translation unit for sm_90 (tests/kernel_resources.py). c3b2aef changed host code only, so these
  are the same before and after.

The model that turns them into a predicted fraction of peak HBM bandwidth is in ``predict`` and is
described in the doc it writes (``PROSE``).
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.budget import PASS_TRAFFIC  # noqa: E402
from bench.shapes import RESNET50_STAGES  # noqa: E402
from tests.cudaemu import FULL_SIZE_PASSES, REDUCTION_PASSES, PassRun, pass_runs  # noqa: E402
from tests import kernel_resources  # noqa: E402

DOC = ROOT / "docs" / "gpu_kernels.md"

# ---- the device: H100 SXM5 / H200 SXM (GH100), published figures
SM_COUNT = 132                # H100 SXM5 and H200 SXM datasheets
PEAK_HBM_BYTES_S = 4.8e12     # H200 SXM datasheet (HBM3e): the predictions' peak
H100_PEAK_HBM_BYTES_S = 3.35e12  # H100 SXM5 datasheet (HBM3)
MAX_THREADS_PER_SM = 2048     # CUDA C++ Programming Guide, compute capability 9.0
MAX_CTAS_PER_SM = 32          # same table
REGISTERS_PER_SM = 65536      # same table
REGISTER_UNIT_PER_WARP = 256  # registers are allocated per warp in units of 256 (CUDA occupancy calculator)
SMEM_PER_SM = 228 * 1024      # same table (227 KB at most per block)
SMEM_RESERVED_PER_CTA = 1024  # the system's 1 KB per resident block (same guide, shared memory section)
L2_BYTES = 50 * 2**20          # H100 SXM5 (Hopper whitepaper)
# An assumption, not a published figure: the latency of a global load that misses L2, under load.
HBM_LATENCY_S = 700e-9
ARCH = "sm_90"

STAGE_SHAPES = RESNET50_STAGES  # C, H, W
BATCHES = (8, 128)
LAYOUTS = ("nchw", "channels_last")
DTYPE, ELEMENT_BYTES = "float16", 2
WARPS_PER_CTA = 8  # csrc/cuda/passes.cuh: every kernel runs 32 x 8 threads
BEFORE_SM_COUNT = 1  # the device that reproduces the tiles before c3b2aef (see the module's docstring)


def cases(n: int) -> list[dict]:
    return [dict(name=name, shape=[n, *chw], dtype=DTYPE, layout=layout)
            for chw in STAGE_SHAPES for layout in LAYOUTS for name in FULL_SIZE_PASSES]


def geometry() -> dict[tuple, dict[str, PassRun]]:
    """{(pass, N, C, H, W, layout): {"before": PassRun, "after": PassRun}} from the emulator."""
    out: dict[tuple, dict[str, PassRun]] = {}
    for n in BATCHES:
        for when, sms in (("before", BEFORE_SM_COUNT), ("after", SM_COUNT)):
            for case, run in zip(cases(n), pass_runs(cases(n), sms)):
                out.setdefault((case["name"], *case["shape"], case["layout"]), {})[when] = run
    return out


@dataclass(frozen=True)
class Resources:
    """What ptxas and the SASS say of one kernel instance (fp16 for the tile kernels)."""
    registers: int
    smem: int           # static shared memory, bytes
    loads_in_flight: int  # 16-byte global loads issued before the first use of one (per thread)


def instance(kernel: str, layout: str | None) -> str:
    """The demangled name of the kernel instance the tables use: fp16 tile kernels, float finishes."""
    if layout is None:
        return f"cbam_fused::cuda::{kernel}<float>"
    return f"cbam_fused::cuda::{kernel}<c10::Half, {'true' if layout == 'channels_last' else 'false'}>"


def compiled_resources(kernels: list[tuple[str, str | None]],
                       archs: tuple[str, ...] = (ARCH,)) -> dict[tuple[str, str | None], Resources]:
    """{(kernel, layout or None): Resources} for ARCH from an nvcc compile for ``archs`` and its SASS
    (tests/test_cuda_model.py passes the archs of tests/test_cuda_build.py, to share its compile)."""
    nvcc, cuobjdump = kernel_resources.find_nvcc(), kernel_resources.find_cuobjdump()
    if nvcc is None or cuobjdump is None:
        raise SystemExit("cuda_model: needs nvcc and cuobjdump (a CUDA toolkit, or Triton's copy of cuobjdump)")
    proc, obj = kernel_resources.compile_kernels(archs, nvcc)
    if proc.returncode != 0:
        raise SystemExit(f"cuda_model: nvcc failed:\n{proc.stderr[-5000:]}")
    usage = kernel_resources.parse_ptxas(proc.stdout + proc.stderr)
    sass = kernel_resources.sass_functions(obj, cuobjdump, ARCH)
    names = kernel_resources.demangle(sorted(set(sass) | {name for name, _ in usage}))
    by_instance = {names[m].split("(", 1)[0].removeprefix("void "): m for m in names}
    out = {}
    for kernel, layout in kernels:
        mangled = by_instance[instance(kernel, layout)]
        u = usage[(mangled, ARCH)]
        out[(kernel, layout)] = Resources(u["registers"], u.get("smem", 0),
                                          kernel_resources.loop_loads_in_flight(sass[mangled]))
    return out


def occupancy(r: Resources) -> tuple[int, str]:
    """(resident CTAs per SM, what limits it) for a CTA of WARPS_PER_CTA warps."""
    regs_per_warp = math.ceil(r.registers * 32 / REGISTER_UNIT_PER_WARP) * REGISTER_UNIT_PER_WARP
    limits = {"threads": MAX_THREADS_PER_SM // (32 * WARPS_PER_CTA),
              "registers": REGISTERS_PER_SM // regs_per_warp // WARPS_PER_CTA,
              "shared memory": SMEM_PER_SM // (r.smem + SMEM_RESERVED_PER_CTA),
              "CTAs": MAX_CTAS_PER_SM}
    limit = min(limits, key=limits.get)
    return limits[limit], limit


@dataclass(frozen=True)
class Prediction:
    ctas: int
    waves: float          # CTAs / (SMs x resident CTAs per SM)
    kb_in_flight: float   # per SM, the average over the SMs
    bytes_moved: int
    fraction: float       # of PEAK_HBM_BYTES_S
    bound: str            # "latency" or "bandwidth"


def predict(name: str, shape: tuple[int, int, int, int], layout: str, run: PassRun, r: Resources) -> Prediction:
    """The tile kernel of pass ``name``: time = max(bytes / peak, rounds x round trips x latency).

    A warp walks its rows of one column tile (the grid's y), reading ``reads`` full-size operands per
    row, ``r.loads_in_flight`` loads at a time: rows in groups of loads_in_flight / reads (the
    reductions' kRowUnroll rows; 1 for a loop that is not unrolled), each group ceil(group x reads /
    loads_in_flight) dependent trips to memory, and the rows left over (fewer than a group) one trip
    each per ceil(reads / loads_in_flight). The busiest SM holds ceil(CTAs / SMs) CTAs and runs
    ``occupancy`` of them at once."""
    n, c, h, w = shape
    p = h * w
    tile = run.launches[0]
    row_tiles, col_tiles = tile.grid[0] // n, tile.grid[1]
    rows_len, cols_len = (p, c) if layout == "channels_last" else (c, p)
    groups = 32 // run.row_lanes  # rows a warp takes at once, a lane group each (short rows: NCHW 7x7)
    rows_per_warp = math.ceil(rows_len / row_tiles / WARPS_PER_CTA / groups)  # per lane group
    reads = len(PASS_TRAFFIC[name][0])
    loads = max(r.loads_in_flight, 1)
    group = max(loads // reads, 1)
    trips = ((rows_per_warp // group) * math.ceil(group * reads / loads)
             + (rows_per_warp % group) * math.ceil(reads / loads))
    resident, _ = occupancy(r)
    rounds = math.ceil(math.ceil(tile.ctas / SM_COUNT) / resident)
    x_bytes = n * c * p * ELEMENT_BYTES
    full = sum(map(len, PASS_TRAFFIC[name])) * x_bytes
    moved = full + run.workspace_bytes + run.small_read_bytes
    t_bandwidth = moved / PEAK_HBM_BYTES_S
    t_latency = rounds * trips * HBM_LATENCY_S
    chunk_bytes = groups * cols_len / col_tiles * ELEMENT_BYTES  # a warp's share of its rows at one step
    in_flight = min(resident, tile.ctas / SM_COUNT) * WARPS_PER_CTA * max(r.loads_in_flight, 1) * chunk_bytes
    return Prediction(tile.ctas, tile.ctas / (SM_COUNT * resident), in_flight / 1024, moved,
                      t_bandwidth / max(t_bandwidth, t_latency), "latency" if t_latency > t_bandwidth else "bandwidth")


# ------------------------------------------------------------------------------------------ the doc
PROSE = """\
# The CUDA kernels on paper

Generated by `python scripts/cuda_model.py` from the code; do not edit by hand
(`tests/test_cuda_model.py` fails when this file and the code disagree). **No GPU was used.**
Nothing here was timed or run on a GPU: grids come from the cudacpu emulator's launch log,
registers and shared memory from `ptxas -v`, loads in flight from the SASS, and the fraction of
peak bandwidth from the model below. It is a prediction to check against `scripts/gpu_check.sh`
the day a GPU is lent.

"Before" and "after" are the tilings without and with `shorten_to_fill` (`csrc/cuda/passes.cuh`):
where the batch times the tiles gives fewer than two CTAs per SM, the tiles shorten a step of rows at
a time (a row per lane group of each warp) until the grid has two CTAs per SM. The reductions got it
in commit c3b2aef ("CUDA reductions fill the GPU at small batches"), the elementwise passes later.
The kernels' code is the same in both columns, so registers, shared memory and loads in flight are
too; the grids and the partials differ. "Before" is the same code on the emulator told of one SM,
where no tile is shortened (N x tiles >= N >= 2 CTAs). For the reductions this was checked once,
when this file was first written: the parent of c3b2aef, built on the emulator and told of 132 SMs,
gave the same launches, grids and partials, for every row of these tables.

## The device

H100 SXM5 and H200 SXM (GH100), published figures: {sms} SMs; HBM bandwidth {h100_tb_s} TB/s (H100 SXM5,
HBM3) and {peak_tb_s} TB/s (H200, HBM3e), from NVIDIA's datasheets; per SM {threads} resident threads,
{ctas_max} resident CTAs, {regs:,} 32-bit registers (allocated per warp in units of {reg_unit}) and
{smem_kb} KB of shared memory (227 KB at most per CTA, {reserved_kb} KB reserved per resident CTA),
from the CUDA C++ Programming Guide for compute capability 9.0; L2 {l2_mb} MB (H100 SXM5, Hopper
whitepaper). The predictions are for the H200's {peak_tb_s} TB/s; a latency-bound kernel moves as
many bytes per second on an H100, which is {h100_ratio:.2f}x that fraction of the H100's lower peak
(up to 100%). One figure is an assumption, not a published one: a global load that misses L2 takes
{latency_ns} ns under load. Every latency-bound prediction scales with it (half the latency, twice
the fraction, up to the bandwidth bound).

## The model

Every kernel runs CTAs of 8 warps (32 x 8 threads). A warp owns one column tile of 32 lanes x 16
bytes (256 fp16 elements) and walks its rows of the CTA's tile: the elementwise passes one row per
iteration (`map_tiles` in `csrc/cuda/passes.cuh`), the reductions four rows per iteration, whose
loads are all issued before the first row is folded, then the rows left over one at a time
(`reduce_tiles`, `kRowUnroll`). Where a row holds at most 128 fp16 elements, a warp takes several
rows at once, a group of 8 or 16 lanes each (`row_lanes_for`): here NCHW 7x7, whose 49-pixel rows
go four to a warp; the model counts a lane group's rows and a warp's bytes per step accordingly.

- **Bytes moved** by a tile kernel: the full-size tensors of the pass (`PASS_TRAFFIC` in
  `bench/budget.py`: reads and writes, in units of |x|), plus the partials it writes (the
  launcher's workspace), plus the `[N, C]` and `[N, P]` operands it reads (index-style ties, every
  gradient group), each counted once. Its finishing kernel reads the partials back (table at the end).
- **Occupancy**: resident CTAs per SM are the least of {threads} threads / 256 per CTA, {regs:,}
  registers / the CTA's registers (rounded up per warp to {reg_unit}), {smem_kb} KB / (the CTA's
  shared memory + {reserved_kb} KB), and {ctas_max}.
- **Loads in flight** per thread: the most 16-byte global loads (`LDG.E.128`) the SASS issues before
  one of them is used, reading each innermost loop in address order (the small operands' 16-byte
  loads before a row loop are left out). A row loop that is not unrolled shows 1.
  A warp then has `loads x 32 lanes x 16 bytes` in flight (less where its lanes' chunks are not
  full: NCHW 14x14 rows of 196 elements fill 25 of 32 lanes, 7x7 rows of 49 elements 7 of a group's
  8), and an SM that many times its resident warps.
- **Time** is the larger of two bounds. Bandwidth: bytes moved / peak. Latency: a warp makes
  `rows x reads / loads in flight` dependent trips to memory of {latency_ns} ns each (`reads`: the
  full-size tensors it reads per row; `gate_grads` reads two, gy and x, loaded together; a
  reduction's rows left over after its groups of four, up to three, are one trip each), and the
  busiest SM runs ceil(CTAs / {sms})
  CTAs, `occupancy` at a time. By Little's law, peak bandwidth needs {need_kb:.0f} KB in flight per SM
  ({peak_tb_s} TB/s x {latency_ns} ns / {sms}); an SM with less is latency-bound.
- **Predicted fraction of peak** = (bytes / peak) / time. It is an upper bound: it leaves out
  instruction issue (the warp-shuffle merge that `pool_hw` in NCHW and `pool_c` in channels_last
  run once per four rows, `warp_reduce_rows`: 160 to 250 instructions from its first shuffle to
  its last, read off the sm_90 SASS, where a merge per row took 130 to 180),
  the loads of the small operands (once per column chunk before a warp's row loop, and one value
  per row; at most four per row, in `input_grad`), the
  narrower loads of rows that are not 16-byte aligned (NCHW 7x7 rows element by element, half of
  those of 14x14 in two 8-byte loads), launch overhead (microseconds per launch,
  comparable at N={n_small} to a kernel's own time), and L2 hits (at N={n_small}, x is
  {x_lo:.1f}-{x_hi:.1f} MB and may still be in L2 from the layer that wrote it).
- **Waves** = CTAs / ({sms} x resident CTAs per SM): below 1 the device is not full.

Columns "before → after" show one value where the two agree. Partials are counted in "MB moved";
at N={n_large} nothing changes, since the batch alone gives more than two CTAs per SM.
"""


def fmt_pair(before: str, after: str) -> str:
    return before if before == after else f"{before} → {after}"


def toolkit() -> str:
    """The version of the nvcc that compiled_resources uses (registers depend on it)."""
    return kernel_resources.nvcc_version(kernel_resources.find_nvcc())


RESOURCES_HEADING = ("## Registers, shared memory and occupancy ({arch}, fp16; ptxas -v and cuobjdump -sass, "
                     "nvcc {nvcc})")


def resources_table(res: dict[tuple[str, str | None], Resources], nvcc: str) -> list[str]:
    lines = [RESOURCES_HEADING.format(arch=ARCH, nvcc=nvcc), "",
             "| kernel | layout | registers | shared memory (B) | 16-byte loads in flight per thread "
             "| resident CTAs per SM (limit) | occupancy |",
             "|---|---|---:|---:|---:|---|---:|"]
    for (kernel, layout), r in res.items():
        resident, limit = occupancy(r)
        share = resident * WARPS_PER_CTA * 32 / MAX_THREADS_PER_SM
        lines.append(f"| `{kernel}` | {layout or '-'} | {r.registers} | {r.smem} | {r.loads_in_flight} "
                     f"| {resident} ({limit}) | {share:.0%} |")
    return lines


RESOURCE_ROW = re.compile(r"^\| `(?P<kernel>\w+)` \| (?P<layout>[\w-]+) \| (?P<regs>\d+) \| (?P<smem>\d+) \| "
                          r"(?P<loads>\d+) \|")


def resources_from_doc(text: str) -> tuple[dict[tuple[str, str | None], Resources], str]:
    """(the resources table, the nvcc version) of a written doc, read back: tests/test_cuda_model.py
    renders the rest from them."""
    heading = re.search(r"^## Registers, .*, nvcc (?P<nvcc>\S+)\)$", text, re.M)
    out = {}
    for line in text.splitlines():
        m = RESOURCE_ROW.match(line)
        if m:
            out[(m["kernel"], None if m["layout"] == "-" else m["layout"])] = Resources(
                int(m["regs"]), int(m["smem"]), int(m["loads"]))
    return out, (heading["nvcc"] if heading else "")


def predictions(name: str, n: int, when: str, geo: dict, res: dict) -> list[Prediction]:
    """The tile kernel of ``name`` at batch ``n`` over the stage shapes and layouts."""
    return [predict(name, (n, c, h, w), layout, geo[(name, n, c, h, w, layout)][when],
                    res[(f"{name}_tiles", layout)]) for c, h, w in STAGE_SHAPES for layout in LAYOUTS]


def summary_table(geo: dict, res: dict) -> list[str]:
    small, large = BATCHES  # the large batch's grids are the same before and after

    def span(ps: list[Prediction], value) -> str:
        lo, hi = min(map(value, ps)), max(map(value, ps))
        return f"{lo:.0%}" if f"{lo:.0%}" == f"{hi:.0%}" else f"{lo:.0%}–{hi:.0%}"

    def ctas(ps: list[Prediction]) -> str:
        lo, hi = min(p.ctas for p in ps), max(p.ctas for p in ps)
        return str(lo) if lo == hi else f"{lo}–{hi}"

    lines = ["## Summary", "",
             "The tile kernel of each pass over the four stage shapes and both layouts: the range of CTAs and "
             "of the predicted fraction of peak HBM bandwidth (H200).", "",
             f"| kernel | CTAs N={small} before | CTAs N={small} after | % N={small} before | % N={small} after "
             f"| CTAs N={large} | % N={large} |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    fraction = lambda p: p.fraction  # noqa: E731
    for name in FULL_SIZE_PASSES:
        before, after, at_large = (predictions(name, n, when, geo, res) for n, when in
                                   ((small, "before"), (small, "after"), (large, "after")))
        lines.append(f"| `{name}_tiles` | {ctas(before)} | {ctas(after)} | {span(before, fraction)} "
                     f"| {span(after, fraction)} | {ctas(at_large)} | {span(at_large, fraction)} |")
    return lines + [""]


def tile_table(name: str, geo: dict, res: dict) -> list[str]:
    kernel = f"{name}_tiles"
    reads, writes = PASS_TRAFFIC[name]
    lines = [f"### `{kernel}`", "",
             f"Reads {', '.join(reads)}" + (f", writes {', '.join(writes)}" if writes else "") + " (full size).", "",
             "| C×H×W | N | layout | MB moved | CTAs | waves | KB in flight per SM | bound | predicted % of peak |",
             "|---|---:|---|---:|---:|---:|---:|---|---:|"]
    for c, h, w in STAGE_SHAPES:
        for n in BATCHES:
            for layout in LAYOUTS:
                runs = geo[(name, n, c, h, w, layout)]
                r = res[(kernel, layout)]
                b, a = (predict(name, (n, c, h, w), layout, runs[when], r) for when in ("before", "after"))
                mb = (f"{b.bytes_moved / 1e6:.1f}", f"{a.bytes_moved / 1e6:.1f}")
                lines.append(
                    f"| {c}×{h}×{w} | {n} | {layout} | {fmt_pair(*mb)} "
                    f"| {fmt_pair(str(b.ctas), str(a.ctas))} | {fmt_pair(f'{b.waves:.2f}', f'{a.waves:.2f}')} "
                    f"| {fmt_pair(f'{b.kb_in_flight:.1f}', f'{a.kb_in_flight:.1f}')} | {fmt_pair(b.bound, a.bound)} "
                    f"| {fmt_pair(f'{b.fraction:.0%}', f'{a.fraction:.0%}')} |")
    return lines + [""]


def finish_table(geo: dict) -> list[str]:
    lines = ["## The finishing kernels", "",
             "Each reduction's second launch folds the partials of every output in tile order, one thread per "
             "output (`*_finish`). It reads the partials the tile kernel wrote and writes the `[N, C]` or "
             "`[N, P]` results. Not modelled further: small, L2-resident at small batches, and each adds a launch.", "",
             "| kernel | C×H×W | N | layout | CTAs | partials (% of \\|x\\|) |",
             "|---|---|---:|---|---:|---:|"]
    for name in FULL_SIZE_PASSES:
        for c, h, w in STAGE_SHAPES:
            for n in BATCHES:
                for layout in LAYOUTS:
                    runs = geo[(name, n, c, h, w, layout)]
                    if len(runs["after"].launches) < 2:
                        continue
                    x_bytes = n * c * h * w * ELEMENT_BYTES
                    ctas = [str(runs[when].launches[1].ctas) for when in ("before", "after")]
                    parts = [f"{runs[when].workspace_bytes / x_bytes:.0%}" for when in ("before", "after")]
                    lines.append(f"| `{runs['after'].launches[1].kernel}` | {c}×{h}×{w} | {n} | {layout} "
                                 f"| {fmt_pair(*ctas)} | {fmt_pair(*parts)} |")
    return lines + [""]


def kernels() -> list[tuple[str, str | None]]:
    """(kernel, layout) of the resources table: fp16 tile kernels per layout, then the float finishes."""
    finishes = [(f"{name}_finish", None) for name in REDUCTION_PASSES]
    return [(f"{name}_tiles", layout) for name in FULL_SIZE_PASSES for layout in LAYOUTS] + finishes


def render(geo: dict, res: dict, nvcc: str) -> str:
    need_kb = PEAK_HBM_BYTES_S * HBM_LATENCY_S / SM_COUNT / 1024
    n_small = min(BATCHES)
    x_mb = [n_small * c * h * w * ELEMENT_BYTES / 1e6 for c, h, w in STAGE_SHAPES]
    text = PROSE.format(sms=SM_COUNT, threads=MAX_THREADS_PER_SM, ctas_max=MAX_CTAS_PER_SM, regs=REGISTERS_PER_SM,
                        reg_unit=REGISTER_UNIT_PER_WARP, smem_kb=SMEM_PER_SM // 1024,
                        reserved_kb=SMEM_RESERVED_PER_CTA // 1024, l2_mb=L2_BYTES // 2**20,
                        peak_tb_s=PEAK_HBM_BYTES_S / 1e12, h100_tb_s=H100_PEAK_HBM_BYTES_S / 1e12,
                        h100_ratio=PEAK_HBM_BYTES_S / H100_PEAK_HBM_BYTES_S, latency_ns=round(HBM_LATENCY_S * 1e9),
                        need_kb=need_kb, n_small=n_small, n_large=max(BATCHES), x_lo=min(x_mb), x_hi=max(x_mb))
    lines = [text, *summary_table(geo, res), *resources_table(res, nvcc), "",
             f"## The tile kernels, fp16, {SM_COUNT} SMs", ""]
    for name in FULL_SIZE_PASSES:
        lines += tile_table(name, geo, res)
    lines += finish_table(geo)
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the doc instead of writing it")
    parser.add_argument("--out", type=Path, default=DOC)
    args = parser.parse_args()
    text = render(geometry(), compiled_resources(kernels()), toolkit())
    if args.check:
        same = args.out.is_file() and args.out.read_text() == text
        print(f"{args.out}: {'up to date' if same else 'differs from the code; run python scripts/cuda_model.py'}")
        return 0 if same else 1
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
