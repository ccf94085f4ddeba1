"The `fastsparse` command, as a user runs it."
import json, subprocess, sys
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
    assert r.returncode == 2 and '--sparsity must be in [0, 1)' in r.stderr and 'Traceback' not in r.stderr
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

def _errors(*argvs):
    "Exit status, stdout and stderr of `fastsparse` for each argument list, run in one fresh process through its entry point"
    code = ("import io, json, sys, contextlib\nfrom fastsparse.cli import main\nres = []\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "    out, err = io.StringIO(), io.StringIO()\n"
            "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
            "        try: main(argv); c = 0\n"
            "        except SystemExit as e: c = e.code\n"
            "    res.append((c, out.getvalue(), err.getvalue()))\n"
            "print(json.dumps(res))")
    r = subprocess.run([sys.executable, '-c', code, json.dumps([list(a) for a in argvs])], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])

def test_flags_checked_before_training(tmp_path):
    afile = tmp_path/'afile'; afile.write_text('x')
    cases = {('--epochs', '0'): ['--epochs', '>= 1'], ('--epochs', '-1'): ['--epochs', '>= 1'],
             ('--bs', '0'): ['--bs', '>= 1'], ('--bs', '5000'): ['--bs', 'between 1 and 1438'],
             ('--lr', '-1'): ['--lr', '> 0'], ('--lr', '0'): ['--lr', '> 0'], ('--seed', '-1'): ['--seed', 'in [0, '],
             ('--batches-per-update', '0'): ['--batches-per-update', '>= 1'],
             ('--save', str(afile/'m.pth')): ['--save', 'cannot be written'], ('--save', str(tmp_path)): ['--save', 'is a folder'],
             ('--preset', 'dense', '--sparsity', '0.5'): ['--preset dense', 'leave out --sparsity'],
             ('--preset', 'static', '--batches-per-update', '5'): ['--batches-per-update'],
             ('--start-sparsity', '0.5'): ['--start-sparsity', 'GMP and GraNet'],
             ('--preset', 'GMP', '--sparsity', '1'): ['--sparsity must be in [0, 1)'],
             ('--preset', 'GraNet', '--start-sparsity', '1.5'): ['--start-sparsity must be in [0, 1)'],
             ('--preset', 'GMP', '--start-sparsity', '0.95', '--sparsity', '0.9'): ['--start-sparsity 0.95 is above --sparsity 0.9'],
             ('--preset', 'GraNet', '--sparsity', '0.999'): ['--preset GraNet cannot prune', 'to --sparsity 0.999', 'give a lower --sparsity'],
             ('--sparsity', '-0.1'): ['--sparsity must be in [0, 1)'], ('--preset', 'static', '--sparsity', '1'): ['--sparsity must be in [0, 1)'],
             ('--seed', str(2**63)): ['--seed', 'in [0, 9223372036854775807]'],
             ('--distribution', 'uniform', '--sparsity', '0.9999'): ['--sparsity 0.9999 with --distribution uniform', 'no weight at all'],
             ('--preset', 'GMP', '--distribution', 'uniform', '--sparsity', '0.9999'):
                 ['--preset GMP cannot prune', '--distribution uniform would prune a layer to no weight at all', 'give a lower --sparsity']}
    for argv, (code, out, err) in zip(cases, _errors(*[('train', '--no-bar', '--epochs', '1', *a) for a in cases])):
        assert code == 2 and 'Traceback' not in err and err.startswith('fastsparse: error: '), (argv, code, err)
        assert 'accuracy' not in out, (argv, out)                   # nothing trained
        for part in cases[argv]: assert part in err, (argv, part, err)
    assert list(tmp_path.iterdir()) == [afile]                       # no file and no folder made

def test_saved_model_loads_in_a_fresh_process_as_printed(tmp_path):
    path = tmp_path/'sub'/'m.pth'
    r = fastsparse('train', '--epochs', '1', '--no-bar', '--save', str(path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split('To load it in a fresh Python process:\n')[1].splitlines()
    snippet = '\n'.join(l[4:] for l in lines if l.startswith('    '))
    check = snippet + "\nprint(sum(int(v.sum()) for k, v in model.state_dict().items() if k.endswith('_mask')))"
    loaded = subprocess.run([sys.executable, '-c', check], capture_output=True, text=True, cwd=tmp_path)
    assert loaded.returncode == 0, (snippet, loaded.stderr)
    sd = torch.load(path, weights_only=False)['model']
    assert int(loaded.stdout.split()[-1]) == sum(int(v.sum()) for k, v in sd.items() if k.endswith('_mask'))
