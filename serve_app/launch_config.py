"""The Serve config the local launcher (``python -m serve_app.run_local``: ``make run`` and ``make bench``) deploys.

Pure functions, no Ray: the launcher reads ``serve_app/config/local.yaml`` (the schema of a RayService
``serveConfigV2``) with :func:`load_serve_config`, and the benchmark pins its model, replica count and CPU share on
top with :func:`apply_overrides`. The result is written to a file for ``serve run``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Dict, Optional

import yaml
from textgen_contract import APP_NAME, INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "serve_app" / "config" / "local.yaml"
PATH_ARGS = ("model", "fallback_model_dir")


def load_serve_config(path: Path, *, root: Path = ROOT, host: Optional[str] = None, port: Optional[int] = None,
                      cpus: Optional[float] = None) -> Dict[str, Any]:
    """Read a Serve config and make it runnable here.

    Relative paths in the apps' ``args`` (``model``, ``fallback_model_dir``) that exist under ``root``
    become absolute (a Hub id such as ``gpt2`` stays as is); ``host``/``port`` override
    ``http_options``; ``ray_actor_options.num_cpus`` is capped at ``cpus`` so it schedules here.
    """
    cfg = copy.deepcopy(yaml.safe_load(Path(path).read_text()))
    http = cfg.setdefault("http_options", {})
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = int(port)
    for app in cfg.get("applications", []):
        args = app.get("args") or {}
        for key in PATH_ARGS:
            val = args.get(key)
            if isinstance(val, str) and val and not os.path.isabs(val):
                candidate = (root / val).resolve()
                if key == "fallback_model_dir" or candidate.exists():
                    args[key] = str(candidate)
        for dep in app.get("deployments", []) or []:
            opts = dep.get("ray_actor_options") or {}
            if cpus is not None and "num_cpus" in opts and opts["num_cpus"] > cpus:
                opts["num_cpus"] = cpus
    return cfg


def _deployment(app: Dict[str, Any], name: str) -> Dict[str, Any]:
    deps = app.setdefault("deployments", [])
    found = next((d for d in deps if d.get("name") == name), None)
    if found is None:
        found = {"name": name}
        deps.append(found)
    return found


def apply_overrides(cfg: Dict[str, Any], *, cpus: float, model_dir: Optional[str] = None,
                    replicas: Optional[int] = None, app_args: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The config with the benchmark's overrides on application ``textgen`` (a new dict; each one only when given).

    ``app_args``: merged into the application's ``args``. ``model_dir``: exactly these weights (no fallback).
    ``replicas``: a fixed number of model replicas sharing ``cpus`` evenly (``num_cpus`` and ``torch_threads``
    ``cpus / replicas`` each, no autoscaling); the ingress gets one replica and no CPU of its own.
    """
    cfg = copy.deepcopy(cfg)
    app = next((a for a in cfg.get("applications") or [] if a.get("name") == APP_NAME), None)
    if app is None:
        raise ValueError(f"the Serve config has no application {APP_NAME!r} to override")
    args = app.setdefault("args", {})
    args.update(app_args or {})
    if model_dir is not None:
        args["model"] = str(model_dir)
        args.pop("fallback_model_dir", None)
    if replicas is None:
        return cfg
    if replicas < 1:
        raise ValueError("replicas must be >= 1")
    share = cpus / replicas
    args["torch_threads"] = max(1, int(share))
    model = _deployment(app, MODEL_DEPLOYMENT)
    model.pop("autoscaling_config", None)
    model["num_replicas"] = int(replicas)
    model["ray_actor_options"] = dict(model.get("ray_actor_options") or {}, num_cpus=share)
    ingress = _deployment(app, INGRESS_DEPLOYMENT)
    ingress.pop("autoscaling_config", None)
    ingress["num_replicas"] = 1
    ingress["ray_actor_options"] = dict(ingress.get("ray_actor_options") or {}, num_cpus=0)
    return cfg
