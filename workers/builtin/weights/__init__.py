"""Shipped weights of the built-in models and the photographs of the second one (package data: *.pt, *.npz)."""
