"""Data: reading sources, preparing split arrays and a manifest, and the transform they record."""
