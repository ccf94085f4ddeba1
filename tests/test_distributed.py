"Two processes with the gloo backend: masks and weights bit-identical on every rank, budgets exact."
import subprocess, sys, os
from pathlib import Path
import pytest
import torch

pytestmark = pytest.mark.slow     # long: `pytest -m slow` (run by .ci/run)

ROOT = Path(__file__).resolve().parents[1]

def launch(script, *args, n=2):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(n), str(script), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, f'{r.stdout[-3000:]}\n' + '\n'.join(l for l in r.stderr.splitlines() if 'arning' not in l)[-20000:]
    return r

def check_identical(out, n=2):
    states = [torch.load(out/f'rank{r}.pt', weights_only=False) for r in range(n)]
    a = states[0]
    assert a['updates'] >= 3
    for b in states[1:]:
        assert a['budget'] == b['budget'] and a['updates'] == b['updates']
        assert a['state'].keys() == b['state'].keys()
        for k in a['state']: assert torch.equal(a['state'][k], b['state'][k]), k       # bit-identical
    sd = a['state']
    masks = [k for k in sd if k.endswith('_mask')]
    assert masks
    for k in masks:
        w = sd[k[:-len('_mask')]]
        assert (w[~sd[k]] == 0).all()
    return a

@pytest.mark.parametrize('preset', ['SET', 'RigL'])
def test_plain_pytorch_ddp(tmp_path, preset):
    r = launch(ROOT/'examples'/'train_ddp.py', '--preset', preset, '--epochs', '3', '--out', str(tmp_path))
    a = check_identical(tmp_path)
    assert f'{preset} on 2 process(es): accuracy' in r.stdout
    # budgets: exactly what sparsify_model promised (no redistribution in SET and RigL)
    single = torch.load(tmp_path/'model.pth', weights_only=True)
    assert [int(single[k].sum()) for k in single if k.endswith('_mask')] == a['budget']

@pytest.mark.parametrize('preset,compute', [('SET', 'masked'), ('RigL', 'masked'), ('SET', 'sparse'), ('RigL', 'sparse'),
                                            ('DSR', 'masked'), ('GMP', 'masked'), ('GraNet', 'masked'), ('RigL-global', 'masked'),
                                            ('SNFS', 'masked'), ('SNFS-momentum', 'masked')])
def test_fastai_callback_ddp(tmp_path, preset, compute):
    launch(ROOT/'tests'/'dist_fastai.py', preset, str(tmp_path), compute)
    a = check_identical(tmp_path)            # sparse compute: the same checkpoint keys, masks and weights on every rank
    assert (tmp_path/'learn.pth').exists()
    assert a['compute'] == [compute == 'sparse'] * len(a['budget'])
    numels = [v.numel() for k, v in a['state'].items() if k.endswith('_mask')]
    if preset == 'GraNet':   # pruned to 95% exactly (one global ranking), the same on every rank
        assert sum(a['budget']) == round(0.05 * sum(numels))
    if preset == 'GMP':      # pruned from 90% ERK to 95% in every layer (the preset's uniform final distribution)
        assert a['budget'] == [round(0.05 * n) for n in numels]

def test_attention_and_recurrent_ddp(tmp_path):
    "A Transformer encoder layer and an LSTM, all their weights in sparse compute, under DDP with RigL: identical masks and weights on every rank"
    launch(ROOT/'tests'/'dist_fastai.py', 'RigL', str(tmp_path), 'sparse', 'element', 'seq')
    a = check_identical(tmp_path)
    assert a['compute'] == [True] * 8, a['compute']   # emb, in_proj, out_proj, linear1, linear2, weight_ih, weight_hh, head

def test_conv1d_ddp(tmp_path):
    "A 1-d CNN, its convolutions in sparse compute, under DDP with RigL: identical masks and weights on every rank"
    launch(ROOT/'tests'/'dist_fastai.py', 'RigL', str(tmp_path), 'sparse', 'element', 'conv1d')
    a = check_identical(tmp_path)
    assert a['compute'] == [True, True, True], a['compute']

@pytest.mark.parametrize('preset,compute,structure', [('RigL', 'masked', 'fan_in'), ('RigL', 'sparse', '2:4'), ('SET', 'masked', 'row')])
def test_structured_ddp(tmp_path, preset, compute, structure):
    "Structured masks under DDP: identical on every rank, and every mask keeps its pattern"
    from fastsparse import get_structure
    launch(ROOT/'tests'/'dist_fastai.py', preset, str(tmp_path), compute, structure)
    a = check_identical(tmp_path)
    for k, m in a['state'].items():
        if k.endswith('_mask'): assert get_structure(structure).violation(m) is None, k

def test_single_process_script():
    r = subprocess.run([sys.executable, str(ROOT/'examples'/'train_ddp.py'), '--epochs', '2'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and 'RigL on 1 process(es)' in r.stdout, r.stderr[-3000:]
