"""ONNX export of nets with fused modules: standard ONNX ops only, onnxruntime matches PyTorch.

While exporting, ``ops.resolve_backend`` sends every call to the stock-op decomposition, so the graph
holds Conv/Gemm/ReduceMax/... in the default domain and no custom-op domain. Both exporters are
covered: the dynamo-based one (``dynamo=True``, built on torch.export) and the TorchScript-based one
(``dynamo=False``), which torch 2.14 still ships.
"""
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import cbam_fused as cf
from cbam_fused import ops

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

EXPORTERS = [pytest.param(True, id="dynamo"), pytest.param(False, id="torchscript")]


def _cpu_only(backend):
    if backend not in ("cpu", "spec"):
        pytest.skip("export takes the same decomposition whatever the backend; checked with the CPU ones")


def _net(gate, backend):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        cf.CBAM(16, reduction=4, kernel_size=7, gate=gate, backend=backend),
        nn.Conv2d(16, 8, 3, padding=1),
        cf.ChannelAttention(8, reduction=2, gate=gate, backend=backend),
        cf.SpatialAttention(3, gate=gate, backend=backend),
    ).eval()


def _export(net, x, dynamo, dynamic_batch=False):
    f = io.BytesIO()
    kwargs = dict(input_names=["x"], output_names=["y"])
    if dynamic_batch:
        if dynamo:
            kwargs["dynamic_shapes"] = {"input": {0: torch.export.Dim("batch", min=1, max=64)}}
        else:
            kwargs["dynamic_axes"] = {"x": {0: "batch"}, "y": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(net, (x,), f, dynamo=dynamo, **kwargs)
    return f.getvalue()


def _run_ort(blob, x):
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
def test_export_is_standard_onnx_and_runs(backend, dynamo, gate):
    _cpu_only(backend)
    net = _net(gate, backend)  # fused in eager, decomposed while exporting
    x = torch.randn(2, 3, 12, 13)
    blob = _export(net, x, dynamo)
    model = onnx.load_from_string(blob)
    onnx.checker.check_model(model)
    domains = {node.domain for node in model.graph.node}
    assert domains <= {"", "ai.onnx"}, f"non-standard op domains in the graph: {domains}"
    assert not any("cbam" in node.op_type.lower() for node in model.graph.node)
    assert {"Conv", "ReduceMax", "ReduceMean"} <= {node.op_type for node in model.graph.node}
    with torch.no_grad():
        expected = net(x).numpy()
    np.testing.assert_allclose(_run_ort(blob, x), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_dynamic_batch(backend, dynamo):
    _cpu_only(backend)
    net = _net("sigmoid", backend)
    blob = _export(net, torch.randn(2, 3, 10, 11), dynamo, dynamic_batch=True)
    x = torch.randn(5, 3, 10, 11)
    with torch.no_grad():
        expected = net(x).numpy()
    np.testing.assert_allclose(_run_ort(blob, x), expected, atol=1e-5, rtol=1e-4)


def test_torch_export_graph_has_no_custom_op(backend):
    """torch.export (what the dynamo exporter and AOTInductor start from) sees only stock aten ops."""
    _cpu_only(backend)
    net = _net("sigmoid", backend)
    exported = torch.export.export(net, (torch.randn(2, 3, 8, 9),))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert not any("cbam_fused" in t for t in targets), targets


def test_resolve_backend_outside_export_is_unchanged():
    x = torch.randn(1, 4, 3, 3)
    assert ops.resolve_backend("torch", x) == "torch"
    if "cpu" in ops.available_backends():
        assert ops.resolve_backend(None, x) == "cpu"
