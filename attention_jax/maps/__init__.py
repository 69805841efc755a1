"""Attention maps: captured weights, their figures and per-head summaries."""
