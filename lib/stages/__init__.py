"""Stages: one module per notebook that computes, named like the notebook and its profile section.

Each stage module has one entry point ``run(store, common, section)`` that loops over the profile's runs, skips
what is already computed with identical parameters and saves with provenance. What a stage saves and how to read it
back (result folders, run names, specs, loaders) lives in ``lib.records``, whose ``REGISTRY`` lists the stages;
notebook 06's entry point (the paper's outputs) is ``lib.outputs.registry.run``.
"""
