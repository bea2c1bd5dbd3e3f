"""Loss-landscape convergence in a low-dimensional Hessian subspace.

The heavy lifting of the notebooks lives here, in small tested modules:
``data`` (MNIST / Fashion-MNIST), ``models``, ``train``, ``hessian`` (PyHessian, fixed),
``subspace``, ``sampling``, ``delta`` (Monte Carlo), ``quadratic``, ``results`` (provenance, atomic files),
``config`` (profiles) and ``runner`` (papermill pipeline).
"""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = ["REPO_ROOT"]
