"""Test-only fault injection into the model deployment's engine, on a real Ray.

`FaultyGPT2Model` is the product's model class (``GPT2Model.func_or_class``) with its engine's forward pass wrapped
by `StepFaults`; tests arm faults through DeploymentHandle methods only (never over HTTP). `build_faulty_app`
builds the product's application with the model deployment running that class; replicas import this module
by its path ``tests.serve.fault_injection`` (tests/serve/conftest.py puts the repo root on their PYTHONPATH).
"""

from __future__ import annotations

import os
import threading
from typing import Any, Dict

from ray.serve import Application

import serve_app.app
import serve_app.model_deployment as model_deployment
from serve_app.config import AppArgs
from serve_app.model_deployment import GPT2Model

# Inside a faulty replica only: a step held longer than this makes the product's check_health fail. The product's
# 120 s would make the hung-step test take minutes; Serve's health-check period and threshold stay the product's.
TEST_MAX_STEP_S = 3.0


class InjectedStepFailure(RuntimeError):
    """A forward pass failed because a test asked it to."""


class StepFaults:
    """Wraps a runner's ``forward``: after ``skip`` more passes succeed, the armed fault hits the next one(s).

    Armed on the replica's event loop, consumed on the engine thread: the counters are under a lock. A held pass
    blocks on an Event until `release` (forever if nobody releases it), then runs normally.
    """

    def __init__(self, forward):
        self._forward = forward
        self._lock = threading.Lock()
        self._skip = 0
        self._fail = 0
        self._hold = False
        self._released = threading.Event()
        self._holding = threading.Event()
        self.calls = 0
        self.failed = 0

    def fail(self, n: int, after: int = 0) -> None:
        with self._lock:
            self._skip, self._fail, self._hold = after, n, False

    def hold(self, after: int = 0) -> None:
        with self._lock:
            self._skip, self._fail, self._hold = after, 0, True
            self._released.clear()

    def release(self) -> None:
        self._released.set()

    def state(self) -> Dict[str, Any]:
        with self._lock:
            return {"calls": self.calls, "failed": self.failed, "holding": self._holding.is_set(),
                    "armed": bool(self._fail or self._hold)}

    def __call__(self, step):
        with self._lock:
            self.calls += 1
            fault = None
            if (self._fail or self._hold) and self._skip:
                self._skip -= 1
            elif self._fail:
                self._fail -= 1
                self.failed += 1
                fault = "fail"
            elif self._hold:
                self._hold = False
                fault = "hold"
        if fault == "fail":
            raise InjectedStepFailure(f"injected failure of forward pass {self.calls}")
        if fault == "hold":
            self._holding.set()
            self._released.wait()
            self._holding.clear()
        return self._forward(step)


class FaultyGPT2Model(GPT2Model.func_or_class):
    """The product's model deployment with `StepFaults` around its engine's forward pass."""

    def __init__(self, args: Dict[str, Any]):
        super().__init__(args)  # the engine's warm-up passes run before the wrapper: they are not counted
        model_deployment.MAX_STEP_S = TEST_MAX_STEP_S  # this replica process only
        self.faults = StepFaults(self.engine.runner.forward)
        self.engine.runner.forward = self.faults

    async def fail_steps(self, n: int, after: int = 0) -> Dict[str, Any]:
        """After `after` more passes succeed, the next `n` raise (their requests fail, the engine goes on)."""
        self.faults.fail(n, after)
        return self._fault_state()

    async def hang_step(self, after: int = 0) -> Dict[str, Any]:
        """After `after` more passes succeed, the next one blocks until `release_step` (forever without it)."""
        self.faults.hold(after)
        return self._fault_state()

    async def release_step(self) -> Dict[str, Any]:
        self.faults.release()
        return self._fault_state()

    async def fault_state(self) -> Dict[str, Any]:
        """Passes run and failed, whether one is held now, and this replica's pid."""
        return self._fault_state()

    def _fault_state(self) -> Dict[str, Any]:
        return {**self.faults.state(), "pid": os.getpid(), "max_step_s": model_deployment.MAX_STEP_S}


def build_faulty_app(args: AppArgs) -> Application:
    """The product's application (`build_app`, its options and wiring) with `FaultyGPT2Model` as the model class:
    the product's `GPT2Model` deployment (name, actor options, health check) with only its class replaced."""
    faulty = GPT2Model.options(func_or_class=FaultyGPT2Model)
    serve_app.app.GPT2Model = faulty  # build_app reads the module's name at call time
    try:
        return serve_app.app.build_app(args)
    finally:
        serve_app.app.GPT2Model = GPT2Model
