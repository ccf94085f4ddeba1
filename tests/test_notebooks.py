"Every notebook in nbs/ runs as a test (its hidden cells assert what the page claims)."
import subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))
# the tutorials train end to end for a minute or more under load: marked slow (`pytest -m slow`, which .ci/run runs)
SLOW = {'01_structure', '04_criteria', '06_budgets', '09_stats', '10_engine', '12_callback', '20_tutorial_criteria', '21_tutorial_pytorch', '22_tutorial_activations', '23_tutorial_transformer'}   # the longest: `pytest -m slow`

def test_notebooks_found(): assert len(NOTEBOOKS) >= 8 and SLOW <= {p.stem for p in NOTEBOOKS}

@pytest.mark.notebook
@pytest.mark.parametrize('nb', [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW else p for p in NOTEBOOKS],
                         ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb):
    r = subprocess.run([sys.executable, str(ROOT/'tests'/'run_nb.py'), str(nb)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, f'{nb.name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}'
