"""Sparse compute in training, as ratios to dense measured in one run (medians over repeats).

    python benchmarks/compute.py layer [--threads 1 2]   # nn.Linear(4096, 4096), batch 64: one step (forward, backward, Adam)
    python benchmarks/compute.py shapes [--threads 1 2]  # the same at 95% for the shapes of Transformer layers: many rows, narrow weights; and their products alone
    python benchmarks/compute.py fusion [--threads 1 2]  # those layers' kernels, fused (one panel at a time) / unfused (whole-batch panels)
    python benchmarks/compute.py transformers [--threads 1 2]  # a GPT-style stack and nn.TransformerEncoder at 95% ERK: one step
    python benchmarks/compute.py recurrent [--threads 1 2]     # nn.LSTM(128, 1024) and nn.GRU(128, 1024), 50 steps, batch 32, 95% ERK
    python benchmarks/compute.py embedding               # nn.Embedding(50000, 512), 32 x 128 tokens, 95%
    python benchmarks/compute.py conv1d                  # the MNIST-1D reference CNN (1-d convolutions), batch 100, 95% ERK
    python benchmarks/compute.py batch                   # nn.Linear(4096, 4096) and a Conv2d at batches 1-16 / batch 16, 95%
    python benchmarks/compute.py mlp                     # fastai MLP 784-4096-4096-10, RigL at 95% ERK: one epoch; accuracy
    python benchmarks/compute.py update                  # one RigL update over all layers of that MLP / one dense step
    python benchmarks/compute.py memory                  # its training state at 95%: weights, gradients, Adam state, masks
    python benchmarks/compute.py conv                    # resnet18 at 95% ERK, batch 64, 224 x 224: each convolution, and one step
    python benchmarks/compute.py all --save              # everything, written to benchmarks/results/compute.json

Each ratio is measured in one run: the dense step (or epoch) and the other are timed back to back,
then divided; a figure is the median of those ratios over `--repeats`. Variants of the layer:
- masked: fastsparse's masked layer (a dense weight times its mask, mask hooks, masks applied after the step);
- torch CSR: the active values as the parameter, made into a `torch.sparse_csr_tensor` at each forward and
  multiplied with `torch.sparse.mm` (stock torch);
- fastsparse sparse: `sparsify_model(..., compute='sparse')` (compressed rows, fastsparse's kernels, Adam on the values);
- sparselab: `sparselab.SparseLinear`, when the package is importable (a peer, installed in a scratch
  environment only: `python -m venv --system-site-packages /tmp/slenv && /tmp/slenv/bin/pip install sparselab==0.2.2`,
  then run this script with `/tmp/slenv/bin/python`).
Goals (issue 13): layer at 1 thread <= 0.35 / 0.12 / 0.06 at 90 / 95 / 98%, and no worse at 2 threads;
MLP epoch <= 0.4; one update <= 0.5 of a dense step; training state <= 0.3 of dense; resnet18 <= 0.7 where the layer
kind allows."""
import argparse, copy, json, statistics, sys, time
from pathlib import Path
import torch, warnings
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
from torch import nn
from torch.nn import functional as F
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_ms
from fastsparse import sparsify_model, apply_masks, masked_params, DynamicSparseTraining, RigL_presets, SNFS_presets
from fastsparse.compute import kernels

RESULTS = Path(__file__).resolve().parent / 'results' / 'compute.json'
torch.set_flush_denormal(True)   # a model trained on and on towards zero loss must not slow down on denormal floats
try: import sparselab
except ImportError: sparselab = None

# ---------------------------------------------------------------- one layer
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
    sp = nn.Linear(size, size); sparsify_model(sp, sparsity, seed=seed, compute='sparse')
    out['fastsparse sparse'] = stepper(sp, sp.parameters(), x, t)
    L = sp.sparse_weight().weight_layout
    vals, bias = nn.Parameter(sp.weight_values.detach().clone()), nn.Parameter(sp.bias.detach().clone())
    ptr, col = L.ptr, L.idx.long()
    def torch_csr(xb):
        w = torch.sparse_csr_tensor(ptr, col, vals, (size, size))
        return torch.sparse.mm(w, xb.t()).t() + bias
    out['torch CSR'] = stepper(torch_csr, [vals, bias], x, t)
    if sparselab is not None:
        sl = sparselab.SparseLinear(size, size, sparsity=sparsity)
        out['sparselab'] = stepper(sl, sl.parameters(), x, t)
    return out

def _paired_variants(v, names, a):
    "The dense step's median ms, and for each variant in `names` the median over `a.repeats` of its step / the dense step timed just before"
    for f in v.values(): f(); f()              # warm up: optimizer state, caches
    ratios, dense_ms = {n: [] for n in names}, []
    for _ in range(a.repeats):
        for n in names:
            d = median_ms(v['dense'], reps=1, n=a.n); o = median_ms(v[n], reps=1, n=a.n)
            ratios[n].append(o / d); dense_ms.append(d)
    return dict(dense_ms=statistics.median(dense_ms), **{n: statistics.median(ratios[n]) for n in names})

