"""Celosia sim."""
