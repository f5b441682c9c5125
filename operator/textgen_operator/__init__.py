"""kopf operator: TextGenService -> KubeRay RayService.

Importing the package is cheap (no kopf, no kubernetes client); handlers live in `textgen_operator.handlers`.
"""

from .constants import DEFAULT_IMAGE, RAY_VERSION

__all__ = ["DEFAULT_IMAGE", "RAY_VERSION"]
