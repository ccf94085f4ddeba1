"""Sparse compute gives what masked compute gives: the product and its gradients for any shape, density and batch,
and whole training runs with topology updates (same losses, same masks, any optimizer), checkpoints in either mode (hypothesis)."""
import contextlib, copy, io, pickle
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from hypothesis import given, example, settings, strategies as st, HealthCheck, event
from fastsparse import (sparsify_model, masked_params, set_compute, DynamicSparseTraining, RigL_presets, SET_presets, SNFS_presets, PRESETS,
                        snapshot, check_invariants, unsparsify, load_sparse, opt_state, remove_mask_hooks)
from fastsparse.compute import CSRLayout, sparse_linear, sparse_conv2d, dense_grad, _TorchKernels
import fastsparse.compute as compute
from fastsparse.engine import _check_opt
from fastsparse.export import sparse_export

_MIN = dict(compute.COMPUTE_MIN_SPARSITY)
def setup_module():        # the small models here switch every layer, whatever its density, to compare the two modes
    compute.COMPUTE_MIN_SPARSITY.update(linear=0., conv=0.)
def teardown_module(): compute.COMPUTE_MIN_SPARSITY.update(_MIN)

# no timing: a busy machine must not fail them; derandomized: the same examples on every run
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

@contextlib.contextmanager
def _kernels_for(which):
    "Run with the compiled kernels ('cpp') or torch's fallback ('torch')"
    saved = compute._KERNELS
    compute._KERNELS = _TorchKernels if which == 'torch' else (saved if saved is not None and saved is not _TorchKernels else None)
    try: yield
    finally: compute._KERNELS = saved

@settings(max_examples=60, **SETTINGS)
@given(st.integers(1, 70), st.integers(1, 70), st.integers(1, 200), st.floats(0., 1.), st.booleans(),
       st.sampled_from(['cpp', 'torch']), st.integers(0, 2**31))
@example(33, 65, 64, 0.3, True, 'cpp', 0).via('one whole panel')
@example(70, 17, 65, 0.3, True, 'cpp', 1).via('a panel and a one-row one')
@example(5, 70, 200, 0.1, False, 'cpp', 2).via('three panels and a narrow one')
@example(300, 200, 1, 0.2, True, 'cpp', 6).via('a batch of one: gathered inputs')
@example(300, 200, 37, 0.2, True, 'cpp', 7).via('five lanes past two vectors: masked loads')
@example(300, 200, 48, 0.2, True, 'cpp', 8).via('three vectors of lanes in one pass over the entries')
@example(300, 200, 112, 0.2, True, 'cpp', 9).via('a whole panel, then three vectors')
@example(5, 7, 0, 0.5, True, 'cpp', 5).via('an empty batch')
@example(5, 7, 0, 0.5, True, 'torch', 5).via('an empty batch, torch fallback')
@example(9, 4100, 70, 0.05, True, 'cpp', 3).via('wide: three column blocks in the product and the values gradient')
@example(4100, 9, 70, 0.05, True, 'cpp', 4).via("tall: three column blocks in the input's gradient")
def test_sparse_linear_matches_masked_dense(rows, cols, batch, density, bias, which, seed):
    g = torch.Generator().manual_seed(seed)
    w, m = torch.randn(rows, cols, generator=g), torch.rand(rows, cols, generator=g) < density
    b = torch.randn(rows, generator=g) if bias else None
    x = torch.randn(batch, cols, generator=g, requires_grad=True)
    gy = torch.randn(batch, rows, generator=g)
    L, v, rec = CSRLayout.from_mask(m), w[m].requires_grad_(), []
    with _kernels_for(which): y = sparse_linear(x, v, L, b, rec); y.backward(gy)
    gx = x.grad.clone(); x.grad = None
    wd = (w * m).requires_grad_()
    ref = F.linear(x, wd, b); ref.backward(gy)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx, x.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(v.grad, wd.grad[m], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(dense_grad(rec), wd.grad, rtol=1e-4, atol=1e-3)
    assert torch.equal(L.to_dense(v.detach()), w * m) and torch.equal(L.flat(), m.view(-1).nonzero().squeeze(1))

@settings(max_examples=40, **SETTINGS)
@given(st.integers(0, 300), st.integers(1, 80), st.booleans(), st.integers(0, 2**31))
def test_panels_round_trip_the_same_in_both_kernels(n, c, bias, seed):
    "Activations in panels of 64 batch rows: compiled kernels and torch's fallback make the same panels, and undo them exactly"
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, c, generator=g), torch.randn(c, generator=g) if bias else torch.empty(0)
    k = compute.kernels()
    p = k.to_panels(a, torch.empty(0))
    assert p.shape == (n * c,) and torch.equal(p, _TorchKernels.to_panels(a, torch.empty(0)))
    for n0 in range(0, n, compute._PANEL):                     # each panel: its rows, transposed
        rows = a[n0:n0 + compute._PANEL]
        assert torch.equal(p[n0 * c:(n0 + len(rows)) * c].view(c, len(rows)), rows.t())
    back = k.from_panels(p, n, c, b)
    assert back.shape == (n, c) and torch.equal(back, _TorchKernels.from_panels(p, n, c, b))
    assert torch.equal(back, a + b if bias else a)
    out = torch.full((n * c,), float('nan'))                     # into a kept buffer: every entry written
    k.to_panels(a, out)
    assert torch.equal(out, p)

@settings(max_examples=60, **SETTINGS)
@given(st.integers(1, 20), st.integers(1, 9), st.integers(1, 9), st.integers(1, 13), st.integers(1, 13), st.integers(1, 4),
       st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(0, 3), st.integers(0, 3), st.integers(1, 2),
       st.floats(0., 1.), st.booleans(), st.sampled_from(['cpp', 'torch']), st.sampled_from([1, 1, 2, 3]), st.integers(0, 2**31))
@example(5, 1, 1, 7, 7, 3, 3, 1, 1, 1, 1, 1, 0.6, True, 'cpp', 3, 0).via('depthwise')
@example(40, 3, 4, 5, 5, 3, 3, 1, 1, 1, 1, 1, 0.6, True, 'cpp', 1, 1).via('three vectors of batch lanes')
@example(100, 2, 3, 4, 4, 3, 3, 2, 1, 1, 1, 1, 0.6, True, 'cpp', 1, 2).via('64 batch lanes, then three vectors')
def test_sparse_conv2d_matches_masked_dense(n, c, o, h, w_, kh, kw, sh, sw, ph, pw, dil, density, bias, which, groups, seed):
    "`sparse_conv2d` gives `F.conv2d`'s output and gradients on the masked weight, and the dense weight gradient; `c` and `o` are per group"
    if h + 2 * ph < dil * (kh - 1) + 1 or w_ + 2 * pw < dil * (kw - 1) + 1: return    # no output position
    g = torch.Generator().manual_seed(seed)
    o = o * groups
    w, m = torch.randn(o, c, kh, kw, generator=g), torch.rand(o, c, kh, kw, generator=g) < density
    b = torch.randn(o, generator=g) if bias else None
    x = torch.randn(n, c * groups, h, w_, generator=g, requires_grad=True)
    L, v, rec = CSRLayout.from_mask(m), w[m].requires_grad_(), []
    with _kernels_for(which): y = sparse_conv2d(x, v, L, w.shape, b, (sh, sw), (ph, pw), dil, rec, groups)
    wd = (w * m).requires_grad_()
    ref = F.conv2d(x, wd, b, (sh, sw), (ph, pw), dil, groups)
    assert y.shape == ref.shape
    gy = torch.randn(ref.shape, generator=g)
    with _kernels_for(which): y.backward(gy)
    gx = x.grad.clone(); x.grad = None
    ref.backward(gy)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx, x.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(v.grad, wd.grad[m], rtol=1e-4, atol=1e-3)
    with _kernels_for(which): torch.testing.assert_close(dense_grad(rec), wd.grad, rtol=1e-4, atol=1e-3)

def _lamb(p):
    from fastai.optimizer import Lamb
    return Lamb(p, lr=1e-2)

OPTS = {'adam': lambda p: torch.optim.Adam(p, lr=1e-2), 'adamw': lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
        'sgd': lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3)}

def _mlp(sizes, seed):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes, sizes[1:]): layers += [nn.Linear(a, b), nn.Tanh()]   # tanh: no dead units, so no tied zero gradients
    return nn.Sequential(*layers[:-1])

def _cnn(spec, seed):
    "Convolutions (channels, kernel, stride, padding) on 9 x 9 images of 2 channels, then a linear head to 3 outputs"
    torch.manual_seed(seed)
    layers, c, hw = [], 2, 9
    for o, k, s, p in spec:
        p = min(p, k - 1)   # padding a kernel cannot reach would give constant outputs, and tied gradients after them
        if hw + 2 * p < k: continue
        layers += [nn.Conv2d(c, o, k, s, p), nn.Tanh()]; c, hw = o, (hw + 2 * p - k) // s + 1
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * hw * hw, 3))

def _train(compute_mode, sizes, sparsity, opt_name, preset, steps, seed, accumulate=1, clip=None):
    model = _mlp(sizes, seed) if isinstance(sizes[0], int) else _cnn(sizes, seed)
    shape_in, out = ((sizes[0],), sizes[-1]) if isinstance(sizes[0], int) else ((2, 9, 9), 3)
    sparsify_model(model, sparsity, 'erk', seed=seed, compute=compute_mode)
    opt = {**OPTS, 'lamb': _lamb}[opt_name](model.parameters())
    dst = DynamicSparseTraining(model, opt, batches_per_update=3, seed=seed, **preset)
    g = torch.Generator().manual_seed(seed + 1)
    losses, dead = [], False    # dead: a convolution's output channel without weights, constant, ties the gradients after it
    counts = [int(t.mask.sum()) for t in masked_params(model)] if preset.get('redistribution_f') is None else sum(int(t.mask.sum()) for t in masked_params(model))
    for i in range(steps):
        for _ in range(accumulate):
            x, y = torch.randn(12, *shape_in, generator=g), torch.randn(12, out, generator=g)
            loss = F.mse_loss(model(x), y); loss.backward(); losses.append(loss.item())
        for t in masked_params(model):
            if not t.sparse: assert (t.param.grad[~t.mask] == 0).all(), t.name   # masked compute: active gradients only
        if clip is not None: nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        before = snapshot(model, opt)
        if dst.step((i + 1) / steps) is not None: check_invariants(model, opt, counts, before)   # grown at 0 with 0 state, kept untouched
        dead = dead or any(not t.mask.flatten(1).any(1).all() for t in masked_params(model) if isinstance(t.module, nn.Conv2d))
        opt.zero_grad()
    check_invariants(model, opt, counts)
    return model, opt, losses, dst, dead

