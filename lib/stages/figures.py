"""Stage of notebook 06: write every registered figure (PDF + PNG), table and number of the paper from results,
into the profile's own folders ``paper/figures/<profile>/`` and ``paper/generated/<profile>/``."""
from __future__ import annotations

import json

from lib.infra.config import Common, Figures
from lib.infra.results import ResultStore, atomic_write_json
from lib.outputs import plotting, registry, report


def run(store: ResultStore, common: Common, section: Figures | None = None) -> dict:
    """Make every output of ``lib.outputs.registry``; remove figure files this run did not write. Returns
    ``{"figures": [...], "tables": [...], "numbers": {...}, "removed": [...]}``."""
    inputs = registry.Inputs.of(store, common)
    figs, gen = report.figures_dir(store.profile), report.generated_dir(store.profile)
    made = []
    for make in registry.FIGURES.values():
        for name, fig in make(inputs).items():
            plotting.save(fig, figs / name)
            made.append(name)
    removed = report.prune_figures(made, figs)
    for name, make in registry.TABLES.items():
        report.write_table(name, make(inputs), gen)
    timings_path = store.root / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    values = registry.numbers(inputs, timings=timings)
    missing = report.write_numbers(values, gen / "numbers.tex",
                                   allow_placeholders=section.allow_placeholders if section else True)
    if missing:
        print(f"{len(missing)} placeholder(s) 'n/a' in numbers.tex ({gen / 'placeholders.txt'}): {missing}")
    atomic_write_json(gen / "source.json", {"profile": store.profile, "figures": sorted(made),
                                            "n_numbers": len(values)})
    return {"figures": made, "tables": list(registry.TABLES), "numbers": values, "removed": removed,
            "placeholders": missing}
