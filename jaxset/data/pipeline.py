"""Transitional: the four names that three modules still import from here.

Every other importer takes a name from the module that defines it
(records.py, images.py, sampling.py, samplers/; sampling.py's docstring says how
a batch is made). train/tasks/netvlad.py, benchmarks/netvlad_baselines.py and
benchmarks/netvlad_diagnosis.py are being changed elsewhere right now; this
module goes once they import from records.py and samplers/ directly.
"""
# ruff: noqa: F401  (this module re-exports)
from jaxset.data.records import neighbours_within, read_metadata
from jaxset.data.samplers.evaluation import eval_batches
from jaxset.data.samplers.tuples import netvlad_tuples
