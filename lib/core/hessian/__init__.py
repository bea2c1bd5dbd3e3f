"""Hessian spectrum of a model's full-data loss, computed through one reusable Hessian-vector-product operator.

The operator (``HessianOperator``) is the exact, chunked Hessian-vector product of

    L(w) = (1/N) sum_i CE(model(x_i; w), y_i)      over ALL N given samples,

on flat vectors in ``torch.nn.utils.parameters_to_vector`` order. Build it once and pass it to every solver
(top/smallest eigenpairs, trace, density; operator-first, as in curvlinops); each result's ``hvp_count`` is the
number of products that call made and ``seconds`` its wall time::

    op = HessianOperator(model, inputs, targets)          # chunk_size=None: the model's preferred chunk
    top = top_eigenpairs(op, k=10)                        # method="lanczos" (default), "thick-restart" or "power"
    low = smallest_eigenvalue(op, tol=1e-4)
    tr = trace(op, n_probes=100)                          # Hutchinson; hutchpp(op, n_products=99) and
    tr_k = deflated_trace(op, top, n_probes=30)           # deflated_trace reduce its variance
    dens = density(op, n_runs=4, n_iter=80)
    assert op.hvp_count == top.hvp_count + low.hvp_count + tr.hvp_count + tr_k.hvp_count + dens.hvp_count

The model is evaluated in eval mode and its train/eval flags are restored afterwards; parameters' ``.grad``
fields are never read or written (products use detached copies of the weights). Products reuse per-chunk state
kept while the weights are unchanged (``engine``: an exact R-op over kept activations for ReLU MLPs and conv-pool
CNNs, else the kept autograd graph of each chunk's gradient; bounded by ``keep_graphs_mb``); any change of a
parameter or buffer rebuilds it, so every product uses the model's current weights and no result depends on an
earlier call.

The package, bottom to top (each module imports only those above it in this list):

* ``products``: ``ProductOperator``, the protocol the solvers take (``hvp``, ``n_params``, ``dtype``, ``device``,
  ``hvp_count``) and the one copy of the product records of the Lanczos Ritz step;
* engines, one module each: ``structured`` (R-op over kept activations), ``graph`` (kept gradient graphs),
  ``rebuild`` (nothing kept), ``fused`` (the native CNN kernel); ``auto``: the choice among them;
* ``operator``: ``HessianOperator`` over tensors in memory (chunks, kept state, gradient, loss);
* ``batched``: ``BatchedHessianOperator`` over any stream of batches and any per-sample loss (import it from
  ``lib.core.hessian.batched``; ``lib.core.distributed`` builds its data-parallel version on it);
* ``lanczos``: ``thick_restart_lanczos``, a thick-restart (Krylov-Schur) Lanczos whose memory is its basis, ncv + 1
  vectors of the model's dtype, plus the product and one work vector;
* ``results``: what the solvers return; ``pyhessian``: everything PyHessian 0.1 (its solvers with their defects
  fixed, the comparison with ours, and its power loop run on our operator);
* ``solvers`` (docs/specification.md section 2):

  * ``top_eigenpairs(op, k, method="lanczos")``: ``scipy.sparse.linalg.eigsh`` (implicitly restarted Lanczos,
    ARPACK), run with one BLAS thread (``threadpoolctl``);
  * ``top_eigenpairs(op, k, method="thick-restart")``: ``lanczos.thick_restart_lanczos``, the same stopping
    rule as ARPACK's in ncv + 3 vectors of the model's dtype (ARPACK's path holds about 2k + 5 float64 vectors, its
    returned vectors and its recorded products): the method for large models. It spends one more product per
    returned pair (k in all) on measured residuals and Rayleigh-quotient eigenvalues;
  * ``top_eigenpairs(op, k, method="power")``: PyHessian 0.1's own power iteration with deflation
    (``pyhessian.power_vectors``) running on our product, then fixed up;
  * ``smallest_eigenvalue``, ``trace`` (Hutchinson), ``density`` (stochastic Lanczos quadrature, Gauss nodes and
    weights by ``scipy.linalg.eigh_tridiagonal``).

  The eigen-solvers end with H applied to their k vectors ("lanczos" and "power": the same Rayleigh-Ritz step;
  "thick-restart": its Ritz vectors, one product each), so eigenvalues are signed Rayleigh quotients sorted
  algebraically (largest first), eigenvectors are orthonormal, and residuals ``||H v - lambda v|| / max|lambda|``
  are measured, not estimated.
* ``trace_estimators``: ``hutchpp`` (Hutch++: a sketched subspace's trace exactly, Hutchinson on the rest) and
  ``deflated_trace`` (the sum of top-k eigenvalues already computed, Hutchinson on the rest), both returning a
  ``TraceEstimate`` like ``trace``.
"""
from lib.core.hessian.auto import ENGINES
from lib.core.hessian.operator import DEFAULT_CHUNK, KEEP_GRAPHS_MB, HessianOperator
from lib.core.hessian.products import MAX_RECORDS, ProductOperator
from lib.core.hessian.results import Density, Eigenpairs, SmallestEigenpair, TraceEstimate, smooth_density
from lib.core.hessian.solvers import (
    METHODS,
    POWER_MAX_ITER,
    PROBES,
    canonical_signs,
    density,
    lanczos_tridiagonal,
    smallest_eigenvalue,
    top_eigenpairs,
    trace,
)
from lib.core.hessian.trace_estimators import (
    TRACE_ESTIMATORS,
    deflated_trace,
    error_per_product,
    estimate_trace,
    hutchpp,
)

__all__ = ["ENGINES", "DEFAULT_CHUNK", "KEEP_GRAPHS_MB", "HessianOperator", "MAX_RECORDS", "ProductOperator",
           "Density", "Eigenpairs", "SmallestEigenpair", "TraceEstimate", "smooth_density", "METHODS",
           "POWER_MAX_ITER", "PROBES", "canonical_signs", "density", "lanczos_tridiagonal", "smallest_eigenvalue",
           "top_eigenpairs", "trace", "hutchpp", "deflated_trace", "error_per_product", "estimate_trace",
           "TRACE_ESTIMATORS"]