@settings(max_examples=40, **SETTINGS)
@given(st.lists(st.integers(3, 40), min_size=2, max_size=4), st.floats(0.5, 0.9), st.sampled_from(list(OPTS)),
       st.sampled_from(['RigL', 'SET', 'SNFS']), st.integers(1, 2), st.integers(0, 1000))
def test_training_matches_masked(sizes, sparsity, opt_name, preset, accumulate, seed):
    _same_training(sizes, sparsity, opt_name, preset, accumulate, seed)

def _same_training(sizes, sparsity, opt_name, preset, accumulate, seed, clip=None):
    "Train an MLP (`sizes`: widths) or a CNN (`sizes`: conv specs) in both modes: same losses, masks, optimizer state, checkpoints"
    preset = {'RigL': RigL_presets, 'SET': SET_presets, 'SNFS': SNFS_presets,
              'SNFS-momentum': dict(SNFS_presets, grown_state='momentum'), 'RigL-momentum': dict(RigL_presets, grown_state='momentum')}[preset]
    try: ref = _train('masked', sizes, sparsity, opt_name, preset, 12, seed, accumulate, clip)
    except ValueError as e:
        assert 'keep no weight' in str(e); event('a layer would keep no weight'); return
    if ref[4]: event('a dead channel ties scores: either choice is right'); return
    out = _train('sparse', sizes, sparsity, opt_name, preset, 12, seed, accumulate, clip)
    assert all(t.sparse for t in masked_params(out[0])) and any(isinstance(t.module, nn.Conv2d) for t in masked_params(out[0])) == (not isinstance(sizes[0], int))
    assert out[3].n_updates == ref[3].n_updates >= 2
    torch.testing.assert_close(out[2], ref[2], rtol=1e-4, atol=1e-5)                   # the same losses, step after step
    for a, b in zip(masked_params(ref[0]), masked_params(out[0])):
        assert torch.equal(a.mask, b.mask), a.name                                      # the same masks after every update
        torch.testing.assert_close(b.param, a.param.detach(), rtol=1e-3, atol=1e-5)
        for k, v in opt_state(ref[1], a.param).items():   # the same optimizer state for the active weights, none for the others
            if isinstance(v, torch.Tensor) and v.shape == a.param.shape:
                torch.testing.assert_close(opt_state(out[1], b.param)[k][a.mask], v[a.mask], rtol=1e-3, atol=1e-6)
                assert (v[~a.mask] == 0).all(), (a.name, k)
    sd_ref, sd = ref[0].state_dict(), out[0].state_dict()
    assert list(sd) == list(sd_ref) and all(sd[k].shape == sd_ref[k].shape for k in sd)   # same checkpoint, either mode

@settings(max_examples=12, **SETTINGS)
@given(st.lists(st.integers(3, 40), min_size=2, max_size=4), st.floats(0.5, 0.95), st.sampled_from(['RigL', 'SNFS']), st.integers(0, 1000))
def test_clipped_gradients_match_masked(sizes, sparsity, preset, seed):
    "Gradient clipping sees the active gradients only, in masked compute as in sparse: the same losses and masks"
    _same_training(sizes, sparsity, 'sgd', preset, 1, seed, clip=0.05)

@settings(max_examples=20, **SETTINGS)
@given(st.lists(st.integers(3, 40), min_size=2, max_size=4), st.floats(0.5, 0.9), st.sampled_from(['SNFS', 'RigL']), st.integers(0, 1000))
def test_grown_momentum_matches_masked(sizes, sparsity, preset, seed):
    "grown_state='momentum' (a grown weight starts with the momentum it gathered while inactive, a dropped one's goes on gathering): the same losses, masks and optimizer state in both computes"
    _same_training(sizes, sparsity, 'sgd', preset + '-momentum', 1, seed)

@settings(max_examples=12, **SETTINGS)
@given(st.lists(st.integers(3, 40), min_size=2, max_size=4), st.floats(0.5, 0.95), st.sampled_from(['RigL', 'SET']), st.integers(0, 1000))
def test_lamb_matches_masked(sizes, sparsity, preset, seed):
    "fastai's Lamb scales each step by the norms of the weight and of the step: inactive gradients count in neither mode"
    _same_training(sizes, sparsity, 'lamb', preset, 1, seed)

def test_masked_gradients_are_active_only():
    "After each backward, masked compute's gradients are zero at inactive weights; RigL grows by the dense gradient kept apart"
    from fastsparse.compute import weight_compute
    torch.manual_seed(0)
    model = _mlp([20, 30, 5], 0); sparsify_model(model, 0.8, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 20)
    dense = copy.deepcopy(model); remove_mask_hooks(dense)     # the same weights, no hooks: dense gradients
    F.mse_loss(dense(x), torch.zeros(16, 5)).backward()
    dense_grads = [t.param.grad.clone() for t in masked_params(dense)]
    assert all((g[~t.mask] != 0).any() for g, t in zip(dense_grads, masked_params(dense)))
    twin = copy.deepcopy(model)   # a copy (or an unpickled model) has lost the gradient hooks: its first training forward gives them back
    F.mse_loss(twin(x), torch.zeros(16, 5)).backward()
    assert all((t.param.grad[~t.mask] == 0).all() for t in masked_params(twin))
    dst = DynamicSparseTraining(model, opt, **RigL_presets, batches_per_update=1)
    for _ in range(2): F.mse_loss(model(x), torch.zeros(16, 5)).backward()   # two passes accumulate
    for t, g in zip(masked_params(model), dense_grads):
        assert (t.param.grad[~t.mask] == 0).all() and torch.equal(t.param.grad[t.mask], 2 * g[t.mask])
        torch.testing.assert_close(weight_compute(t).weight_grad(), 2 * g)
    opt.step(); dst.step(0.1)
    assert dst.n_updates == 1 and all(weight_compute(t).weight_grad() is None for t in masked_params(model))   # cleared after the step
    # the driver keeps the dense gradient only for backward passes that an update may follow: here every third step
    dst3 = DynamicSparseTraining(model, opt, **RigL_presets, batches_per_update=3)
    kept = []
    for i in range(6):
        F.mse_loss(model(x), torch.zeros(16, 5)).backward()
        kept.append(weight_compute(masked_params(model)[0]).weight_grad() is not None)
        opt.step(); dst3.step(0.1); opt.zero_grad()
    assert kept == [True, False, True, False, False, True] and dst3.n_updates == 2   # the first: before any step, anything may come
    # a caller that forces or skips updates (`step(update=...)`) may force one at any step: every backward pass keeps it
    kept = []
    for i in range(3):
        F.mse_loss(model(x), torch.zeros(16, 5)).backward()
        kept.append(weight_compute(masked_params(model)[0]).weight_grad() is not None)
        opt.step(); dst3.step(0.1, update=i == 2); opt.zero_grad()
    assert kept == [False, True, True] and dst3.n_updates == 3
    # an engine made after the backward pass cannot know the inactive gradient: a clear error, nothing changed
    m2 = _mlp([20, 30, 5], 0); sparsify_model(m2, 0.8, seed=0); o2 = torch.optim.SGD(m2.parameters(), lr=0.1)
    F.mse_loss(m2(x), torch.zeros(16, 5)).backward()
    masks = [t.mask.clone() for t in masked_params(m2)]
    with pytest.raises(ValueError, match='before `loss.backward'): DynamicSparseTraining(m2, o2, **RigL_presets).engine.update(0.3)
    assert all(torch.equal(a, t.mask) for a, t in zip(masks, masked_params(m2)))

@pytest.mark.parametrize('preset,every', [(RigL_presets, False), (SNFS_presets, True)])
def test_sparse_layers_record_only_when_an_update_may_follow(preset, every):
    "Sparse compute keeps what gives the dense gradient (inputs, output gradients) only for passes an update may read; SNFS's momentum reads every pass"
    torch.manual_seed(0)
    model = _mlp([20, 30, 5], 0); sparsify_model(model, 0.8, seed=0, compute='sparse')
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    dst = DynamicSparseTraining(model, opt, **preset, batches_per_update=3)
    x, layer, kept = torch.randn(16, 20), model[0], []
    for i in range(6):
        F.mse_loss(model(x), torch.zeros(16, 5)).backward()
        kept.append(layer.sparse_weight().weight_grad() is not None)
        opt.step(); dst.step(0.1); opt.zero_grad()
    assert kept == ([True] * 6 if every else [True, False, True, False, False, True]) and dst.n_updates == 2

@settings(max_examples=25, **SETTINGS)
@given(st.lists(st.tuples(st.integers(2, 12), st.integers(1, 3), st.integers(1, 2), st.integers(0, 1)), min_size=1, max_size=2),
       st.floats(0.5, 0.9), st.sampled_from(list(OPTS)), st.sampled_from(['RigL', 'SET', 'SNFS']), st.integers(1, 2), st.integers(0, 1000))
def test_cnn_training_matches_masked(spec, sparsity, opt_name, preset, accumulate, seed):
    "Convolutions in sparse compute train as they do masked: the same losses, masks and optimizer state"
    _same_training(spec, sparsity, opt_name, preset, accumulate, seed)

def _sparse_model(seed=0):
    m = _mlp([10, 16, 3], seed); sparsify_model(m, 0.7, seed=seed, compute='sparse'); return m

