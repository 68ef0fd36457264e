"""Storage: the artifact store, manifests, atomic writes and shard formats (no Prefect or Dask)."""
