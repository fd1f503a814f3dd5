"""The Typer layer: one module per command; each parses, resolves the recipe, calls the engine.

Nothing here imports torch or onnxruntime at module level, so `bigmodel --help` stays fast.
"""