class _GPTBlock(nn.Module):
    "Causal self-attention with `nn.Linear` q, k, v and output projections, then an MLP: GPT's and ViT's way of writing a block"
    def __init__(self, d=24, heads=4):
        super().__init__()
        self.heads, self.ln = heads, nn.LayerNorm(d)
        self.q, self.k, self.v, self.o, self.fc, self.proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
    def forward(self, x):
        B, S, D = x.shape
        q, k, v = (f(self.ln(x)).view(B, S, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        x = x + self.o(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, S, D))
        return x + self.proj(F.gelu(self.fc(x)))

@pytest.mark.parametrize('batch,seq', [(2, 5), (3, 70)])    # 10 rows: one panel; 210 rows: four, the last narrow
def test_gpt_block_trains_sparse_as_masked(batch, seq):
    "Attention written with `nn.Linear` projections: every projection computes sparse, on batch x sequence rows, as masked compute does"
    a = nn.Sequential(_GPTBlock(), _GPTBlock()); b = copy.deepcopy(a)
    sparsify_model(a, 0.9, 'erk', seed=0); sparsify_model(b, 0.9, 'erk', seed=0, compute='sparse')
    assert all(t.sparse for t in masked_params(b)) and len(masked_params(b)) == 12
    oa, ob = (torch.optim.Adam(m.parameters(), lr=1e-2) for m in (a, b))
    da, db = (DynamicSparseTraining(m, o, batches_per_update=2, seed=0, **RigL_presets) for m, o in ((a, oa), (b, ob)))
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        x, t = torch.randn(batch, seq, 24, generator=g), torch.randn(batch, seq, 24, generator=g)
        la, lb = F.mse_loss(a(x), t), F.mse_loss(b(x), t)
        torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-5)
        la.backward(); lb.backward(); oa.step(); ob.step()
        da.step((i + 1) / 4); db.step((i + 1) / 4); oa.zero_grad(); ob.zero_grad()
        for ta, tb in zip(masked_params(a), masked_params(b)):
            assert torch.equal(ta.mask, tb.mask), ta.name
            torch.testing.assert_close(ta.param.detach(), tb.module.weight.detach(), rtol=1e-3, atol=1e-4)

@settings(max_examples=60, **SETTINGS)
@given(st.integers(1, 4), st.integers(2, 3), st.integers(1, 4), st.integers(1, 9), st.integers(1, 9), st.booleans(), st.booleans(),
       st.sampled_from(['self', 'kv', 'cross', 'kdim']), st.sampled_from([None, 'bool', 'float', 'causal', 'heads']), st.booleans(),
       st.booleans(), st.booleans(), st.booleans(), st.integers(0, 2**31))
@example(2, 2, 3, 5, 5, True, True, 'self', 'causal', False, False, True, True, 0).via('causal self-attention, fused projection')
@example(1, 4, 2, 6, 9, False, False, 'kv', 'float', True, True, False, True, 1).via('cross-attention on a memory, padded')
@example(3, 2, 3, 4, 7, True, True, 'kdim', 'heads', True, True, True, False, 2).via('separate projections, a mask per head')
@example(2, 2, 1, 6, 6, True, True, "self", "bool", False, True, True, False, 3).via('unbatched')
def test_attention_matches_dense(heads, head_dim, batch, L, S, batch_first, bias, kind, mask, pad, need_weights, average, batched, seed):
    "nn.MultiheadAttention in sparse compute gives what the dense layer gives with the masked weights: output, attention weights, input gradients, dense weight gradients"
    torch.manual_seed(seed); E = heads * head_dim
    kw = dict(kdim=E + 2, vdim=E + 1) if kind == 'kdim' else {}
    ref = nn.MultiheadAttention(E, heads, bias=bias, batch_first=batch_first, **kw)
    m = copy.deepcopy(ref); sparsify_model(m, 0.6, seed=seed, compute='sparse')
    ts = masked_params(m); assert ts and all(t.sparse for t in ts)
    ref.load_state_dict({k: v for k, v in m.state_dict().items() if not k.endswith('_mask')})
    for t in ts: compute.weight_compute(t).record_grad()
    if kind == 'self': L = S
    shape = lambda n, d: ((batch, n, d) if batch_first else (n, batch, d)) if batched else (n, d)
    q = torch.randn(shape(L, E), requires_grad=True)
    k = q if kind == 'self' else torch.randn(shape(S, kw.get('kdim', E)), requires_grad=True)
    v = k if kind in ('self', 'kv') else torch.randn(shape(S, kw.get('vdim', E)), requires_grad=True)
    args = dict(need_weights=need_weights, average_attn_weights=average)
    if mask == 'causal' and L == S: args.update(attn_mask=nn.Transformer.generate_square_subsequent_mask(L), is_causal=not pad)
    elif mask in ('bool', 'causal'): args.update(attn_mask=(torch.rand(L, S) < 0.3).index_fill_(1, torch.tensor([0]), False))   # each row attends to one key at least
    elif mask == 'float': args.update(attn_mask=torch.randn(L, S))
    elif mask == 'heads': args.update(attn_mask=torch.randn(batch * heads if batched else heads, L, S))
    if pad:
        kpm = torch.zeros(batch, S, dtype=torch.bool); kpm[:, S // 2 + 1:] = True
        if 'attn_mask' in args and args['attn_mask'].is_floating_point(): kpm = torch.zeros(kpm.shape).masked_fill(kpm, float('-inf'))
        args.update(key_padding_mask=kpm if batched else kpm[0])
    outs, grads = [], []
    for layer in (ref, m):
        o, w = layer(q, k, v, **args)
        ins = [x for x in dict.fromkeys((q, k, v))]
        g = torch.autograd.grad(o.square().sum(), ins)
        outs.append((o, w)); grads.append(g)
    (oa, wa), (ob, wb) = outs
    torch.testing.assert_close(ob, oa, rtol=1e-4, atol=1e-5)
    if need_weights: torch.testing.assert_close(wb, wa, rtol=1e-4, atol=1e-5)
    else: assert wb is None
    for ga, gb in zip(*grads): torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-4)
    for t in ts: compute.weight_compute(t).clear_record()
    m(q, k, v, **args)[0].square().sum().backward(); ref(q, k, v, **args)[0].square().sum().backward()
    for t in ts:
        wr = getattr(ref, t.attr) if t.attr != 'weight' else ref.out_proj.weight
        torch.testing.assert_close(compute.weight_compute(t).weight_grad(), wr.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(t.trainable.grad, wr.grad[t.mask], rtol=1e-4, atol=1e-4)

def test_attention_checkpoints_copies_and_snfs():
    "An attention layer in sparse compute: checkpoints move between modes and mask counts, pickles and copies train on, SNFS's redistribution and momentum work"
    torch.manual_seed(0)
    make = lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 24, dropout=0., batch_first=True), 2, enable_nested_tensor=False)
    a = make(); sparsify_model(a, 0.8, 'erk', seed=0, compute='sparse')
    masked = make(); sparsify_model(masked, 0.6, seed=1)
    masked.load_state_dict(a.state_dict())                                      # sparse -> masked, other masks before
    b = make(); sparsify_model(b, 0.5, seed=2, compute='sparse')
    b.load_state_dict(masked.state_dict()); check_invariants(b)                   # masked -> sparse: other counts, resized
    x = torch.randn(2, 7, 16)
    for m in (masked, b, copy.deepcopy(b), pickle.loads(pickle.dumps(b))): torch.testing.assert_close(m(x), a(x), rtol=1e-5, atol=1e-6)
    c = copy.deepcopy(b); assert all(t.sparse for t in masked_params(c))
    opt = torch.optim.SGD(c.parameters(), lr=0.1, momentum=0.9)
    dst = DynamicSparseTraining(c, opt, batches_per_update=2, seed=0, **SNFS_presets)
    for i in range(6):
        c(torch.randn(2, 7, 16)).square().mean().backward(); opt.step(); dst.step((i + 1) / 6); opt.zero_grad()
        check_invariants(c, opt)
    assert dst.n_updates == 2 and all(t.sparse for t in masked_params(c))
    counts = [t.trainable.numel() for t in masked_params(c)]
    assert sum(counts) == sum(int(t.mask.sum()) for t in masked_params(c)) and counts != [t.trainable.numel() for t in masked_params(b)]

@settings(max_examples=50, **SETTINGS)
@given(st.sampled_from(['LSTM', 'GRU', 'RNN', 'RNN_RELU']), st.integers(2, 6), st.integers(2, 9), st.integers(1, 2), st.booleans(),
       st.booleans(), st.booleans(), st.booleans(), st.sampled_from([None, 'hx', 'packed', 'unbatched']), st.integers(0, 2**31))
