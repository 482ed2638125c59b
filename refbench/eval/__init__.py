"""Evaluation: the grouped runner, run folders with resume, provenance, distributed sharding."""
