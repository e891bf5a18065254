"""HAM10000 dataset repository: the curation pipeline of Tschandl et al. (2018) as DVC stages."""

__version__ = "0.1.0"
