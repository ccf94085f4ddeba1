"""Speed and memory of sparse training relative to dense, measured as ratios in one run (medians over repeats).

    python benchmarks/speed.py                            # MLP 784-1024-1024-10, batch 128, Adam, 1 thread
    python benchmarks/speed.py --model mlp-wide           # MLP 784-4096-4096-10, batch 64, Adam
    python benchmarks/speed.py --model resnet18           # torchvision resnet18(weights=None), batch 64, 224x224, SGD
    python benchmarks/speed.py --model all --save         # all three; figures to benchmarks/results/speed.json
    python benchmarks/speed.py --opt sgd --save           # the MLP with another optimizer (sgd, adam, adam-fused, fastai-adam)

Reports, per model (sparsity 0.9, ERK):
- masked step / dense step: one training step (forward, backward, optimizer step, zero_grad) of the sparsified
  model in masked compute, with its mask hooks, the gradient masking after each backward (RigL keeping the dense
  gradient apart) and the per-step mask application that `DynamicSparseTrainingCallback` does, against
  the same model without masks. Dense and masked steps alternate, so drifts in machine speed hit both alike;
- update / step: one full SET, SNFS or RigL topology update over all masked layers, against one dense step;
- memory: what the masks and the bookkeeping of dynamic sparse training keep (bytes / bytes of the masked
  weights), and the most memory one RigL update adds while it runs: tensors allocated by torch (from the
  profiler) and the process's resident memory (peak RSS, glibc told to return freed blocks), each over the
  masked weights' size. Memory is measured in a fresh process, so that it cannot disturb the timings.

Goals: masked step <= 1.05x dense; a RigL update over all of resnet18 <= 0.5x one training step at batch 64;
an update adds no more memory than the weights' own size."""
import argparse, ctypes, json, re, statistics, subprocess, sys, time
from pathlib import Path
import torch
from torch import nn
from torch.nn import functional as F
from fastsparse import sparsify_model, DynamicSparseTraining, PRESETS, erdos_renyi_sparsity
UPDATE_PRESETS = ('SET', 'SNFS', 'RigL')   # the presets whose topology update is timed (GMP and GraNet also need a final sparsity)
from fastsparse.masks import masked_params

RESULTS = Path(__file__).resolve().parent / 'results' / 'speed.json'

def mlp(sizes=(784, 1024, 1024, 10)):
    layers = []
    for i, o in zip(sizes[:-1], sizes[1:]): layers += [nn.Linear(i, o), nn.ReLU()]
    return nn.Sequential(*layers[:-1])

def resnet18():
    from torchvision.models import resnet18
    return resnet18(weights=None)

# name: (model, input shape without batch, classes, default batch size, optimizer, description)
MODELS = {
    'mlp': (mlp, (784,), 10, 128, lambda ps: torch.optim.Adam(ps, lr=1e-3), 'MLP 784-1024-1024-10, torch.optim.Adam'),
    'mlp-wide': (lambda: mlp((784, 4096, 4096, 10)), (784,), 10, 64, lambda ps: torch.optim.Adam(ps, lr=1e-3),
                 'MLP 784-4096-4096-10, torch.optim.Adam'),
    'resnet18': (resnet18, (3, 224, 224), 1000, 64, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
                 'torchvision resnet18(weights=None), 224x224, torch.optim.SGD(momentum=0.9)'),
}

def _fastai_adam(ps):
    from fastai.optimizer import Adam
    return Adam(list(ps), lr=1e-3)

# optimizers instead of the model's own (`--opt`)
OPTS = {'sgd': lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), 'adam': lambda ps: torch.optim.Adam(ps, lr=1e-3),
        'adam-fused': lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True), 'fastai-adam': _fastai_adam}

def make(name, sparse, preset='RigL', sparsity=0.9, seed=0, opt=None):
    "Model, optimizer (the model's, or `OPTS[opt]`) and (for `sparse`) the driver of dynamic sparse training, with no update due"
    torch.manual_seed(seed)
    model_f, _, _, _, opt_f, _ = MODELS[name]
    model = model_f()
    opt = (OPTS[opt] if opt else opt_f)(model.parameters())
    dst = None
    if sparse:
        sparsify_model(model, sparsity, erdos_renyi_sparsity, seed=seed)
        dst = DynamicSparseTraining(model, opt, **PRESETS[preset], batches_per_update=10**9, seed=seed)
    return model, opt, dst

