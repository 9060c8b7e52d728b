"""The batched decoding engine (waves of items on a static cache), sampling and packing."""
from linegen.workers.engine.engine import Engine
from linegen.workers.engine.wave import GenRequest, WaveResult, WaveStats, requests_for
from linegen.workers.engine.sampling import SamplingParams

__all__ = ["Engine", "GenRequest", "SamplingParams", "WaveResult", "WaveStats", "requests_for"]
