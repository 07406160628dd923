"""Compile every Triton kernel of cbam_fused for a CUDA target, without a GPU (run as a script).

The interpreter accepts code that the Triton compiler rejects (it runs the kernel body as Python),
so CI compiles each kernel, for each dtype and constexpr flag combination the passes use, through
the real compiler down to a cubin for sm_80. Nothing is launched. Must run with TRITON_INTERPRET
unset, because ``triton.jit`` reads it when the kernels are decorated.

Prints one line per compiled variant and exits non-zero on the first failure.
"""
import itertools
import os
import sys

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("run me with TRITON_INTERPRET unset")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from cbam_fused.triton import channel, common, gates, spatial  # noqa: E402

TARGET = GPUTarget("cuda", 80, 32)
TYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64", "int32": "i32"}

# pointer arguments by role: "big" has x's dtype, "acc" the accumulation dtype, "i32" indices/counts
KERNELS = {
    "pool_hw_tiles": (channel._pool_hw_tiles, dict(x_ptr="big", sum_ptr="acc", max_ptr="acc", idx_ptr="i32",
                                                   count_ptr="i32"), [dict(TRACK=True), dict(TRACK=False)]),
    "fold_pool_partials": (channel._fold_pool_partials, dict(
        sum_ptr="acc", max_ptr="acc", idx_ptr="i32", count_ptr="i32", avg_ptr="acc", out_max_ptr="acc",
        out_idx_ptr="i32", out_count_ptr="i32"), [dict(BLOCK_R=16, BLOCK_T=16, TRACK=t) for t in (True, False)]),
    "pool_c_grad_a_tiles": (channel._pool_c_grad_a_tiles, dict(
        x_ptr="big", a_ptr="acc", u_ptr="acc", v_ptr="acc", argmax_ptr="i32", max_ptr="acc", out_ptr="acc"),
        [dict(HAS_A=a, SPLIT=s) for a, s in itertools.product((True, False), repeat=2)]),
    "pool_c": (spatial._pool_c_kernel, dict(x_ptr="big", a_ptr="acc", sum_ptr="acc", max_ptr="acc",
                                            idx_ptr="i32", count_ptr="i32"),
               [dict(HAS_A=True, TRACK=True), dict(HAS_A=False, TRACK=True), dict(HAS_A=True, TRACK=False)]),
    "gate_grads": (spatial._gate_grads_kernel, dict(gy_ptr="big", x_ptr="big", a_ptr="acc", s_ptr="acc",
                                                    ga_part_ptr="acc", gs_ptr="acc"),
                   [dict(WANT_A=wa, WANT_S=ws, HAS_A=ha, HAS_S=hs)
                    for wa, ws, ha, hs in itertools.product((True, False), repeat=4) if wa or ws]),
    "apply_gates": (gates._apply_gates_kernel, dict(x_ptr="big", a_ptr="acc", s_ptr="acc", y_ptr="big"),
                    [dict(HAS_A=True, HAS_S=True), dict(HAS_A=True, HAS_S=False), dict(HAS_A=False, HAS_S=True)]),
    "input_grad": (gates._input_grad_kernel, dict(
        gy_ptr="big", x_ptr="big", a_ptr="acc", s_ptr="acc", u_c_ptr="acc", v_c_ptr="acc", argmax_c_ptr="i32",
        max_c_ptr="acc", u_hw_ptr="acc", v_hw_ptr="acc", argmax_hw_ptr="i32", max_hw_ptr="acc", gx_ptr="big"),
        # channel gate only, spatial gate only, both; each with index and split ties
        [dict(HAS_A=ch, HAS_S=sp, POOL_C=sp, POOL_HW=ch, SPLIT=split)
         for (ch, sp), split in itertools.product(((True, False), (False, True), (True, True)), (False, True))]),
}


def compile_variant(kernel, pointers, flags, dtype):
    config = {}
    if isinstance(kernel, triton.runtime.Autotuner):
        config = dict(kernel.configs[0].kwargs)
        kernel = kernel.fn
    acc = "float64" if dtype == "float64" else "float32"
    role = {"big": dtype, "acc": acc, "i32": "int32"}
    constexprs = dict(config, **flags)
    if "IS_FP64" in kernel.arg_names:
        constexprs["IS_FP64"] = dtype == "float64"
    for name, value in (("BLOCK_P", common.BLOCK_P), ("TILES_PER_PROGRAM", common.TILES_PER_PROGRAM),
                        ("STEP_C", common.STEP_C)):
        if name in kernel.arg_names and name not in constexprs:
            constexprs[name] = value
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = "*" + TYPE[role[pointers[name]]]
        else:
            signature[name] = "i32"
    return triton.compile(ASTSource(kernel, signature, constexprs), target=TARGET)


def main(dtypes=("float16", "bfloat16", "float32", "float64")):
    count = 0
    for name, (kernel, pointers, variants) in KERNELS.items():
        for flags in variants:
            # every dtype for the first flag combination, bf16 for the rest (flags do not depend on dtype)
            for dtype in (dtypes if flags is variants[0] else ("bfloat16",)):
                if name == "fold_pool_partials" and dtype in ("float16", "bfloat16"):
                    continue  # works on accumulation-dtype partials only
                try:
                    compiled = compile_variant(kernel, pointers, flags, dtype)
                except Exception as e:  # report which variant broke, then fail
                    print(f"FAILED {name} {dtype} {flags}: {type(e).__name__}: {e}", flush=True)
                    return 1
                assert compiled.asm.get("cubin"), f"{name}: no cubin produced"
                count += 1
                print(f"ok {name} {dtype} {flags}", flush=True)
    print(f"compiled {count} kernel variants for {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
