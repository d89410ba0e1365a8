"""paraplan: plan, simulate and validate hybrid-parallel LLM training."""
__version__ = "0.1.0"
