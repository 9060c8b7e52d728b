"""Shipped weights of the built-in models and the photographs of the second one (package data: *.pt, *.npz)."""
from pathlib import Path

# found through the package, wherever it is installed
WEIGHTS = Path(__file__).resolve().parent
