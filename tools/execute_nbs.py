"""Run notebooks and save their outputs in place, so that the docs and the README show them.

Usage: python tools/execute_nbs.py [notebook ...]   (default: every notebook in nbs/ not starting with '_')
Cells marked `#| eval: false` are skipped; `#| slow` cells run (pass --skip-slow to skip them).
Run `nbdev_clean` afterwards (this script does it for the notebooks it ran)."""
import sys, os, re, time, subprocess
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tests'))
from run_nb import skipped       # the cells the tests run (nbdev's reading of `#|` directives) are the ones run here
_BAR = re.compile(r'\|[█-]+\| *[0-9.]+% \[')   # a bare progress bar line

def run(path, skip_slow=False):
    nb = read_nb(path)
    def skip(cell): return skipped(cell, ['slow'] if skip_slow else [])
    os.environ['IN_TEST'] = '1'
    shell = CaptureShell(path)
    # fastai's import triggers torch's deprecation notice for `torch.jit.script`: not worth showing in docs
    shell.run("import warnings; warnings.filterwarnings('ignore', message=r'`torch\\.jit\\.script` is deprecated')")
    cwd = os.getcwd()
    os.chdir(Path(path).parent)
    try: shell.run_all(nb, exc_stop=True, preproc=skip)
    finally: os.chdir(cwd)
    for cell in nb.cells:
        if cell.cell_type == 'code': cell.outputs = [o for o in map(_tidy, cell.get('outputs', [])) if o is not None]
    write_nb(nb, path)

def _tidy(out):
    "Show text streams as a terminal would (progress bars redraw lines with '\\r'); drop empty ones"
    if out.get('output_type') != 'stream': return out
    text = ''.join(out['text']) if isinstance(out['text'], list) else out['text']
    lines = [l.split('\r') for l in text.split('\n')]
    text = '\n'.join(next((seg for seg in reversed(parts) if seg.strip()), '') for parts in lines)
    text = '\n'.join(l.rstrip().lstrip('█') for l in text.split('\n'))
    text = '\n'.join(l for l in text.split('\n') if l.strip() and not _BAR.search(l)) + '\n'
    if not text.strip(): return None
    out['text'] = text
    return out

if __name__ == '__main__':
    args = [a for a in sys.argv[1:] if not a.startswith('--')]
    paths = [Path(a) for a in args] or sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))
    for p in paths:
        t = time.time()
        run(p.resolve(), skip_slow='--skip-slow' in sys.argv)
        print(f'{p.name}: {time.time() - t:.1f}s')
    subprocess.run(['nbdev_clean'], check=True, cwd=ROOT)
