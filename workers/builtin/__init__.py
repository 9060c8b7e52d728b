"""The built-in model: a small LlamaGen c2i GPT + VQ trained here on procedural shapes, and its evaluator."""
