"""linegen: large synthetic image datasets from autoregressive image models, on Ray."""
