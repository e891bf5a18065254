"""The release loader, for the maintainer's checkout: `from pipeline.loader import ReleaseDataset, to_tensor` keeps
working. The code lives in the light distribution `ham10000-loader` (loader/ham10000_loader), which downstream users
install without the pipeline (docs/downstream.md); `pip install -e .` packages it with the pipeline."""
from ham10000_loader import CLASSES, SPLITS, ReleaseDataset, to_tensor

__all__ = ["CLASSES", "SPLITS", "ReleaseDataset", "to_tensor"]