def layer(a):
    rows = []
    for th in a.threads:
        torch.set_num_threads(th)
        print(f"nn.Linear({a.size}, {a.size}), batch {a.bs}, {th} thread(s), kernels: {kernels().name}; "
              "one step (forward, backward, Adam) / the dense step, median of paired runs")
        names = ['masked', 'torch CSR', 'fastsparse sparse'] + (['sparselab'] if sparselab is not None else [])
        print(f"{'sparsity':>8} {'dense ms':>9} " + ' '.join(f'{n:>18}' for n in names))
        for s in a.sparsities:
            r = dict(sparsity=s, threads=th, **_paired_variants(variants(a.size, a.bs, s), names, a))
            rows.append(r)
            print(f"{s:>8.2f} {r['dense_ms']:>9.2f} " + ' '.join(f"{r[n]:>17.3f}x" for n in names))
    return dict(size=a.size, bs=a.bs, rows=rows)

SHAPES = [(1024, 64), (1024, 512), (1024, 4096), (4096, 1024), (384, 2048)]   # (features in = out, rows: batch x sequence)

def products(size, bs, sparsity, a, seed=0):
    """The layer's products alone, forward and backward (the input's and the weights' gradients, no optimizer step), sparse
    (fastsparse's kernels) / dense (`F.linear`, MKL), median of paired runs; and the rate of each in GFLOP/s (the sparse
    products count their active weights only). Sparse products read one activation per multiply-add, so their rate is what
    the caches deliver; at sparsity s the products cannot cost less than (1 - s) x dense rate / sparse rate of the dense ones"""
    torch.manual_seed(seed)
    x, gy = torch.randn(bs, size, requires_grad=True), torch.randn(bs, size)   # the input's gradient too, as inside a network
    dense = nn.Linear(size, size); sp = nn.Linear(size, size); sparsify_model(sp, sparsity, seed=seed, compute='sparse')
    fd, fs = (lambda m: lambda: m(x).backward(gy))(dense), (lambda m: lambda: m(x).backward(gy))(sp)
    for f in (fd, fs, fd, fs): f()
    ratio, dense_ms = _paired(fd, fs, max(15, a.repeats))
    nnz = sp.sparse_weight().weight_layout.nnz
    return dict(products=ratio, **{'dense GFLOP/s': 3 * 2 * bs * size * size / dense_ms / 1e6,
                                   'sparse GFLOP/s': 3 * 2 * bs * nnz / (ratio * dense_ms) / 1e6})

def shapes(a):
    """`layer` at one sparsity for each shape of `--shapes` (`SHAPES`): Transformer layers multiply thousands of rows by narrow
    weights; with `products`, the layer's products alone"""
    out, names = [], ['masked', 'torch CSR', 'fastsparse sparse'] + (['sparselab'] if sparselab is not None else [])
    for th in a.threads:
        torch.set_num_threads(th)
        print(f"nn.Linear(n, n) at {a.shape_sparsity:.0%}, {th} thread(s), kernels: {kernels().name}; "
              "one step (forward, backward, Adam) / the dense step, median of paired runs; then the products alone (forward and "
              "backward, no Adam), sparse / dense, and their rates")
        print(f"{'layer':>22} {'rows':>5} {'dense ms':>9} " + ' '.join(f'{n:>18}' for n in names) + f" {'products':>9} {'GFLOP/s sparse':>15} {'dense':>6}")
        for size, bs in a.shapes:
            r = dict(size=size, rows=bs, threads=th, sparsity=a.shape_sparsity,
                     **_paired_variants(variants(size, bs, a.shape_sparsity), names, a), **products(size, bs, a.shape_sparsity, a))
            out.append(r)
            print(f"{f'nn.Linear({size}, {size})':>22} {bs:>5} {r['dense_ms']:>9.2f} " + ' '.join(f"{r[n]:>17.3f}x" for n in names)
                  + f" {r['products']:>8.3f}x {r['sparse GFLOP/s']:>15.1f} {r['dense GFLOP/s']:>6.1f}")
    return out

