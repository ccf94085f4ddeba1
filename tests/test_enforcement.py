"""Masks are enforced wherever a weight is read, for every supported layer type (hypothesis).

After each optimizer step of plain (static) training, the next forward must compute exactly what the model computes with
its weights multiplied by their masks. The reference is `torch.func.functional_call` on explicitly masked copies of the
parameters, so any reader that sees a dirty weight (`MultiheadAttention` reading `out_proj.weight`, a transformer layer's
inference fast path, a recurrent layer's flat weights) makes the two outputs differ."""
import pytest
import torch
from torch import nn
from torch.func import functional_call
from hypothesis import given, settings, strategies as st, HealthCheck, assume

from fastsparse.masks import sparsify_model, masked_params, apply_masks

pytestmark = pytest.mark.filterwarnings('ignore:LSTM with projections is not supported')
SETTINGS = dict(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ints = lambda lo, hi: st.integers(lo, hi)

def _seq(draw, d):
    "Batch, sequence length and a batch-first input of width `d`"
    n, l = draw(ints(1, 3)), draw(ints(1, 4))
    return n, l, torch.randn(n, l, d)

def _conv(cls, nd, transposed=False):
    def build(draw):
        ci, co, k = draw(ints(1, 4)), draw(ints(1, 4)), draw(ints(1, 3))
        size = [draw(ints(k, k + 2)) for _ in range(nd)]
        return cls(ci, co, k, stride=draw(ints(1, 2))), (torch.randn(draw(ints(1, 2)), ci, *size),), {}
    return build

def _linear(draw):
    i = draw(ints(1, 8))
    return nn.Linear(i, draw(ints(1, 8)), bias=draw(st.booleans())), (torch.randn(draw(ints(1, 3)), i),), {}

def _mha(draw):
    h = draw(st.sampled_from([1, 2])); e = h * draw(ints(1, 4))
    _, _, x = _seq(draw, e)
    return nn.MultiheadAttention(e, h, batch_first=True), (x, x, x), {}   # one tensor for q, k, v: the fast path in eval

def _mha_kv(draw):
    h = draw(st.sampled_from([1, 2])); e, kd, vd = h * draw(ints(1, 4)), draw(ints(1, 5)), draw(ints(1, 5))
    n, l, q = _seq(draw, e); s = draw(ints(1, 4))
    mha = nn.MultiheadAttention(e, h, kdim=kd, vdim=vd, batch_first=True)
    return mha, (q, torch.randn(n, s, kd), torch.randn(n, s, vd)), {}

def _encoder(draw):
    h = draw(st.sampled_from([1, 2])); d = h * draw(ints(1, 4))
    layer = nn.TransformerEncoderLayer(d, h, draw(ints(2, 12)), dropout=0., batch_first=True, norm_first=draw(st.booleans()))
    return layer, (_seq(draw, d)[2],), {}

def _decoder(draw):
    h = draw(st.sampled_from([1, 2])); d = h * draw(ints(1, 4))
    n, l, tgt = _seq(draw, d)
    layer = nn.TransformerDecoderLayer(d, h, draw(ints(2, 12)), dropout=0., batch_first=True, norm_first=draw(st.booleans()))
    return layer, (tgt, torch.randn(n, draw(ints(1, 4)), d)), {}

def _rnn(cls):
    def build(draw):
        i, hid = draw(ints(1, 5)), draw(ints(2, 6))
        kw = dict(num_layers=draw(ints(1, 2)), bidirectional=draw(st.booleans()), bias=draw(st.booleans()))
        if cls is nn.LSTM: kw['proj_size'] = draw(ints(0, hid - 1))
        return cls(i, hid, **kw), (torch.randn(draw(ints(1, 4)), draw(ints(1, 3)), i),), {}
    return build

def _cell(cls):
    def build(draw):
        i = draw(ints(1, 5))
        return cls(i, draw(ints(2, 6)), bias=draw(st.booleans())), (torch.randn(draw(ints(1, 3)), i),), {}
    return build

def _embedding(draw):
    n = draw(ints(2, 10))
    return nn.Embedding(n, draw(ints(1, 6))), (torch.randint(0, n, (draw(ints(1, 3)), draw(ints(1, 4)))),), dict(embeddings=True)

class TiedLM(nn.Module):
    "An embedding tied to the output layer: the embedding reads the output layer's masked weight"
    def __init__(self, n, d): super().__init__(); self.emb, self.out = nn.Embedding(n, d), nn.Linear(d, n); self.out.weight = self.emb.weight
    def forward(self, x): return self.out(self.emb(x))

def _tied(draw):
    n = draw(ints(2, 10))
    return TiedLM(n, draw(ints(1, 6))), (torch.randint(0, n, (draw(ints(1, 3)), draw(ints(1, 4)))),), {}

LAYERS = {
    'Linear': _linear, 'Conv1d': _conv(nn.Conv1d, 1), 'Conv2d': _conv(nn.Conv2d, 2), 'Conv3d': _conv(nn.Conv3d, 3),
    'ConvTranspose1d': _conv(nn.ConvTranspose1d, 1), 'ConvTranspose2d': _conv(nn.ConvTranspose2d, 2),
    'MultiheadAttention': _mha, 'MultiheadAttention-kdim-vdim': _mha_kv,
    'TransformerEncoderLayer': _encoder, 'TransformerDecoderLayer': _decoder,
    'RNN': _rnn(nn.RNN), 'LSTM': _rnn(nn.LSTM), 'GRU': _rnn(nn.GRU),
    'RNNCell': _cell(nn.RNNCell), 'LSTMCell': _cell(nn.LSTMCell), 'GRUCell': _cell(nn.GRUCell),
    'Embedding': _embedding, 'tied Embedding and Linear': _tied,
}
OPTS = {'sgd-momentum': lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        'adam': lambda ps: torch.optim.Adam(ps, lr=0.05),
        'adamw': lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1)}

