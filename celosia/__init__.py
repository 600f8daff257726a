"""Celosia: an open int8 Transformer accelerator.

The distribution maps its sub-packages onto the repository's top-level folders:
``celosia.hdl`` (gateware), ``celosia.sim`` (simulation backends), ``celosia.sw``
(numerics, model, quantiser, compiler, driver, CLI) and ``celosia.fpga`` (boards).
"""

__version__ = "0.1.0"
