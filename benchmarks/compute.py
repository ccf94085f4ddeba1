"""Sparse compute in training: one full step (forward, backward, Adam step) of a layer, as a ratio of the dense step.

    python benchmarks/compute.py                          # nn.Linear(4096, 4096), batch 64, 1 thread, 90/95/98%
    python benchmarks/compute.py --threads 2
    python benchmarks/compute.py --save                   # also write benchmarks/results/compute.json

Each figure is the median over `--repeats` of a ratio measured in one run: dense and the other step are
timed back to back, then divided. Variants:
- masked: fastsparse's masked layer (a dense weight times its mask, mask hooks, masks applied after the step);
- torch CSR: the active values as the parameter, turned into a `torch.sparse_csr_tensor` each forward
  and multiplied with `torch.sparse.mm` (stock torch);
- fastsparse sparse: `SparseTrainLinear` (compressed rows, fastsparse's kernels, Adam on the values).
Goals (issue 13, 1 thread): <= 0.35 at 90%, <= 0.12 at 95%, <= 0.06 at 98%."""
import argparse, json, statistics, sys
from pathlib import Path
import torch, warnings
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
from torch import nn
from torch.nn import functional as F
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_ms
from fastsparse import sparsify_model, apply_masks
from fastsparse.compute import SparseTrainLinear, kernels

RESULTS = Path(__file__).resolve().parent / 'results' / 'compute.json'

def stepper(forward, params, x, t):
    "One training step of a layer: forward, MSE loss, backward, Adam step, zero_grad"
    opt = torch.optim.Adam(params, lr=1e-3)
    def step(after=None):
        F.mse_loss(forward(x), t).backward(); opt.step(); opt.zero_grad(set_to_none=False)
        if after is not None: after()
    return step

def variants(size, bs, sparsity, seed=0):
    torch.manual_seed(seed)
    x, t = torch.randn(bs, size), torch.randn(bs, size)
    dense = nn.Linear(size, size)
    out = {'dense': stepper(dense, dense.parameters(), x, t)}
    masked = nn.Linear(size, size); sparsify_model(masked, sparsity, seed=seed)
    ms = stepper(masked, masked.parameters(), x, t)
    out['masked'] = lambda: ms(lambda: apply_masks(masked, fresh=True))
    mask = masked.weight_mask
    twin = SparseTrainLinear.from_linear(masked, mask)
    out['fastsparse sparse'] = stepper(twin, twin.parameters(), x, t)
    L = twin.layout
    vals, bias = nn.Parameter(twin.values.detach().clone()), nn.Parameter(masked.bias.detach().clone())
    ptr, col = L.ptr, L.idx.long()
    def torch_csr(xb):
        w = torch.sparse_csr_tensor(ptr, col, vals, (size, size))
        return torch.sparse.mm(w, xb.t()).t() + bias
    out['torch CSR'] = stepper(torch_csr, [vals, bias], x, t)
    return out

def run(a):
    torch.set_num_threads(a.threads)
    print(f"nn.Linear({a.size}, {a.size}), batch {a.bs}, {a.threads} thread(s), kernels: {kernels().name}; "
          "one step (forward, backward, Adam) / the dense step, median of paired runs")
    names = ['masked', 'torch CSR', 'fastsparse sparse']
    print(f"{'sparsity':>8} {'dense ms':>9} " + ' '.join(f'{n:>18}' for n in names))
    rows = []
    for s in a.sparsities:
        v = variants(a.size, a.bs, s)
        for f in v.values(): f(); f()              # warm up: optimizer state, caches
        ratios, dense_ms = {n: [] for n in names}, []
        for _ in range(a.repeats):
            for n in names:
                d = median_ms(v['dense'], reps=1, n=a.n); o = median_ms(v[n], reps=1, n=a.n)
                ratios[n].append(o / d); dense_ms.append(d)
        r = dict(sparsity=s, threads=a.threads, dense_ms=statistics.median(dense_ms), **{n: statistics.median(ratios[n]) for n in names})
        rows.append(r)
        print(f"{s:>8.2f} {r['dense_ms']:>9.2f} " + ' '.join(f"{r[n]:>17.3f}x" for n in names))
    return rows

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--size', type=int, default=4096); p.add_argument('--bs', type=int, default=64)
    p.add_argument('--sparsities', type=float, nargs='+', default=[0.9, 0.95, 0.98])
    p.add_argument('--threads', type=int, nargs='+', default=[1])
    p.add_argument('--repeats', type=int, default=7); p.add_argument('--n', type=int, default=3)
    p.add_argument('--save', action='store_true')
    a = p.parse_args()
    rows = []
    for th in a.threads:
        rows += run(argparse.Namespace(**{**vars(a), 'threads': th}))
    if a.save:
        RESULTS.write_text(json.dumps(dict(size=a.size, bs=a.bs, rows=rows), indent=1) + '\n')
        print(f'wrote {RESULTS}')