@example('LSTM', 5, 8, 2, True, True, True, True, 'hx', 0).via('two layers both ways, projections, a given state')
@example('GRU', 3, 6, 2, True, False, False, False, 'packed', 1).via('a packed sequence: dense views')
@example('RNN', 4, 5, 1, False, True, True, False, 'unbatched', 2).via('one sequence')
def test_recurrent_matches_dense(kind, inputs, hidden, layers, bidirectional, bias, batch_first, proj, how, seed):
    "nn.LSTM, nn.GRU and nn.RNN in sparse compute give what the dense layer gives with the masked weights: outputs, states, input gradients, dense weight gradients"
    torch.manual_seed(seed)
    kw = dict(num_layers=layers, bidirectional=bidirectional, bias=bias, batch_first=batch_first)
    if kind == 'LSTM' and proj and hidden > 1: kw['proj_size'] = hidden - 1
    ref = {'LSTM': nn.LSTM, 'GRU': nn.GRU, 'RNN': nn.RNN}.get(kind, nn.RNN)(inputs, hidden, **kw, **({'nonlinearity': 'relu'} if kind == 'RNN_RELU' else {}))
    m = copy.deepcopy(ref); sparsify_model(m, 0.5, seed=seed, compute='sparse')
    ts = masked_params(m); assert ts and all(t.sparse for t in ts)
    ref.load_state_dict({k: v for k, v in m.state_dict().items() if not k.endswith('_mask')})
    for t in ts: compute.weight_compute(t).record_grad()
    T, N, D = 5, 3, 2 if bidirectional else 1
    x = torch.randn((N, T, inputs) if batch_first else (T, N, inputs), requires_grad=True)
    args = [x]
    if how == 'unbatched': args = [torch.randn(T, inputs, requires_grad=True)]
    if how == 'hx':
        h0 = torch.randn(layers * D, N, kw.get('proj_size', hidden), requires_grad=True)
        args.append((h0, torch.randn(layers * D, N, hidden)) if kind == 'LSTM' else h0)
    if how == 'packed': args = [nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 3, 2]), batch_first=batch_first)]
    def run(layer):
        out, h = layer(*args)
        o = out.data if how == 'packed' else out
        hs = list(h) if kind == 'LSTM' else [h]
        loss = o.square().sum() + sum(z.square().sum() for z in hs)
        ins = [a for a in [args[0].data if how == 'packed' else args[0]] + ([h0] if how == 'hx' else []) if a.requires_grad]
        return [o] + hs, torch.autograd.grad(loss, ins, retain_graph=True), loss
    (oa, ga, la), (ob, gb, lb) = run(ref), run(m)
    for a, b in zip(oa + list(ga), ob + list(gb)): torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for t in ts: compute.weight_compute(t).clear_record()
    la.backward(retain_graph=True); lb.backward()   # (a packed sequence's packing is in both graphs)
    for t in ts:
        torch.testing.assert_close(compute.weight_compute(t).weight_grad(), getattr(ref, t.attr).grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(t.trainable.grad, getattr(ref, t.attr).grad[t.mask], rtol=1e-4, atol=1e-4)

class _RecNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.gru = nn.LSTM(6, 12, 2, bidirectional=True, proj_size=5, batch_first=True), nn.GRU(10, 8, batch_first=True)
    def forward(self, x): return self.gru(self.lstm(x)[0])[0]

def test_recurrent_trains_sparse_as_masked():
    "A two-layer bidirectional LSTM with projections and a GRU on top train with RigL the same in both modes; checkpoints move between them"
    Net = _RecNet
    torch.manual_seed(0); a = Net(); b = copy.deepcopy(a)
    sparsify_model(a, 0.8, 'erk', seed=0); sparsify_model(b, 0.8, 'erk', seed=0, compute='sparse')
    assert all(t.sparse for t in masked_params(b)) and len(masked_params(b)) == 14
    _pair_train(a, b, lambda g: ((torch.randn(4, 9, 6, generator=g),), torch.randn(4, 9, 8, generator=g)))
    c = Net(); sparsify_model(c, 0.5, seed=3, compute='sparse'); c.load_state_dict(a.state_dict()); check_invariants(c)
    x = torch.randn(2, 5, 6)
    for m in (c, copy.deepcopy(c), pickle.loads(pickle.dumps(c))): torch.testing.assert_close(m(x), a(x), rtol=1e-5, atol=1e-6)
    set_compute(c, 'masked'); assert type(c.lstm) is nn.LSTM and all(w is getattr(c.lstm, n) for w, n in zip(c.lstm._flat_weights, c.lstm._flat_weights_names))
    torch.testing.assert_close(c(x), a(x), rtol=1e-5, atol=1e-6)

@settings(max_examples=40, **SETTINGS)
@given(st.integers(2, 60), st.integers(2, 20), st.floats(0.25, 0.9), st.sampled_from([None, 0, -1, "some"]), st.integers(0, 3), st.integers(0, 2**31))
@example(7, 3, 0.5, None, 0, 0).via('an empty batch')
@example(50, 16, 0.05, -1, 2, 1).via('a negative padding index, a 2-d batch')
def test_embedding_matches_dense(rows, dim, density, padding, ndim, seed):
    "nn.Embedding in sparse compute gives what the dense layer gives with the masked table: output, values gradient, dense gradient"
    torch.manual_seed(seed)
    pad = rows // 2 if padding == 'some' else padding
    ref = nn.Embedding(rows, dim, padding_idx=pad); m = copy.deepcopy(ref)
    sparsify_model(m, 1 - density, seed=seed, embeddings=True, compute='sparse')
    (t,) = masked_params(m); assert t.sparse and type(m).__name__ == 'SparseTrainEmbedding'
    ref.load_state_dict({k: v for k, v in m.state_dict().items() if not k.endswith('_mask')})
    compute.weight_compute(t).record_grad()
    shape = [(0,), (9,), (3, 5), (2, 3, 4)][ndim]
    tokens = torch.randint(0, rows, shape)
    if pad is not None and tokens.numel(): tokens.view(-1)[0] = pad % rows
    g = torch.randn(*shape, dim)
    ya, yb = ref(tokens), m(tokens)
    torch.testing.assert_close(yb, ya)
    (ya * g).sum().backward(); (yb * g).sum().backward()
    torch.testing.assert_close(t.trainable.grad, ref.weight.grad[t.mask], rtol=1e-5, atol=1e-6)
    if tokens.numel(): torch.testing.assert_close(compute.weight_compute(t).weight_grad(), ref.weight.grad, rtol=1e-5, atol=1e-6)

def test_embedding_trains_sparse_as_masked():
    "A language-model-shaped net with its embedding sparse trains with RigL the same in both modes; a tied embedding, max_norm and friends stay masked and say why"
    torch.manual_seed(0)
    class LM(nn.Module):
        def __init__(self): super().__init__(); self.emb, self.lstm, self.head = nn.Embedding(40, 12, padding_idx=0), nn.LSTM(12, 16), nn.Linear(16, 8)
        def forward(self, x): return self.head(self.lstm(self.emb(x))[0])
    a = LM(); b = copy.deepcopy(a)
    sparsify_model(a, 0.8, 'erk', seed=0, embeddings=True); sparsify_model(b, 0.8, 'erk', seed=0, embeddings=True, compute='sparse')
    assert all(t.sparse for t in masked_params(b)) and len(masked_params(b)) == 4
    _pair_train(a, b, lambda g: ((torch.randint(0, 40, (9, 5), generator=g),), torch.randn(9, 5, 8, generator=g)))
    for kw in (dict(max_norm=1.), dict(scale_grad_by_freq=True), dict(sparse=True)):
        e = nn.Sequential(nn.Embedding(10, 4, **kw)); sparsify_model(e, 0.5, seed=0, embeddings=True)
        assert list(set_compute(e, 'sparse')) == ['0.weight'], kw
    tied = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10)); tied[1].weight = tied[0].weight
    sparsify_model(tied, 0.5, seed=0, embeddings=True)
    assert 'tied' in set_compute(tied, 'sparse').get('0.weight', 'tied')

def test_attention_layers_that_stay_masked_say_why():
    m = nn.Sequential(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    sparsify_model(m, 0.8, seed=0); why = set_compute(m, 'sparse')
    assert 'add_bias_kv' in why['0.in_proj_weight'] and 'DIRECT_READERS' in why['0.out_proj.weight']
    assert not any(t.sparse for t in masked_params(m))
    m = nn.Sequential(nn.MultiheadAttention(8, 2)); sparsify_model(m, 0.8, seed=0, compute='sparse')
    assert all(t.sparse for t in masked_params(m))
    set_compute(m, 'masked', include=['0.in_proj_weight'])   # masked, the layer reads `out_proj.weight`: it goes back too
    assert not any(t.sparse for t in masked_params(m)) and type(m[0]) is nn.MultiheadAttention

def _pair_train(a, b, batches, compute_b='sparse', steps=4, every=2):
    "Train `a` masked and `b` in `compute_b` side by side with RigL on `batches()` (inputs, target): the same losses and masks"
    oa, ob = (torch.optim.Adam(m.parameters(), lr=1e-2) for m in (a, b))
    da, db = (DynamicSparseTraining(m, o, batches_per_update=every, seed=0, **RigL_presets) for m, o in ((a, oa), (b, ob)))
    g = torch.Generator().manual_seed(0)
    for i in range(steps):
        xs, t = batches(g)
        la, lb = F.mse_loss(a(*xs), t), F.mse_loss(b(*xs), t)
        torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-5)
        la.backward(); lb.backward(); oa.step(); ob.step()
        da.step((i + 1) / steps); db.step((i + 1) / steps); oa.zero_grad(); ob.zero_grad()
        for ta, tb in zip(masked_params(a), masked_params(b)):
            assert torch.equal(ta.mask, tb.mask), ta.name
            torch.testing.assert_close(ta.param.detach(), tb.param.detach(), rtol=1e-3, atol=1e-4)
    assert da.n_updates == db.n_updates > 0
    return xs

@pytest.mark.parametrize('norm_first', [False, True])
def test_encoder_computes_sparse(norm_first):
    "nn.TransformerEncoder: attention (`in_proj_weight`, `out_proj`) and feed-forward train sparse as masked; the fused eval fast path reads the dense views"
    torch.manual_seed(0)
    a = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 40, dropout=0., batch_first=True, norm_first=norm_first), 2,
                              enable_nested_tensor=False)
    b = copy.deepcopy(a)
    sparsify_model(a, 0.8, 'erk', seed=0); sparsify_model(b, 0.8, 'erk', seed=0, compute='sparse')
    assert all(t.sparse for t in masked_params(b)) and len(masked_params(b)) == 8
    x = _pair_train(a, b, lambda g: ((torch.randn(3, 70, 16, generator=g),), torch.randn(3, 70, 16, generator=g)))[0]   # 210 rows
    a.eval(); b.eval()
    with torch.no_grad(): torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)   # the fused fast path, on dense views
    mask = nn.Transformer.generate_square_subsequent_mask(70)
    with torch.no_grad(): torch.testing.assert_close(a(x, mask=mask, is_causal=True), b(x, mask=mask, is_causal=True), rtol=1e-4, atol=1e-5)

def test_decoder_computes_sparse():
    "nn.TransformerDecoder, sequence first: self-attention, cross-attention on the memory (query rows and key/value rows of `in_proj_weight` apart), feed-forward"
    torch.manual_seed(0)
    a = nn.TransformerDecoder(nn.TransformerDecoderLayer(16, 4, 32, dropout=0.), 2); b = copy.deepcopy(a)
    sparsify_model(a, 0.8, 'erk', seed=0); sparsify_model(b, 0.8, 'erk', seed=0, compute='sparse')
    assert all(t.sparse for t in masked_params(b)) and len(masked_params(b)) == 12
    mask = nn.Transformer.generate_square_subsequent_mask(9)
    class Dec(nn.Module):
        def __init__(self, d): super().__init__(); self.d = d
        def forward(self, x, mem, pad): return self.d(x, mem, tgt_mask=mask, tgt_is_causal=True, memory_key_padding_mask=pad)
    pad = torch.zeros(5, 11, dtype=torch.bool); pad[1, 7:] = True
    _pair_train(Dec(a), Dec(b), lambda g: ((torch.randn(9, 5, 16, generator=g), torch.randn(11, 5, 16, generator=g), pad),
                                           torch.randn(9, 5, 16, generator=g)))