def batch(name, bs, seed=0):
    _, shape, n_out, _, _, _ = MODELS[name]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(bs, *shape, generator=g), torch.randint(0, n_out, (bs,), generator=g)

def step(model, opt, dst, x, y):
    F.cross_entropy(model(x), y).backward()
    opt.step()
    if dst is not None: dst.step(0.)          # what the callback does after each step (no update is due)
    opt.zero_grad()

def timed(f, n=1):
    t = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t) / n

def speed(name, bs, repeats, steps, sparsity, opt=None):
    x, y = batch(name, bs)
    dense, masked = make(name, False, opt=opt), make(name, True, sparsity=sparsity, opt=opt)
    for m in (dense, masked):
        for _ in range(2): step(*m, x, y)                                   # warm up, create optimizer state
    td, tm = [], []
    for _ in range(repeats):
        td.append(timed(lambda: step(*dense, x, y), steps))
        tm.append(timed(lambda: step(*masked, x, y), steps))
    res = dict(dense_step_ms=1e3 * statistics.median(td), masked_step_ms=1e3 * statistics.median(tm),
               masked_over_dense=statistics.median(m / d for m, d in zip(tm, td)))
    del masked
    for preset in UPDATE_PRESETS:
        model, o, dst = make(name, True, preset, sparsity, opt=opt)
        step(model, o, dst, x, y)
        tu, ts = [], []
        for i in range(repeats):
            dst.engine.expect_update()   # as on an update step: masked compute keeps this backward pass's dense gradient
            F.cross_entropy(model(x), y).backward(); o.step()
            tu.append(timed(lambda: dst.engine.update(0.3, n_update=i)))   # the update an update step adds
            o.zero_grad()
            ts.append(timed(lambda: step(*dense, x, y)))
        res[f'{preset}_update_ms'] = 1e3 * statistics.median(tu)
        res[f'{preset}_update_over_step'] = statistics.median(u / s for u, s in zip(tu, ts))
    return res

def _kib(key): return 1024 * int(re.search(key + r':\s+(\d+)', Path('/proc/self/status').read_text()).group(1))

def peak_rss_added(f):
    "Most resident memory the process gained while `f` ran; NaN where Linux's /proc/self/clear_refs is missing"
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
        Path('/proc/self/clear_refs').write_text('5')      # reset the peak (VmHWM) to the current RSS
    except OSError: f(); return float('nan')
    before = _kib('VmRSS'); f()
    return _kib('VmHWM') - before

def peak_torch_added(f):
    "Most memory torch's tensors held at once while `f` ran, above what they held before (from the profiler)"
    from torch.profiler import profile
    with profile(profile_memory=True) as p: f()
    cur = peak = 0
    for e in sorted(p.events(), key=lambda e: e.time_range.start):
        cur += e.self_cpu_memory_usage; peak = max(peak, cur)
    return peak

def memory(name, bs, sparsity, opt=None):
    "Memory figures, in bytes over the masked weights' bytes; run in a process of its own"
    try: ctypes.CDLL('libc.so.6').mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD fixed: freed large blocks leave RSS
    except OSError: pass                                     # not glibc: RSS figures are then rougher
    x, y = batch(name, bs)
    model, opt, dst = make(name, True, 'RigL', sparsity, opt=opt)
    step(model, opt, dst, x, y)
    dst.engine.expect_update()   # as on an update step: masked compute keeps this backward pass's dense gradient
    F.cross_entropy(model(x), y).backward(); opt.step()
    dst.engine.update(0.3, n_update=0)                      # fills the engine's cache of active indices
    ts = masked_params(model)
    w = sum(t.param.numel() * t.param.element_size() for t in ts)
    masks = sum(t.mask.numel() * t.mask.element_size() for t in ts)
    explored = sum(e.numel() * e.element_size() for e in dst.explored.values())
    cache = sum(i.numel() * i.element_size() for _, i in dst.engine._active.values())
    rss = [peak_rss_added(lambda: dst.engine.update(0.3, n_update=1 + i)) for i in range(3)]
    tor = [peak_torch_added(lambda: dst.engine.update(0.3, n_update=4 + i)) for i in range(3)]
    largest = max(t.param.numel() * t.param.element_size() for t in ts)
    return dict(masked_weights_mb=w / 2**20, largest_layer_share=largest / w, masks_over_weights=masks / w,
                bookkeeping_over_weights=(explored + cache) / w,
                update_peak_torch_over_weights=statistics.median(tor) / w,
                update_peak_rss_over_weights=statistics.median(rss) / w)

