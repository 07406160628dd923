"""Benchmark harness for cbam_fused: fused backends vs the eager reference vs torch.compile(reference).

Run ``python -m bench --help`` (or the ``cbam-fused-bench`` console script).
"""
