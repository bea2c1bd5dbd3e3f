"""Science core. Tensors in, plain results out; nothing here knows of configs, files or notebooks.

* ``hessian``: the Hessian operator (protocol, engines), its solvers and trace estimators, PyHessian's wrapper;
* ``landscape``: sampling, subspaces, Monte-Carlo Delta_k, the quadratic model, jets, the surrogate, bounds;
* ``sample_size``: decay of Delta_k, the sufficient sample size K, the band's coverage, the prediction benchmark;
* ``training``: the networks, the training recipes, many trainings at once, teacher-student tasks;
* ``native``: the C kernels compiled at run time and their status;
* flat helpers: ``checks`` (validators), ``tensors``, ``inputs`` (user-input checks), ``distributed``,
  ``reference`` (the original papers' numbers)."""