def fusion(a):
    """The layer's kernels, fused (`linear_fwd`, `linear_bwd`: one panel at a time in a buffer of the thread) / unfused (the whole
    batch into panels with `to_panels`, then `spmm`, `sddmm` and `from_panels`), forward and backward (all three gradients), at
    95% for each shape of `--shapes`, median of paired runs"""
    from fastsparse.compute import _NONE
    k, out = kernels(), []
    for th in a.threads:
        torch.set_num_threads(th)
        print(f"The kernels of nn.Linear(n, n) at {a.shape_sparsity:.0%}, {th} thread(s): fused / unfused, median of paired runs")
        print(f"{'layer':>22} {'rows':>5} {'forward':>8} {'backward':>9} {'unfused ms':>11}")
        for size, bs in a.shapes:
            torch.manual_seed(0)
            m = nn.Linear(size, size); sparsify_model(m, a.shape_sparsity, seed=0, compute='sparse')
            L, v, b = m.sparse_weight().weight_layout, m.sparse_weight().values.detach(), m.bias.detach()
            x, gy, vt = torch.randn(bs, size), torch.randn(bs, size), v.index_select(0, L.perm)
            def unfused_fwd(): return k.from_panels(k.spmm(L.ptr, L.idx, v, k.to_panels(x, _NONE), L.rows, bs, _NONE), bs, L.rows, b)
            def unfused_bwd():
                gyt = k.to_panels(gy, _NONE)
                gx = k.from_panels(k.spmm(L.tptr, L.tidx, vt, gyt, L.cols, bs, _NONE), bs, L.cols, _NONE)
                return gx, k.sddmm(L.ptr, L.idx, gyt, k.to_panels(x, _NONE), bs), gy.sum(0)
            def fused_fwd(): return k.linear_fwd(L.ptr, L.idx, v, x, b)
            def fused_bwd(): return k.linear_bwd(L.ptr, L.idx, v, L.tptr, L.tidx, vt, x, gy, True, True, True)
            torch.testing.assert_close(fused_fwd(), unfused_fwd(), rtol=1e-4, atol=1e-4)          # the same products
            for f, u in zip(fused_bwd(), unfused_bwd()): torch.testing.assert_close(f, u, rtol=1e-4, atol=1e-3)
            fwd, ms = _paired(unfused_fwd, fused_fwd, max(15, a.repeats))
            bwd, _ = _paired(unfused_bwd, fused_bwd, max(15, a.repeats))
            out.append(dict(size=size, rows=bs, threads=th, forward=fwd, backward=bwd, unfused_fwd_ms=ms))
            print(f"{f'nn.Linear({size}, {size})':>22} {bs:>5} {fwd:>7.3f}x {bwd:>8.3f}x {ms:>11.2f}")
    return out

# ---------------------------------------------------------------- Transformers
class GPTBlock(nn.Module):
    "A GPT-style block: pre-norm causal self-attention with `nn.Linear` q, k, v and output projections, then a 4x MLP"
    def __init__(self, d, heads):
        super().__init__()
        self.heads, self.ln1, self.ln2 = heads, nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc, self.proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
    def forward(self, x):
        B, S, D = x.shape
        h = self.ln1(x)
        q, k, v = (f(h).view(B, S, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, S, D))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))

TRANSFORMERS = {   # name: (model, input shape (batch, sequence, features), heads, causal)
    'gpt':     (lambda: nn.Sequential(*[GPTBlock(512, 8) for _ in range(4)]), (8, 256, 512), 8, True),
    'encoder': (lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(512, 8, 2048, dropout=0., batch_first=True), 4,
                                              enable_nested_tensor=False), (16, 128, 512), 8, False)}

def _seq_step(model, x, t):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    def step(): F.mse_loss(model(x), t).backward(); opt.step(); opt.zero_grad(set_to_none=False)
    return step

def _masked_and_sparse(dense, x, t, a, fd, **sparsify):
    """A step of `dense` sparsified (copied, same weights) in masked and in sparse compute, each paired with the dense step `fd`:
    the two ratios, the dense step's milliseconds, how many masked weights compute sparse, and `{mode} state`, the bytes of the
    parameters (their gradients and Adam's moments are the same size) over the dense model's"""
    size = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())
    r = {}
    for mode in ('masked', 'sparse'):
        m = copy.deepcopy(dense); sparsify_model(m, a.shape_sparsity, seed=0, compute=mode, **sparsify)
        fo = _seq_step(m, x, t); fd(); fo()
        r[mode], r['dense_ms'] = _paired(fd, fo, a.repeats)
        r[f'{mode} state'] = size(m) / size(dense)
    r['sparse weights'] = f"{sum(t.sparse for t in masked_params(m))} of {len(masked_params(m))}"
    return r

def transformers_bench(a):
    """One training step (forward, backward, Adam) of a GPT-style stack (4 blocks, d 512, 8 heads, sequence 256, batch 8) and of
    `nn.TransformerEncoder` (4 layers, d 512, ff 2048, sequence 128, batch 16) at 95% ERK, masked and sparse, / the dense step;
    and the attention product's own forward and backward (`F.scaled_dot_product_attention`, dense in every mode) / the dense step"""
    out = {}
    for th in a.threads:
        torch.set_num_threads(th)
        print(f"Transformers at {a.shape_sparsity:.0%} ERK, {th} thread(s): one step / the dense step, median of paired runs")
        for name in a.transformers: out[_named(name, th)] = dict(threads=th, **_transformer(name, a))
    return out

def _named(name, threads): return name if threads == 1 else f'{name}, {threads} threads'

