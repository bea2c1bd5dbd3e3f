"""Fixtures of the output tests: the figures stage's inputs read from the tiny pipeline's saved results."""
import pytest

from lib.outputs import registry


@pytest.fixture(scope="module")
def inputs(tiny_pipeline):
    return registry.Inputs.of(tiny_pipeline.store, tiny_pipeline.stage("figures")[0])
