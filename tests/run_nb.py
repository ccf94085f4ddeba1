"""Run one notebook's tests, as `nbdev_test` does: every cell except `#| eval: false` and flagged ones.

Uses nbdev when it imports (the development environment); without it (the pass against the newest
fastai and fastcore, which nbdev 2 does not support) the same cells run through execnb directly.
Usage: python tests/run_nb.py NOTEBOOK [--flags slow]"""
import os, sys, re, json
from pathlib import Path

def _directives(src):
    out = {}
    for line in src.splitlines():
        s = line.strip()
        if not s.startswith('#|'): break
        body = s[2:].strip()
        k, _, v = body.partition(':') if ':' in body else (body, '', '')
        for key in (k.split() if not v else [k]): out[key.strip()] = v.strip()
    return out

def run_plain(path, flags):
    "Run the notebook's cells with execnb's shell, honouring `eval: false` and test flags"
    from execnb.shell import CaptureShell
    cfg = (Path(__file__).resolve().parents[1]/'settings.ini').read_text()
    tst_flags = set(re.search(r'^tst_flags\s*=\s*(.*)$', cfg, re.M).group(1).split()) - set(flags)
    nb = json.loads(Path(path).read_text())
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
        if cell['cell_type'] != 'code': continue
        src = ''.join(cell['source'])
        d = _directives(src)
        if d.get('eval', '').lower() == 'false' or tst_flags & d.keys(): continue
        shell.run(src)
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
