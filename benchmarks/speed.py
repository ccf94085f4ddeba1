"""Speed of sparse training relative to dense, measured as ratios in one run (medians over repeats).

    python benchmarks/speed.py                 # MLP 784-1024-1024-10, batch 128, 1 thread
    python benchmarks/speed.py --repeats 50 --threads 2

Reports
- masked step / dense step: one training step (forward, backward, Adam step, zero_grad) of the
  sparsified model, with its mask hooks and the per-step mask application that
  `DynamicSparseTrainingCallback` does, against the same model without masks;
- update / step: one full RigL (or SET / SNFS) topology update over all layers, against one dense step.
Dense and masked steps are interleaved so that drifts in machine speed hit both alike."""
import argparse, json, statistics, time
import torch
from torch import nn
from torch.nn import functional as F
from fastsparse import sparsify_model, DynamicSparseTraining, PRESETS, erdos_renyi_sparsity

def mlp(sizes=(784, 1024, 1024, 10)):
    layers = []
    for i, o in zip(sizes[:-1], sizes[1:]): layers += [nn.Linear(i, o), nn.ReLU()]
    return nn.Sequential(*layers[:-1])

def make(sparse, preset='RigL', sparsity=0.9, seed=0):
    torch.manual_seed(seed)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    dst = None
    if sparse:
        sparsify_model(model, sparsity, erdos_renyi_sparsity, seed=seed)
        dst = DynamicSparseTraining(model, opt, **PRESETS[preset], batches_per_update=10**9, seed=seed)
    return model, opt, dst

def step(model, opt, dst, x, y):
    F.cross_entropy(model(x), y).backward()
    opt.step()
    if dst is not None: dst.step(0.)          # what the callback does after each step (no update is due)
    opt.zero_grad()

def timed(f, n=1):
    t = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t) / n

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repeats', type=int, default=30)
    p.add_argument('--steps', type=int, default=5, help='steps per timing')
    p.add_argument('--bs', type=int, default=128)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--sparsity', type=float, default=0.9)
    p.add_argument('--json', action='store_true', help='print the figures as JSON')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    x, y = torch.randn(a.bs, 784), torch.randint(0, 10, (a.bs,))
    dense, masked = make(False), make(True, sparsity=a.sparsity)
    for m in (dense, masked):
        for _ in range(5): step(*m, x, y)                                   # warm up, create optimizer state
    td, tm = [], []
    for _ in range(a.repeats):
        td.append(timed(lambda: step(*dense, x, y), a.steps))
        tm.append(timed(lambda: step(*masked, x, y), a.steps))
    res = dict(threads=a.threads, bs=a.bs, sparsity=a.sparsity,
               dense_step_ms=1e3 * statistics.median(td), masked_step_ms=1e3 * statistics.median(tm),
               masked_over_dense=statistics.median(m / d for m, d in zip(tm, td)))
    for preset in PRESETS:
        model, opt, dst = make(True, preset, a.sparsity)
        for _ in range(3): step(model, opt, dst, x, y)
        tu, ts = [], []
        for i in range(max(5, a.repeats // 3)):
            F.cross_entropy(model(x), y).backward(); opt.step()
            tu.append(timed(lambda: dst.engine.update(0.3, n_update=i)))   # the update an update step adds
            opt.zero_grad()
            ts.append(timed(lambda: step(*dense, x, y)))
        res[f'{preset}_update_ms'] = 1e3 * statistics.median(tu)
        res[f'{preset}_update_over_step'] = statistics.median(u / s for u, s in zip(tu, ts))
    if a.json: print(json.dumps(res, indent=1)); return
    print(f"MLP 784-1024-1024-10, batch {a.bs}, {a.threads} thread(s), sparsity {a.sparsity} (ERK), torch.optim.Adam")
    print(f"dense step {res['dense_step_ms']:.2f} ms, masked step {res['masked_step_ms']:.2f} ms: "
          f"masked / dense = {res['masked_over_dense']:.3f}  (goal <= 1.03)")
    for preset in PRESETS:
        print(f"{preset:>4} update over all layers {res[f'{preset}_update_ms']:.2f} ms: "
              f"update / step = {res[f'{preset}_update_over_step']:.3f}  (goal <= 0.5)")

if __name__ == '__main__': main()
