"""Speed of a sparse-exported nn.Linear against the dense layer, measured in one run (medians over repeats).

    python benchmarks/export.py                       # nn.Linear(4096, 4096), batch 64, 1 thread
    python benchmarks/export.py --size 1024 --bs 128 --threads 2

Goals (single thread, 4096x4096, batch 64): >= 4x at 95% sparsity, >= 12x at 99%."""
import argparse
import torch
from torch import nn
from fastsparse.export import SparseLinear, _median_ms as median_ms   # the timing sparse_export itself uses

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--size', type=int, default=4096)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--repeats', type=int, default=15)
    p.add_argument('--sparsities', type=float, nargs='+', default=[0.5, 0.8, 0.9, 0.95, 0.98, 0.99])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.bs, a.size)
    print(f"nn.Linear({a.size}, {a.size}), batch {a.bs}, {a.threads} thread(s)")
    print(f"{'sparsity':>8} {'dense ms':>9} {'CSR ms':>8} {'speed-up':>9} {'max |diff|':>11}")
    for s in a.sparsities:
        lin = nn.Linear(a.size, a.size)
        with torch.no_grad(): lin.weight.mul_(torch.rand(a.size, a.size) >= s)
        sl = SparseLinear(lin)
        with torch.no_grad():
            diff = (sl(x) - lin(x)).abs().max().item()
            d, c = median_ms(lambda: lin(x), reps=a.repeats, n=5), median_ms(lambda: sl(x), reps=a.repeats, n=5)
        print(f"{s:>8.2f} {d:>9.2f} {c:>8.2f} {d / c:>8.2f}x {diff:>11.2e}")

if __name__ == '__main__': main()
