"""torch.compile(fullgraph=True) traces into the Triton kernels of a CBAM module, without a GPU (run as a script).

Under TRITON_INTERPRET=1 ``triton.jit`` yields interpreted functions that ``wrap_triton`` cannot
trace, so this runs with the interpreter off while the kernels are decorated. Tracing needs a
Triton target only to analyse which kernel arguments are written; a stand-in driver names sm_80.
The compiled graphs are captured from AOTAutograd's partitioner and never run: the forward
compiler stops the call before anything launches. Prints the kernel names per graph as JSON.
"""
import json
import os
import sys

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("run me with TRITON_INTERPRET unset")

import torch  # noqa: E402
import triton  # noqa: E402
from torch._functorch.aot_autograd import aot_module_simplified  # noqa: E402
from torch._functorch.partitioners import default_partition  # noqa: E402
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

import cbam_fused as cf  # noqa: E402
import cbam_fused.triton  # noqa: E402,F401  (decorates the kernels while the interpreter is off)


class _TargetOnlyDriver:
    """Answers the one question tracing asks (the target); launching anything would fail loudly."""

    def get_current_target(self):
        return GPUTarget("cuda", 80, 32)


class _Traced(Exception):
    pass


def kernel_names(gm):
    names = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and "triton_kernel_wrapper" in str(node.target):
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            names.append(getattr(kernel, "fn", kernel).__name__)
    return names


def main():
    triton.runtime.driver.set_active(_TargetOnlyDriver())
    # ops accepts backend="triton" on CPU tensors only with the interpreter flag; the kernels are
    # already decorated as compiled kernels, so setting it now changes nothing else
    os.environ["TRITON_INTERPRET"] = "1"
    graphs = {}

    def partition(joint, joint_inputs, **kwargs):
        fw, bw = default_partition(joint, joint_inputs, **kwargs)
        graphs["forward"], graphs["backward"] = kernel_names(fw), kernel_names(bw)
        return fw, bw

    def stop(gm, example_inputs):
        raise _Traced

    def backend(gm, example_inputs):
        return aot_module_simplified(gm, example_inputs, fw_compiler=stop, bw_compiler=stop,
                                     partition_fn=partition)

    # 64 channels at batch 2: the pool over channels splits them over two programs per pixel tile
    # (cbam_fused/triton/common.py, channel_split), so its partials are folded by a second kernel
    block = cf.CBAM(64, backend="triton")
    x = torch.randn(2, 64, 7, 9, requires_grad=True)
    fn = torch.compile(block, backend=backend, fullgraph=True)
    try:
        fn(x).sum().backward()
    except Exception as e:  # the compile stops in `stop`, wrapped by dynamo
        cause = e
        while cause is not None and not isinstance(cause, _Traced):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
    print(json.dumps(graphs))


if __name__ == "__main__":
    main()
