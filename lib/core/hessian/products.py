"""The Hessian-operator protocol every solver takes (``hvp``, ``n_params``, ``dtype``, ``device``, ``hvp_count``)
and the one copy of the product records (``recording()`` / ``records()``) that the Lanczos Ritz step reuses."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from lib.core.tensors import device_dtype, n_params

#: products kept for the final Rayleigh-Ritz step of the Lanczos solvers (memory: 2 x MAX_RECORDS x n_params)
MAX_RECORDS = 400


class ProductOperator:
    """A model's Hessian H (n_params x n_params, symmetric) known through its products: the base of every operator
    the solvers of ``lib.core.hessian`` take (``HessianOperator``, ``BatchedHessianOperator`` and its distributed
    version).

    A subclass calls ``super().__init__(model)`` (which sets ``model``, ``device``, ``dtype``, ``n_params`` and
    the counters) and implements ``product(v)``, H v for a flat v in ``parameters_to_vector`` order already in
    the operator's dtype and device. ``hvp(v)`` is the product the solvers call: it checks and converts v,
    counts the product in ``hvp_count`` and, inside ``recording()``, keeps (v, H v) (at most ``max_records``)
    for ``records()``. ``grad_count`` is for a subclass's ``gradient()``.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.device, self.dtype = device_dtype(model)
        self.n_params = n_params(model)
        self.hvp_count = 0
        self.grad_count = 0
        self.max_records = MAX_RECORDS
        self._records: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def product(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat ``v`` of the operator's dtype and device (not counted, not recorded)."""
        raise NotImplementedError(f"{type(self).__name__} must implement product(v)")

    def as_vector(self, v) -> torch.Tensor:
        """``v`` as a flat tensor of this operator's dtype and device (shape checked)."""
        v = torch.as_tensor(v).reshape(-1).to(device=self.device, dtype=self.dtype)
        if v.numel() != self.n_params:
            raise ValueError(f"vector has {v.numel()} entries, the model has n_params={self.n_params}")
        return v

    def hvp(self, v) -> torch.Tensor:
        """H v for a flat v (counted in ``hvp_count``; recorded inside ``recording()``)."""
        v = self.as_vector(v)
        out = self.product(v)
        self.hvp_count += 1
        if self._records is not None and len(self._records) < self.max_records:
            self._records.append((v.detach().clone(), out.detach().clone()))
        return out

    @contextlib.contextmanager
    def recording(self):
        """Keep every product (v, H v) made inside the block (at most ``max_records``) in ``records()``."""
        self._records = []
        try:
            yield self
        finally:
            self._records = None

    def records(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(X, HX), each (m, n_params), of the recorded products, or None."""
        if not self._records:
            return None
        return torch.stack([x for x, _ in self._records]), torch.stack([hx for _, hx in self._records])

    def hvp_numpy(self, x: np.ndarray) -> np.ndarray:
        """H x for a float64 numpy vector (for scipy), returned as float64."""
        return self.hvp(torch.from_numpy(np.asarray(x, dtype=np.float64).reshape(-1))).double().cpu().numpy()

    def linear_operator(self, shift: float | None = None) -> LinearOperator:
        """scipy LinearOperator for H, or for ``shift * I - H`` when a shift is given."""
        n = self.n_params
        if shift is None:
            return LinearOperator((n, n), matvec=self.hvp_numpy, dtype=np.float64)
        return LinearOperator((n, n), matvec=lambda x: shift * np.ravel(x) - self.hvp_numpy(x), dtype=np.float64)
