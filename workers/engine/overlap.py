"""Decoding a wave's images while the engine decodes the next wave's tokens.

On a GPU the VQ decoder runs on its own CUDA stream, driven by one worker thread: the engine's
thread goes straight on to the next wave (its steps queue on the default stream), and the two
streams share the device. Waiting for the images (the device-to-host copy) blocks only the worker.
On a CPU both would compete for the same cores, so decoding runs inline and the future is done
when `submit` returns (PNG encoding already runs on the actor's commit thread).
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from linegen.workers.engine.engine import Engine


class ImageDecoder:
    def __init__(self, engine: "Engine", threaded: bool | None = None):
        """threaded: decode on a worker thread (default: on a GPU only)."""
        self.engine = engine
        cuda = engine.device.type == "cuda"
        self.overlaps = cuda if threaded is None else threaded
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vq-decode") if self.overlaps else None
        self._stream = torch.cuda.Stream(engine.device) if self.overlaps and cuda else None

    def submit(self, tokens: torch.Tensor) -> "Future[np.ndarray]":
        """Images [n, H, W, 3] uint8 of token grids [n, N] (CPU tensor), eventually."""
        if self._pool is None:
            done: Future = Future()
            try:
                done.set_result(self.engine.decode_images(tokens))
            except Exception as e:  # the caller sees it where it asks for the images
                done.set_exception(e)
            return done
        return self._pool.submit(self._decode_on_side_stream, tokens)

    def _decode_on_side_stream(self, tokens: torch.Tensor) -> np.ndarray:
        if self._stream is None:
            return self.engine.decode_images(tokens)
        with torch.cuda.stream(self._stream):
            return self.engine.decode_images(tokens)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
