"""How long `import fastsparse` takes, against `import torch, fastcore` (what it cannot do without).

    python benchmarks/imports.py             # 7 fresh processes of each, alternating
    python benchmarks/imports.py --runs 15

Each import runs in a fresh interpreter (`python -c`), the two kinds alternating so that a busy machine slows both
alike; a child times its import alone (interpreter start-up left out) and the figures are medians over the runs.
Goal: `import fastsparse` <= 1.5x `import torch, fastcore`. The core imports no fastai (it is imported with
`fastai.learner`), and pandas and matplotlib only when a table is made or a plot drawn."""
import argparse, statistics, subprocess, sys

CHILD = "import sys, time; t = time.perf_counter(); import {}; print(time.perf_counter() - t); print(*sorted(sys.modules))"
HEAVY = ('fastai', 'pandas', 'matplotlib')      # what `import fastsparse` leaves out

def import_seconds(modules:str)->tuple:
    "Seconds a fresh interpreter takes to import `modules`, and the names of the modules it then holds"
    r = subprocess.run([sys.executable, '-c', CHILD.format(modules)], capture_output=True, text=True, check=True)
    secs, loaded = r.stdout.strip().splitlines()[-2:]
    return float(secs), set(loaded.split())

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--runs', type=int, default=7, help='fresh processes per import (median over them)')
    a = p.parse_args()
    ours, base, loaded = [], [], set()
    for i in range(a.runs):                     # alternate which goes first
        for what in (('fastsparse', 'torch, fastcore') if i % 2 == 0 else ('torch, fastcore', 'fastsparse')):
            secs, mods = import_seconds(what)
            if what == 'fastsparse': ours.append(secs); loaded = mods
            else: base.append(secs)
    f, b = statistics.median(ours), statistics.median(base)
    print(f"import fastsparse         {f:7.3f} s   (median of {a.runs} fresh processes)")
    print(f"import torch, fastcore    {b:7.3f} s")
    print(f"ratio                     {f / b:7.2f}x  (goal <= 1.5x)")
    heavy = [m for m in HEAVY if m in loaded]
    print(f"heavy modules loaded by import fastsparse: {', '.join(heavy) if heavy else 'none'} (of {', '.join(HEAVY)})")

if __name__ == '__main__': main()
