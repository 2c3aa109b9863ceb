"""ood_zoo_example: a third-party ood_zoo plugin that adds the ``kmeans_cosine`` detector."""

from .kmeans_cosine import KMeansCosineDetector

__version__ = "0.1.0"
__all__ = ["KMeansCosineDetector", "__version__"]