def _transformer(name, a):
        make, (B, S, D), H, causal = TRANSFORMERS[name]
        g = torch.Generator().manual_seed(0)
        x, t = torch.randn(B, S, D, generator=g), torch.randn(B, S, D, generator=g)
        torch.manual_seed(0); dense = make(); fd = _seq_step(dense, x, t)
        q = [torch.randn(B, H, S, D // H, requires_grad=True) for _ in range(3)]
        def attention(): F.scaled_dot_product_attention(*q, is_causal=causal).sum().backward()
        blocks = sum(1 for m in dense.modules() if isinstance(m, (GPTBlock, nn.TransformerEncoderLayer)))
        r = dict(attention=median_ms(attention, reps=a.repeats, n=a.n) * blocks / median_ms(fd, reps=a.repeats, n=a.n))
        r = {**r, **_masked_and_sparse(dense, x, t, a, fd, sparse_f='erk')}
        print(f"  {name:>8}: masked {r['masked']:.3f}x  sparse {r['sparse']:.3f}x  ({r['sparse weights']} masked weights compute sparse; "
              f"dense step {r['dense_ms']:.0f} ms; the attention product {r['attention']:.2f} of it)")
        return r

class Recurrent(nn.Module):
    "A recurrent layer's output sequence (time first), as the model of a step"
    def __init__(self, rnn): super().__init__(); self.rnn = rnn
    def forward(self, x): return self.rnn(x)[0]

RECURRENT = {'lstm': lambda: nn.LSTM(128, 1024), 'gru': lambda: nn.GRU(128, 1024)}   # on 50 steps of a batch of 32

def recurrent_bench(a):
    """One training step (forward, backward, Adam) of `nn.LSTM(128, 1024)` and `nn.GRU(128, 1024)` on 50 steps of a batch of 32, at
    95% ERK, masked and sparse, / the dense step (torch's own recurrent kernels)"""
    out = {}
    for th in a.threads:
        torch.set_num_threads(th)
        print(f"Recurrent layers at {a.shape_sparsity:.0%} ERK, {th} thread(s), 50 steps of a batch of 32: one step / the dense step, median of paired runs")
        for name, make in RECURRENT.items():
            g = torch.Generator().manual_seed(0)
            x, t = torch.randn(50, 32, 128, generator=g), torch.randn(50, 32, 1024, generator=g)
            torch.manual_seed(0); dense = Recurrent(make())
            out[_named(name, th)] = r = dict(threads=th, **_masked_and_sparse(dense, x, t, a, _seq_step(dense, x, t), sparse_f='erk'))
            print(f"  {name:>5}: masked {r['masked']:.3f}x  sparse {r['sparse']:.3f}x  ({r['sparse weights']} masked weights compute sparse; "
                  f"dense step {r['dense_ms']:.0f} ms)")
    return out

def embedding_bench(a):
    """One training step (lookup, backward, Adam) of `nn.Embedding(50000, 512)` on a batch of 32 x 128 tokens at 95%, masked and
    sparse, / the dense step; and the training state (table, gradient, Adam's two moments) / the dense one"""
    torch.set_num_threads(a.threads[0])
    print(f"nn.Embedding(50000, 512) at {a.shape_sparsity:.0%}, {a.threads[0]} thread(s), 32 x 128 tokens: one step / the dense step, median of paired runs")
    g = torch.Generator().manual_seed(0)
    x, t = torch.randint(0, 50000, (32, 128), generator=g), torch.randn(32, 128, 512, generator=g)
    torch.manual_seed(0); dense = nn.Embedding(50000, 512)
    r = _masked_and_sparse(dense, x, t, a, _seq_step(dense, x, t), embeddings=True)
    print(f"  masked {r['masked']:.3f}x  sparse {r['sparse']:.3f}x the dense step ({r['dense_ms']:.0f} ms); training state: masked "
          f"{r['masked state']:.3f}x, sparse {r['sparse state']:.3f}x (parameters, gradients and Adam's moments; masks not counted)")
    return r

def conv1d_bench(a):
    """One training step (forward, backward, Adam) of the MNIST-1D reference CNN (`fastsparse.data.mnist1d_cnn`: three 1-d
    convolutions of 32 channels and a linear head) on a batch of 100 sequences of 40, at 95% ERK, masked and sparse, / the dense step"""
    from fastsparse.data import mnist1d_cnn
    torch.set_num_threads(a.threads[0])
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(100, 1, 40, generator=g), torch.randn(100, 10, generator=g)
    torch.manual_seed(0); dense = mnist1d_cnn()
    r = _masked_and_sparse(dense, x, t, a, _seq_step(dense, x, t), sparse_f='erk')
    print(f"MNIST-1D CNN at {a.shape_sparsity:.0%} ERK, batch 100, {a.threads[0]} thread(s): masked {r['masked']:.3f}x, sparse "
          f"{r['sparse']:.3f}x the dense step ({r['dense_ms']:.2f} ms; {r['sparse weights']} masked weights compute sparse)")
    return r

def mobilenet_bench(a):
    """One training step (forward, backward, Adam) of torchvision's MobileNetV2 (10 classes, no pretrained weights) on a batch
    of 32 images of 64 x 64, at 95% ERK, masked and sparse (its depthwise and 1 x 1 convolutions included), / the dense step"""
    import torchvision
    torch.set_num_threads(a.threads[0])
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(32, 3, 64, 64, generator=g), torch.randn(32, 10, generator=g)
    torch.manual_seed(0); dense = torchvision.models.mobilenet_v2(weights=None, num_classes=10)
    r = _masked_and_sparse(dense, x, t, a, _seq_step(dense, x, t), sparse_f='erk')
    print(f"MobileNetV2 at {a.shape_sparsity:.0%} ERK, batch 32, 64 x 64, {a.threads[0]} thread(s): masked {r['masked']:.3f}x, sparse "
          f"{r['sparse']:.3f}x the dense step ({r['dense_ms']:.0f} ms; {r['sparse weights']} masked weights compute sparse, "
          "the depthwise ones included)")
    return r

BATCHES = (1, 2, 4, 8, 16)

def batch_bench(a):
    """`nn.Linear(4096, 4096)` and `nn.Conv2d(64, 64, 3)` on 16 x 16 images at 95%, sparse compute, at batches of 1 to 16: the
    layer's products (forward and backward, the input's gradient too) and one step (with Adam on the active weights), each
    / the same at batch 16, median of paired runs. In proportion to the batch, batch 1 would cost 1/16 of batch 16"""
    torch.set_num_threads(a.threads[0])
    out = {}
    for name, make, shape in (('Linear(4096, 4096)', lambda: nn.Linear(4096, 4096), (4096,)),
                              ('Conv2d(64, 64, 3), 16 x 16', lambda: nn.Conv2d(64, 64, 3, padding=1), (64, 16, 16))):
        torch.manual_seed(0); m = make(); sparsify_model(m, 0.95, seed=0, compute='sparse')
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        def fns(bs):
            x = torch.randn(bs, *shape, requires_grad=True); gy = torch.randn_like(m(x))
            def prod(): m(x).backward(gy)
            def step(): m(x).backward(gy); opt.step(); opt.zero_grad(set_to_none=False)
            return prod, step
        ref = fns(16)
        rows = out[name] = {}
        for bs in BATCHES:
            f = fns(bs)
            for g in (*ref, *f): g()
            pr, ms16 = _paired(ref[0], f[0], 2 * a.repeats + 1)   # 15 pairs by default: a batch of one takes well under a ms
            st, _ = _paired(ref[1], f[1], 2 * a.repeats + 1)
            rows[bs] = dict(products=pr, step=st, batch16_products_ms=ms16)
        print(f"{name} at 95%, sparse compute, {a.threads[0]} thread(s), / batch 16 (products: forward and backward; step: with Adam): "
              + '; '.join(f"batch {bs}: {r['products']:.3f} / {r['step']:.3f}" for bs, r in rows.items()))
    return out

# ---------------------------------------------------------------- the MLP, in fastai
def digits784(bs=64, seed=42):
    "scikit-learn's digits scaled up to 28x28 (784 inputs, as MNIST's), split 80/20: offline data of the MLP's shape"
    from sklearn.datasets import load_digits
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from torch.utils.data import TensorDataset
    import random
    X, y = load_digits(return_X_y=True)
    X = F.interpolate(torch.tensor(X, dtype=torch.float32).view(-1, 1, 8, 8) / 16., size=(28, 28), mode='bilinear').view(-1, 784)
    y = torch.tensor(y)
    idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed)); n_val = len(X) // 5
    random.seed(seed)
    return DataLoaders(DataLoader(TensorDataset(X[idx[n_val:]], y[idx[n_val:]]), bs=bs, shuffle=True, drop_last=True),
                       DataLoader(TensorDataset(X[idx[:n_val]], y[idx[:n_val]]), bs=256))

