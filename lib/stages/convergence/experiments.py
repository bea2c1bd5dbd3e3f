"""Notebook 05's new training experiments: the learning curve (the recipe trained on the first n samples), real
pilots (train, Hessian subspace and V-bar on the first n0 samples only) and the R = 0 curves of bias-free ReLU MLPs
with their Hessian-norm bound."""
from __future__ import annotations

import dataclasses
import time

import torch

from lib.core import hessian
from lib.core.landscape import bounds
from lib.core.landscape.sampling import make_sampler
from lib.core.landscape.subspace import SubspaceLosses
from lib.core.sample_size import decay as cv
from lib.core.sample_size import sufficient as ss
from lib.core.tensors import n_params, torch_threads
from lib.core.training import models
from lib.core.training.recipe import TRAINER, evaluate, train
from lib.infra import data
from lib.infra.config import Common, Convergence, Train
from lib.infra.device import resolve_device
from lib.infra.results import ResultStore
from lib.records.convergence import LEARNING, PILOTS, R0
from lib.records.runs import run_name
from lib.records.spectrum import spectrum_seeds
from lib.records.train import FOLDER as TRAINED
from lib.records.train import recipe_of
from lib.stages.base import cached, run_missing
from lib.stages.train import train_one, training_params, training_task


def learning_curve_rows(store: ResultStore, common: Common, section: Convergence) -> list[dict]:
    """Test accuracy and loss of the recipe trained on the first n samples, for every n of ``learning_sizes`` and
    every seed (the main trained model is reused where n = n_train). Missing trainings run ``common.workers`` at
    a time, the largest first."""
    points = []
    for ds in common.datasets:
        for m in section.learning_models:
            for seed in common.seeds:
                run, recipe = recipe_of(store, ds, m, common.seeds[0])
                main = store.meta(TRAINED, run_name(ds, m, seed))
                for n in section.learning_sizes:
                    params = training_params(ds, m, seed, int(n), run["data_seed"], recipe)
                    reuse = main if main is not None and main["params"] == params else None
                    points.append(((ds, m, seed, n), params, reuse))
    trained = iter(run_missing(store, [training_task(store, p, device=common.device, progress=common.progress,
                                                     result_folder=LEARNING, name=f"{run_name(*key[:3])}_n{key[3]}")
                                       for key, p, reuse in points if reuse is None],
                               train_one, common.workers, cost=lambda p: p["n_train"], progress=common.progress,
                               desc="learning-curve trainings"))
    rows = []
    for (ds, m, seed, n), _, main in points:
        res = {**main["summary"], "seconds": main["seconds"]} if main is not None else next(trained)
        rows.append({"dataset": ds, "model": m, "seed": seed, "n": n,
                     "test_accuracy": res["test_accuracy"], "test_loss": res["test_loss"],
                     "train_loss": res["train_loss"], "seconds": res["seconds"]})
    return rows


def pilot_estimate(x: torch.Tensor, y: torch.Tensor, n0: int, model_name: str, seed: int, recipe, D: int,
                   sigma: float, n_thetas: int, x_test: torch.Tensor, y_test: torch.Tensor, *,
                   device: str = "cpu", tol: float = 1e-3, gap_thetas: int = 8) -> tuple[dict, dict]:
    """A real pilot on the first ``n0`` samples of (x, y) only: train the recipe there, take the top-D Hessian
    subspace of the pilot's own loss, and estimate V-bar by Monte Carlo over those n0 samples at ``sigma`` and at
    the pilot's own loss-gap sigma. Samples beyond n0 are sliced away before anything is computed.
    Returns (payload with the pilot's weights, summary with V-bar values and costs)."""
    xp, yp = x[:n0], y[:n0]
    dev = resolve_device(device)
    t0 = time.perf_counter()
    net = models.build(model_name, seed)
    train(net, xp, yp, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, seed=seed, device=dev,
          progress=False)
    t_train = time.perf_counter() - t0
    net = net.to(dev)
    op = hessian.HessianOperator(net, xp.to(dev), yp.to(dev))
    top = hessian.top_eigenpairs(op, D, tol=tol, seed=seed)
    basis = top.eigenvectors.to(dev)
    on_train, on_test = evaluate(net, xp, yp, device=dev), evaluate(net, x_test, y_test, device=dev)
    evaluate_losses = SubspaceLosses(net, xp.to(dev), yp.to(dev), basis)
    z = make_sampler("gaussian", sigma=1.0).sample(n_thetas, D, seed=seed)
    base = float(evaluate_losses(torch.zeros(1, D, dtype=torch.float64)).double().mean())
    n_forward = [1]

    def vbar_at(scale: float) -> float:
        losses = evaluate_losses(scale * z).double()
        n_forward[0] += n_thetas
        return float(losses.var(dim=1, unbiased=False).mean())

    zg = z[:gap_thetas]

    def rise(scale: float) -> float:
        n_forward[0] += len(zg)
        return float(evaluate_losses(scale * zg).double().mean()) - base

    gap = float(on_test["loss"] - on_train["loss"])
    sigma_gap = ss.loss_gap_scale(rise, gap, float(top.eigenvalues.sum())) if gap > 0 else None
    summary = {"n0": n0, "seed": seed, "vbar_sigma": vbar_at(sigma), "sigma": sigma,
               "sigma_gap": sigma_gap, "vbar_gap": vbar_at(sigma_gap) if sigma_gap else None,
               "gap": gap, "train_accuracy": on_train["accuracy"], "test_accuracy": on_test["accuracy"],
               "lambda_1": float(top.eigenvalues[0]), "cost": {
                   "trainings": 1, "training_samples_seen": n0 * recipe.epochs, "hessian_products": top.hvp_count,
                   "forward_passes_n0": n_forward[0], "train_seconds": t_train,
                   "seconds": time.perf_counter() - t0}}
    payload = {"model": model_name, "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
               "eigenvalues": top.eigenvalues.double().cpu()}
    return payload, summary


