"""Benchmarks that print numbers; each is run from the repository root as ``python -m bench.<name>``.

Scripts: ``accuracy`` (synthetic data: configurations, scorers, seeds, the peer),
``real`` (an MVTec 3D-AD root), ``peers`` (anomalib's PatchCore), ``fusion_rules`` and
``scoring_rules`` (other ways to fuse and score saved models), ``speed``, ``serving``,
``depth_figure``, ``aupro``, ``depth``. Shared: ``common`` (places, names, the machine,
commands and paths fit to publish) and ``results`` (the one results schema: records
written as strict JSON, read back into a pandas DataFrame, summarised over seeds).
Results land in ``bench/results``.
"""
