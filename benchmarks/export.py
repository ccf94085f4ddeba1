"""Speed of sparse-exported layers and models against dense ones, measured in one run (medians over repeats).

    python benchmarks/export.py                       # all three tables below, 1 thread
    python benchmarks/export.py --only linear --size 1024 --bs 128 --threads 2
    python benchmarks/export.py --save                # also write benchmarks/results/export.json

- linear: `nn.Linear(4096, 4096)` at batch 64 as `SparseLinear`, per sparsity.
  Goals (single thread): >= 4x faster than dense at 95% sparsity, >= 12x at 99%.
- conv: resnet18's 3x3 convolutions (and a strided 1x1) as `SparseConv`, at batch 1 and 64, per sparsity.
- condensed: `nn.Linear(4096, 4096)` with constant fan-in masks (`structure='fan_in'`) as `CondensedLinear`, against
  dense and against the same weights as `SparseLinear` (CSR), per sparsity and batch.
- sliced: the same layer with whole rows or columns kept (`structure='row'`, `'column'`) as `SlicedLinear`.
- resnet18: torchvision `resnet18(weights=None)` with ERK masks, exported by `sparse_export` with its default,
  deterministic thresholds (`EXPORT_MIN_SPARSITY`); whole-model time dense against exported on a batch of 224x224
  images (1 and 64), and how many layers it converted. "Dense" is the same weights without masks or mask hooks
  (`unsparsify`), so both sides run plain layers except the ones the export converts. `--measure` also reports
  how many `measure=True` would convert on that batch (timing-dependent, and slow at batch 64).

Timings are medians of `torch.utils.benchmark.Timer` blocks (`benchmarks/_timing.py`)."""
import argparse, copy, json
from pathlib import Path
import torch
from torch import nn
from fastsparse import sparsify_model, erdos_renyi_sparsity, apply_masks, unsparsify
from fastsparse.export import SparseLinear, SparseConv, CondensedLinear, SlicedLinear, sparse_export, EXPORT_MIN_SPARSITY
from _timing import median_ms                   # benchmarks/_timing.py: the script's directory is on sys.path

RESULTS = Path(__file__).resolve().parent / 'results' / 'export.json'
CONVS = [('layer2 3x3', 128, 128, 3, 1, 28), ('layer3 3x3', 256, 256, 3, 1, 14), ('layer4 3x3', 512, 512, 3, 1, 7),
         ('layer4 1x1/2', 256, 512, 1, 2, 14)]          # name, in, out, kernel, stride, input size

def masked_(layer, sparsity):
    with torch.no_grad(): layer.weight.mul_(torch.rand_like(layer.weight) >= sparsity)
    return layer

TIMES = f"{'dense ms':>9} {'sparse ms':>9} {'speed-up':>9} {'max |diff|':>11}"     # the columns every table ends with

def times(r): return f"{r['dense_ms']:>9.2f} {r['sparse_ms']:>9.2f} {r['speedup']:>8.2f}x {r['max_abs_diff']:>11.2e}"

def compare(dense, sparse, x, repeats, n=5):
    with torch.no_grad():
        diff = (sparse(x) - dense(x)).abs().max().item()
        d, s = median_ms(lambda: dense(x), reps=repeats, n=n), median_ms(lambda: sparse(x), reps=repeats, n=n)
    return dict(dense_ms=d, sparse_ms=s, speedup=d / s, max_abs_diff=diff)

def linear(a):
    print(f"nn.Linear({a.size}, {a.size}), batch {a.bs}, {a.threads} thread(s)  (goals: >= 4x at 0.95, >= 12x at 0.99)")
    print(f"{'sparsity':>8} {TIMES}")
    rows, x = [], torch.randn(a.bs, a.size)
    for s in a.sparsities:
        lin = masked_(nn.Linear(a.size, a.size), s)
        r = dict(sparsity=s, bs=a.bs, **compare(lin, SparseLinear(lin), x, a.repeats)); rows.append(r)
        print(f"{s:>8.2f} {times(r)}")
    return rows

