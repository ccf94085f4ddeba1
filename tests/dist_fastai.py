"""fastai Learner with DynamicSparseTrainingCallback on several processes (launched by test_distributed.py), in masked or sparse compute.

Each process has its own shuffling of the data and its own random seed; the model is wrapped in
DistributedDataParallel (what fastai's `distrib_ctx` does on GPUs), so gradients are averaged."""
import os, sys
from pathlib import Path
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from fastai.basics import *
from fastai.callback.all import *
from fastsparse import sparsify_model, DynamicSparseTrainingCallback, PRESETS, masked_params, erdos_renyi_sparsity, normalized
from fastsparse.data import digits_dls, digits_mlp

class SeqNet(nn.Module):
    "A digit's 8 x 8 pixels as 8 steps of 8: a linear embedding, a Transformer encoder layer, an LSTM, a linear head"
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(8, 16)
        self.enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0., batch_first=True)
        self.lstm, self.head = nn.LSTM(16, 16, batch_first=True), nn.Linear(16, 10)
    def forward(self, x): return self.head(self.lstm(self.enc(self.emb(x.view(-1, 8, 8))))[0][:, -1])

class Conv1dNet(nn.Module):
    "A digit's 8 x 8 pixels as 8 channels of 8 steps: two 1-d convolutions (the second strided, in 4 groups), a linear head"
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv1d(32, 32, 3, stride=2, padding=1, groups=4), nn.ReLU(),
                                  nn.Flatten(), nn.Linear(32 * 4, 10))
    def forward(self, x): return self.body(x.view(-1, 8, 8))

def main(preset, out, compute='masked', structure='element', net='mlp'):
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    torch.manual_seed(rank)
    model = digits_mlp() if net == 'mlp' else SeqNet() if net == 'seq' else Conv1dNet()
    if structure == 'element': sparsify_model(model, 0.9, erdos_renyi_sparsity, compute=compute)
    else: sparsify_model(model, 0.5 if ':' in structure else 0.9, compute=compute, structure=structure)   # N:M: 1 - N/M
    learn = Learner(digits_dls(seed=rank), DDP(model), loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                    opt_func=partial(SGD, mom=0.9))
    if preset == 'RigL-global': kw = {**PRESETS['RigL'], 'scope': 'global', 'grow_score_f': normalized('gradient_magnitude')}
    elif preset == 'SNFS-momentum': kw = {**PRESETS['SNFS'], 'grown_state': 'momentum'}   # grown weights take the momentum each process gathered
    else: kw = dict(PRESETS[preset])
    if 'final_sparse_f' in kw: kw['final_sparsity'] = 0.95           # GMP, GraNet: prune from 90% to 95%
    if preset == 'DSR': kw['initial_drop_grow_pct'] = 0.1             # a threshold that moves within 3 epochs
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(3, 1e-2, cbs=DynamicSparseTrainingCallback(**kw, batches_per_update=4))
    torch.save({'state': model.state_dict(), 'updates': len(learn.dst.history),
                'budget': [int(t.mask.sum()) for t in masked_params(model)], 'compute': [t.sparse for t in masked_params(model)]}, Path(out)/f'rank{rank}.pt')
    learn.save(Path(out).resolve()/'learn')          # fastai writes the checkpoint on rank 0 only
    dist.barrier(); dist.destroy_process_group()   # leave together: gloo aborts a process torn down mid-exchange

if __name__ == '__main__': main(*sys.argv[1:])
