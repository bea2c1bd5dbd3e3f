"""Science core: Hessian operator and solvers, subspaces, sampling, Monte Carlo, quadratic model, convergence,
bounds, models and training. Tensors in, plain results out; nothing here knows of configs, files or notebooks."""
