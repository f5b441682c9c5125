"""The operator's side of the chart's `allowedImages` (the API server's side is the chart's
ValidatingAdmissionPolicy, templates/image-policy.yaml): the same prefixes reach the operator as
$TEXTGEN_ALLOWED_IMAGES (JSON), and a TextGenService whose spec.cluster.image starts with none of them is refused
(Degraded/InvalidSpec, no retry until the spec changes) with the policy's message. It covers clusters without
ValidatingAdmissionPolicies (before 1.30) and objects stored before the policy existed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

ALLOWED_IMAGES_ENV = "TEXTGEN_ALLOWED_IMAGES"


def image_problem(image: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """Why `image` is not allowed, or None (also when no list is set: any image)."""
    prefixes = json.loads(environ.get(ALLOWED_IMAGES_ENV) or "[]")
    if not prefixes or any(image.startswith(p) for p in prefixes):
        return None
    return (f"spec.cluster.image {image} is not allowed: it must start with one of {', '.join(prefixes)} "
            "(the chart value allowedImages)")