def report(name, r):
    desc = MODELS[name][5] if r.get('opt', 'default') == 'default' else MODELS[name][5].split(',')[0] + f", optimizer {r['opt']}"
    print(f"{desc}; batch {r['bs']}, {r['threads']} thread(s), sparsity {r['sparsity']} (ERK)")
    print(f"  dense step {r['dense_step_ms']:.2f} ms, masked step {r['masked_step_ms']:.2f} ms: "
          f"masked / dense = {r['masked_over_dense']:.3f}  (goal <= 1.05)")
    for preset in UPDATE_PRESETS:
        print(f"  {preset:>4} update over all layers {r[f'{preset}_update_ms']:.2f} ms: "
              f"update / step = {r[f'{preset}_update_over_step']:.3f}  (goal <= 0.5 for resnet18)")
    print(f"  masked weights {r['masked_weights_mb']:.1f} MiB (largest layer {r['largest_layer_share']:.0%} of them); "
          f"masks {r['masks_over_weights']:.2f}x their size, explored + active-index cache {r['bookkeeping_over_weights']:.2f}x")
    print(f"  one RigL update adds at most {r['update_peak_torch_over_weights']:.2f}x the weights' size in tensors, "
          f"{r['update_peak_rss_over_weights']:.2f}x in resident memory  (goal <= 1)")

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='mlp', choices=[*MODELS, 'all'])
    p.add_argument('--repeats', type=int, default=None, help='timings per figure (default: 30 for the MLP, 5 for resnet18)')
    p.add_argument('--steps', type=int, default=None, help='steps per timing (default: 5 for the MLP, 1 for resnet18)')
    p.add_argument('--bs', type=int, default=None, help="batch size (default: the model's: 128 MLP, 64 resnet18)")
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--sparsity', type=float, default=0.9)
    p.add_argument('--opt', choices=list(OPTS), default=None, help="optimizer instead of the model's (saved as 'model/opt')")
    p.add_argument('--json', action='store_true', help='print the figures as JSON')
    p.add_argument('--save', action='store_true', help=f'also write the figures to {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}')
    p.add_argument('--memory-only', action='store_true', help=argparse.SUPPRESS)   # the fresh process memory() runs in
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    names = list(MODELS) if a.model == 'all' else [a.model]
    out = {}
    for name in names:
        bs = a.bs or MODELS[name][3]
        if a.memory_only: print(json.dumps(memory(name, bs, a.sparsity, a.opt))); return
        big = name == 'resnet18'
        r = dict(model=name, bs=bs, threads=a.threads, sparsity=a.sparsity, torch=torch.__version__, opt=a.opt or 'default')
        r.update(speed(name, bs, a.repeats or (5 if big else 30), a.steps or (1 if big else 5), a.sparsity, a.opt))
        cmd = [sys.executable, __file__, '--model', name, '--bs', str(bs), '--sparsity', str(a.sparsity),
               '--threads', str(a.threads), '--memory-only', *(['--opt', a.opt] if a.opt else [])]
        r.update(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]))
        out[f'{name}/{a.opt}' if a.opt else name] = r
        if not a.json: report(name, r)
    if a.json: print(json.dumps(out, indent=1))
    if a.save:
        saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        RESULTS.write_text(json.dumps({**saved, **out}, indent=1) + '\n')

if __name__ == '__main__': main()
