"""The benchmarks' one timing helper, built on `torch.utils.benchmark.Timer` (which warms up, and times on
torch's current thread count, here set from the timed scripts' `--threads`).

    from _timing import median_ms        # in a script run as `python benchmarks/x.py`
    ms = median_ms(lambda: model(x), reps=15, n=5)"""
import statistics
import torch
from torch.utils import benchmark

def times_ms(f, reps:int=7, n:int=3)->list:
    "Milliseconds per call of `f()`, one figure per block of `n` calls, for `reps` blocks (`Timer.timeit`, each after its warm-up)"
    timer = benchmark.Timer(stmt='f()', globals={'f': f}, num_threads=torch.get_num_threads())
    return [timer.timeit(n).median * 1e3 for _ in range(reps)]

def median_ms(f, reps:int=7, n:int=3)->float:
    "Median over `reps` blocks of `n` calls of the milliseconds one call of `f()` takes"
    return statistics.median(times_ms(f, reps, n))
