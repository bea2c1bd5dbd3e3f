"""CUDA results agree with CPU results within stated tolerances (skipped on machines without a GPU).

Everything runs in float32 as the pipeline does; the tolerances below are the agreement this repository
promises between devices (different reduction orders, TF32 off). Training is not bitwise reproducible across
devices (cuDNN/cuBLAS kernels), so it is compared through its outcome, not its weights.
"""
import numpy as np
import pytest
import torch

from lib.core import hessian
from lib.core.landscape import delta as montecarlo
from lib.core.landscape import quadratic, sampling, subspace
from lib.core.training import models
from lib.core.training import recipe as train
from lib.infra.device import resolve_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

#: relative agreement promised between CPU and CUDA (float32; max |a - b| / max |b|). Measured on an H100
#: (torch 2.11, 2026-11-23): HVP 4e-7 (mlp2) / 8e-7 (cnn), eigenvalues 2e-8, losses 2e-7, Delta_k 2e-7, Q_k 9e-7.
RTOL_PRODUCT = 1e-5      # Hessian-vector products, per-sample losses
RTOL_EIGEN = 1e-4        # top eigenvalues from Lanczos (tol 1e-4)
RTOL_CURVE = 1e-4        # Monte-Carlo Delta_k and the quadratic prediction Q_k
ATOL_ACCURACY = 0.02     # test accuracy after the same training recipe


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _data(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def _trained(name, x, y):
    net = models.build(name, seed=0)
    train.train(net, x, y, epochs=2, batch_size=64, seed=0, progress=False)
    return net


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def test_auto_resolves_to_cuda():
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda").type == "cuda"


@pytest.mark.parametrize("name", ["mlp2", "cnn"])
def test_hvp_and_top_eigenvalues_agree(name):
    x, y = _data()
    net = _trained(name, x, y)
    v = torch.randn(models.n_params(net), generator=torch.Generator().manual_seed(1))
    hv_cpu = hessian.HessianOperator(net, x, y).hvp(v)
    net_gpu = models.build(name, 0).cuda()
    net_gpu.load_state_dict(net.state_dict())
    hv_gpu = hessian.HessianOperator(net_gpu, x.cuda(), y.cuda()).hvp(v.cuda()).cpu()
    assert _rel(hv_gpu, hv_cpu) < RTOL_PRODUCT
    top_cpu = hessian.top_eigenpairs(hessian.HessianOperator(net, x, y), 5, tol=1e-4, seed=0)
    top_gpu = hessian.top_eigenpairs(hessian.HessianOperator(net_gpu, x.cuda(), y.cuda()), 5, tol=1e-4, seed=0)
    assert _rel(top_gpu.eigenvalues.cpu(), top_cpu.eigenvalues) < RTOL_EIGEN


@pytest.mark.parametrize("name", ["mlp2", "cnn"])
def test_monte_carlo_and_quadratic_curves_agree(name):
    x, y = _data()
    net = _trained(name, x, y)
    basis = subspace.random_basis(models.n_params(net), 4, seed=3)
    sampler = sampling.make_sampler("gaussian", sigma=0.3)
    kw = dict(n_samples=32, seed=0, n_orders=2, progress=False)
    cpu = montecarlo.delta_curve(net, x, y, basis, sampler, **kw)
    net_gpu = models.build(name, 0).cuda()
    net_gpu.load_state_dict(net.state_dict())
    gpu = montecarlo.delta_curve(net_gpu, x.cuda(), y.cuda(), basis.cuda(), sampler, **kw)
    assert _rel(gpu.losses0, cpu.losses0) < RTOL_PRODUCT
    assert _rel(gpu.delta, cpu.delta) < RTOL_CURVE
    assert _rel(gpu.order_mean, cpu.order_mean) < RTOL_CURVE
    t_cpu = quadratic.per_sample_terms(net, x, y, basis, progress=False)
    t_gpu = quadratic.per_sample_terms(net_gpu, x.cuda(), y.cuda(), basis.cuda(), progress=False)
    q_cpu = quadratic.delta_quadratic(t_cpu, sampler).Q
    q_gpu = quadratic.delta_quadratic(t_gpu, sampler).Q
    assert _rel(q_gpu, q_cpu) < RTOL_CURVE


def test_training_outcome_agrees():
    x, y = _data(2000)
    xt, yt = _data(1000, seed=1)
    # a learnable task: labels from a fixed random linear map of the inputs
    w = torch.randn(784, 10, generator=torch.Generator().manual_seed(5))
    y, yt = (x.flatten(1) @ w).argmax(1), (xt.flatten(1) @ w).argmax(1)
    accs = {}
    for dev in ("cpu", "cuda"):
        net = models.build("mlp1", seed=0)
        train.train(net, x, y, epochs=3, batch_size=64, seed=0, device=dev, progress=False)
        accs[dev] = train.evaluate(net, xt, yt, device=dev)["accuracy"]
    assert abs(accs["cuda"] - accs["cpu"]) < ATOL_ACCURACY, accs