def test_checkpoints_move_between_modes():
    a = _sparse_model()
    with torch.no_grad(): a[0].weight_values.add_(1.)
    masked = _mlp([10, 16, 3], 5); sparsify_model(masked, 0.7, seed=5)
    masked.load_state_dict(a.state_dict())                                   # sparse -> masked
    assert torch.equal(masked[0].weight, a[0].weight) and torch.equal(masked[0].weight_mask, a[0].weight_mask)
    b = _mlp([10, 16, 3], 7); sparsify_model(b, 0.5, seed=7, compute='sparse')   # another mask and count: layout and values follow
    b.load_state_dict(masked.state_dict())                                   # masked -> sparse
    check_invariants(b)
    assert torch.equal(b[0].weight, a[0].weight) and b[0].weight_values.numel() == int(a[0].weight_mask.sum())
    x = torch.randn(4, 10)
    assert torch.allclose(b(x), masked(x), atol=1e-5)
    c = _mlp([10, 16, 3], 1); load_sparse(c, a.state_dict()); assert torch.equal(c[0].weight, a[0].weight)   # into a dense model
    dense = _mlp([10, 16, 3], 1); dense.load_state_dict({k: v for k, v in a.state_dict().items() if not k.endswith('_mask')}, strict=False)
    assert torch.equal(dense[0].weight, a[0].weight)

def test_convolutions_checkpoint_copy_and_export():
    a = _cnn([(6, 3, 1, 1), (5, 3, 2, 1)], 0); sparsify_model(a, 0.7, seed=0, compute='sparse')
    assert [type(m).__name__ for m in a if isinstance(m, (nn.Conv2d, nn.Linear))] == ['SparseTrainConv2d'] * 2 + ['SparseTrainLinear']
    x = torch.randn(3, 2, 9, 9); y = a(x)
    masked = _cnn([(6, 3, 1, 1), (5, 3, 2, 1)], 1); sparsify_model(masked, 0.5, seed=1)
    masked.load_state_dict(a.state_dict())                                  # sparse -> masked: other masks and counts before
    assert torch.allclose(masked(x), y, atol=1e-5) and torch.equal(masked[0].weight, a[0].weight)
    b = _cnn([(6, 3, 1, 1), (5, 3, 2, 1)], 2); sparsify_model(b, 0.9, seed=2, compute='sparse')
    b.load_state_dict(masked.state_dict()); check_invariants(b)              # masked -> sparse, another count
    assert torch.allclose(b(x), y, atol=1e-5) and b[0].weight_values.numel() == int(a[0].weight_mask.sum())
    for c in (copy.deepcopy(a), pickle.loads(pickle.dumps(a))): assert torch.equal(c(x), y)
    exported, _ = sparse_export(a, x); assert torch.allclose(exported(x), y, atol=1e-5)
    assert type(a[0]).__name__ == 'SparseTrainConv2d'                         # the export left the model as it was
    set_compute(a, 'masked'); assert type(a[0]) is nn.Conv2d and torch.allclose(a(x), y, atol=1e-5)

def test_bad_checkpoint_changes_nothing():
    a = _sparse_model(); before = copy.deepcopy(a.state_dict())
    sd = a.state_dict(); sd['0.weight'] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match='shapes differ'): a.load_state_dict(sd)
    sd = a.state_dict(); del sd['0.weight']
    with pytest.raises(RuntimeError, match='Missing key.*0.weight'): a.load_state_dict(sd)
    for k, v in a.state_dict().items(): assert torch.equal(v, before[k]), k
    check_invariants(a)

def test_pickle_copy_and_switching_back():
    a = _sparse_model(); x = torch.randn(5, 10)
    for b in (copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        assert type(b[0]) is type(a[0]) and torch.equal(b(x), a(x)) and b[0].weight_values is not a[0].weight_values
    y = a(x)
    assert set_compute(a, 'masked') == {}
    assert type(a[0]) is nn.Linear and not any(t.sparse for t in masked_params(a))
    assert torch.allclose(a(x), y, atol=1e-6)
    set_compute(a, 'sparse'); assert torch.allclose(a(x), y, atol=1e-6)
    unsparsify(a); assert type(a[0]) is nn.Linear and torch.allclose(a(x), y, atol=1e-6)

def test_what_stays_masked_and_clear_errors():
    m = nn.Sequential(nn.Conv3d(2, 4, 3), nn.Conv1d(4, 4, 3, padding='same'), nn.Conv1d(4, 4, 3, groups=2), nn.Linear(8, 3))
    sparsify_model(m, 0.5, seed=0)
    why = set_compute(m, 'sparse')                                           # 3-d convolutions and string padding stay masked, and say why
    assert set(why) == {'0.weight', '1.weight'} and 'same' in why['1.weight'] and type(m[2]).__name__ == 'SparseTrainConv1d'   # grouped: sparse
    class Scaled(nn.Linear):
        def forward(self, x): return 2 * super().forward(x)
    convs = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 3, padding=1, padding_mode='reflect'),
                          nn.Conv2d(4, 4, 3, padding='same'), nn.Conv2d(4, 4, 3), Scaled(4, 4))
    sparsify_model(convs, 0.5, seed=0)
    why = set_compute(convs, 'sparse')
    assert list(why) == ['1.weight', '2.weight', '4.weight']
    assert 'reflect' in why['1.weight'] and 'same' in why['2.weight'] and 'own forward' in why['4.weight']
    assert type(convs[0]).__name__ == type(convs[3]).__name__ == 'SparseTrainConv2d' and type(convs[4]) is Scaled
    dense_conv = nn.Sequential(nn.Conv2d(4, 4, 3)); sparsify_model(dense_conv, 0.25, seed=0)
    why = set_compute(dense_conv, 'sparse', min_sparsity=_MIN)               # not sparse enough to be faster: stays masked, says so
    assert list(why) == ['0.weight'] and 'COMPUTE_MIN_SPARSITY' in why['0.weight'] and not masked_params(dense_conv)[0].sparse
    assert set_compute(dense_conv, 'sparse', min_sparsity={'conv': 0.2}) == {} and masked_params(dense_conv)[0].sparse
    for bad in ({'convs': 0.5}, {'conv': 80}, {'conv': True}):
        with pytest.raises(ValueError, match='min_sparsity'): set_compute(dense_conv, 'sparse', min_sparsity=bad)
    att = nn.MultiheadAttention(8, 2, add_bias_kv=True); sparsify_model(att, 0.5, seed=0)
    assert set(set_compute(att, 'sparse')) == {'in_proj_weight', 'out_proj.weight'}   # out_proj: read directly by its masked attention
    with pytest.raises(ValueError, match='Unknown compute'): sparsify_model(nn.Linear(3, 3), 0.5, compute='csr')
    with pytest.raises(ValueError, match='Unknown compute'): set_compute(m, 'dense')
    with pytest.raises(AttributeError, match='weight_values'): m[2].weight = nn.Parameter(torch.zeros(3, 8))
    s = _sparse_model()
    with torch.autocast('cpu', dtype=torch.bfloat16): s(torch.randn(2, 10)).float().sum().backward()   # bf16 autocast: float32 inside
    assert s[0].weight_values.grad is not None
    edited = _sparse_model(); edited[0].weight_mask[0] = True                         # a mask edited by hand: a clear error
    with pytest.raises(ValueError, match='mask changed without its values'): edited(torch.randn(2, 10))
    opt = torch.optim.Adam(_mlp([10, 16, 3], 0).parameters())
    with pytest.raises(ValueError, match='does not train'): DynamicSparseTraining(s, opt)

def test_redistribution_changes_counts_and_remaps_state():
    m = _mlp([10, 30, 30, 3], 0); sparsify_model(m, 0.8, seed=0, compute='sparse')
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    dst = DynamicSparseTraining(m, opt, batches_per_update=2, redistribution_f='variance_redistribution', seed=0)
    total = sum(int(t.mask.sum()) for t in masked_params(m)); n0 = [int(t.mask.sum()) for t in masked_params(m)]
    for i in range(8):
        F.mse_loss(m(torch.randn(8, 10)), torch.randn(8, 3)).backward(); opt.step()
        before = snapshot(m, opt)
        if dst.step((i + 1) / 8): check_invariants(m, opt, total, before)
        opt.zero_grad()
    check_invariants(m, opt, total)
    assert sorted(t.trainable.numel() for t in masked_params(m)) != sorted(n0)          # the counts moved...
    _check_opt(opt, masked_params(m))                                                   # ...and the optimizer trains the new values

def _conv1d_net(seed):
    "Two 1-d convolutions (the second strided, dilated and in 2 groups) on 2 channels of 12 steps, a linear head to 3 outputs"
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.Tanh(), nn.Conv1d(8, 8, 3, stride=2, padding=2, dilation=2, groups=2), nn.Tanh(),
                         nn.Flatten(), nn.Linear(8 * 6, 3))

def _grouped_net(seed):
    "On 2 channels of 6 x 6: a convolution, a depthwise one (strided), a 1 x 1 one in 4 groups, a linear head to 3 outputs"
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.Tanh(),
                         nn.Conv2d(8, 8, 1, groups=4), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 9, 3))

class _SeqNet(nn.Module):
    "Tokens embedded, a Transformer encoder layer, an LSTM, a linear head on the last step"
    def __init__(self, seed):
        super().__init__(); torch.manual_seed(seed)
        self.emb, self.enc = nn.Embedding(12, 8), nn.TransformerEncoderLayer(8, 2, 16, dropout=0., batch_first=True)
        self.lstm, self.head = nn.LSTM(8, 6, batch_first=True), nn.Linear(6, 3)
    def forward(self, x): return self.head(self.lstm(self.enc(self.emb(x)))[0][:, -1])

_RESUMED = {'mlp': (lambda seed: _mlp([10, 16, 3], seed), lambda g: torch.randn(8, 10, generator=g), {}),
            'seq': (_SeqNet, lambda g: torch.randint(0, 12, (8, 5), generator=g), dict(embeddings=True)),
            'conv1d': (lambda seed: _conv1d_net(seed), lambda g: torch.randn(8, 2, 12, generator=g), {}),
            'grouped': (lambda seed: _grouped_net(seed), lambda g: torch.randn(8, 2, 6, 6, generator=g), {})}

