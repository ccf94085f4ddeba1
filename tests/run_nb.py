"""Run one notebook's tests, as `nbdev_test` does: every cell except `#| eval: false` and flagged ones.

Uses nbdev when it imports (the development environment); without it (the pass against the newest
fastai and fastcore, which nbdev 2 does not support) the same cells run through execnb directly.
Usage: python tests/run_nb.py NOTEBOOK [--flags slow]"""
import os, sys, re, json
from pathlib import Path

try: from nbdev.process import extract_directives       # nbdev's own parser of `#| ...` cell directives
except Exception:               # nbdev 2 does not import with the newest fastcore: the same result, without it
    def extract_directives(cell, remove=False):
        "A cell's leading `#|` directives as nbdev reads them, e.g. `{'eval:': ['false'], 'slow': []}` (never edits the cell)"
        out = {}
        for line in cell.source.splitlines():
            if not re.match(r'\s*#\s*\|', line):
                if line.strip(): break
                continue
            s = re.sub(r'^\s*#\s*\|', '', line).strip()
            words = (s[:-1] if s.endswith(':') else s).replace(':', ': ').split()
            if words: out[words[0]] = words[1:]
        return out

def skipped(cell, flags)->bool:
    "True if tests skip `cell` (as nbdev's `test_nb` does): not code, `#| eval: false`, or marked with one of `flags`"
    if cell.cell_type != 'code': return True
    d = extract_directives(cell, remove=False)
    return (d.get('eval:') or [''])[0].lower() == 'false' or bool(set(flags) & d.keys())

def run_plain(path, flags):
    "Run the notebook's cells with execnb's shell, honouring `eval: false` and test flags"
    from execnb.shell import CaptureShell
    cfg = (Path(__file__).resolve().parents[1]/'settings.ini').read_text()
    tst_flags = set(re.search(r'^tst_flags\s*=\s*(.*)$', cfg, re.M).group(1).split()) - set(flags)
    nb = json.loads(Path(path).read_text())
    from fastcore.basics import AttrDict
    try: import nbdev.showdoc
    except Exception:            # nbdev 2 does not import here: `show_doc` only renders docs, so stand in for it
        import types
        pkg, mod = types.ModuleType('nbdev'), types.ModuleType('nbdev.showdoc')
        mod.show_doc, mod.__all__ = (lambda *a, **k: None), ['show_doc']
        pkg.showdoc = mod
        sys.modules.update({'nbdev': pkg, 'nbdev.showdoc': mod})
    shell = CaptureShell(str(path))
    os.chdir(Path(path).parent)
    for cell in nb['cells']:
        cell = AttrDict(cell, source=''.join(cell['source']))
        if skipped(cell, tst_flags): continue
        shell.run(cell.source)
        if shell.exc: raise shell.exc
    return True

def main():
    args = sys.argv[1:]
    path = Path(args[0]).resolve()
    flags = args[args.index('--flags') + 1].split() if '--flags' in args else []
    os.environ['IN_TEST'] = '1'
    try: from nbdev.test import test_nb
    except Exception: test_nb = None
    if test_nb is not None:
        ok, _ = test_nb(path, skip_flags=[f for f in ['slow'] if f not in flags])
        sys.exit(0 if ok else 1)
    run_plain(path, flags)

if __name__ == '__main__': main()
