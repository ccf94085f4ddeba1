"The benchmark scripts run end to end (short settings); their figures come from full runs, not from tests."
import csv, subprocess, sys
import pytest
from pathlib import Path

pytestmark = pytest.mark.slow     # long: `pytest -m slow` (run by .ci/run)

ROOT = Path(__file__).resolve().parents[1]

def bench(script, *args):
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/script), *args], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout

def test_accuracy_smoke(tmp_path):
    out = bench('accuracy.py', '--smoke', '--out', str(tmp_path/'smoke.csv'))
    rows = list(csv.DictReader(open(tmp_path/'smoke.csv')))
    assert {r['method'] for r in rows} == {'dense', 'static', 'SET', 'SNFS', 'RigL', 'RigL-global', 'DSR', 'GMP', 'GraNet'}
    for r in rows:
        if r['method'] != 'dense': assert abs(float(r['realised_sparsity']) - 0.9) < 1e-3
    assert 'mean accuracy and 95% interval' in out
    bench('accuracy.py', '--smoke', '--opt', 'sgd', '--methods', 'GraNet', '--out', str(tmp_path/'sgd.csv'))
    rows = list(csv.DictReader(open(tmp_path/'sgd.csv')))
    assert {(r['opt'], r['method']) for r in rows} == {('sgd', 'dense'), ('sgd', 'GraNet')}

def test_accuracy_ablation_smoke(tmp_path):
    "Every variant of the RigL ablation trains at 90% ERK and lands in the CSV the results page reads"
    bench('accuracy.py', '--data', 'mnist1d', '--ablation', '--smoke', '--out', str(tmp_path/'abl.csv'))
    rows = list(csv.DictReader(open(tmp_path/'abl.csv')))
    sys.path.insert(0, str(ROOT/'benchmarks'))
    from accuracy import ABLATION
    assert [r['variant'] for r in rows] == ['-', *ABLATION]
    for r in rows[1:]:
        assert r['method'] == ('SNFS' if r['variant'] == 'SNFS' else 'RigL') and abs(float(r['realised_sparsity']) - 0.9) < 1e-3

def test_peers_smoke():
    "fastsparse's side of the side-by-side runs (the peers live in a scratch environment, made by `peers.py --setup`)"
    out = bench('peers.py', '--smoke', '--impls', 'fastsparse', 'fastsparse:grown_state=momentum')
    assert all(f'{r} fastsparse' in out for r in ('rigl90', 'snfs90', 'static90')) and 'snfs90 fastsparse:grown_state=momentum' in out

def test_speed_smoke():
    out = bench('speed.py', '--repeats', '3', '--steps', '1')
    assert 'masked / dense' in out and 'RigL update' in out and "weights' size in tensors" in out

def test_export_smoke():
    out = bench('export.py', '--size', '512', '--bs', '16', '--repeats', '3', '--sparsities', '0.9', '0.99',
                '--conv-bs', '1', '--conv-sparsities', '0.99', '--resnet-bs', '1', '--struct-sparsities', '0.9',
                '--sliced-sparsities', '0.5', '--struct-bs', '1', '16')
    assert 'nn.Linear(512, 512)' in out and 'layer4 3x3' in out and 'resnet18' in out
    assert 'as CondensedLinear' in out and 'as SlicedLinear' in out

def test_compute_smoke():
    out = bench('compute.py', '--size', '256', '--bs', '16', '--repeats', '2', '--n', '1', '--sparsities', '0.9')
    assert 'fastsparse sparse' in out and 'torch CSR' in out and 'masked' in out
    out = bench('compute.py', 'shapes', '--shapes', '64x70', '32x3', '--repeats', '1', '--n', '1')   # rows over one panel, and a few
    assert 'nn.Linear(64, 64)' in out and 'nn.Linear(32, 32)' in out and 'products' in out and 'GFLOP/s' in out
    out = bench('compute.py', 'fusion', '--shapes', '64x70', '32x3', '--repeats', '1')
    assert 'fused / unfused' in out and 'nn.Linear(64, 64)' in out

def test_compute_model_smoke():
    "The MLP sections of the compute benchmark: one epoch, one update, memory (short settings)"
    small = ('--hidden', '256')        # the script's sections run; the figures come from full runs
    out = bench('compute.py', 'memory', *small)
    assert 'sparse:' in out and 'layouts' in out
    out = bench('compute.py', 'update', '--repeats', '1', '--n', '1', *small)
    assert 'RigL sparse: update' in out and 'SNFS sparse: update' in out
    out = bench('compute.py', 'mlp', '--repeats', '1', '--epochs', '1', '--seeds', '1', *small)
    assert 'sparse' in out and 'accuracy after 1 epochs' in out
    out = bench('compute.py', 'embedding', '--repeats', '1')
    assert 'sparse' in out and 'training state' in out
    out = bench('compute.py', 'conv1d', '--repeats', '1')
    assert 'MNIST-1D CNN' in out and 'masked weights compute sparse' in out
    out = bench('compute.py', 'mobilenet', '--repeats', '1')
    assert 'MobileNetV2' in out and '53 of 53 masked weights compute sparse' in out
    out = bench('compute.py', 'batch', '--repeats', '1')
    assert 'Linear(4096, 4096)' in out and 'Conv2d(64, 64, 3)' in out and 'batch 1:' in out

def test_compute_conv_smoke():
    "The resnet18 section of the compute benchmark, on 32 x 32 images at batch 16 (the figures come from full runs)"
    out = bench('compute.py', 'conv', '--image', '32', '--bs', '16', '--conv-repeats', '1')
    assert 'layer4.1.conv2' in out and 'all convolutions' in out and 'kept memory' in out and 'page faults per step' in out

def test_imports_smoke():
    "The import-time benchmark: one fresh process of each import (the figures come from full runs)"
    out = bench('imports.py', '--runs', '1')
    assert 'import fastsparse' in out and 'ratio' in out and 'heavy modules loaded by import fastsparse: none' in out
