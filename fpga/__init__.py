"""Celosia fpga."""
