import os
# fastai's import triggers torch's deprecation notice for `torch.jit.script`; it is not ours to fix
os.environ.setdefault('PYTHONWARNINGS', 'ignore:`torch.jit.script` is deprecated:FutureWarning')
# One thread per process, for this process and the notebooks it starts: on a busy machine, torch's thread pool
# waits for cores it does not get, and a test suite that takes 4 minutes on an idle machine takes 15 on a loaded
# one. What the kernels do on several threads is tested on purpose, in `test_compute.py::test_kernels_on_two_threads`.
os.environ.setdefault('OMP_NUM_THREADS', '1')