@pytest.mark.parametrize('compute_mode', ['masked', 'sparse'])
@pytest.mark.parametrize('net, preset', [(n, 'RigL') for n in _RESUMED] + [('mlp', 'SNFS')])
def test_resume_from_a_checkpoint_continues_exactly(compute_mode, net, preset):
    "A run saved half-way (model and optimizer) and resumed in a fresh model matches the run that went on, statistics included (an MLP; embedding, attention and LSTM; SNFS's momentum of inactive weights)"
    make, inputs, kw = _RESUMED[net]
    presets = PRESETS[preset]
    def loop(model, opt, dst, steps, g):
        out = []
        for i in steps:
            loss = F.mse_loss(model(inputs(g)), torch.randn(8, 3, generator=g))
            loss.backward(); opt.step(); dst.step((i + 1) / 16); opt.zero_grad(); out.append(loss.item())
        return out
    a = make(0); sparsify_model(a, 0.7, seed=0, compute=compute_mode, **kw)
    assert all(t.sparse == (compute_mode == 'sparse') for t in masked_params(a))
    oa = torch.optim.Adam(a.parameters(), lr=1e-2)
    da = DynamicSparseTraining(a, oa, batches_per_update=3, seed=0, **presets)
    g = torch.Generator().manual_seed(0)
    first = loop(a, oa, da, range(8), g)
    buf = io.BytesIO(); torch.save({'model': a.state_dict(), 'opt': oa.state_dict()}, buf)
    state = g.get_state()
    rest = loop(a, oa, da, range(8, 16), g)
    buf.seek(0); ck = torch.load(buf, weights_only=True)
    b = make(3); sparsify_model(b, 0.7, seed=3, compute=compute_mode, **kw)    # other masks until loaded
    b.load_state_dict(ck['model'])
    ob = torch.optim.Adam(b.parameters(), lr=1e-2); ob.load_state_dict(ck['opt'])
    db = DynamicSparseTraining(b, ob, batches_per_update=3, resume=True, **presets)
    assert (db.n_steps, db.n_updates) == (8, 2)
    g2 = torch.Generator(); g2.set_state(state)
    torch.testing.assert_close(loop(b, ob, db, range(8, 16), g2), rest, rtol=1e-5, atol=1e-6)
    for x, y in zip(masked_params(a), masked_params(b)): assert torch.equal(x.mask, y.mask)
    assert da.n_updates == db.n_updates and db.history == da.history     # survival of the weights grown before the checkpoint too

def test_snfs_update_in_sparse_compute_makes_no_state_dense(monkeypatch):
    """SNFS in sparse compute: the redistribution reads the active values' state, the growth the momentum kept of inactive
    weights; no state tensor of the values is made dense. The momentum is the layer's `weight_momentum` buffer, 0 where
    active, and it stays with the weight in masked compute and back"""
    g = torch.Generator().manual_seed(0)
    m = _mlp([10, 32, 3], 0); sparsify_model(m, 0.8, seed=0, compute='sparse')
    o = torch.optim.Adam(m.parameters(), lr=1e-2)
    d = DynamicSparseTraining(m, o, seed=0, batches_per_update=1000, **SNFS_presets)
    def step(update=False):
        F.mse_loss(m(torch.randn(8, 10, generator=g)), torch.randn(8, 3, generator=g)).backward(); o.step()
        d.engine.expect_update(); d.step(0.1, update=update); o.zero_grad()
    for _ in range(3): step()
    made = []
    to_dense = CSRLayout.to_dense
    monkeypatch.setattr(CSRLayout, 'to_dense', lambda self, v: made.append(v.shape) or to_dense(self, v))
    before = [t.mask.clone() for t in masked_params(m)]
    step(update=True)
    assert d.n_updates == 1 and not made
    assert any(not torch.equal(b, t.mask) for b, t in zip(before, masked_params(m)))
    monkeypatch.undo()
    check_invariants(m, o)
    for t in masked_params(m):
        mom = t.module.weight_momentum
        assert mom.shape == t.mask.shape and not mom[t.mask].any() and mom[~t.mask].abs().sum() > 0
    saved = {k: v.clone() for k, v in m.state_dict().items() if k.endswith('_momentum')}
    assert len(saved) == 2
    for mode in ('masked', 'sparse'):   # the momentum stays with the weight across modes
        set_compute(m, mode)
        assert all(torch.equal(saved[f'{t.name}_momentum'], t.module.weight_momentum) for t in masked_params(m))

@pytest.mark.parametrize('compute_mode', ['masked', 'sparse'])
def test_over_active_redistribution_reads_the_active_entries_alone(compute_mode):
    "A redistribution marked `over_active` gives, from the active entries and their state alone, exactly what it gives on the whole weight"
    from fastsparse.criteria import momentum_redistribution
    from fastsparse.engine import layer_stats
    g = torch.Generator().manual_seed(0)
    m = _mlp([10, 32, 3], 0); sparsify_model(m, 0.8, seed=0, compute=compute_mode)
    o = torch.optim.Adam(m.parameters(), lr=1e-2)
    d = DynamicSparseTraining(m, o, seed=0, batches_per_update=1000, **SNFS_presets)
    for _ in range(3):
        F.mse_loss(m(torch.randn(8, 10, generator=g)), torch.randn(8, 3, generator=g)).backward(); o.step(); d.step(0.1); o.zero_grad()
    e = d.engine; ts = e.targets
    assert momentum_redistribution.over_active and e.redistribution_f is momentum_redistribution
    ctxs = [e.scorer.ctx(i, t, 0, 0) for i, t in enumerate(ts)]
    got = e.scorer.shares(ts, ctxs, layer_stats(ts, [int(t.mask.sum()) for t in ts]), [True] * len(ts), e.active_idx)
    want = [momentum_redistribution(t.module.sparse_weight(t.attr).dense_weight() if t.sparse else c['weight'], o, t.mask)
            for c, t in zip(ctxs, ts)]
    assert got == want                                   # the same entries, reduced in the same order
    assert all(w > 0 for w in want)

def test_fastai_learner_in_sparse_compute(tmp_path):
    "learn.sparsify(compute='sparse') with the callback: same losses and masks as masked compute, with gradient accumulation too; save, load, FLOPs, export"
    from fastai.basics import Learner, DataLoaders, CrossEntropyLossFlat, accuracy
    from fastai.callback.training import GradientAccumulation
    from fastsparse import DynamicSparseTrainingCallback, count_flops, sparsity_report, update_table
    from fastsparse.export import sparse_export
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 20, generator=g); y = (x[:, :5].sum(1) > 0).long()
    ds = list(zip(x, y))
    def learner(compute, cbs=(), preset=RigL_presets):
        torch.manual_seed(0)
        dls = DataLoaders.from_dsets(ds[:192], ds[192:], bs=16, shuffle=False, device='cpu')
        learn = Learner(dls, nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 2)), loss_func=CrossEntropyLossFlat(),   # tanh: no tied zero gradients
                        metrics=accuracy, cbs=list(cbs), path=tmp_path)
        learn.sparsify(0.8, 'erk', seed=1, compute=compute)
        with learn.no_bar(), learn.no_logging():
            learn.fit(2, 1e-2, cbs=DynamicSparseTrainingCallback(batches_per_update=3, seed=2, **preset))
        check_invariants(learn.model, learn.opt)
        return learn
    for cbs, preset in (((), SNFS_presets), ((GradientAccumulation(32),), RigL_presets), ((), RigL_presets)):   # fastai's Adam: its momentum rule
        m, s = learner('masked', cbs, preset), learner('sparse', cbs, preset)
        assert all(t.sparse for t in masked_params(s.model)) and s.dst.n_updates == m.dst.n_updates >= 2
        torch.testing.assert_close([float(v) for v in s.recorder.losses], [float(v) for v in m.recorder.losses], rtol=1e-4, atol=1e-5)
        for a, b in zip(masked_params(m.model), masked_params(s.model)): assert torch.equal(a.mask, b.mask)
    s.save('sparse')
    for compute in ('sparse', 'masked'):
        l = learner(compute); l.load('sparse', with_opt=compute == 'sparse')
        assert torch.equal(l.model[0].weight, s.model[0].weight)
    assert len(update_table(s)) == 2 * s.dst.n_updates
    assert sparsity_report(s.model).layers.active.tolist() == [int(t.mask.sum()) for t in masked_params(s.model)]
    fl = count_flops(s.model, x[:4])
    assert fl.sparse_macs.tolist() == [4 * int(t.mask.sum()) for t in masked_params(s.model)]
    exported, report = sparse_export(s.model)
    assert torch.allclose(exported(x[:8]), s.model(x[:8]), atol=1e-5) and report.converted.any()

_TWO_THREADS = r'''
import torch
from torch.nn import functional as F
from fastsparse.compute import CSRLayout, sparse_linear, kernels, _TorchKernels
assert kernels() is not _TorchKernels, 'the compiled kernels did not build'
from fastsparse.engine import _top_where
assert torch.get_num_threads() == 2
g = torch.Generator().manual_seed(0)
w = torch.randn(1100, 1100, generator=g); mask = torch.rand(1100, 1100, generator=g) < 0.5
w = w * mask; x = torch.randn(64, 1100, generator=g, requires_grad=True)
lay = CSRLayout.from_mask(mask)
vals = w[mask].requires_grad_()
y = sparse_linear(x, vals, lay, None)                      # 605k weights x 64 rows: past the one-thread cut-off
ref_x = x.detach().clone().requires_grad_(); ref_w = w.clone().requires_grad_()
ref = F.linear(ref_x, ref_w)
torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
go = torch.randn_like(y, generator=g); y.backward(go); ref.backward(go)
torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-4, atol=1e-4)
torch.testing.assert_close(vals.grad, ref_w.grad[mask], rtol=1e-4, atol=1e-4)
# whole panels to each thread (4 panels); each thread its share of the rows of every panel (3 panels); and results too
# large to stay in L2 beside their panel, written 16 features at a time, in both; a batch of one (gathers), of 7, and
# lanes left over past 32 (masked vectors): each with a bias, against F.linear
for (rows, cols, density), batch in [((1100, 1100, 0.5), 200), ((1100, 1100, 0.5), 150), ((3000, 1200, 0.05), 200),
                                     ((1200, 3000, 0.05), 130), ((8000, 1100, 0.05), 150), ((1100, 8000, 0.05), 150),
                                     ((8000, 1100, 0.05), 1), ((3000, 1200, 0.05), 7), ((1100, 1100, 0.5), 37)]:
    w = torch.randn(rows, cols, generator=g); mask = torch.rand(rows, cols, generator=g) < density; w = w * mask
    b = torch.randn(rows, generator=g, requires_grad=True); x = torch.randn(batch, cols, generator=g, requires_grad=True)
    vals = w[mask].requires_grad_()
    y = sparse_linear(x, vals, CSRLayout.from_mask(mask), b)
    ref_x, ref_w, ref_b = x.detach().clone().requires_grad_(), w.clone().requires_grad_(), b.detach().clone().requires_grad_()
    ref = F.linear(ref_x, ref_w, ref_b)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    go = torch.randn_like(y, generator=g); y.backward(go); ref.backward(go)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(vals.grad, ref_w.grad[mask], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(b.grad, ref_b.grad, rtol=1e-4, atol=1e-3)
scores, m = torch.randn(1 << 21, generator=g), torch.rand(1 << 21, generator=g) < 0.3
for tau in (3.0, 0.5, -10.0):                               # few, many and all candidates, over 2M scores
    assert torch.equal(kernels().above(scores, m, tau), ((scores >= tau) & ~m).nonzero().squeeze(1))
none = torch.empty(0, dtype=torch.long)
for fast in (False, True):
    top = _top_where(scores, m, none, int((~m).sum()), 5000, torch.Generator().manual_seed(1), fast=fast)
    torch.testing.assert_close(scores[top].sort().values, scores[~m].topk(5000).values.sort().values)
print('ok')
'''

