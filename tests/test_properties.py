"Property tests over random layer shapes, sparsities and updates (hypothesis)."
import io, math
import pytest
import torch
from torch import nn
from hypothesis import given, settings, strategies as st, HealthCheck, assume

from fastsparse.compute import weight_compute
from fastsparse import (sparsify_model, masked_params, uniform_sparsity, erdos_renyi_sparsity, load_sparse,
                        SparseEngine, opt_state, n_keep, overall_sparsity, first_layer_dense_uniform,
                        snapshot, check_invariants, REDISTRIBUTION_FLOOR)

SETTINGS = dict(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

@st.composite
def models(draw):
    "A stack of Linear, Conv2d, Conv1d or ConvTranspose2d layers of random sizes"
    kind = draw(st.sampled_from(['linear', 'conv2d', 'conv1d', 'convT']))
    n = draw(st.integers(1, 4))
    chans = draw(st.lists(st.integers(1, 24), min_size=n + 1, max_size=n + 1))
    k = draw(st.integers(1, 4))
    if kind == 'linear': layers = [nn.Linear(a, b) for a, b in zip(chans, chans[1:])]
    elif kind == 'conv2d': layers = [nn.Conv2d(a, b, k, padding='same') for a, b in zip(chans, chans[1:])]
    elif kind == 'conv1d': layers = [nn.Conv1d(a, b, k, padding='same') for a, b in zip(chans, chans[1:])]
    else: layers = [nn.ConvTranspose2d(a, b, k) for a, b in zip(chans, chans[1:])]
    x = {'linear': (3, chans[0]), 'conv2d': (2, chans[0], 6, 6), 'conv1d': (2, chans[0], 7), 'convT': (2, chans[0], 5, 5)}[kind]
    return nn.Sequential(*layers), x

sparsities = st.floats(0., 0.99, allow_nan=False)
distributions = st.sampled_from([uniform_sparsity, erdos_renyi_sparsity, first_layer_dense_uniform])

def _try_sparsify(model, s, f, **kw):
    "Sparsify, or check that refusing was right (some layer would keep no weight)"
    params = [m.weight for m in model]
    expected = [n_keep(p.numel(), si) for p, si in zip(params, f(params, s))]
    if min(expected) < 1:
        with pytest.raises(ValueError, match='would keep no weight'): sparsify_model(model, s, f, **kw)
        return None
    sparsify_model(model, s, f, **kw)
    return expected

@settings(**SETTINGS)
@given(models(), sparsities, distributions, st.integers(0, 2**31))
def test_exact_counts_and_zeros(spec, s, f, seed):
    model, xshape = spec
    expected = _try_sparsify(model, s, f, seed=seed)
    assume(expected is not None)
    ts = masked_params(model)
    assert [int(t.mask.sum()) for t in ts] == expected
    with torch.no_grad():
        for t in ts: t.param.add_(torch.randn_like(t.param))     # what an optimizer step does
    model(torch.randn(*xshape))
    for t in ts: assert (t.param[~t.mask] == 0).all()

@settings(**SETTINGS)
@given(models(), st.floats(0.05, 0.99), st.booleans(), st.floats(0.2, 1.5))
def test_erk_overall_density(spec, s, kernel, power):
    model, _ = spec
    params = [m.weight for m in model]
    ss = erdos_renyi_sparsity(params, s, include_kernel=kernel, erk_power_scale=power)
    assert all(0 <= x < 1 for x in ss)
    total = sum(p.numel() for p in params)
    assert math.isclose(overall_sparsity(params, ss), s, abs_tol=1e-9)
    kept = sum(n_keep(p.numel(), x) for p, x in zip(params, ss))
    assert abs(kept - (1 - s) * total) <= len(params) / 2 + 1e-6      # rounding: at most half a weight per layer

@settings(**SETTINGS)
@given(models(), sparsities, st.integers(0, 2**31))
def test_checkpoint_round_trip(spec, s, seed):
    model, xshape = spec
    assume(_try_sparsify(model, s, uniform_sparsity, seed=seed) is not None)
    with torch.no_grad():
        for t in masked_params(model): t.param.add_(1.)           # masked positions dirty before saving
    buf = io.BytesIO(); torch.save(model.state_dict(), buf); buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    for t in masked_params(model): assert (sd[t.name][~sd[t.name + '_mask']] == 0).all()
    fresh = nn.Sequential(*[type(m)(*_args(m)) for m in model])
    load_sparse(fresh, sd)
    for a, b in zip(masked_params(model), masked_params(fresh)):
        assert torch.equal(a.mask, b.mask) and torch.equal(a.param, b.param)
        assert (b.param[~b.mask] == 0).all()
    fresh(torch.randn(*xshape))

def _args(m):
    if isinstance(m, nn.Linear): return (m.in_features, m.out_features)
    kw = m.kernel_size if isinstance(m, nn.ConvTranspose2d) else m.kernel_size
    return (m.in_channels, m.out_channels, kw) + (() if isinstance(m, nn.ConvTranspose2d) else (1, 'same'))

@settings(**SETTINGS)
@given(models(), st.floats(0.3, 0.95), st.floats(0., 0.9),
       st.sampled_from(['weight_magnitude', 'random_score', 'taylor_score']),
       st.sampled_from(['gradient_magnitude', 'random_score', 'gradient_momentum']),
       st.sampled_from([None, 'momentum_redistribution', 'variance_redistribution']),
       st.sampled_from(['adam', 'sgd', 'adamw']), st.integers(0, 2**31), st.data())
def test_update_invariants(spec, s, frac, keep, grow, redist, optname, seed, data):
    "After any update: exact counts, masked weights at 0, grown ones at 0 with zero optimizer state (or, with grown_state='momentum', the momentum they gathered while inactive)"
    model, xshape = spec
    assume(_try_sparsify(model, s, uniform_sparsity, seed=seed) is not None)
    if redist == 'variance_redistribution': assume(optname != 'sgd')
    frozen = [data.draw(st.booleans()) for _ in model]          # layers whose weight does not train are left alone
    for m, f in zip(model, frozen): m.weight.requires_grad_(not f)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = {'adam': lambda p: torch.optim.Adam(p, lr=1e-2), 'sgd': lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
           'adamw': lambda p: torch.optim.AdamW(p, lr=1e-2)}[optname](params)
    carry = optname == 'sgd' and data.draw(st.booleans())
    grown_state = 'momentum' if carry else 'zero'
    torch.manual_seed(seed)
    engine = SparseEngine(model, opt, keep, grow, redist, seed=seed, grown_state=grown_state)   # before the backward passes: it keeps what its scores read
    for _ in range(2):
        model(torch.randn(*xshape)).pow(2).mean().backward(); opt.step(); engine.observe_step(); opt.zero_grad()
    model(torch.randn(*xshape)).pow(2).mean().backward()
    before = [int(t.mask.sum()) for t in masked_params(model)]
    snap = snapshot(model, opt)
    inactive = [weight_compute(t).inactive_momentum for t in masked_params(model)]
    inactive = [None if m is None else m.clone() for m in inactive]
    records = engine.update(frac)
    after = [int(t.mask.sum()) for t in masked_params(model)]
    check_invariants(model, opt, counts=before if redist is None else sum(before), before=snap, grown_state=grown_state)
    for t, m0 in zip(masked_params(model), inactive):   # the momentum follows each weight across the mask
        if not carry or not t.param.requires_grad: continue
        grown, dropped = t.mask & ~snap[t.name][0], snap[t.name][0] & ~t.mask
        mom = opt.state[t.param]['momentum_buffer']
        assert torch.equal(mom[grown], m0[grown]) and torch.equal(weight_compute(t).inactive_momentum[dropped], snap[t.name][2]['momentum_buffer'][dropped])
        if grown.any() and m0[grown].any():
            with pytest.raises(AssertionError, match='grown or dropped'): check_invariants(model, opt, before=snap, grown_state='zero')
    for t, f, r, b, a in zip(masked_params(model), frozen, records, before, after):
        assert 0 < a <= t.mask.numel()
        if f: assert torch.equal(t.mask, snap[t.name][0]) and a == b
        grown, dropped = t.mask & ~snap[t.name][0], snap[t.name][0] & ~t.mask
        assert r['grown'] == int(grown.sum()) and r['dropped'] == int(dropped.sum()) and r['active_after'] == a
    if redist is not None:   # redistribution leaves no layer that trains below its floor: a fraction of its count at the start
        for t, f, b, a in zip(masked_params(model), frozen, before, after):
            if not f: assert a >= min(b, max(1, math.ceil(REDISTRIBUTION_FLOOR * b))), (t.name, a, b)

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.data())
def test_sparse_conv_matches_dense(nd, cin, cout, data):
    "SparseConv gives the convolution's output for any geometry: kernel, stride, dilation, padding (and its mode), bias"
    from fastsparse.export import SparseConv
    conv_t = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]
    k = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    dil = tuple(data.draw(st.integers(1, 2)) for _ in range(nd))
    size = tuple(data.draw(st.integers(d * (kk - 1) + 1, 9)) for kk, d in zip(k, dil))
    if data.draw(st.booleans()):
        padding, stride = 'same', 1
    else:
        padding = tuple(data.draw(st.integers(0, min(kk - 1, 2))) for kk in k)
        stride = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    mode = data.draw(st.sampled_from(['zeros', 'reflect', 'replicate', 'circular']))
    if mode == 'reflect': assume(all(s > 2 for s in size))
    conv = conv_t(cin, cout, k, stride=stride, padding=padding, dilation=dil, padding_mode=mode, bias=data.draw(st.booleans()))
    with torch.no_grad(): conv.weight.mul_(torch.rand_like(conv.weight) < data.draw(st.floats(0., 1.)))
    x = torch.randn(data.draw(st.integers(1, 5)), cin, *size)
    sc = SparseConv(conv)
    sc.block = data.draw(st.sampled_from([1, 5, 64, 512]))      # columns per product: a sample at a time, a few, all
    with torch.no_grad():
        want, got = conv(x), sc(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

STRUCTURES = ['fan_in', '1:2', '2:4', '1:4', 'row', 'column', 'kernel', '2x2', '1x4']

@settings(**SETTINGS)
@given(models(), st.sampled_from(STRUCTURES), st.floats(0.3, 0.95), st.floats(0.05, 0.9),
       st.sampled_from(['weight_magnitude', 'random_score']), st.sampled_from(['gradient_magnitude', 'random_score']),
       st.sampled_from(['mean', 'sum', 'norm', 'max']), st.booleans(), st.booleans(), st.integers(0, 2**31))
def test_structure_invariants(spec, structure, s, frac, keep, grow, reduce, sparse, ablate, seed):
    "Every structure: refused with a clear error that changes nothing, or kept exactly (pattern, counts, zeros) by every update and checkpoint"
    from fastsparse import get_structure, set_compute
    model, xshape = spec
    stc = get_structure(structure)
    if getattr(stc, 'm', None): s = 1 - stc.n / stc.m
    keys = set(model.state_dict())
    try: sparsify_model(model, s, seed=seed, structure=structure)
    except ValueError as e:
        assert any(w in str(e) for w in ('cannot be carried', 'would keep no weight')), str(e)
        assert set(model.state_dict()) == keys and not masked_params(model)
        if 'cannot be carried' in str(e):
            assert isinstance(model[0], nn.ConvTranspose2d) or any(stc.problem(tuple(m.weight.shape)) for m in model)
        return
    assert not isinstance(model[0], nn.ConvTranspose2d)
    if sparse and all(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model): set_compute(model, 'sparse')
    counts = [int(t.mask.sum()) for t in masked_params(model)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ablate = ablate and structure == 'fan_in'        # SRigL: outputs may be removed, their budget shared by the others
    engine = SparseEngine(model, opt, keep, grow, seed=seed, group_reduce=reduce, neuron_ablation=0.3 if ablate else None)
    torch.manual_seed(seed)
    for i in range(3):
        model(torch.randn(*xshape)).pow(2).mean().backward(); opt.step()
        snap = snapshot(model, opt); held = [int(t.mask.sum()) for t in masked_params(model)]
        engine.update(frac, n_update=i)
        check_invariants(model, opt, counts=None if ablate else counts, before=snap)   # the pattern too: it knows every structure
        if ablate:   # an update loses less than one weight per output that stays, and never gains
            for t, h in zip(masked_params(model), held):
                assert h - int(t.mask.flatten(1).any(1).sum()) < int(t.mask.sum()) <= h
        opt.zero_grad()
    fresh = nn.Sequential(*[next(c for c in (nn.Linear, nn.Conv1d, nn.Conv2d) if isinstance(m, c))(*_args(m)) for m in model])
    sparsify_model(fresh, s, seed=seed + 1, structure=structure)
    fresh.load_state_dict(model.state_dict())
    for a, b in zip(masked_params(model), masked_params(fresh)): assert torch.equal(a.mask, b.mask) and torch.equal(a.param, b.param)
