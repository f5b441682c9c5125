"""One parse of the TextGenService spec per event, on the real API server with the operator in-process: every path
from a kopf handler (reconcile, the RayService event handler, the repair and status loops) parses the spec once at
its top and passes the result down; status and the builders never parse it again."""

from __future__ import annotations

import sys
import threading
from collections import Counter

import pytest
from textgen_operator import constants as C
from textgen_operator import handlers
from textgen_operator.spec import TextGenServiceSpec

from tests.operator.tgs_common import create_tgs, get, load_sample
from tests.support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

# The functions each event enters the operator through (kopf handlers and the loops' per-object steps).
EVENT_ENTRIES = {"reconcile", "rayservice_event", "repair", "refresh_status"}


def _event_frame():
    """The frame of the event entry the current call runs under, or None when it runs under none."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name in EVENT_ENTRIES and frame.f_globals.get("__name__") == handlers.__name__:
            return frame
        frame = frame.f_back
    return None


def test_each_event_parses_the_spec_once(api, namespace, run_operator, monkeypatch):
    # Counted per event: keyed by the entry's frame object, kept alive here so no later event can reuse its id.
    parses: Counter = Counter()
    lock = threading.Lock()
    real = TextGenServiceSpec.model_validate

    def counting_model_validate(cls, *args, **kwargs):
        frame = _event_frame()
        with lock:
            parses[frame] += 1
        return real.__func__(cls, *args, **kwargs)

    monkeypatch.setattr(TextGenServiceSpec, "model_validate", classmethod(counting_model_validate))
    monkeypatch.setattr(handlers, "REPAIR_INTERVAL_S", 1)  # every path within seconds, not 15 s
    monkeypatch.setattr(handlers, "STATUS_INTERVAL_S", 1)

    def entries_seen() -> set[str]:
        with lock:
            return {f.f_code.co_name for f in parses if f is not None}

    doc = load_sample("fixed")
    name = doc["metadata"]["name"]
    with run_operator():
        create_tgs(api, namespace, doc)
        wait_for(lambda: get(api, namespace, C.RAYSERVICE_PLURAL, name), "the RayService")
        # a hand-deleted RayService: a DELETED event and a re-create, also from a single parse
        api.delete_namespaced_custom_object(C.RAY_GROUP, "v1", namespace, C.RAYSERVICE_PLURAL, name)
        wait_for(lambda: get(api, namespace, C.RAYSERVICE_PLURAL, name), "the RayService to come back")
        wait_for(lambda: entries_seen() == EVENT_ENTRIES, f"all of {sorted(EVENT_ENTRIES)} to run")
    with lock:
        counts = dict(parses)
    assert None not in counts, f"{counts[None]} parse(s) outside any event entry"
    per_entry = Counter(f.f_code.co_name for f in counts)
    assert all(per_entry[e] >= 1 for e in EVENT_ENTRIES), per_entry
    twice = {f"{f.f_code.co_name} (line {f.f_lineno})": n for f, n in counts.items() if n != 1}
    assert twice == {}, f"events that parsed the spec more than once: {twice} of {dict(per_entry)} events"
