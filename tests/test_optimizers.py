"""Which optimizers fastsparse supports: each trains the same in masked and sparse compute with RigL and SNFS (same losses,
same masks, the invariants after every update), fastai's Lookahead (`ranger`) has its slow weights follow the masks, an
optimizer keeping per-weight tensors fastsparse cannot see is refused, and fastai's optimizers work in a plain loop."""
import os, subprocess, sys
from functools import partial
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from fastai.optimizer import SGD, Adam, RAdam, QHAdam, Lamb, Larc, ranger, OptimWrapper
from fastsparse import (sparsify_model, masked_params, DynamicSparseTraining, RigL_presets, SNFS_presets, snapshot,
                        check_invariants, opt_state)
from fastsparse.adapters import extra_state
import fastsparse.compute as compute

_MIN = dict(compute.COMPUTE_MIN_SPARSITY)
def setup_module():        # the small models here switch every layer, whatever its density, to compare the two modes
    compute.COMPUTE_MIN_SPARSITY.update(linear=0., conv=0.)
def teardown_module(): compute.COMPUTE_MIN_SPARSITY.update(_MIN)

_T = torch.optim
OPTIMIZERS = {   # name -> (make it from the parameters, whether it keeps the gradient's momentum that SNFS reads)
    'torch SGD':           (lambda p: _T.SGD(p, lr=0.05), False),
    'torch SGD momentum':  (lambda p: _T.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3), True),
    'torch SGD Nesterov':  (lambda p: _T.SGD(p, lr=0.05, momentum=0.9, nesterov=True), True),
    'torch Adam':          (lambda p: _T.Adam(p, lr=1e-2), True),
    'torch AdamW':         (lambda p: _T.AdamW(p, lr=1e-2, weight_decay=0.1), True),
    'torch RMSprop':       (lambda p: _T.RMSprop(p, lr=1e-3), False),
    'torch Adagrad':       (lambda p: _T.Adagrad(p, lr=1e-2), False),
    'torch Adamax':        (lambda p: _T.Adamax(p, lr=1e-2), True),
    'torch NAdam':         (lambda p: _T.NAdam(p, lr=1e-2), True),
    'torch RAdam':         (lambda p: _T.RAdam(p, lr=1e-2), True),
    'OptimWrapper(Adam)':  (lambda p: OptimWrapper(p, _T.Adam, lr=1e-2), True),
    'fastai SGD':          (lambda p: SGD(p, lr=0.05), False),
    'fastai SGD momentum': (lambda p: SGD(p, lr=0.05, mom=0.9, wd=1e-3), True),
    'fastai Adam':         (lambda p: Adam(p, lr=1e-2), True),
    'fastai RAdam':        (lambda p: RAdam(p, lr=1e-2), True),
    'fastai QHAdam':       (lambda p: QHAdam(p, lr=1e-2), True),
    'fastai Lamb':         (lambda p: Lamb(p, lr=1e-2), True),
    'fastai Larc':         (lambda p: Larc(p, lr=0.05), True),
    'fastai ranger':       (lambda p: ranger(p, lr=1e-2, k=3), True),   # Lookahead(RAdam): a sync every 3 steps
}
PRESETS = {'RigL': RigL_presets, 'SNFS': SNFS_presets}

def _model(seed):
    torch.manual_seed(seed)   # tanh: no dead units, so no tied zero gradients
    return nn.Sequential(nn.Linear(12, 24), nn.Tanh(), nn.Linear(24, 16), nn.Tanh(), nn.Linear(16, 3))

def _slow(opt, t):
    "The dense slow weights (Lookahead) of `t`, or None"
    d = extra_state(opt, t.trainable)
    if not d: return None
    s = d[0]['slow_weights']
    return compute.weight_compute(t).weight_layout.to_dense(s).view(t.mask.shape) if t.sparse else s

def _train(mode, opt_name, preset, steps=12, seed=0):
    "Train in `mode`, checking the invariants after every step and update; the losses, masks after each update, model and optimizer"
    model = _model(seed)
    sparsify_model(model, 0.7, 'erk', seed=seed, compute=mode)
    opt = OPTIMIZERS[opt_name][0](model.parameters())
    dst = DynamicSparseTraining(model, opt, batches_per_update=2, seed=seed, **PRESETS[preset])
    total = sum(int(t.mask.sum()) for t in masked_params(model))
    g = torch.Generator().manual_seed(seed + 1)
    losses, masks = [], []
    for i in range(steps):
        x, y = torch.randn(16, 12, generator=g), torch.randn(16, 3, generator=g)
        loss = F.mse_loss(model(x), y); loss.backward(); losses.append(loss.item())
        opt.step()
        before = snapshot(model, opt)
        if dst.step((i + 1) / steps) is not None:
            check_invariants(model, opt, total, before)    # grown and dropped at 0 with 0 state (slow weights too), kept untouched
            masks.append([t.mask.clone() for t in masked_params(model)])
        check_invariants(model, opt, total)
        for t in masked_params(model):                     # slow weights: zero at inactive weights, and where the weights are
            s = _slow(opt, t)
            if s is not None: assert not s[~t.mask].any(), t.name
        opt.zero_grad()
    assert dst.n_updates == 4 and len(masks) == 4
    return losses, masks, model, opt