HIDDEN = 4096   # the MLP's hidden width (`--hidden`; smaller only for smoke tests)

def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))

def learner(mode, seed=0, sparsity=0.95):
    from fastai.basics import Learner, CrossEntropyLossFlat, accuracy
    import fastai.callback.progress, fastai.callback.schedule   # noqa: F401  (learn.no_bar, no_logging, fit_one_cycle)
    learn = Learner(digits784(seed=seed), mlp(seed), loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    if mode != 'dense': learn.sparsify(sparsity, 'erk', seed=seed, compute=mode)
    return learn

def _fit(learn, epochs, mode, one_cycle=False, **kw):
    from fastsparse import DynamicSparseTrainingCallback
    cbs = [] if mode == 'dense' else [DynamicSparseTrainingCallback(seed=0, **{**RigL_presets, **kw})]
    with learn.no_bar(), learn.no_logging():
        (learn.fit_one_cycle if one_cycle else learn.fit)(epochs, 1e-3, cbs=cbs)

def mlp_bench(a):
    torch.set_num_threads(a.threads[0])
    ls = {m: learner(m) for m in ('dense', 'masked', 'sparse')}
    for m, l in ls.items(): _fit(l, 1, m, batches_per_update=10)        # warm up
    print(f"MLP 784-{HIDDEN}-{HIDDEN}-10, RigL at 95% ERK (one update in each epoch, batches_per_update=10), batch 64, "
          f"{len(ls['dense'].dls.train)} steps per epoch, {a.threads[0]} thread(s): one fastai epoch / the dense epoch")
    ratios, dense_s = {'masked': [], 'sparse': []}, []
    for _ in range(a.repeats):
        for m in ('masked', 'sparse'):
            t0 = time.perf_counter(); _fit(ls['dense'], 1, 'dense'); d = time.perf_counter() - t0
            t0 = time.perf_counter(); _fit(ls[m], 1, m, batches_per_update=10); s = time.perf_counter() - t0
            ratios[m].append(s / d); dense_s.append(d)
            assert ls[m].dst.n_updates == 1
    speed = dict(dense_s=statistics.median(dense_s), **{m: statistics.median(r) for m, r in ratios.items()})
    print(f"  dense epoch {speed['dense_s']:.2f} s; masked {speed['masked']:.3f}x, sparse {speed['sparse']:.3f}x")
    acc = {'masked': [], 'sparse': []}
    for seed in range(a.seeds):
        for m in acc:
            l = learner(m, seed=seed); _fit(l, a.epochs, m, one_cycle=True, batches_per_update=10)
            with l.no_bar(): acc[m].append(float(l.validate()[1]))
    print(f"  accuracy after {a.epochs} epochs (fit_one_cycle, RigL every 10 steps), seeds 0-{a.seeds - 1}: "
          + '; '.join(f"{m} {' '.join(f'{x:.4f}' for x in v)}" for m, v in acc.items()))
    return dict(speed, accuracy=acc, epochs=a.epochs, threads=a.threads[0])

# ---------------------------------------------------------------- one update
def _model_step(model, opt, x, y, dst=None):
    i = [0]
    def step():                  # a new batch of the pool each time: the model does not converge on one batch
        i[0] = (i[0] + 1) % len(x)
        F.cross_entropy(model(x[i[0]]), y[i[0]]).backward(); opt.step()
        if dst is not None: dst.step(0.1, update=False); dst.engine.expect_update(False)   # no update follows the next step either
        opt.zero_grad(set_to_none=False)
    return step

def update_bench(a):
    torch.set_num_threads(a.threads[0])
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 64, 784, generator=g), torch.randint(0, 10, (16, 64), generator=g)   # a pool of 16 batches
    dense = mlp(); dopt = torch.optim.Adam(dense.parameters(), lr=1e-3)
    dense_step = _model_step(dense, dopt, x, y)
    out = {}
    print(f"One topology update over all layers of the MLP at 95% ERK, batch 64, {a.threads[0]} thread(s), after a backward pass, "
          "and one step without an update (SNFS in sparse compute keeps a dense momentum at every step): ratios to a dense step")
    for name, mode, preset in (('RigL masked', 'masked', RigL_presets), ('RigL sparse', 'sparse', RigL_presets),
                               ('SNFS masked', 'masked', SNFS_presets), ('SNFS sparse', 'sparse', SNFS_presets)):
        m = mlp(); sparsify_model(m, 0.95, 'erk', seed=0, compute=mode)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        dst = DynamicSparseTraining(m, opt, seed=0, **preset)
        step = _model_step(m, opt, x, y, dst)
        for f in (dense_step, step): f(); f()
        def upd(update=True):                        # the backward pass the update reads, then the driver's step with the update
            dst.engine.expect_update()
            F.cross_entropy(m(x[0]), y[0]).backward(); opt.step()
            t0 = time.perf_counter(); dst.step(0.1, update=update); dt = time.perf_counter() - t0
            opt.zero_grad(set_to_none=False)
            return dt * 1e3
        upd(); upd(False)
        r_dense, r_step, r_sd, r_beyond, ds, us = [], [], [], [], [], []
        for _ in range(a.repeats):
            d = median_ms(dense_step, reps=1, n=a.n); s = median_ms(step, reps=1, n=a.n)
            u = statistics.median(upd() for _ in range(a.n))
            o = statistics.median(upd(False) for _ in range(a.n))   # the driver's ordinary step (SNFS: the momentum of inactive weights)
            r_dense.append(u / d); r_step.append(u / s); r_sd.append(s / d); r_beyond.append((u - o) / d); ds.append(d); us.append(u)
        out[name] = dict(update_per_dense_step=statistics.median(r_dense), update_per_step=statistics.median(r_step),
                         step_per_dense_step=statistics.median(r_sd), beyond_ordinary_per_dense_step=statistics.median(r_beyond),
                         dense_step_ms=statistics.median(ds), update_ms=statistics.median(us))
        print(f"  {name:>11}: update {out[name]['update_ms']:.0f} ms, {out[name]['update_per_dense_step']:.3f}x a dense step "
              f"({out[name]['dense_step_ms']:.0f} ms; {out[name]['update_per_step']:.2f}x a step of its own), "
              f"{out[name]['beyond_ordinary_per_dense_step']:.3f}x beyond the driver's ordinary step; "
              f"its step (no update) {out[name]['step_per_dense_step']:.3f}x a dense step")
    return out

