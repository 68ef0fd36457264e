"""Kiln: a content-addressed, Prefect-orchestrated pipeline from raw text to trained Llama models.

This small package holds what every other package shares and that must import
neither Prefect nor Dask: the config loader (`kiln.config`), the error type
(`kiln.errors`) and the `kiln` command line (`kiln.cli`, which imports Prefect
lazily, only for the commands that run flows).
"""

__version__ = "0.1.0"