def test_kernels_on_two_threads():
    "The compiled kernels' parallel paths (the other tests run on one thread): the same product, gradients and selections"
    import os, subprocess, sys
    r = subprocess.run([sys.executable, '-c', _TWO_THREADS], capture_output=True, text=True,
                       env={**os.environ, 'OMP_NUM_THREADS': '2'})
    assert r.returncode == 0 and r.stdout.strip().endswith('ok'), r.stderr[-3000:]

def test_wrapped_momentum_score_in_sparse_compute():
    "A wrapped score reads what the score it wraps declares: `normalized('gradient_momentum')` gets the momentum of inactive weights kept in sparse compute, and trains as in masked compute"
    from fastsparse.criteria import normalized, score_needs
    preset = dict(SNFS_presets, grow_score_f=normalized('gradient_momentum'))
    assert 'momentum' in score_needs(preset['grow_score_f'])
    ref = _train('masked', [10, 24, 16, 5], 0.7, 'adam', preset, 12, 3)
    out = _train('sparse', [10, 24, 16, 5], 0.7, 'adam', preset, 12, 3)
    eng = out[3].engine
    assert eng.sparse and eng.momentum_layers == eng.sparse
    assert out[3].n_updates == ref[3].n_updates >= 2
    torch.testing.assert_close(out[2], ref[2], rtol=1e-4, atol=1e-5)
    for a, b in zip(masked_params(ref[0]), masked_params(out[0])): assert torch.equal(a.mask, b.mask), a.name

def test_load_other_counts_with_a_live_graph(tmp_path):
    "A checkpoint with other per-layer counts loads into a sparse-compute Learner whose last loss still holds a graph (as after `lr_find`), with or without its optimizer state, and the next fit trains"
    from fastai.basics import Learner, DataLoaders, CrossEntropyLossFlat
    from fastsparse import DynamicSparseTrainingCallback
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 20, generator=g); y = (x[:, :5].sum(1) > 0).long()
    ds = list(zip(x, y))
    def learner(sparsity, dist):
        torch.manual_seed(0)
        dls = DataLoaders.from_dsets(ds[:48], ds[48:], bs=16, shuffle=False, device='cpu', num_workers=0)
        learn = Learner(dls, nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 2)), loss_func=CrossEntropyLossFlat(), path=tmp_path)
        learn.sparsify(sparsity, dist, seed=1, compute='sparse')
        with learn.no_logging(): learn.fit(1, 1e-2)
        return learn
    a = learner(0.8, 'erk'); a.save('other')
    for with_opt in (True, False):
        b = learner(0.5, 'uniform')
        b.model(x[:16]).sum().backward()          # a graph kept alive, as fastai's `loss_grad` keeps one after `lr_find`
        b.loss_grad = b.model(x[:16]).sum()
        b.load('other', with_opt=with_opt)
        assert [t.trainable.numel() for t in masked_params(b.model)] == [t.trainable.numel() for t in masked_params(a.model)]
        with b.no_logging(): b.fit(1, 1e-2, cbs=DynamicSparseTrainingCallback(batches_per_update=1, seed=2, **RigL_presets))
        check_invariants(b.model, b.opt)

def test_save_model_callback_loads_other_counts_with_snfs(tmp_path):
    "fastai's `SaveModelCallback` loads the best epoch's masks (other counts under SNFS's redistribution) at the end of `fit`: the optimizer state and SNFS's momentum follow, and the next fit trains"
    import numpy as np
    from fastai.basics import Learner, DataLoaders, CrossEntropyLossFlat
    from fastai.callback.core import Callback
    from fastai.callback.tracker import SaveModelCallback
    from fastsparse import DynamicSparseTrainingCallback
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 20, generator=g); y = (x[:, :5].sum(1) > 0).long()
    ds = list(zip(x, y))
    torch.manual_seed(0)
    dls = DataLoaders.from_dsets(ds[:96], ds[96:], bs=16, shuffle=False, device='cpu', num_workers=0)
    learn = Learner(dls, nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 2)), loss_func=CrossEntropyLossFlat(), path=tmp_path)
    learn.sparsify(0.8, 'erk', seed=1, compute='sparse')
    cb = lambda: DynamicSparseTrainingCallback(batches_per_update=2, seed=2, **SNFS_presets)
    counts = []
    class Counts(Callback):   # the counts at the end of each epoch
        def after_epoch(self): counts.append([t.trainable.numel() for t in masked_params(self.learn.model)])
    with learn.no_logging():   # the worst validation loss is the best here: the first epoch's masks load at the end
        learn.fit(4, 3e-2, cbs=[cb(), Counts(), SaveModelCallback(monitor='valid_loss', comp=np.greater)])
    final = [t.trainable.numel() for t in masked_params(learn.model)]
    assert final == counts[0] != counts[-1]
    check_invariants(learn.model, learn.opt)
    for t in masked_params(learn.model): assert not compute.weight_compute(t).inactive_momentum[t.mask].any()
    with learn.no_logging(): learn.fit(1, 1e-2, cbs=cb())
    check_invariants(learn.model, learn.opt)

def test_rigl_growth_streams_without_a_dense_gradient(monkeypatch):
    "In sparse compute RigL grows from the recorded passes a block of rows at a time (layers past the sampled threshold's cut-off): the highest |dense gradient| among the free places, and no dense gradient is made"
    from fastsparse.compute import SparseWeight, weight_compute
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 500), nn.Tanh(), nn.Linear(500, 400))
    sparsify_model(model, 0.95, 'uniform', compute='sparse')
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dst = DynamicSparseTraining(model, opt, **RigL_presets)
    ts = masked_params(model)
    for accumulate in (1, 2):                  # one recorded pass, and two summed
        dst.engine.expect_update()
        for _ in range(accumulate): model(torch.randn(37, 300)).pow(2).mean().backward()
        ref = {t.name: weight_compute(t).weight_grad().abs() for t in ts}
        old = {t.name: t.mask.clone() for t in ts}
        with monkeypatch.context() as m:
            m.setattr(SparseWeight, 'weight_grad', lambda self: pytest.fail('a dense gradient was made'))
            recs = dst.engine.update(0.3)
        for t, r in zip(ts, recs):
            g, grown, o = ref[t.name].view(-1), r['grown_idx'], old[t.name].view(-1)
            assert len(grown) == r['grown'] == r['dropped'] > 0 and int(t.mask.sum()) == int(o.sum())
            free = ~o & ~t.mask.view(-1)        # free before and after: not chosen
            assert g[grown].min() >= g[free].max(), t.name
        check_invariants(model, opt)
        opt.zero_grad()
        for t in ts: weight_compute(t).clear_record()

@settings(max_examples=40, **SETTINGS)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 9), st.integers(1, 30), st.integers(1, 5), st.integers(1, 3), st.integers(0, 3),
       st.integers(1, 2), st.floats(0.05, 0.9), st.booleans(), st.booleans(), st.sampled_from([1, 1, 2]), st.integers(0, 2**31))
@example(17, 3, 4, 9, 3, 1, 1, 1, 0.5, True, True, 1, 0).via('a batch past 16 lanes')
@example(3, 1, 1, 9, 3, 1, 1, 1, 0.5, True, True, 2, 0).via('depthwise')
def test_conv1d_matches_masked_dense(n, c, o, length, k, stride, padding, dilation, density, bias, batched, groups, seed):
    "`nn.Conv1d` in sparse compute (a convolution of height 1 through the 2-d kernels) gives `F.conv1d`'s output and gradients on the masked weight, and the dense weight gradient an update reads"
    from fastsparse.compute import weight_compute
    if length + 2 * padding < dilation * (k - 1) + 1: return
    torch.manual_seed(seed)
    c, o = c * groups, o * groups   # per group
    layer = nn.Conv1d(c, o, k, stride=stride, padding=padding, dilation=dilation, bias=bias, groups=groups)
    w = layer.weight.detach().clone()
    try: sparsify_model(layer, 1 - density, seed=seed, compute='sparse')
    except ValueError as e: assert 'keep no weight' in str(e); event('the layer would keep no weight'); return
    t = masked_params(layer)[0]; assert t.sparse and type(layer).__name__ == 'SparseTrainConv1d'
    m = t.mask.clone(); weight_compute(t).record_grad()
    x = torch.randn(*((n,) if batched else ()), c, length)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    wd = (w * m).requires_grad_(); b = None if layer.bias is None else layer.bias.detach().clone().requires_grad_()
    ref = F.conv1d(xa, wd, b, stride, padding, dilation, groups); y = layer(xb)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    gy = torch.randn_like(ref); ref.backward(gy); y.backward(gy)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.weight_values.grad, wd.grad[m], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(weight_compute(t).weight_grad(), wd.grad, rtol=1e-4, atol=1e-3)
    if bias: torch.testing.assert_close(layer.bias.grad, b.grad, rtol=1e-4, atol=1e-3)

