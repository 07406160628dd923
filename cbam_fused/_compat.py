"""Differences between the supported torch releases (2.11 up to the default, 2.14.1), in one place.

The rest of the package calls these helpers instead of checking torch's version itself.
"""
import inspect
import typing

import torch

#: (major, minor) of the running torch, e.g. (2, 11)
TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])


def is_exporting() -> bool:
    """True while ``torch.export`` (or the dynamo-based ONNX exporter) traces, False under ``torch.compile``.

    In torch 2.11 dynamo replaced ``torch.compiler.is_exporting()`` by a constant True, so under
    ``torch.compile`` the fused ops took the export path (pytorch/pytorch#176347; fixed in 2.13, 2.12
    not checked). Below 2.13, read the flag that export sets, as the fixed dynamo does itself.
    """
    if TORCH_VERSION < (2, 13):
        return torch.compiler._is_exporting_flag
    return torch.compiler.is_exporting()


def _interpreted(kernel) -> bool:
    """A Triton kernel that runs on the interpreter (TRITON_INTERPRET=1), under any autotune/heuristics."""
    from triton.runtime.autotuner import Autotuner, Heuristics
    from triton.runtime.interpreter import InterpretedFunction

    while isinstance(kernel, (Autotuner, Heuristics)):
        kernel = kernel.fn
    return isinstance(kernel, InterpretedFunction)


def wrap_triton(kernel):
    """``torch.library.wrap_triton``; under the Triton interpreter, the kernel itself (launched eagerly).

    Torch 2.11 rejects interpreted kernels ("wrap_triton only works on functions annotated with
    triton.jit") or fails on them inside autotune; 2.13 returns them unwrapped, as done here.
    """
    if TORCH_VERSION < (2, 13) and _interpreted(kernel):
        return kernel
    return torch.library.wrap_triton(kernel)


def assume_constant_result(fn):
    """``torch.compiler.assume_constant_result`` without its import of ``torch._dynamo`` (about 1 s).

    Dynamo recognises such a function by one attribute, the one its own decorator sets
    (torch/_dynamo/decorators.py in every supported release); tests/test_compat.py checks that the two
    still mark a function alike.
    """
    fn._dynamo_marked_constant = True
    return fn


_ANNOTATIONS = {"Tensor": torch.Tensor, "Optional[Tensor]": typing.Optional[torch.Tensor], "str": str,
                "float": float, "int": int, "bool": bool}


def triton_op(name: str, fn, schema: str):
    """``torch.library.triton_op(name, fn, mutates_args=(), schema=schema)`` on every supported release.

    Torch 2.11 ignores ``schema`` and infers one from ``fn``'s annotations, which fails on a
    ``fn(*args)``; so ``fn`` gets the schema's signature (arguments only; the outputs stay unnamed
    where it is inferred). Newer releases take the schema as given.
    """
    parsed = torch._C.parse_schema("f" + schema)
    params = [inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                annotation=_ANNOTATIONS[str(a.type)]) for a in parsed.arguments]
    returns = typing.Tuple[tuple(_ANNOTATIONS[str(r.type)] for r in parsed.returns)]
    fn.__signature__ = inspect.Signature(params, return_annotation=returns)
    return torch.library.triton_op(name, fn, mutates_args=(), schema=schema)
