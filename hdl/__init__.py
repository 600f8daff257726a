"""Celosia hdl."""
