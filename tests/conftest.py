import os
# fastai's import triggers torch's deprecation notice for `torch.jit.script`; it is not ours to fix
os.environ.setdefault('PYTHONWARNINGS', 'ignore:`torch.jit.script` is deprecated:FutureWarning')
