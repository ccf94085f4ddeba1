"Sparse compute gives the masked dense layer's outputs and gradients, for any shape, density and batch (hypothesis)."
import pytest
import torch
from torch.nn import functional as F
from hypothesis import given, settings, strategies as st, HealthCheck
from fastsparse.compute import SparseTrainLinear, kernels, _TorchKernels
import fastsparse.compute as compute

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])   # no timing: a busy machine must not fail it
@given(st.integers(1, 70), st.integers(1, 70), st.integers(1, 140), st.floats(0., 1.), st.booleans(),
       st.sampled_from(['cpp', 'torch']), st.integers(0, 2**31))
def test_sparse_linear_matches_masked_dense(rows, cols, batch, density, bias, which, seed):
    g = torch.Generator().manual_seed(seed)
    w, m = torch.randn(rows, cols, generator=g), torch.rand(rows, cols, generator=g) < density
    b = torch.randn(rows, generator=g) if bias else None
    x = torch.randn(batch, cols, generator=g, requires_grad=True)
    gy = torch.randn(batch, rows, generator=g)
    saved = compute._KERNELS
    compute._KERNELS = _TorchKernels if which == 'torch' else (saved if saved is not None and saved is not _TorchKernels else None)
    try:
        layer = SparseTrainLinear(w, m, b)
        y = layer(x); y.backward(gy)
    finally: compute._KERNELS = saved
    gx, gv = x.grad.clone(), layer.values.grad
    x.grad = None
    wd = (w * m).requires_grad_()
    ref = F.linear(x, wd, b); ref.backward(gy)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx, x.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gv, wd.grad[m], rtol=1e-4, atol=1e-3)
    assert torch.equal(layer.dense_weight(), w * m)