@pytest.mark.parametrize('net', ['conv1d', 'grouped'])
def test_conv1d_and_grouped_train_sparse_as_masked(net):
    "A 1-d CNN, and a 2-d one with depthwise and grouped convolutions, train with RigL the same in both modes; their checkpoints move between modes and they go back to torch's classes"
    make, inputs, _ = _RESUMED[net]
    a = make(0); b = copy.deepcopy(a)
    sparsify_model(a, 0.7, 'erk', seed=0); sparsify_model(b, 0.7, 'erk', seed=0, compute='sparse')
    assert all(t.sparse for t in masked_params(b)) and len(masked_params(b)) == len(masked_params(a))
    _pair_train(a, b, lambda g: ((inputs(g),), torch.randn(8, 3, generator=g)), steps=6)
    c = make(1); sparsify_model(c, 0.5, seed=3, compute='sparse'); c.load_state_dict(a.state_dict()); check_invariants(c)
    x = inputs(torch.Generator().manual_seed(1))
    for m in (c, copy.deepcopy(c), pickle.loads(pickle.dumps(c))): torch.testing.assert_close(m(x), a(x), rtol=1e-5, atol=1e-6)
    set_compute(c, 'masked'); assert type(c[0]) is type(a[0]) and type(c[2]) is type(a[2])
    torch.testing.assert_close(c(x), a(x), rtol=1e-5, atol=1e-6)

@pytest.mark.parametrize('which', ['cpp', 'torch'])
def test_input_gradient_from_the_rows(which):
    "`linear_bwd` without the transposed values (what a batch of one takes) scatters W's rows: the input's gradient of `F.linear`, for any batch of one panel"
    g = torch.Generator().manual_seed(0)
    w, m = torch.randn(70, 90, generator=g), torch.rand(70, 90, generator=g) < 0.2
    L, v = CSRLayout.from_mask(m), w[m]
    with _kernels_for(which):
        k = compute.kernels()
        for b in (1, 5, 17, 64):
            x, gy = torch.randn(b, 90, generator=g), torch.randn(b, 70, generator=g)
            gx = k.linear_bwd(L.ptr, L.idx, v, L.tptr, L.tidx, compute._NONE, x, gy, True, False, False)[0]
            torch.testing.assert_close(gx, gy @ (w * m), rtol=1e-4, atol=1e-4)

# ---------------------------------------------------------------- the selection and update kernels, against torch
def _first_k(s, keys, k, largest):
    "The keys of the first k scores by (score, key): NaN last, ties to the lower key"
    v = s.masked_fill(s.isnan(), float('-inf') if largest else float('inf')).tolist()
    order = sorted(range(len(v)), key=lambda i: (-v[i] if largest else v[i], int(keys[i])))
    return sorted(int(keys[i]) for i in order[:max(0, min(k, len(v)))])

@settings(max_examples=80, **SETTINGS)
@given(st.integers(1, 2000), st.floats(0., 1.1), st.sampled_from(['normal', 'ties', 'nan']), st.booleans(), st.booleans(), st.integers(0, 2**31))
def test_top_k_takes_the_first_k_whatever_the_order(n, frac, kind, largest, keyed, seed):
    "`top_k` in both kernel sets: the k largest (smallest) scores, ties to the lower key, so the same keys for the scores in any order"
    g = torch.Generator().manual_seed(seed); k = int(frac * n)
    s = torch.randn(n, generator=g) if kind != 'ties' else torch.randint(0, 3, (n,), generator=g).float()
    if kind == 'nan': s[torch.randint(0, n, (max(1, n // 10),), generator=g)] = float('nan')
    keys = torch.randperm(n, generator=g) if keyed else torch.arange(n)
    want, perm = _first_k(s, keys, k, largest), torch.randperm(n, generator=g)
    for which in ('cpp', 'torch'):
        with _kernels_for(which):
            kern = compute.kernels()
            got = kern.top_k(s, keys if keyed else torch.empty(0, dtype=torch.long), k, largest)
            assert got.dtype == torch.int64 and sorted(keys[got].tolist()) == want
            if keyed: assert sorted(keys[perm][kern.top_k(s[perm], keys[perm], k, largest)].tolist()) == want

def test_top_k_on_many_scores():
    "Over 2^16 scores `top_k` brackets the k-th from a sample; with ties, or a sample that misleads, the set is still exact"
    g = torch.Generator().manual_seed(0); n = 200_003
    cases = [torch.randn(n, generator=g), torch.randint(0, 3, (n,), generator=g).float(), torch.zeros(n),
             (torch.arange(n) % 24 == 0).float(),                     # every sampled position (n / 8192 apart) may be a 1
             torch.arange(n, dtype=torch.float32)]
    keys = torch.randperm(n, generator=g)
    for s in cases:
        for k in (1, 777, n // 3, n // 2 + 1, n - 5):
            for largest in (True, False):
                with _kernels_for('cpp'): a = compute.kernels().top_k(s, keys, k, largest)
                b = _TorchKernels.top_k(s, keys, k, largest)
                assert len(a) == k and torch.equal(keys[a].sort().values, keys[b].sort().values)

@settings(max_examples=30, **SETTINGS)
@given(st.integers(0, 40), st.integers(1, 1100), st.floats(0., 1.), st.integers(0, 2**31))
@example(0, 300, 0.5, 0).via('a weight with no rows')
@example(30, 1024, 0.0, 1).via('no entries')
def test_csr_transpose_matches_torch(rows, cols, density, seed):
    "The compiled transpose gives torch's: column pointers, rows ascending in each column, and where each value is (no rows too)"
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, cols, generator=g) < density
    L = CSRLayout.from_mask(mask)
    with _kernels_for('cpp'): got = compute.kernels().csr_transpose(L.ptr, L.idx, cols)
    want = compute._TorchKernels.csr_transpose(L.ptr, L.idx, cols)
    for a, b in zip(got, want): assert torch.equal(a, b)
    cr = mask.t().nonzero()                    # (column, row) of each entry, in the transposed order
    assert torch.equal(got[1].long(), cr[:, 1]) and torch.equal(L.flat()[got[2]], cr[:, 1] * cols + cr[:, 0])

@settings(max_examples=30, **SETTINGS)
@given(st.integers(1, 60), st.integers(1, 70), st.floats(0., 1.), st.lists(st.integers(1, 9), min_size=1, max_size=3), st.integers(0, 2**31))
def test_update_kernels_match_torch(rows, cols, density, batches, seed):
    "`flat`, `grad_at`, `move` (into a kept buffer) and `or_count` in both kernel sets give what torch's ops give"
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, cols, generator=g) < density; L = CSRLayout.from_mask(mask)
    xs = [torch.randn(b, cols, generator=g) for b in batches]; gys = [torch.randn(b, rows, generator=g) for b in batches]
    at = torch.randint(0, rows * cols, (50,), generator=g)
    where = torch.where(torch.rand(L.nnz, generator=g) < 0.7, torch.arange(L.nnz) + 3, -1); v = torch.randn(L.nnz, generator=g)
    ex, m2 = torch.rand(rows * cols, generator=g) < 0.2, torch.rand(rows * cols, generator=g) < 0.3
    for which in ('cpp', 'torch'):
        with _kernels_for(which):
            kern = compute.kernels()
            assert torch.equal(kern.flat(L.ptr, L.idx, cols), mask.view(-1).nonzero().squeeze(1))
            torch.testing.assert_close(kern.grad_at(gys, xs, at, cols), sum(gy.t() @ x for gy, x in zip(gys, xs)).view(-1)[at])
            want = torch.zeros(L.nnz + 3); want[where[where >= 0]] = v[where >= 0]
            assert torch.equal(kern.move(v, where, L.nnz + 3, torch.empty(0)), want)
            buf = torch.full((L.nnz + 3,), 7.); assert torch.equal(kern.move(v, where, L.nnz + 3, buf), want) and torch.equal(buf, want)
            e = ex.clone(); assert kern.or_count(e, m2) == int((ex | m2).sum()) and torch.equal(e, ex | m2)

def test_or_count_on_large_masks():
    "`or_count` over more bools than one thread takes, and a length that is not a multiple of 8"
    g = torch.Generator().manual_seed(0); n = (1 << 21) + 5
    ex, m = torch.rand(n, generator=g) < 0.1, torch.rand(n, generator=g) < 0.05
    e = ex.clone()
    with _kernels_for('cpp'): assert compute.kernels().or_count(e, m) == int((ex | m).sum())
    assert torch.equal(e, ex | m)

@pytest.mark.parametrize('opt_name', ['adam', 'sgd'])
def test_sparse_update_moves_every_tensor_of_the_values(opt_name):
    "After an update in sparse compute, the values, their gradient and each optimizer-state tensor hold the old entries at their new places, 0 where weights were grown"
    from fastsparse.compute import weight_compute
    torch.manual_seed(0)
    model = _mlp([30, 40, 5], 0); sparsify_model(model, 0.8, seed=0, compute='sparse')
    opt = torch.optim.Adam(model.parameters(), lr=0.01) if opt_name == 'adam' else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    dst = DynamicSparseTraining(model, opt, **RigL_presets, batches_per_update=2)
    x = torch.randn(16, 30)
    for step in range(2):
        F.mse_loss(model(x), torch.zeros(16, 5)).backward(); opt.step()
        ts = masked_params(model)
        dense = lambda v, t: weight_compute(t).weight_layout.to_dense(v.detach())
        before = [dict(values=dense(t.trainable, t), grad=dense(t.trainable.grad, t), mask=t.mask.clone(),
                       **{k: dense(s, t) for k, s in opt.state[t.trainable].items() if torch.is_tensor(s) and s.shape == t.trainable.shape})
                  for t in ts]
        dst.step(0.1)        # the second step updates; the first leaves every tensor where it was
        for t, b in zip(ts, before):
            stays = (b['mask'] & t.mask).view_as(b['values'])
            for k, old in b.items():
                if k == 'mask': continue
                now = dense(t.trainable if k == 'values' else t.trainable.grad if k == 'grad' else opt.state[t.trainable][k], t)
                assert torch.equal(now, torch.where(stays, old, torch.zeros(()))), (step, t.name, k)
        opt.zero_grad(set_to_none=False)
    assert dst.n_updates == 1
