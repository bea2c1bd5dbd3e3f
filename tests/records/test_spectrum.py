"""The records of notebook 02 (``lib.records.spectrum``): the seeds with a spectrum, the solver comparison with its
wall times joined back, and the basis of a Hessian or random subspace with its upstream identity."""
import numpy as np
import pytest
import torch

from lib.core.landscape.subspace import random_basis
from lib.records import spectrum as spectrum_records
from lib.records.runs import run_name
from lib.records.spectrum import basis_for, spectrum_seeds


def test_spectrum_seeds_cap_each_model_separately():
    caps = {"mlp1": 1, "cnn": 2}
    assert spectrum_seeds("mlp1", [0, 1, 2]) == [0, 1, 2] and spectrum_seeds("mlp1", [0, 1, 2], caps) == [0]
    assert spectrum_seeds("cnn", [4, 5, 6], caps) == [4, 5] and spectrum_seeds("mlp2", [4, 5], caps) == [4, 5]


def test_solver_comparison_rows_get_their_wall_times_back(tmp_store):
    name = run_name("mnist", "mlp1", 0)
    rows = [{"method": "lanczos (ours)", "eigenvalues": [3.0, 2.0]}, {"method": "PyHessian 0.1", "eigenvalues": [3.0]}]
    tmp_store.save(spectrum_records.SOLVERS, name, {"rows": rows}, {"dataset": "mnist", "model": "mlp1", "seed": 0},
                   summary={"rows": [{"method": "PyHessian 0.1", "seconds": 9.5},
                                     {"method": "lanczos (ours)", "seconds": 1.25}]})
    assert spectrum_records.solver_runs(tmp_store) == [("mnist", "mlp1", 0)]
    assert spectrum_records.load_solvers(tmp_store, "mnist", "mlp1", 0) == {"rows": [
        {**rows[0], "seconds": 1.25}, {**rows[1], "seconds": 9.5}]}


def test_basis_of_the_hessian_and_of_a_random_subspace(tmp_store):
    n = 12
    vectors = torch.linalg.qr(torch.randn(n, 3, generator=torch.Generator().manual_seed(0)))[0].T.contiguous()
    values = torch.tensor([5.0, 2.0, 0.5], dtype=torch.float64)
    path = tmp_store.save(spectrum_records.FOLDER, run_name("mnist", "mlp1", 0),
                          {"eigenvalues": values, "eigenvectors": vectors}, {"seed": 0}, ext="pt")
    basis, eigenvalues, upstream = basis_for(tmp_store, "mnist", "mlp1", 0, "hessian", 2, n)
    assert torch.equal(basis, vectors[:2]) and np.array_equal(eigenvalues, [5.0, 2.0])
    assert upstream == {"spectrum/mnist_mlp1_s0": tmp_store.meta(spectrum_records.FOLDER, path.stem)["sha256"]}
    assert spectrum_records.load_spectrum(tmp_store, "mnist", "mlp1", 0)["eigenvalues"].tolist() == [5.0, 2.0, 0.5]
    with pytest.raises(ValueError, match=r"D=4 exceeds the 3 eigenvectors saved by 02_spectrum; raise "
                                         r"spectrum.n_vectors \(and k_top\) to at least 4"):
        basis_for(tmp_store, "mnist", "mlp1", 0, "hessian", 4, n)
    random, none, nothing = basis_for(tmp_store, "mnist", "mlp1", 3, "random", 2, n)
    assert torch.equal(random, random_basis(n, 2, seed=3)) and none is None and nothing == {}
    with pytest.raises(ValueError, match=r"unknown subspace 'diagonal'; allowed: \['hessian', 'random'\]"):
        basis_for(tmp_store, "mnist", "mlp1", 0, "diagonal", 2, n)
