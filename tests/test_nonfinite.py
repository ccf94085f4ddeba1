"""A step whose gradients hold NaN or inf (a NaN loss, an fp16 overflow) makes no topology update: every preset, in both
compute modes, skips the update, counts it and warns once, leaves the masks and the invariants as they were, and trains on
with its next update at the usual step. SNFS's dense momentum in sparse compute does not take the NaN or inf in."""
import warnings
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from fastsparse import (sparsify_model, masked_params, DynamicSparseTraining, SparseEngine, check_invariants, RigL_presets,
                        SET_presets, SNFS_presets, GMP_presets, GraNet_presets)
import fastsparse.compute as compute

_MIN = dict(compute.COMPUTE_MIN_SPARSITY)
def setup_module():        # the small models here switch every layer to sparse compute, whatever its density
    compute.COMPUTE_MIN_SPARSITY.update(linear=0., conv=0.)
def teardown_module(): compute.COMPUTE_MIN_SPARSITY.update(_MIN)

PRESETS = dict(RigL=RigL_presets, SET=SET_presets, SNFS=SNFS_presets, GMP=dict(GMP_presets, final_sparsity=0.8),
               GraNet=dict(GraNet_presets, final_sparsity=0.8))
N_STEPS, EVERY, BAD = 40, 4, 8     # steps in all, steps between updates, the update step whose gradients are bad
BAD_VALUES = dict(nan=float('nan'), inf=float('inf'))

def _setup(name, mode):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 5))
    sparsify_model(m, 0. if name == 'GMP' else 0.5, seed=0, compute=mode)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    return m, opt, DynamicSparseTraining(m, opt, batches_per_update=EVERY, seed=0, **PRESETS[name])

def _masks(m): return {t.name: t.mask.clone() for t in masked_params(m)}

def _run(name, mode, bad=None, on_bad='dst.step'):
    "Train `N_STEPS` steps; at step `BAD` the loss is multiplied by `bad` and the loop skips the optimizer step, then calls `on_bad`"
    m, opt, dst = _setup(name, mode)
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(N_STEPS, 16, 10, generator=g), torch.randint(0, 5, (N_STEPS, 16), generator=g)
    seen = {}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        for s in range(1, N_STEPS + 1):
            opt.zero_grad()
            loss = F.cross_entropy(m(X[s - 1]), y[s - 1])
            if s == BAD and bad is not None:
                (loss * BAD_VALUES[bad]).backward()       # NaN or inf gradients: the loop skips the optimizer step, as a GradScaler does
                seen['masks'] = _masks(m)
                seen['out'] = dst.step(s / N_STEPS) if on_bad == 'dst.step' else dst.step_skipped()
                seen['after'] = _masks(m)
                check_invariants(m, opt)
                continue
            loss.backward(); opt.step(); dst.step(s / N_STEPS)
    seen['warnings'] = [str(x.message) for x in w if 'skipped the topology update' in str(x.message)]
    return m, opt, dst, loss, seen

@pytest.mark.parametrize('mode', ['masked', 'sparse'])
@pytest.mark.parametrize('name', list(PRESETS))
def test_nonfinite_gradient_skips_the_update(name, mode):
    "No error: the update is skipped and counted, masks and invariants hold, and the next update comes as usual"
    ref_steps = [u[0]['step'] for u in _run(name, mode)[2].history]
    assert BAD in ref_steps and BAD + EVERY in ref_steps      # step BAD is an update step, and so is the one after it
    for bad in BAD_VALUES:
        m, opt, dst, loss, seen = _run(name, mode, bad)
        assert seen['out'] is None
        assert all(torch.equal(seen['masks'][k], seen['after'][k]) for k in seen['masks'])
        assert dst.n_skipped == 1 and '1 skipped' in repr(dst)
        assert len(seen['warnings']) == 1 and 'dst.n_skipped' in seen['warnings'][0] and 'NaN or inf' in seen['warnings'][0]
        assert [u[0]['step'] for u in dst.history] == [s for s in ref_steps if s != BAD]
        assert dst.n_updates == len(ref_steps) - 1 and torch.isfinite(loss)
        check_invariants(m, opt)
        for t in masked_params(m):     # SNFS in sparse compute: the dense momentum of inactive weights took no NaN or inf
            if t.sparse and compute.weight_compute(t).inactive_momentum is not None: assert torch.isfinite(compute.weight_compute(t).inactive_momentum).all()

@pytest.mark.parametrize('mode', ['masked', 'sparse'])
def test_step_skipped_makes_no_update(mode):
    "The documented way: `step_skipped()` instead of `step` counts nothing and skips nothing, and the update falls on the next step"
    m, opt, dst, loss, seen = _run('RigL', mode, 'inf', on_bad='step_skipped')
    assert dst.n_skipped == 0 and seen['warnings'] == [] and dst.n_steps == N_STEPS - 1
    assert BAD in [u[0]['step'] for u in dst.history]       # the step after the skipped one is counted as step BAD
    check_invariants(m, opt)

