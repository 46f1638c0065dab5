"""Spatial transcriptomics: Space Ranger ingest, spot tiles, expression prediction, programme maps.

Needs the ``spatial`` extra (``pip install "pathstrat[spatial]"``: anndata, scanpy). See
docs/spatial.md for the workflow.
"""
