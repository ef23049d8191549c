"""Measuring and showing discovery, apart from the algorithm: benchmark runners (discovery, throughput, signal,
trace), the built-in problem families, synthetic model shapes, and the SVG curves."""
