"""Pure checks of what the operator owns: whose RayService this is, and whether the fields we set are all in place.

No I/O here; handlers.py decides what to do with the answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import constants as C

# List items that Kubernetes merges by a key (containers, ports, env, volumes, owner references, worker groups): we own
# the items we send, someone else may add more (a sidecar) without that being drift.
_LIST_KEYS = ("name", "groupName")


def owned_by(obj: Mapping[str, Any], tgs: Mapping[str, Any]) -> bool:
    """Whether `obj` (our RayService or NetworkPolicy) has `tgs` (this very object: same uid) as its controller."""
    uid = (tgs.get("metadata") or {}).get("uid")
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == C.KIND and ref.get("uid") == uid:
            return True
    return False


def conflict_message(tgs: Mapping[str, Any], foreign: Mapping[str, Any]) -> str:
    meta = foreign.get("metadata") or {}
    owners = [f"{r.get('kind')}/{r.get('name')}" for r in meta.get("ownerReferences") or [] if r.get("controller")]
    by = f"controlled by {owners[0]}" if owners else "not created by this TextGenService"
    return (f"RayService {meta.get('namespace')}/{meta.get('name')} already exists and is {by}; the operator leaves "
            f"it untouched. Delete or rename it, or give this TextGenService another name.")


def _key(item: Any) -> tuple[str, Any] | None:
    if isinstance(item, Mapping):
        for k in _LIST_KEYS:
            if k in item:
                return k, item[k]
    return None


def is_subset(want: Any, have: Any) -> bool:
    """Whether everything in `want` is present and equal in `have`: extra keys in `have` are fine, and so are extra
    items in lists merged by name (a hand-added sidecar container is not drift; a changed or missing one of ours is)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(k in have and is_subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        if not isinstance(have, list):
            return False
        keys = [_key(w) for w in want]
        if want and all(keys) and len(set(keys)) == len(keys):
            by_key = {_key(h): h for h in have if _key(h) is not None}
            return all(k in by_key and is_subset(w, by_key[k]) for k, w in zip(keys, want))
        return len(want) == len(have) and all(map(is_subset, want, have))
    return want == have