_CELLS = [(o, p) for o in OPTIMIZERS for p in PRESETS if p == 'RigL' or OPTIMIZERS[o][1]]

@pytest.mark.parametrize('opt_name,preset', _CELLS)
def test_same_training_in_both_modes(opt_name, preset):
    "The same losses (to float tolerance) and the same masks in masked and sparse compute; the same weights, optimizer state and slow weights"
    ref, out = _train('masked', opt_name, preset), _train('sparse', opt_name, preset)
    assert all(t.sparse for t in masked_params(out[2]))
    torch.testing.assert_close(out[0], ref[0], rtol=1e-4, atol=1e-5)
    for ma, mb in zip(ref[1], out[1]):
        for a, b in zip(ma, mb): assert torch.equal(a, b)
    for a, b in zip(masked_params(ref[2]), masked_params(out[2])):
        torch.testing.assert_close(b.param, a.param.detach(), rtol=1e-3, atol=1e-5)
        for k, v in opt_state(ref[3], a.param).items():
            if isinstance(v, torch.Tensor) and v.shape == a.param.shape:
                torch.testing.assert_close(opt_state(out[3], b.trainable)[k], v[a.mask], rtol=1e-3, atol=1e-6)
        sa, sb = _slow(ref[3], a), _slow(out[3], b)
        assert (sa is None) == (sb is None) == (opt_name != 'fastai ranger')
        if sa is not None: torch.testing.assert_close(sb, sa, rtol=1e-3, atol=1e-5)

@pytest.mark.slow
@pytest.mark.parametrize('seed', [1, 2, 3])
@pytest.mark.parametrize('opt_name,preset', _CELLS)
def test_same_training_in_both_modes_more_seeds(opt_name, preset, seed):
    "The matrix on other models, masks and data"
    ref, out = _train('masked', opt_name, preset, seed=seed), _train('sparse', opt_name, preset, seed=seed)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-4, atol=1e-5)
    assert all(torch.equal(a, b) for ma, mb in zip(ref[1], out[1]) for a, b in zip(ma, mb))

def test_ranger_in_a_learner():
    "fastai's `ranger` through the callback: the same losses and masks in both compute modes, the slow weights zero at inactive weights"
    from fastai.basics import Learner, DataLoaders
    from fastsparse import DynamicSparseTrainingCallback
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 12, generator=g); ds = list(zip(x, x[:, :3].tanh()))
    def fit(mode):
        torch.manual_seed(0)
        dls = DataLoaders.from_dsets(ds[:64], ds[64:], bs=8, shuffle=False, device='cpu')
        learn = Learner(dls, _model(0), loss_func=F.mse_loss, opt_func=partial(ranger, k=3))
        learn.sparsify(0.7, 'erk', seed=0, compute=mode)
        with learn.no_logging(): learn.fit(2, 1e-2, cbs=DynamicSparseTrainingCallback(batches_per_update=3, seed=0, **SNFS_presets))
        check_invariants(learn.model, learn.opt)
        for t in masked_params(learn.model): assert not _slow(learn.opt, t)[~t.mask].any()
        return learn
    m, s = fit('masked'), fit('sparse')
    assert s.dst.n_updates == m.dst.n_updates >= 3 and all(t.sparse for t in masked_params(s.model))
    torch.testing.assert_close([float(v) for v in s.recorder.losses], [float(v) for v in m.recorder.losses], rtol=1e-4, atol=1e-5)
    for a, b in zip(masked_params(m.model), masked_params(s.model)): assert torch.equal(a.mask, b.mask)

@pytest.mark.parametrize('mode', ['masked', 'sparse'])
@pytest.mark.parametrize('opt_name', [o for o, (_, mom) in OPTIMIZERS.items() if not mom])
def test_snfs_without_momentum_is_refused_at_once(opt_name, mode):
    "SNFS reads the gradient's momentum: an optimizer without it is refused when the driver is made, saying which to use"
    model = _model(0); sparsify_model(model, 0.7, 'erk', seed=0, compute=mode)
    opt = OPTIMIZERS[opt_name][0](model.parameters())
    with pytest.raises(ValueError, match="reads the gradient's momentum.*use fastai's Adam"):
        DynamicSparseTraining(model, opt, batches_per_update=2, **SNFS_presets)