def pilot_params(dataset: str, model: str, seed: int, n0: int, data_seed: int, recipe, D: int, sigma: float,
                 n_thetas: int) -> dict:
    """The parameters that define a pilot (its identity in the result store)."""
    return {"dataset": dataset, "model": model, "seed": seed, "n0": n0, "data_seed": data_seed,
            "recipe": dataclasses.asdict(recipe), "trainer": TRAINER, "D": D, "sigma": sigma, "n_thetas": n_thetas}


def pilot_one(store: ResultStore, params: dict, *, device: str = "cpu") -> dict:
    """One cached pilot (``pilot_estimate`` on the first n0 samples of the insertion order), computed with the
    recipe's intra-op threads; returns its summary."""
    p = params
    recipe = Train(**p["recipe"])

    def compute():
        with torch_threads(recipe.threads):
            x, y = data.training_subset(p["dataset"], p["n0"], p["data_seed"])
            xt, yt = data.load(p["dataset"], "test")
            return pilot_estimate(x, y, p["n0"], p["model"], p["seed"], recipe, p["D"], p["sigma"],
                                  p["n_thetas"], xt, yt, device=device)

    summary, _ = cached(store, PILOTS, pilot_name(p), p, compute)
    return summary


def pilot_name(params: dict) -> str:
    return f"{run_name(params['dataset'], params['model'], params['seed'])}_n{params['n0']}"


def pilot_rows(store: ResultStore, common: Common, section: Convergence, mc_section_D: int,
               mc_sigma: float) -> list[dict]:
    """Pilots for every (dataset, model, seed) with a spectrum and every n0 of ``pilot_sizes``; cached, the missing
    ones computed ``common.workers`` at a time (the largest n0 first)."""
    specs = []
    for ds in common.datasets:
        for m in common.models:
            run, recipe = recipe_of(store, ds, m, common.seeds[0])
            for seed in spectrum_seeds(m, common.seeds, common.spectrum_max_seeds):
                for n0 in section.pilot_sizes:
                    specs.append(pilot_params(ds, m, seed, n0, run["data_seed"], recipe, mc_section_D, mc_sigma,
                                              section.pilot_samples))
    summaries = run_missing(store, [{"folder": PILOTS, "name": pilot_name(p), "params": p,
                                     "kwargs": {"store": store, "params": p, "device": common.device}}
                                    for p in specs], pilot_one, common.workers, cost=lambda p: p["n0"],
                            progress=common.progress, desc="pilots")
    return [{"dataset": p["dataset"], "model": p["model"], **summary} for p, summary in zip(specs, summaries)]


def r0_rows(store: ResultStore, common: Common, section: Convergence) -> list[dict]:
    """Kiselev & Grabovoy at R = 0 for bias-free ReLU MLPs of several widths/depths: trained w*, the mean over
    random orders of |L_{k+1} - L_k|(w*), their Hessian-norm bound and measured ||Hess l_i||_2 on a few samples.
    Batch size and learning rate are those of the first main run."""
    sec, seed = section, common.seeds[0]
    _, recipe = recipe_of(store, common.datasets[0], common.models[0], seed)
    x, y = data.training_subset(sec.r0_dataset, sec.r0_n_train, common.data_seed)
    rows = []
    for hidden in sec.r0_architectures:
        hidden = [int(h) for h in hidden]
        name = f"{sec.r0_dataset}_mlp{'-'.join(map(str, hidden))}_nobias_s{seed}"
        params = {"dataset": sec.r0_dataset, "hidden": hidden, "n_train": sec.r0_n_train,
                  "data_seed": common.data_seed, "n_orders": sec.r0_orders, "n_hessian": sec.r0_hessian_samples,
                  "epochs": sec.r0_epochs, "batch_size": recipe.batch_size, "lr": recipe.lr, "seed": seed,
                  "trainer": TRAINER}

        def compute(hidden=hidden):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = models.mlp(hidden, bias=False)
            train(net, x, y, epochs=sec.r0_epochs, batch_size=recipe.batch_size, lr=recipe.lr, seed=seed,
                  progress=common.progress)
            with torch.no_grad():
                losses = torch.nn.functional.cross_entropy(net(x), y, reduction="none").double()
            curve = cv.r0_curve(losses, sec.r0_orders, seed=seed)
            consts = bounds.bound_constants(net, x)
            bound = bounds.hessian_norm_bound(**consts)
            idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:sec.r0_hessian_samples]
            idx = idx.tolist()
            norms = bounds.per_sample_hessian_norms(net, x, y, idx, tol=1e-4, seed=seed)
            M_l = float(losses.max())
            payload = {"k": curve["k"], "mean": curve["mean"], "stderr": curve["stderr"],
                       "bound_curve": bounds.loss_difference_bound(curve["k"], M_l, bound, R=0.0),
                       "hessian_norms": norms, "hessian_indices": idx, "losses": losses.numpy()}
            summary = {"hidden": hidden, "n_params": n_params(net), **consts, "hessian_bound": bound,
                       "max_measured_norm": float(norms.max()), "M_l": M_l,
                       "slope": cv.fit_slope(curve["k"], curve["mean"], k_min=10).slope}
            return payload, summary

        summary, _ = cached(store, R0, name, params, compute)
        rows.append({"name": name, **summary})
    return rows
