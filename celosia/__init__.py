"""Celosia: an open int8 Transformer accelerator.

The distribution maps its sub-packages onto the repository's top-level folders:
``celosia.hdl`` (gateware), ``celosia.sim`` (simulation backends), ``celosia.sw``
(numerics, model, quantiser, compiler, driver, CLI) and ``celosia.fpga`` (boards).
"""

__version__ = "0.1.0"

__all__ = ["SentenceEncoder", "TextGenerator", "__version__"]


def __getattr__(name: str):
    # Imported on first use: ``import celosia`` stays cheap, and celosia.hdl does not pull in sw/.
    if name == "SentenceEncoder":
        from celosia.sw.encoder import SentenceEncoder
        return SentenceEncoder
    if name == "TextGenerator":
        from celosia.sw.generate import TextGenerator
        return TextGenerator
    raise AttributeError(f"module 'celosia' has no attribute {name!r}")