def conv(a):
    print(f"\nconvolutions as SparseConv, {a.threads} thread(s)")
    print(f"{'layer':>13} {'batch':>5} {'sparsity':>8} {TIMES}")
    rows = []
    for name, ci, co, k, st, hw in CONVS:
        for bs in a.conv_bs:
            x = torch.randn(bs, ci, hw, hw)
            for s in a.conv_sparsities:
                c = masked_(nn.Conv2d(ci, co, k, stride=st, padding=k // 2, bias=False), s)
                r = dict(layer=name, bs=bs, sparsity=s, **compare(c, SparseConv(c), x, a.repeats)); rows.append(r)
                print(f"{name:>13} {bs:>5} {s:>8.2f} {times(r)}")
    return rows

def structured_(size, sparsity, structure):
    "An `nn.Linear(size, size)` with a random mask of `structure` (masked weights 0, no hooks left) and the mask"
    lin = nn.Linear(size, size)
    sparsify_model(lin, sparsity, seed=0, structure=structure)
    mask = lin.weight_mask.clone(); unsparsify(lin)
    return lin, mask

def condensed(a):
    print(f"\nnn.Linear({a.size}, {a.size}) with constant fan-in as CondensedLinear, {a.threads} thread(s); CSR: the same weights as SparseLinear")
    print(f"{'sparsity':>8} {'batch':>5} {TIMES} {'CSR ms':>9} {'CSR x':>7}")
    rows = []
    for s in a.struct_sparsities:
        lin, mask = structured_(a.size, s, 'fan_in')
        c, csr = CondensedLinear(lin, mask), SparseLinear(lin)
        for bs in a.struct_bs:
            x = torch.randn(bs, a.size)
            r = dict(sparsity=s, bs=bs, **compare(lin, c, x, a.repeats))
            with torch.no_grad(): r['csr_ms'] = median_ms(lambda: csr(x), reps=a.repeats, n=5)
            r['csr_speedup'] = r['dense_ms'] / r['csr_ms']; rows.append(r)
            print(f"{s:>8.2f} {bs:>5} {times(r)} {r['csr_ms']:>9.2f} {r['csr_speedup']:>6.2f}x")
    return rows

def sliced(a):
    print(f"\nnn.Linear({a.size}, {a.size}) with whole rows or columns kept, as SlicedLinear, {a.threads} thread(s)")
    print(f"{'structure':>9} {'sparsity':>8} {'batch':>5} {TIMES}")
    rows = []
    for structure in ('row', 'column'):
        for s in a.sliced_sparsities:
            lin, mask = structured_(a.size, s, structure)
            sl = SlicedLinear(lin, mask)
            for bs in a.struct_bs:
                r = dict(structure=structure, sparsity=s, bs=bs, **compare(lin, sl, torch.randn(bs, a.size), a.repeats)); rows.append(r)
                print(f"{structure:>9} {s:>8.2f} {bs:>5} {times(r)}")
    return rows

def resnet(a):
    from torchvision.models import resnet18
    print(f"\nresnet18(weights=None), ERK masks, 224x224 images, {a.threads} thread(s), "
          f"exported with EXPORT_MIN_SPARSITY={EXPORT_MIN_SPARSITY}")
    print(f"{'batch':>5} {'sparsity':>8} {'converted':>9} {'measured':>9} {TIMES}" if a.measure else
          f"{'batch':>5} {'sparsity':>8} {'converted':>9} {TIMES}")
    rows = []
    for bs in a.resnet_bs:
        x = torch.randn(bs, 3, 224, 224)
        for s in a.conv_sparsities:
            torch.manual_seed(0)
            model = resnet18(weights=None).eval()
            sparsify_model(model, s, erdos_renyi_sparsity, seed=0)
            fast, report = sparse_export(model)             # from the masks alone: the same layers on every run
            dense = copy.deepcopy(model); apply_masks(dense)
            unsparsify(dense)                               # the same weights (zeros kept) as plain layers: no mask hooks
            big = bs > 8                                    # a second a pass: fewer repeats
            r = dict(bs=bs, sparsity=s, converted=int(report.converted.sum()), layers=len(report),
                     **compare(dense, fast, x, max(3, a.repeats // 5) if big else a.repeats, 1 if big else 5))
            if a.measure: r['measured_converted'] = int(sparse_export(model, x, measure=True)[1].converted.sum())
            rows.append(r)
            picked = f" {r['measured_converted']:>4}/{r['layers']:<4}" if a.measure else ''
            print(f"{bs:>5} {s:>8.2f} {r['converted']:>4}/{r['layers']:<4}{picked} {times(r)}")
    return rows

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parts = ['linear', 'conv', 'condensed', 'sliced', 'resnet18']
    p.add_argument('--only', choices=parts, nargs='+', default=parts)
    p.add_argument('--size', type=int, default=4096)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--conv-bs', type=int, nargs='+', default=[1, 64])
    p.add_argument('--resnet-bs', type=int, nargs='+', default=[1, 64])
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--repeats', type=int, default=15)
    p.add_argument('--sparsities', type=float, nargs='+', default=[0.5, 0.8, 0.9, 0.95, 0.98, 0.99])
    p.add_argument('--struct-sparsities', type=float, nargs='+', default=[0.5, 0.75, 0.9, 0.95, 0.98])
    p.add_argument('--sliced-sparsities', type=float, nargs='+', default=[0.25, 0.5, 0.75, 0.9])
    p.add_argument('--struct-bs', type=int, nargs='+', default=[1, 8, 16, 64])
    p.add_argument('--conv-sparsities', type=float, nargs='+', default=[0.9, 0.95, 0.99])
    p.add_argument('--measure', action='store_true', help="resnet18: also count the layers sparse_export(measure=True) converts")
    p.add_argument('--save', action='store_true', help='also write the figures to benchmarks/results/export.json (the parts run replace theirs)')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    out = {'threads': a.threads, 'torch': torch.__version__}
    for part, f in (('linear', linear), ('conv', conv), ('condensed', condensed), ('sliced', sliced), ('resnet18', resnet)):
        if part in a.only: out[part] = f(a)
    if a.save:
        saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        if saved.get('threads', a.threads) != a.threads: saved = {}      # figures of another thread count are not kept
        RESULTS.write_text(json.dumps({**saved, **out}, indent=1) + '\n')

if __name__ == '__main__': main()