# ---------------------------------------------------------------- convolutions: resnet18
def resnet(mode, sparsity, seed=0):
    import torchvision
    torch.manual_seed(seed)
    m = torchvision.models.resnet18(weights=None, num_classes=10)
    if mode != 'dense': sparsify_model(m, sparsity, 'erk', seed=seed, compute=mode)
    return m

def keep_freed_memory(limit=1 << 30)->bool:
    """Keep freed blocks of up to `limit` bytes in the process for reuse (glibc's `mallopt`, for the rest of the process).
    Set at run time, glibc does not honour it in every address layout; `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_`
    set before Python starts are the dependable way"""
    import ctypes
    try: libc = ctypes.CDLL('libc.so.6')
    except OSError: return False
    return bool(libc.mallopt(-3, int(limit))) and bool(libc.mallopt(-1, int(limit)))   # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD

def _paired(f_dense, f_other, repeats):
    "Median over `repeats` of the ratio of `f_other`'s time to `f_dense`'s, timed back to back; and the dense median in ms"
    rs, ds = [], []
    for _ in range(repeats):
        d = median_ms(f_dense, reps=1, n=1); o = median_ms(f_other, reps=1, n=1)
        rs.append(o / d); ds.append(d)
    return statistics.median(rs), statistics.median(ds)

