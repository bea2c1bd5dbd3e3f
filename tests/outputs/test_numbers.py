"""The paper's numbers (``lib.outputs.numbers``): the specification note, and every number against the saved results."""
from lib.outputs import numbers as paper_numbers
from lib.outputs import registry


def test_specification_note_names_each_trimmed_value_read_from_the_results(tiny_pipeline, monkeypatch):
    store, common = tiny_pipeline.store, tiny_pipeline.stage("figures")[0]
    plan = registry.Inputs.of(store, common).plan
    args = (store, common.datasets, common.models, common.seeds, plan)
    assert tiny_pipeline.out["figures"]["numbers"]["SpecificationNote"] == paper_numbers.specification_note(*args)
    # the tiny profile: T = 8, 4 probes, 8 SLQ steps, 3 x 3 surfaces against the specification's values
    assert paper_numbers.specification_note(*args, {"mlp1": 1, "cnn": 1}) == (
        "The profile trims the specification to fit a 2-core CPU: the main curves use $T=8$ draws rather than "
        "1{,}024, the trace 4 Hutchinson probes rather than 30, the density 8 Lanczos steps rather than 80, "
        "the surfaces a $3\\times3$ grid rather than $21\\times21$ (\\texttt{make reproduce FULL=1} runs it in "
        "full)")                                                          # one seed of one: nothing capped
    three = [0, 1, 2]
    assert ", the MLP-1 spectrum 1 seed of 3 (" in paper_numbers.specification_note(
        store, common.datasets, common.models, three, plan, {"mlp1": 1})
    # a build at (or above) every value of the specification says so
    monkeypatch.setattr(paper_numbers, "FULL_SPECIFICATION", {"monte_carlo.n_samples": 8, "spectrum.trace_probes": 4,
                                                       "spectrum.slq_iter": 8, "projection.grid_points": 3,
                                                       "common.spectrum_max_seeds": {}})
    assert paper_numbers.specification_note(*args).startswith("The profile runs the specification in full ($T=8$")
