"""Dynamic sparse training in a plain PyTorch loop, on one process or several (DistributedDataParallel).

One process:        python examples/train_ddp.py --preset RigL
Two processes:      python -m torch.distributed.run --nproc_per_node 2 examples/train_ddp.py --preset RigL
(CPU: the gloo backend; on GPUs the same script runs with --backend nccl, one process per GPU.)

Each process trains on its own shard of scikit-learn's digits; DistributedDataParallel averages the
gradients, and fastsparse gives every process rank 0's masks, so all replicas stay bit-identical.
With --out DIR every process writes its final state to DIR/rank{N}.pt (rank 0 also DIR/model.pth)."""
import argparse, os
from pathlib import Path
import torch
from torch import nn
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from fastsparse import sparsify_model, erdos_renyi_sparsity, DynamicSparseTraining, PRESETS, masked_params

def digits(rank, world):
    "This process's shard of the training set, and the whole validation set"
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16., dtype=torch.float32), torch.tensor(y)
    g = torch.Generator().manual_seed(42)
    idx = torch.randperm(len(X), generator=g)
    trn, val = idx[360:], idx[:360]
    mine = trn[rank::world]
    return (X[mine], y[mine]), (X[val], y[val])

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--preset', default='RigL', choices=list(PRESETS))
    p.add_argument('--sparsity', type=float, default=0.9)
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--bs', type=int, default=32)
    p.add_argument('--batches-per-update', type=int, default=10)
    p.add_argument('--backend', default='gloo')
    p.add_argument('--out', type=Path, default=None)
    a = p.parse_args()

    distributed = 'WORLD_SIZE' in os.environ
    if distributed: dist.init_process_group(a.backend)
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.manual_seed(rank)          # different on purpose: DDP and fastsparse make the replicas agree

    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    sparsify_model(model, a.sparsity, erdos_renyi_sparsity)    # random masks: every process gets rank 0's
    net = DDP(model) if distributed else model                  # DDP copies rank 0's weights and masks
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    dst = DynamicSparseTraining(model, opt, **PRESETS[a.preset], batches_per_update=a.batches_per_update)

    (X, y), (Xv, yv) = digits(rank, world)
    n_batches = len(X) // a.bs
    total = a.epochs * n_batches
    for epoch in range(a.epochs):
        perm = torch.randperm(len(X))
        for i in range(n_batches):
            b = perm[i * a.bs:(i + 1) * a.bs]
            F.cross_entropy(net(X[b]), y[b]).backward()
            opt.step()
            dst.step(pct_train=(epoch * n_batches + i + 1) / total)
            opt.zero_grad()
    with torch.no_grad(): acc = (model(Xv).argmax(1) == yv).float().mean().item()
    if rank == 0:
        print(f"{a.preset} on {world} process(es): accuracy {acc:.4f}, {len(dst.history)} updates, "
              f"sparsity {dst.sparsity():.4f}, exploration rate {dst.exploration_rate():.4f}")
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        torch.save({'state': model.state_dict(), 'updates': len(dst.history),
                    'budget': [int(t.mask.sum()) for t in masked_params(model)]}, a.out/f'rank{rank}.pt')
        if rank == 0: torch.save(model.state_dict(), a.out/'model.pth')     # checkpoints are written once
    if distributed:
        dist.barrier(); dist.destroy_process_group()   # leave together: gloo aborts a process torn down mid-exchange

if __name__ == '__main__': main()