def _cpu(f, n=2):
    "Per call of `f` (median of `n`): the process's user and system CPU seconds and its page faults (`getrusage`)"
    import resource
    out = []
    for _ in range(n):
        r0 = resource.getrusage(resource.RUSAGE_SELF); f(); r1 = resource.getrusage(resource.RUSAGE_SELF)
        out.append((r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt))
    return dict(zip(('user_s', 'system_s', 'page_faults'), (statistics.median(v) for v in zip(*out))))

def conv_bench(a):
    torch.set_num_threads(a.threads[0])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, a.bs, 3, a.image, a.image, generator=g); y = torch.randint(0, 10, (2, a.bs), generator=g)   # 2 batches
    models = {mode: resnet(mode, a.conv_sparsity) for mode in ('dense', 'masked', 'sparse')}
    print(f"resnet18 at {a.conv_sparsity:.0%} ERK, batch {a.bs}, {a.image} x {a.image}, {a.threads[0]} thread(s), kernels: {kernels().name}")
    saved = json.loads(RESULTS.read_text()).get('conv') if a.conv_step_only and RESULTS.exists() else None
    inputs = {}                                   # what each convolution sees in the dense model
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: inputs.__setitem__(n, i[0].detach()))
             for n, m in models['dense'].named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad(): models['dense'](x[0])
    for h in hooks: h.remove()
    print("each convolution of the model in sparse compute (those under `COMPUTE_MIN_SPARSITY` stay masked): forward and "
          "backward (input and weight gradients) / the dense layer's, median of paired runs")
    print(f"  {'layer':>22} {'in':>16} {'density':>8} {'compute':>8} {'dense ms':>9} {'ratio':>8}")
    layers = [] if saved is None else saved['layers']
    for name, xin in ({} if saved is not None else inputs).items():
        d, s = models['dense'].get_submodule(name), models['sparse'].get_submodule(name)
        xr = xin.clone().requires_grad_(); gy = torch.randn_like(d(xin))
        def fb(m):
            def f():
                m(xr).backward(gy); xr.grad = None
            return f
        r, dms = _paired(fb(d), fb(s), a.conv_repeats)
        dens, how = s.weight_mask.float().mean().item(), 'sparse' if hasattr(s, 'weight_values') else 'masked'
        layers.append(dict(layer=name, input=list(xin.shape), density=dens, compute=how, dense_ms=dms, sparse=r))
        print(f"  {name:>22} {str(tuple(xin.shape[1:])):>16} {dens:>8.3f} {how:>8} {dms:>9.1f} {r:>7.3f}x")
    all_convs = sum(l['dense_ms'] * l['sparse'] for l in layers) / sum(l['dense_ms'] for l in layers)
    print(f"  all convolutions: {all_convs:.3f}x of their dense time")
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    steps = {k: _model_step(m, opts[k], x, y, None if k == 'dense' else DynamicSparseTraining(m, opts[k], seed=0, **RigL_presets))
             for k, m in models.items()}
    for f in steps.values(): f()
    whole, dense_ms, cpu = {}, {}, {}
    for memory in ('default', 'kept'):       # glibc's default, then `keep_freed_memory` (for the rest of the process)
        if memory == 'kept' and not keep_freed_memory(): break
        for f in steps.values(): f()
        for k in ('masked', 'sparse'):
            whole[f'{k}, {memory} memory'], dense_ms[memory] = _paired(steps['dense'], steps[k], a.conv_repeats)
        print(f"one training step of the whole model (forward, backward, Adam, RigL's ordinary step), {memory} memory "
              f"(dense {dense_ms[memory]:.0f} ms): " + ', '.join(f'{k} {v:.3f}x' for k, v in whole.items() if memory in k))
        for k in ('dense', 'sparse'):
            cpu[f'{k}, {memory} memory'] = c = _cpu(steps[k])
            print(f"  {k}: user {c['user_s']:.2f} s, system {c['system_s']:.2f} s, {c['page_faults']:.0f} page faults per step")
    return dict(image=a.image, bs=a.bs, sparsity=a.conv_sparsity, threads=a.threads[0], layers=layers,
                all_convolutions=all_convs, dense_step_ms=dense_ms, step=whole,
                cpu_per_step=cpu)

