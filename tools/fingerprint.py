"""Fingerprints of short training runs: every loss and every mask after each update, for each method in masked and sparse compute.

A refactoring that must not change behaviour keeps these bit for bit (on one machine, one thread):
    python tools/fingerprint.py --out before.json     # on the old commit
    python tools/fingerprint.py --compare before.json # on the new one: lists every run that differs
"""
import argparse, hashlib, json, os, sys
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch
from torch import nn
import fastsparse as fs

def mlp(): return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 96), nn.ReLU(), nn.Linear(96, 10))
def cnn(): return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                                nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))

# method: (presets, sparsify_model arguments, extra driver arguments)
RUNS = {
    'SET':         (fs.SET_presets, dict(model_sparsity=0.9, sparse_f='erk'), {}),
    'RigL':        (fs.RigL_presets, dict(model_sparsity=0.9, sparse_f='erk'), {}),
    'RigL-global': (fs.RigL_presets, dict(model_sparsity=0.9), dict(scope='global', keep_score_f='weight_magnitude',
                                                                    grow_score_f=fs.normalized('gradient_magnitude'))),
    'SNFS':        (fs.SNFS_presets, dict(model_sparsity=0.9, sparse_f='erk'), {}),
    'DSR':         (fs.DSR_presets, dict(model_sparsity=0.9), dict(initial_drop_grow_pct=0.05)),
    'GMP':         (fs.GMP_presets, dict(model_sparsity=0.), dict(final_sparsity=0.9)),
    'GraNet':      (fs.GraNet_presets, dict(model_sparsity=0.5), dict(final_sparsity=0.9)),
    'SRigL':       (fs.SRigL_presets, dict(model_sparsity=0.9, structure='fan_in'), {}),
}

def digest(t): return hashlib.sha1(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]

def run(method, arch, compute, opt_name, n_steps=40, bs=32):
    presets, sp, extra = RUNS[method]
    torch.manual_seed(0)
    model = mlp() if arch == 'mlp' else cnn()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 64, generator=g) if arch == 'mlp' else torch.randn(256, 3, 8, 8, generator=g)
    y = torch.randint(0, 10, (256,), generator=g)
    fs.sparsify_model(model, seed=2, compute=compute, **sp)
    opt = (torch.optim.Adam(model.parameters(), lr=3e-3) if opt_name == 'adam'
           else torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    dst = fs.DynamicSparseTraining(model, opt, **{**presets, **extra, 'batches_per_update': 5, 'seed': 3})
    losses, masks, records = [], [], []
    for i in range(n_steps):
        j = (i * bs) % len(x)
        loss = nn.functional.cross_entropy(model(x[j:j + bs]), y[j:j + bs])
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(float(loss).hex())
        recs = dst.step((i + 1) / n_steps)
        if recs is not None:
            masks.append([digest(t.mask) for t in fs.masked_params(model)])
            records.append([(r['active_before'], r['dropped'], r['grown'], r['active_after']) for r in recs])
    weights = [digest(t.param) for t in fs.masked_params(model)]
    return dict(losses=losses, masks=masks, records=records, weights=weights)

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out'); p.add_argument('--compare'); p.add_argument('--methods', nargs='*', default=list(RUNS))
    a = p.parse_args()
    torch.set_num_threads(1)
    res = {}
    for m in a.methods:
        for compute in ('masked', 'sparse'):
            for arch in ('mlp', 'cnn'):
                opts = ('adam', 'sgd') if m in ('SNFS', 'RigL') else ('adam',)
                for o in opts:
                    key = f'{m}/{compute}/{arch}/{o}'
                    res[key] = run(m, arch, compute, o)
                    print(key, 'updates:', len(res[key]['masks']), 'last loss:', float.fromhex(res[key]['losses'][-1]), flush=True)
    res = json.loads(json.dumps(res))   # as saved: tuples become lists
    if a.out: json.dump(res, open(a.out, 'w'), indent=0)
    if a.compare:
        ref = json.load(open(a.compare))
        bad = [k for k in res if res[k] != ref.get(k)]
        print(f"{len(res) - len(bad)} of {len(res)} runs identical" + (f"; differ: {bad}" if bad else ''))
        sys.exit(1 if bad else 0)

if __name__ == '__main__': main()