@pytest.mark.parametrize('mode', ['masked', 'sparse'])
@pytest.mark.parametrize('name', ['RigL', 'SNFS'])
def test_grad_scaler_loop(name, mode):
    "A bf16 loop with torch's `GradScaler` on the CPU: an overflow makes the scaler skip the optimizer step, and `dst.step` is still called"
    m, opt, dst = _setup(name, mode)
    scaler = torch.amp.GradScaler('cpu')
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(N_STEPS, 16, 10, generator=g), torch.randint(0, 5, (N_STEPS, 16), generator=g)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        for s in range(1, N_STEPS + 1):
            opt.zero_grad()
            with torch.autocast('cpu', dtype=torch.bfloat16): loss = F.cross_entropy(m(X[s - 1]).float(), y[s - 1])
            if s == BAD: loss = loss * float('inf')    # an overflow
            scaler.scale(loss).backward()
            scale = scaler.get_scale(); scaler.step(opt); scaler.update()
            if s == BAD:
                assert scaler.get_scale() < scale       # the scaler skipped this optimizer step
                masks = _masks(m)
            dst.step(s / N_STEPS)
            if s == BAD: assert all(torch.equal(v, _masks(m)[k]) for k, v in masks.items())
    assert dst.n_skipped == 1 and sum('skipped the topology update' in str(x.message) for x in w) == 1
    assert BAD not in [u[0]['step'] for u in dst.history] and BAD + EVERY in [u[0]['step'] for u in dst.history]
    check_invariants(m, opt)
    for t in masked_params(m):
        assert torch.isfinite(t.trainable).all()
        if t.sparse and compute.weight_compute(t).inactive_momentum is not None: assert torch.isfinite(compute.weight_compute(t).inactive_momentum).all()

@pytest.mark.parametrize('mode', ['masked', 'sparse'])
@pytest.mark.parametrize('name', list(PRESETS))
def test_nan_loss_with_the_optimizer_step_taken(name, mode):
    "A NaN loss whose optimizer step is taken spoils the weights: every later update is skipped and counted, with one warning and no error"
    m, opt, dst = _setup(name, mode)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        for s in range(1, 21):
            opt.zero_grad(); loss = m(torch.randn(16, 10)).pow(2).mean()
            (loss * float('nan') if s == BAD else loss).backward(); opt.step()
            masks = _masks(m)
            dst.step(s / 20)
            if s >= BAD: assert all(torch.equal(v, _masks(m)[k]) for k, v in masks.items())
    assert dst.n_skipped >= 1 and dst.n_updates == len(dst.history)
    assert sum('skipped the topology update' in str(x.message) for x in w) == 1

def test_skipped_updates_are_saved_and_resumed():
    "`n_skipped` is in the model's `dst_state`, so checkpoints carry it; older checkpoints without it resume at 0"
    m, opt, dst, *_ = _run('RigL', 'masked', 'nan')
    assert dst.n_skipped == 1 and m.dst_state.tolist()[5] == 1
    assert DynamicSparseTraining(m, opt, batches_per_update=EVERY, resume=True).n_skipped == 1
    m.register_buffer('dst_state', m.dst_state[:5].clone())     # as fastsparse wrote it before it counted skipped updates
    d = DynamicSparseTraining(m, opt, batches_per_update=EVERY, resume=True)
    assert (d.n_steps, d.n_updates, d.n_skipped) == (N_STEPS, dst.n_updates, 0)

def test_engine_raises_before_changing_anything():
    "`SparseEngine.update` alone raises a `ValueError` that says the step is at fault, and changes nothing; a score that is NaN on finite inputs is still the score's fault"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10)); sparsify_model(m, 0.5)
    o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    def nan_score(param, opt, name): return param.detach().abs() * float('nan')
    # engines made before the backward pass: masked compute keeps the dense gradient their grow scores read
    rigl, nan_keep = SparseEngine(m, o), SparseEngine(m, o, keep_score_f=nan_score)
    e = SparseEngine(m, o, grow_score_f='gradient_momentum', scope='global', drop_by='threshold', redistribution_f='survivors')
    m(torch.randn(8, 10)).sum().backward(); o.step()
    m[1].weight.grad[0, 0] = float('inf')
    snap = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=r"gradient of '1.weight' holds NaN or inf: no topology update"): rigl.update(0.3)
    for k, v in m.state_dict().items(): assert torch.equal(v, snap[k]), k
    m[1].weight.grad[0, 0] = 0.
    with pytest.raises(ValueError, match='add an eps'): nan_keep.update(0.3)
    # a score that reads NaN (here in the optimizer state) is skipped by the driver, DSR's threshold staying as it was
    o.state[m[1].weight]['momentum_buffer'][0, 0] = float('nan')
    with pytest.raises(ValueError, match=r"reads NaN or inf in the optimizer state 'momentum_buffer' of '1.weight'"): e.update(0.1)
    assert e.threshold is None and e.last_threshold is None
    for k, v in m.state_dict().items(): assert torch.equal(v, snap[k]), k

@pytest.mark.parametrize('mode', ['masked', 'sparse'])
def test_fastai_callback_skips(mode):
    "The fastai callback: gradients that hold NaN or inf at an update step skip that update, and fit goes on"
    from fastai.callback.core import Callback
    from fastai.learner import Learner
    import fastai.callback.progress     # `learn.no_bar`
    from fastai.losses import CrossEntropyLossFlat
    from fastsparse.callback import DynamicSparseTrainingCallback
    from fastsparse.data import digits_dls, digits_mlp
    class BadGrads(Callback):
        "After the optimizer step of batch 10, the gradients the callback reads hold NaN (as when a loop skips a step unseen)"
        order = DynamicSparseTrainingCallback.order - 1
        def after_step(self):
            if self.train_iter == 9:
                for p in self.learn.model.parameters(): p.grad.fill_(float('nan'))
    torch.manual_seed(0)
    learn = Learner(digits_dls(), digits_mlp((64,)), loss_func=CrossEntropyLossFlat())
    sparsify_model(learn, 0.8, compute=mode)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, 0.01, cbs=[DynamicSparseTrainingCallback(**RigL_presets, batches_per_update=5), BadGrads()])
    steps = [u[0]['step'] for u in learn.dst.history]
    assert learn.dst.n_skipped == 1 and 10 not in steps and 5 in steps and 15 in steps
    assert sum('skipped the topology update' in str(x.message) for x in w) == 1
    check_invariants(learn.model, learn.opt)