def _flat(out):
    "Every tensor in a layer's output (outputs, attention weights, hidden states), as one vector"
    if isinstance(out, torch.Tensor): return out.reshape(-1)
    return torch.cat([_flat(o) for o in out if o is not None])

def _sparse_layer(data, kind):
    model, args, kw = LAYERS[kind](data.draw)
    try: sparsify_model(model, data.draw(st.floats(0., 0.95)), seed=data.draw(ints(0, 2**16)), **kw)
    except ValueError as e:                      # a tiny weight would keep nothing at this sparsity
        assume('would keep no weight' not in str(e)); raise
    return model, args

def _check_next_forward(model, args, mode):
    "The next forward computes with masked weights (the reference proves it), and leaves every masked weight at 0"
    masks = {id(t.param): t.mask for t in masked_params(model)}    # by identity: a tied weight has several names
    ref = {n: (p.detach() * masks[id(p)] if id(p) in masks else p.detach().clone()).requires_grad_(p.requires_grad)
           for n, p in model.named_parameters()}                      # requires_grad as the weights': torch picks kernels by it
    model.train(mode == 'train')
    with torch.set_grad_enabled(mode == 'train'):
        out = _flat(model(*args))
        want = _flat(functional_call(model, ref, args))
    assert torch.equal(out, want), 'the forward read a weight before its mask was applied'
    for t in masked_params(model): assert (t.param[~t.mask] == 0).all(), f'{t.name} is not 0 at masked positions after the forward'

def _step(model, args, opt):
    model.train(); opt.zero_grad()
    _flat(model(*args)).float().pow(2).mean().backward()
    opt.step()

@pytest.mark.parametrize('kind', list(LAYERS))
@settings(**SETTINGS)
@given(data=st.data())
def test_static_training_computes_with_masked_weights(kind, data):
    "Plain torch training, no callback: the forward after each optimizer step sees only masked weights, in train and eval"
    model, args = _sparse_layer(data, kind)
    opt = OPTS[data.draw(st.sampled_from(list(OPTS)))](model.parameters())
    for _ in range(data.draw(ints(1, 3))):
        _step(model, args, opt)
        _check_next_forward(model, args, data.draw(st.sampled_from(['train', 'eval'])))   # eval: under no_grad, the fast paths

@pytest.mark.parametrize('kind', list(LAYERS))
@settings(**SETTINGS)
@given(data=st.data())
def test_promises_skip_only_clean_weights(kind, data):
    "`apply_masks(..., fresh=True)` after a step, as the training driver does: the forward may skip masking, never wrongly"
    model, args = _sparse_layer(data, kind)
    opt = OPTS[data.draw(st.sampled_from(list(OPTS)))](model.parameters())
    for _ in range(data.draw(ints(1, 3))):
        _step(model, args, opt)
        apply_masks(model, fresh=True)
        for t in masked_params(model): assert (t.param[~t.mask] == 0).all()
        if data.draw(st.booleans()): opt.step()  # a torch write after the promise (it bumps the weights' versions)
        _check_next_forward(model, args, data.draw(st.sampled_from(['train', 'eval'])))

def test_rigl_on_an_embedding_with_sparse_gradients():
    "`nn.Embedding(sparse=True)` gives a sparse gradient: RigL scores its dense form, and updates keep masked weights at 0"
    from fastsparse import DynamicSparseTraining, RigL_presets, check_invariants
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(50, 8, sparse=True), nn.Flatten(), nn.Linear(24, 2))
    sparsify_model(m, 0.8, embeddings=True, seed=0)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    dst = DynamicSparseTraining(m, opt, batches_per_update=2, seed=0, **RigL_presets)
    counts = [int(t.mask.sum()) for t in masked_params(m)]
    for i in range(6):
        x, y = torch.randint(0, 50, (4, 3)), torch.randint(0, 2, (4,))
        opt.zero_grad(); nn.functional.cross_entropy(m(x), y).backward(); opt.step()
        dst.step((i + 1) / 6)
    assert dst.n_updates >= 2 and [int(t.mask.sum()) for t in masked_params(m)] == counts
    check_invariants(m, opt)
