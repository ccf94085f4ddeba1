"Bad arguments get a clear error that says what to do, raised before anything changes (model, masks, optimizer, files)."
import io, pickle, warnings
import pytest, torch
from torch import nn
from fastsparse.masks import sparsify_model, sparsifiable_params, load_sparse, is_sparse, masked_params
from fastsparse.engine import (DynamicSparseTraining, DynamicSparseTrainingOptimizerWrapper, RigL_presets, SNFS_presets,
                               SET_presets, GMP_presets)
from fastsparse.callback import DynamicSparseTrainingCallback
from fastsparse.export import sparse_export

def _mlp(): torch.manual_seed(0); return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

def _state(m):
    "What a bad call must leave as it was: every entry of the state_dict (names and values) and the hooks"
    return ({k: v.clone() for k, v in m.state_dict().items()},
            [(len(x._forward_pre_hooks), len(x._load_state_dict_pre_hooks)) for x in m.modules()])

def _same(m, before):
    sd, hooks = _state(m)
    assert list(sd) == list(before[0]), (list(sd), list(before[0]))
    for k, v in sd.items(): assert torch.equal(v, before[0][k]), k
    assert hooks == before[1]

class _Net(nn.Module):
    "A model class of the user's own, for a file that pickles the whole model"
    def __init__(self): super().__init__(); self.fc = nn.Linear(8, 4)
    def forward(self, x): return self.fc(x)

# `seed`: a whole number or None, refused where it is given (not at fit)

@pytest.mark.parametrize('seed', ['abc', 1.5, True, [0]])
def test_sparsify_model_seed(seed):
    m = _mlp(); before = _state(m)
    with pytest.raises((TypeError, ValueError), match=r'seed must be a whole number'): sparsify_model(m, 0.5, seed=seed)
    _same(m, before); assert not is_sparse(m)

@pytest.mark.parametrize('seed', ['x', 1.5, True, 2**63])
def test_callback_seed_refused_when_made(seed):
    with pytest.raises((TypeError, ValueError), match=r'seed must be a whole number'): DynamicSparseTrainingCallback(**RigL_presets, seed=seed)

@pytest.mark.parametrize('seed', ['x', 1.5, True, 2**63])
def test_driver_seed(seed):
    m = _mlp(); sparsify_model(m, 0.5); opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9); before = _state(m)
    with pytest.raises((TypeError, ValueError), match=r'seed must be a whole number'): DynamicSparseTraining(m, opt, **RigL_presets, seed=seed)
    _same(m, before)

# `opt`: the optimizer object, not its parameters

@pytest.mark.parametrize('preset', [RigL_presets, SNFS_presets, SET_presets], ids=['RigL', 'SNFS', 'SET'])
@pytest.mark.parametrize('form', [list, tuple, iter, lambda ps: {'params': list(ps)}], ids=['list', 'tuple', 'generator', 'group'])
def test_driver_opt_must_be_an_optimizer(preset, form):
    m = _mlp(); sparsify_model(m, 0.5); before = _state(m)
    with pytest.raises(TypeError, match=r'opt takes the optimizer object'): DynamicSparseTraining(m, form(m.parameters()), **preset)
    with pytest.raises(TypeError, match=r'opt takes the optimizer object'): DynamicSparseTrainingOptimizerWrapper(m, form(m.parameters()), **preset)
    _same(m, before)

@pytest.mark.parametrize('kw', ['opt', 'model', 'resume'])
def test_callback_refuses_what_the_learner_gives(kw):
    m = _mlp()
    value = {'opt': list(m.parameters()), 'model': m, 'resume': True}[kw]
    with pytest.raises(TypeError, match=rf"takes no `{kw}`"): DynamicSparseTrainingCallback(**RigL_presets, **{kw: value})

# `load_sparse`: a state dict (or a file of one), not a whole model; and no mask that keeps nothing

@pytest.mark.parametrize('cls', [_mlp, _Net], ids=['Sequential', 'own class'])
def test_load_sparse_of_a_pickled_model_file(tmp_path, cls):
    src = cls(); sparsify_model(src, 0.5)
    f = tmp_path/'m.pth'; torch.save(src, f); saved = f.read_bytes()
    m = cls(); before = _state(m)
    with pytest.raises(pickle.UnpicklingError, match=r'whole pickled model') as e: load_sparse(m, f)
    assert 'state_dict()' in str(e.value)
    _same(m, before); assert not is_sparse(m); assert f.read_bytes() == saved
    b = io.BytesIO(saved)                                     # a file object as well as a path
    with pytest.raises(pickle.UnpicklingError, match=r'whole pickled model'): load_sparse(m, b)

def test_load_sparse_of_a_model_object():
    src = _mlp(); sparsify_model(src, 0.5)
    m = _mlp(); before = _state(m)
    with pytest.raises(TypeError, match=r'not a model.*state_dict\(\)'): load_sparse(m, src)
    _same(m, before); assert not is_sparse(m)
    load_sparse(m, src.state_dict())                          # what the error says to do
    assert is_sparse(m)

