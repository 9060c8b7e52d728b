"""Shipped weights of the built-in model (package data: *.pt)."""
