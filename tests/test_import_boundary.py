"The core (masks, distributions, criteria, schedules, engine, stats) imports no fastai, and `import fastsparse` no pandas or matplotlib."
import subprocess, sys
import pytest

CORE = ['fastsparse', 'fastsparse.distributions', 'fastsparse.masks', 'fastsparse.criteria', 'fastsparse.export',
        'fastsparse.schedules', 'fastsparse.engine', 'fastsparse.stats', 'fastsparse.compute']

@pytest.mark.parametrize('mod', CORE)
def test_core_imports_no_fastai(mod):
    code = f"import sys, {mod}; bad = sorted(m for m in sys.modules if m == 'fastai' or m.startswith('fastai.')); print(bad); sys.exit(1 if bad else 0)"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, f'{mod} imports fastai: {r.stdout}{r.stderr[-2000:]}'

def test_import_leaves_tables_and_plots_out():
    "pandas and matplotlib are imported when a table is made or a plot drawn, not by `import fastsparse`"
    code = """
import sys, fastsparse
from torch import nn
heavy = lambda: [m for m in ('pandas', 'matplotlib') if m in sys.modules]
assert heavy() == [], heavy()
m = nn.Sequential(nn.Linear(8, 8)); fastsparse.sparsify_model(m, 0.5, seed=0)
assert heavy() == [], heavy()
assert fastsparse.sparsity_report(m).layers.active[0] == 32 and heavy() == ['pandas'], heavy()
"""
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]

def test_plain_pytorch_training_without_fastai():
    code = """
import sys, torch
from torch import nn
from fastsparse import sparsify_model, DynamicSparseTraining, SET_presets, masked_params
m = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3)); sparsify_model(m, 0.8, seed=0)
opt = torch.optim.SGD(m.parameters(), lr=0.1)
dst = DynamicSparseTraining(m, opt, **SET_presets, batches_per_update=2)
for s in range(10):
    m(torch.randn(8, 10)).sum().backward(); opt.step(); dst.step(s / 10); opt.zero_grad()
assert len(dst.history) == 4, len(dst.history)   # steps 2, 4, 6, 8 (step 10 is past stop_pct)
assert [int(t.mask.sum()) for t in masked_params(m)] == [40, 12]
assert not any(k == 'fastai' or k.startswith('fastai.') for k in sys.modules)
"""
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]

def test_lazy_fastai_names():
    code = "import fastsparse as s; print(s.DynamicSparseTrainingCallback.__name__, s.digits_dls.__name__); ns = {}; exec('from fastsparse import *', ns); assert 'RigL_presets' in ns and 'DynamicSparseTrainingCallback' in ns"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0 and 'DynamicSparseTrainingCallback digits_dls' in r.stdout, r.stderr[-3000:]
    r = subprocess.run([sys.executable, '-c', 'import fastsparse as s; s.nope'], capture_output=True, text=True)
    assert "has no attribute 'nope'" in r.stderr

@pytest.mark.parametrize('order', ['fastai first', 'fastsparse first'])
def test_learner_verbs_with_import_fastsparse(order):
    "`import fastsparse` gives `learn.sparsify` and `learn.load_sparse`, whichever of fastai and fastsparse comes first"
    imports = ['from fastai.basics import *', 'import fastsparse as sparse']
    if order == 'fastsparse first': imports.reverse()
    code = '\n'.join(imports) + """
from fastsparse.data import digits_dls, digits_mlp
learn = Learner(digits_dls(), digits_mlp(), loss_func=CrossEntropyLossFlat())
learn.sparsify(0.9, sparse_f='erk', seed=0)
assert sparse.is_sparse(learn) and callable(Learner.load_sparse)
print(sparse.sparsity_report(learn).model.sparse_layers_sparsity[0])
"""
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().startswith('0.9'), r.stderr[-3000:]

def _module_imports():
    "Per module of fastsparse: its notebook's number, and the (module, names) it imports from the package"
    import ast, re
    from pathlib import Path
    pkg = Path(__file__).resolve().parents[1]/'fastsparse'
    out = {}
    for p in sorted(pkg.glob('*.py')):
        if p.stem in ('__init__', '_modidx'): continue
        src = p.read_text()
        nb = re.search(r'File to edit: \.\./nbs/(\d+)_', src)
        deps = [(n.module.removeprefix('fastsparse.'), [a.name for a in n.names]) for n in ast.walk(ast.parse(src))   # in functions too
                if isinstance(n, ast.ImportFrom) and n.module and (n.level == 1 or n.module.startswith('fastsparse.'))]
        out[p.stem] = (int(nb.group(1)) if nb else None, deps)
    return out

def test_modules_import_in_notebook_order():
    "Notebooks are numbered in dependency order: a module imports only modules of lower-numbered notebooks, so there is no import cycle"
    mods = _module_imports()
    bad = [(m, d) for m, (n, deps) in mods.items() for d, _ in deps if mods[d][0] >= n]
    assert not bad, f'modules that import a module from a later (or the same) notebook: {bad}'

def test_no_private_names_across_modules():
    "No module imports another module's private names: what modules share is public and documented"
    bad = [(m, d, names) for m, (_, deps) in _module_imports().items() for d, names in deps if any(x.startswith('_') for x in names)]
    assert not bad, bad