# ---------------------------------------------------------------- memory
def _bytes(ts): return sum(t.numel() * t.element_size() for t in ts if t is not None)

def state_bytes(model, opt):
    "Bytes of what training keeps between steps: parameters, gradients, optimizer state, buffers (masks), sparse layouts"
    from fastsparse.compute import SparseTrain
    params = list(model.parameters())
    layouts = [t for m in model.modules() if isinstance(m, SparseTrain) for a in m.sparse_attrs for t in m.sparse_weight(a).weight_layout[2:]]
    return dict(weights=_bytes(params), grads=_bytes(p.grad for p in params),
                opt_state=_bytes(v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0),
                masks_and_buffers=_bytes(model.buffers()), layouts=_bytes(layouts))

def memory_bench(a):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 784, generator=g), torch.randint(0, 10, (64,), generator=g)
    out = {}
    for mode in ('dense', 'masked', 'sparse'):
        m = mlp()
        if mode != 'dense': sparsify_model(m, 0.95, 'erk', seed=0, compute=mode)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        F.cross_entropy(m(x), y).backward(); opt.step()
        out[mode] = state_bytes(m, opt)
    total = {k: sum(v.values()) for k, v in out.items()}
    print("Training state of the MLP at 95% ERK (weights, gradients, Adam state, masks and other buffers, sparse layouts), "
          "after one step: MB and ratio to dense")
    for k, v in out.items():
        print(f"  {k:>6}: {total[k] / 2**20:8.1f} MB  {total[k] / total['dense']:.3f}x  " + ', '.join(f'{n} {b / 2**20:.1f}' for n, b in v.items()))
    return dict(bytes=out, ratio={k: total[k] / total['dense'] for k in out})

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('what', nargs='?', default='layer', choices=['layer', 'shapes', 'fusion', 'transformers', 'recurrent', 'embedding', 'conv1d', 'mobilenet', 'batch', 'mlp', 'update', 'memory', 'conv', 'all'])
    p.add_argument('--size', type=int, default=4096); p.add_argument('--bs', type=int, default=64)
    p.add_argument('--sparsities', type=float, nargs='+', default=[0.9, 0.95, 0.98])
    p.add_argument('--shape-sparsity', type=float, default=0.95)
    p.add_argument('--shapes', type=lambda v: tuple(map(int, v.split('x'))), nargs='+', default=SHAPES,
                   help="shapes: layers as FEATURESxROWS, e.g. 1024x4096 (default: SHAPES)")
    p.add_argument('--transformers', nargs='+', default=list(TRANSFORMERS), choices=list(TRANSFORMERS))
    p.add_argument('--threads', type=int, nargs='+', default=[1])
    p.add_argument('--repeats', type=int, default=7); p.add_argument('--n', type=int, default=3)
    p.add_argument('--epochs', type=int, default=8); p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--hidden', type=int, default=4096, help="the MLP's hidden width (smaller only to check the script runs)")
    p.add_argument('--image', type=int, default=224); p.add_argument('--conv-sparsity', type=float, default=0.95)
    p.add_argument('--conv-repeats', type=int, default=3)
    p.add_argument('--conv-step-only', action='store_true', help="conv: time the whole model only, keep the saved per-layer table")
    p.add_argument('--save', action='store_true')
    a = p.parse_args()
    HIDDEN = a.hidden
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if 'rows' in saved: saved = {'layer': saved}      # the file's earlier layout: the layer section only
    runs = {'layer': layer, 'shapes': shapes, 'fusion': fusion, 'transformers': transformers_bench, 'recurrent': recurrent_bench, 'embedding': embedding_bench, 'conv1d': conv1d_bench, 'mobilenet': mobilenet_bench, 'batch': batch_bench, 'mlp': mlp_bench, 'update': update_bench, 'memory': memory_bench, 'conv': conv_bench}
    for k in (runs if a.what == 'all' else [a.what]):
        saved[k] = runs[k](a)
    if a.save:
        RESULTS.write_text(json.dumps(saved, indent=1) + '\n')
        print(f'wrote {RESULTS}')