class _HiddenSlow(torch.optim.SGD):
    "An optimizer that keeps a copy of each weight as an attribute, where fastsparse cannot see it (made at its first step if `lazy`)"
    def __init__(self, params, lazy=False, **kw):
        super().__init__(params, **kw)
        self.copies = None if lazy else [p.detach().clone() for g in self.param_groups for p in g['params']]
    def step(self, closure=None):
        if self.copies is None: self.copies = [p.detach().clone() for g in self.param_groups for p in g['params']]
        return super().step(closure)

@pytest.mark.parametrize('mode', ['masked', 'sparse'])
def test_unseen_optimizer_state_is_refused(mode):
    "Per-weight tensors outside `opt.state` that no adapter shows: refused when the driver is made, or (made at the first step) before the first update changes anything"
    model = _model(0); sparsify_model(model, 0.7, 'erk', seed=0, compute=mode)
    with pytest.raises(ValueError, match=r"outside its `state` \(_HiddenSlow.copies\[0\].*register_adapter"):
        DynamicSparseTraining(model, _HiddenSlow(model.parameters(), lr=0.1), **RigL_presets)
    opt = _HiddenSlow(model.parameters(), lazy=True, lr=0.1)
    dst = DynamicSparseTraining(model, opt, batches_per_update=1, **RigL_presets)
    F.mse_loss(model(torch.randn(4, 12)), torch.randn(4, 3)).backward(); opt.step()
    masks = [t.mask.clone() for t in masked_params(model)]
    with pytest.raises(ValueError, match='outside its `state`'): dst.step(0.1)
    assert all(torch.equal(m, t.mask) for m, t in zip(masks, masked_params(model)))

def test_ranger_slow_weights_follow_the_masks():
    "Sparse compute: after updates (SNFS changes counts) each kept weight's slow copy is still its own; masked: grown weights' slow copies restart at 0"
    for mode, preset in (('sparse', 'RigL'), ('sparse', 'SNFS'), ('masked', 'RigL')):
        torch.manual_seed(0)
        model = _model(0); sparsify_model(model, 0.7, 'erk', seed=0, compute=mode)
        opt = ranger(model.parameters(), lr=1e-2, k=100)    # no sync: slow weights stay the weights at the first step
        dst = DynamicSparseTraining(model, opt, batches_per_update=1, seed=0, **PRESETS[preset])
        F.mse_loss(model(torch.randn(8, 12)), torch.randn(8, 3)).backward()
        first = {t.name: t.param.detach().clone() for t in masked_params(model)}
        opt.step(); opt.zero_grad()
        assert dst.step(0.1) is not None
        for t in masked_params(model):
            kept = t.mask & (first[t.name] != 0)
            torch.testing.assert_close(_slow(opt, t)[kept], first[t.name][kept])   # a kept weight's slow copy, at its place
            assert not _slow(opt, t)[t.mask & (first[t.name] == 0)].any()          # a grown weight's slow copy is 0
        for _ in range(3):                                                          # and training goes on
            F.mse_loss(model(torch.randn(8, 12)), torch.randn(8, 3)).backward(); opt.step(); opt.zero_grad(); dst.step(0.2)

_PLAIN_LOOP = r'''
import sys, torch
from torch import nn
from torch.nn import functional as F
from fastai.optimizer import Adam
from fastsparse import sparsify_model, DynamicSparseTraining, SNFS_presets, masked_params, check_invariants
import fastsparse.compute as compute
compute.COMPUTE_MIN_SPARSITY.update(linear=0.)
assert 'fastai.learner' not in sys.modules
torch.manual_seed(0)
m = nn.Sequential(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 3)); sparsify_model(m, 0.8, seed=0, compute='sparse')
opt = Adam(m.parameters(), lr=1e-2)
dst = DynamicSparseTraining(m, opt, batches_per_update=2, seed=0, **SNFS_presets)
for i in range(6):
    F.mse_loss(m(torch.randn(8, 10)), torch.randn(8, 3)).backward(); opt.step(); dst.step((i + 1) / 6); opt.zero_grad()
assert dst.n_updates == 2 and all(t.sparse for t in masked_params(m))
check_invariants(m, opt)
print('ok')
'''

def test_fastai_adam_with_snfs_in_a_plain_loop():
    "fastai's optimizers in a plain loop (no `Learner` imported): SNFS in sparse compute knows fastai's Adam's momentum"
    r = subprocess.run([sys.executable, '-c', _PLAIN_LOOP], capture_output=True, text=True,
                       env={**os.environ, 'FASTSPARSE_KERNELS': 'torch'})
    assert r.returncode == 0 and 'ok' in r.stdout, r.stderr[-3000:]
