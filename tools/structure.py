"""The package's structure, read from its source: module sizes, which modules each imports, and the longest classes
and functions. Point it at another checkout to compare (e.g. a `git worktree` of an older commit):

    python tools/structure.py              # this checkout
    python tools/structure.py ../old       # another one
"""
import ast, sys
from pathlib import Path

def read(root:Path):
    "Per module: lines, the package modules it imports (anywhere in it), its classes and functions with their lengths"
    out = {}
    for p in sorted((root/'fastsparse').glob('*.py')):
        if p.stem == '_modidx': continue
        src = p.read_text(); tree = ast.parse(src)
        deps = sorted({n.module.removeprefix('fastsparse.') for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                       and (n.level == 1 or n.module.startswith('fastsparse.'))} - {'__init__'})
        private = sorted({f'{n.module.removeprefix("fastsparse.")}.{a.name}' for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                          and n.module and (n.level == 1 or n.module.startswith('fastsparse.')) for a in n.names if a.name.startswith('_')})
        defs = [(type(n).__name__.replace('Def', '').replace('Function', 'def').replace('Class', 'class'), n.name, n.end_lineno - n.lineno + 1)
                for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
        out[p.stem] = dict(lines=len(src.splitlines()), deps=deps, private=private, defs=defs)
    return out

def cycles(mods):
    "Import cycles among the modules (each as a list of names)"
    found, seen = [], set()
    def walk(m, path):
        for d in mods.get(m, {}).get('deps', []):
            if d in path: c = path[path.index(d):]; key = frozenset(c)
            else: walk(d, path + [d]); continue
            if key not in seen: seen.add(key); found.append(c + [d])
    for m in mods: walk(m, [m])
    return found

def main(root='.'):
    mods = read(Path(root))
    print(f"{'module':<14}{'lines':>6}  imports from the package")
    for m, d in mods.items(): print(f"{m:<14}{d['lines']:>6}  {', '.join(d['deps']) or '-'}")
    print(f"{'all':<14}{sum(d['lines'] for d in mods.values()):>6}")
    print('import cycles:', cycles(mods) or 'none')
    print('private names imported from other modules:', [f'{m} <- {x}' for m, d in mods.items() for x in d['private']] or 'none')
    defs = sorted(((L, k, f'{m}.{n}') for m, d in mods.items() for k, n, L in d['defs']), reverse=True)
    print('classes over 150 lines:', [f'{n} ({L})' for L, k, n in defs if k == 'class' and L > 150] or 'none')
    print('functions over 60 lines:', [f'{n} ({L})' for L, k, n in defs if k == 'def' and L > 60] or 'none')
    print('longest:', ', '.join(f'{k} {n} ({L})' for L, k, n in defs[:8]))

if __name__ == '__main__': main(*sys.argv[1:])
