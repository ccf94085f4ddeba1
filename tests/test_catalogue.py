"The criteria catalogue inside training: the same masks in masked and sparse compute, and the previous-update weights kept, reset, saved and resumed."
import io
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from fastsparse import (sparsify_model, masked_params, DynamicSparseTraining, RigL_presets, load_sparse, check_invariants,
                        snapshot, prev_name, init_name, get_score)

CATALOGUE = ['large_final', 'small_final', 'squared_final', 'large_init', 'small_init', 'large_init_large_final',
             'small_init_small_final', 'magnitude_increase', 'movement', 'movmag']
ALL = CATALOGUE + ['updating_' + n for n in CATALOGUE if 'init' in n or n in ('magnitude_increase', 'movement', 'movmag')]
X = torch.randn(256, 20, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 5, (256,), generator=torch.Generator().manual_seed(2))

def _mlp(compute='masked'):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 5)); sparsify_model(m, 0.8, seed=0, compute=compute)
    return m, torch.optim.Adam(m.parameters(), lr=1e-2)

def _fit(m, o, d, steps, start=0, total=None, after_update=None):
    total = total or steps
    for s in range(start, start + steps):
        i = s % 8
        F.cross_entropy(m(X[i * 32:(i + 1) * 32]), Y[i * 32:(i + 1) * 32]).backward(); o.step()
        snap = snapshot(m, o)
        if d.step((s + 1) / total) is not None:
            check_invariants(m, o, before=snap)
            if after_update: after_update(m, d)
        o.zero_grad()

def test_every_name_is_registered():
    assert len(ALL) == 17
    for n in ALL: assert get_score(n).__name__ == (n if n != 'large_final' else 'weight_magnitude')

# Scores that tie by design once weights have grown (their reference is 0 there): masked and sparse compute list the
# active weights in different orders, so `topk` may break those ties differently; both choices are right. For these the
# masks must agree at the first update (nothing grown yet), and counts and invariants at every update.
TIES = {'large_init', 'small_init', 'large_init_large_final', 'updating_large_init', 'updating_small_init',
        'updating_large_init_large_final', 'magnitude_increase'}

@pytest.mark.parametrize('keep', ALL)
def test_catalogue_masked_and_sparse_compute_agree(keep):
    "Each criterion as RigL's keep score: the same masks in both computes, exact counts and zero state after every update"
    masks = {}
    for compute in ('masked', 'sparse'):
        m, o = _mlp(compute)
        d = DynamicSparseTraining(m, o, **{**RigL_presets, 'keep_score_f': keep}, batches_per_update=4, seed=0)
        seen = []
        _fit(m, o, d, 24, after_update=lambda m, d: seen.append([t.mask.clone() for t in masked_params(m)]))
        masks[compute] = seen
    assert len(masks['masked']) == len(masks['sparse']) == 4
    for u, (a, b) in enumerate(zip(masks['masked'], masks['sparse'])):
        assert [int(x.sum()) for x in a] == [int(x.sum()) for x in b]
        if u == 0 or keep not in TIES: assert all(torch.equal(x, y) for x, y in zip(a, b)), (keep, u)

@pytest.mark.parametrize('compute', ['masked', 'sparse'])
def test_previous_update_weights_follow_every_update(compute):
    "After each update `prev` holds the weights as the update left them: grown weights at 0, like the initial weights"
    m, o = _mlp(compute)
    d = DynamicSparseTraining(m, o, **{**RigL_presets, 'keep_score_f': 'updating_movmag'}, batches_per_update=4, seed=0)
    w0 = [t.param.detach().clone() for t in masked_params(m)]
    assert all(torch.equal(p, w) for p, w in zip(d.engine.prev.values(), w0))   # before the first update: the start of training
    seen = []
    def check(m, d):
        for t in masked_params(m):
            prev = t.module._buffers[prev_name(t.attr)]
            assert torch.equal(prev, t.param.detach())
            assert (prev.view(-1)[d.log.last_grown[t.name]] == 0).all()
        seen.append(1)
    _fit(m, o, d, 24, after_update=check)
    assert len(seen) == 4, len(seen)
    assert '0.weight_prev' in m.state_dict() and init_name('weight') not in dict(m[0].named_buffers())   # only what is asked for

def test_previous_update_weights_resume():
    "Saved halfway and resumed: the same masks as without the stop (the previous-update weights are in the checkpoint)"
    kw = {**RigL_presets, 'keep_score_f': 'updating_movement'}
    m, o = _mlp(); d = DynamicSparseTraining(m, o, **kw, batches_per_update=4, seed=0); _fit(m, o, d, 40)
    full = [t.mask.clone() for t in masked_params(m)]
    m, o = _mlp(); d = DynamicSparseTraining(m, o, **kw, batches_per_update=4, seed=0); _fit(m, o, d, 20, total=40)
    buf = io.BytesIO(); torch.save({'model': m.state_dict(), 'opt': o.state_dict()}, buf); buf.seek(0); ck = torch.load(buf)
    torch.manual_seed(5)
    m2 = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 5)); load_sparse(m2, ck["model"])
    o2 = torch.optim.Adam(m2.parameters(), lr=1e-2); o2.load_state_dict(ck['opt'])
    d2 = DynamicSparseTraining(m2, o2, **kw, batches_per_update=4, resume=True)
    assert torch.equal(d2.engine.prev['0.weight'], ck['model']['0.weight_prev'])
    _fit(m2, o2, d2, 20, start=20, total=40)
    assert all(torch.equal(a, t.mask) for a, t in zip(full, masked_params(m2)))

def test_bad_reference_is_a_clear_error_and_changes_nothing():
    "A catalogue score called without its reference says where the reference comes from; an engine update that fails on it changes nothing"
    m, o = _mlp()
    with pytest.raises(ValueError, match='needs the weights at the previous update'): get_score('updating_movement')(m[0].weight)
    F.cross_entropy(m(X[:32]), Y[:32]).backward(); o.step()
    d = DynamicSparseTraining(m, o, **{**RigL_presets, 'keep_score_f': 'updating_movement'}, batches_per_update=1)
    del m[0]._buffers[prev_name('weight')]       # a reference lost: the update must fail before it commits anything
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(Exception): d.step(0.1)
    after = m.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items() if k in after)
