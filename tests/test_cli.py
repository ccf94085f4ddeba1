"The `fastsparse` command, as a user runs it."
import subprocess, sys
from pathlib import Path
import torch

def fastsparse(*args, **kw):
    "Run the installed `fastsparse` command of this Python (or its entry point, where it has none)"
    exe = Path(sys.executable).parent/'fastsparse'
    cmd = [str(exe)] if exe.exists() else [sys.executable, '-c', 'from fastsparse.cli import main; main()']
    return subprocess.run([*cmd, *args], capture_output=True, text=True, **kw)

def test_train_prints_accuracy_and_sparsity(tmp_path):
    r = fastsparse('train', '--epochs', '3', '--no-bar', '--save', str(tmp_path/'m.pth'))
    assert r.returncode == 0, r.stderr
    assert 'RigL on digits: accuracy' in r.stdout and 'sparsity 0.9000 (target 0.9)' in r.stdout, r.stdout
    for layer in ('0.weight', '2.weight', '4.weight'): assert layer in r.stdout
    assert r.stderr.strip() == '', r.stderr     # no warnings
    sd = torch.load(tmp_path/'m.pth', weights_only=False)['model']
    for k in ('0.weight', '2.weight', '4.weight'):
        assert (sd[k][~sd[k + '_mask']] == 0).all()
        assert int(sd[k + '_mask'].sum()) > 0

def test_progress_bar_shown_by_default():
    r = fastsparse('train', '--epochs', '1', '--preset', 'SET')
    assert r.returncode == 0 and 'train_loss' in r.stdout and 'SET on digits' in r.stdout

def test_bad_input_is_a_clear_error():
    r = fastsparse('train', '--sparsity', '1.2', '--epochs', '1')
    assert r.returncode == 2 and 'model_sparsity must be in [0, 1)' in r.stderr and 'Traceback' not in r.stderr
    r = fastsparse('train', '--preset', 'nope')
    assert r.returncode == 2 and 'invalid choice' in r.stderr
    r = fastsparse('train', '--distribution', 'nope')
    assert r.returncode == 2 and "invalid choice: 'nope'" in r.stderr and "'erk'" in r.stderr

def test_names_in_any_case_and_dashed_options():
    # `--distribution ERK` reaches `sparsify_model` as the name 'erk' (a string `sparse_f`)
    r = fastsparse('train', '--distribution', 'ERK', '--preset', 'rigl', '--batches-per-update', '5', '--epochs', '1', '--no-bar')
    assert r.returncode == 0, r.stderr
    assert 'RigL on digits: accuracy' in r.stdout and 'sparsity 0.9000 (target 0.9)' in r.stdout, r.stdout

def test_help():
    r = fastsparse('train', '--help')
    assert r.returncode == 0 and '--preset' in r.stdout and '--sparsity' in r.stdout
    for opt in ('--distribution', '--data', '--epochs', '--lr', '--bs', '--batches-per-update', '--seed', '--save', '--no-bar'):
        assert opt in r.stdout, opt
    # the defaults of `train`'s signature, stated nowhere else (argparse wraps lines at the terminal's width)
    text = ' '.join(r.stdout.split())
    for default in ('(default: RigL)', '(default: 0.9)', '(default: erk)', '(default: digits)', '(default: 20)', '(default: 0.01)'):
        assert default in text, default
    assert '--out' not in r.stdout          # a Python-only parameter