@pytest.mark.parametrize('into', ['dense', 'sparse', 'load_state_dict'])
def test_checkpoint_mask_keeping_no_weight(into):
    src = _mlp(); sparsify_model(src, 0.5)
    sd = src.state_dict(); sd['2.weight_mask'] = torch.zeros_like(sd['2.weight_mask']); sd['2.weight'] = torch.zeros_like(sd['2.weight'])
    m = _mlp()
    if into != 'dense': sparsify_model(m, 0.5)
    before = _state(m)
    with pytest.raises(ValueError, match=r"'2.weight_mask' keep no weight") as e:
        if into == 'load_state_dict': m.load_state_dict(sd)
        else: load_sparse(m, sd)
    assert 'at least one weight' in str(e.value)
    _same(m, before)

def test_gradual_pruning_to_no_weight_in_a_layer():
    m = _mlp(); sparsify_model(m, 0.); opt = torch.optim.SGD(m.parameters(), lr=0.1); before = _state(m)
    with pytest.raises(ValueError, match=r"prunes \['2.weight'\] to no weight at all"): DynamicSparseTraining(m, opt, **GMP_presets, final_sparsity=0.995)
    _same(m, before)
    DynamicSparseTraining(m, opt, **GMP_presets, final_sparsity=0.98)     # keeps 1 of 64 in the last layer

# `types`: an entry for a type `SPARSIFIABLE` has replaces it

def test_types_for_a_known_type_is_honoured():
    m = _mlp()
    names = lambda **kw: [t.name for t in sparsifiable_params(m, **kw)]
    assert names() == ['0.weight', '2.weight']
    assert names(types={nn.Linear: ['weight', 'bias']}) == ['0.weight', '0.bias', '2.weight', '2.bias']
    assert names(types={nn.Linear: 'bias'}) == ['0.bias', '2.bias']                 # one name as a str
    mix = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(12, 4))
    assert [t.name for t in sparsifiable_params(mix, types={nn.Linear: []})] == ['0.weight']
    sparsify_model(m, 0.5, types={nn.Linear: ['weight', 'bias']})
    assert [t.name for t in masked_params(m)] == ['0.weight', '0.bias', '2.weight', '2.bias']

@pytest.mark.parametrize('types', [[nn.Linear], {'Linear': ['weight']}, {nn.Linear: 3}, {int: ['weight']}])
def test_bad_types(types):
    m = _mlp(); before = _state(m)
    with pytest.raises(TypeError, match=r'types takes a dict'): sparsify_model(m, 0.5, types=types)
    _same(m, before)

# `sparse_export`: a batch of the wrong width names the layer and both widths

@pytest.mark.parametrize('measure', [False, True])
def test_export_input_of_the_wrong_width(measure):
    m = _mlp(); sparsify_model(m, 0.95); before = _state(m)
    with pytest.raises(ValueError, match=r"layer '0' \(Linear\) takes inputs of width 8 but gets width 9 from x of shape \(2, 9\)"):
        sparse_export(m, torch.randn(2, 9), measure=measure)
    _same(m, before)
    sparse_export(m, torch.randn(2, 8))

def test_export_wrong_width_in_a_dense_layer_and_a_conv():
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(12, 4)); sparsify_model(m, 0.9, exclude=['0.weight'])
    with pytest.raises(ValueError, match=r"layer '2' \(Linear\) takes inputs of width 12 but gets width 16"): sparse_export(m, torch.randn(2, 8))
    c = nn.Sequential(nn.Conv2d(3, 4, 3)); sparsify_model(c, 0.9)
    with pytest.raises(ValueError, match=r"layer '0' \(Conv2d\) takes inputs of 3 channels but gets 5 channels"): sparse_export(c, torch.randn(1, 5, 8, 8))

@pytest.mark.parametrize('v', [-1, float('nan'), 'x', True])
def test_export_min_speedup(v):
    m = _mlp(); sparsify_model(m, 0.95)
    with pytest.raises(ValueError, match=r'min_speedup'): sparse_export(m, torch.randn(2, 8), v, measure=True)

# a sweep of `sparsify_model`'s other arguments

@pytest.mark.parametrize('kw, match', [
    (dict(include=3), r'include takes weight names'), (dict(exclude=[0]), r'exclude takes weight names'),
    (dict(overrides=['0.weight']), r'overrides takes a dict'),
    (dict(exclude=['0.weight', '2.weight']), r'leave no weight to sparsify')])
def test_sparsify_model_selection(kw, match):
    m = _mlp(); before = _state(m)
    with pytest.raises((TypeError, ValueError), match=match): sparsify_model(m, 0.5, **kw)
    _same(m, before); assert not is_sparse(m)
