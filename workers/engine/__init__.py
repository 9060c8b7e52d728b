"""The batched decoding engine (waves of items on a static cache), sampling and packing."""
from workers.engine.engine import Engine, GenRequest, WaveResult, WaveStats
from workers.engine.sampling import SamplingParams

__all__ = ["Engine", "GenRequest", "SamplingParams", "WaveResult", "WaveStats"]
