"""kopf operator: TextGenService -> KubeRay RayService."""
