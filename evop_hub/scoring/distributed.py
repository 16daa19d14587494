"""Masks scored by Ray actors, one per device, as mergekit-evolve shares its evaluations out.

Each actor holds a copy of the model and of the calibration ids and scores the masks it is sent
with a ``SerialEvaluator``: the same code path as a search in one process, so on CPU the same
losses bit for bit. The driver keeps the memo, the resume state and the stats; the actors keep
only their prefix caches. Each call's new masks are sorted by their keep bits and cut into
contiguous slices, one per actor, so masks sharing long prefixes share one actor's walk.
Early termination stays exact: every slice also carries the call's masks whose losses are
already known, so an actor stops a mask only when ``survivors`` of the masks it sees are lower.

An actor that dies (a lost node, a killed process) loses nothing: its slice goes whole to an
actor still alive, which computes the same numbers. Ray is imported only here and only when a
pool is built, so ``import evop_hub`` stays light.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import weakref
from collections import Counter
from collections.abc import Sequence
from copy import deepcopy
from typing import Any

import torch

from ..errors import EvopError
from ..models.devices import check_device
from .evaluator import Evaluator, EvaluatorStats, Fitness, Mask, SerialEvaluator, checked, keep_bits

LOCAL = "local"  # --ray-address local: start a Ray instance on this machine, shut down with the last evaluator
_started = {"evaluators": 0}  # live evaluators on a Ray instance this process started


def _ray():
    """Ray, or one line saying how to install it: it is an optional dependency (the ``ray`` extra)."""
    try:
        import ray
    except ImportError:
        raise EvopError('--search-devices runs on Ray, which is not installed: pip install "evop-hub[ray]"') from None
    return ray


def connect(address: str, devices: Sequence[str]) -> bool:
    """Join (or, for ``local``, start) the Ray instance at ``address``; True when this call started it.

    A process already connected keeps its instance (a notebook, the tests). ``local`` gets this
    machine's CPUs and GPUs; ``auto`` or HOST:PORT joins a running cluster, and an address that
    cannot be reached is one line, not Ray's traceback."""
    ray = _ray()
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address == LOCAL:
            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            ray.init(address=LOCAL, num_cpus=os.cpu_count() or 1, num_gpus=gpus, **quiet)
            return True
        if address != "auto":
            _reachable(address)
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvopError(f"cannot reach the Ray cluster at --ray-address {address}: {reason}") from None
    return False


def _check_devices(devices: Sequence[str], address: str) -> list[str]:
    """The devices by name, with one line for a device that is not one, before Ray starts. On this machine
    (``local``) each is checked as loading checks it, and ``cuda`` is named by its index (so that ``cuda`` and
    ``cuda:0`` share one GPU); a cluster's devices are on its nodes, so there only the names are checked."""
    names = []
    for device in devices:
        if address == LOCAL:
            checked_device = check_device(device)
            if checked_device.type == "cuda" and checked_device.index is None:
                checked_device = torch.device("cuda", torch.cuda.current_device())
            names.append(str(checked_device))
            continue
        try:
            kind = torch.device(device).type
        except RuntimeError:
            kind = None
        if kind not in ("cpu", "cuda"):
            raise EvopError(f"--search-devices: {device!r} is not cpu, cuda or cuda:N")
        names.append(device)
    return names


def _reachable(address: str) -> None:
    """Refuse a HOST:PORT nothing answers at within seconds: Ray itself retries such an address for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not (host and port.isdigit()):
        raise EvopError(f"--ray-address {address!r} is not local, auto or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise EvopError(f"cannot reach the Ray cluster at --ray-address {address}: {exc.strerror or exc}") from None


class Worker:
    """One device's evaluator inside a Ray actor: the model and the calibration ids stay there between calls."""

    def __init__(self, model: torch.nn.Module, input_ids: torch.Tensor, device: str, threads: int, settings: dict):
        # The driver's intra-op thread count: a reduction split over more or fewer threads can change the last bit.
        torch.set_num_threads(threads)
        self.evaluator = SerialEvaluator(model.to(device), input_ids.to(device), **settings)

    def evaluate(self, fits: list[Fitness], survivors: int | None) -> tuple[list[Fitness], dict, EvaluatorStats]:
        """The driver's fitnesses of these masks carried on; the memo holds only them, so an actor keeps no
        state a survivor would lack when it takes over a dead actor's slice."""
        before = self.evaluator.stats.as_dict()
        self.evaluator.memo = {fit.mask: fit for fit in fits}
        done = self.evaluator.evaluate([fit.mask for fit in fits], survivors)
        return done, before, self.evaluator.stats

    def layer_cosines(self, distance: int) -> tuple[list[float], dict, EvaluatorStats]:
        before = self.evaluator.stats.as_dict()
        return self.evaluator.layer_cosines(distance), before, self.evaluator.stats


def _portable(model: torch.nn.Module) -> torch.nn.Module:
    """The model on the CPU, to be sent to the actors: the model itself when it is there already, else a copy
    built from CPU tensors (deepcopy is handed them, so ties stay ties and nothing is copied on the GPU)."""
    if len(set(getattr(model, "hf_device_map", {}).values())) > 1 or len({p.device for p in model.parameters()}) > 1:
        raise EvopError(
            "the model is spread over several devices; Ray actors need it whole on one device: "
            "drop --search-devices, or load it without --device-map"
        )
    if next(model.parameters()).device.type == "cpu":
        return model
    tensors = {id(p): torch.nn.Parameter(p.detach().cpu(), requires_grad=False) for p in model.parameters()}
    tensors.update({id(b): b.cpu() for b in model.buffers()})
    return deepcopy(model, tensors)


def _release(actors: list, started: bool) -> None:
    """Kill the actors (their model copies free their devices); shut down a Ray instance this process started
    once no evaluator uses it."""
    import ray

    if not ray.is_initialized():
        return
    for actor in actors:
        ray.kill(actor)
    if started:
        _started["evaluators"] -= 1
        if _started["evaluators"] == 0:
            ray.shutdown()


class RayEvaluator(Evaluator):
    """An exact evaluator whose masks are scored by one Ray actor per device (see the module's docstring).

    ``local`` is a ``SerialEvaluator`` over the caller's model in this process: its identity is the
    search's (a run resumes across serial and Ray evaluators), and a ``StagedEvaluator``'s cheap
    stages run on it."""

    def __init__(
        self, model: torch.nn.Module, input_ids: torch.Tensor, devices: Sequence[str], address: str = LOCAL, **settings
    ):
        if not devices:
            raise EvopError("--ray-address needs --search-devices: the devices to put an actor on, e.g. cuda:0,cuda:1")
        devices = _check_devices(devices, address)
        portable = _portable(model)
        self.local = SerialEvaluator(model, input_ids.to(next(model.parameters()).device), **settings)
        self.num_blocks = self.local.num_blocks
        self.memo: dict[Mask, Fitness] = {}
        self.stats = EvaluatorStats()
        self.started = connect(address, devices)
        _started["evaluators"] += self.started
        self.actors: list = []
        self._finalizer = weakref.finalize(self, _release, self.actors, self.started)
        self.actors += self._spawn(portable, input_ids.cpu(), devices, settings)

    def _spawn(self, model: torch.nn.Module, input_ids: torch.Tensor, devices: Sequence[str], settings: dict) -> list:
        """An actor per device. A GPU actor asks Ray for its share of one GPU (two entries naming one device
        share it) and uses the GPU Ray gives it; a CPU actor asks for no CPU, so several fit on a small machine."""
        ray = _ray()
        per_device = Counter(devices)
        gpus = sum(torch.device(d).type == "cuda" for d in per_device)
        if gpus > ray.cluster_resources().get("GPU", 0):  # an actor Ray cannot place would wait for ever
            raise EvopError(
                f"--search-devices names {gpus} GPUs; the Ray instance has {ray.cluster_resources().get('GPU', 0):g}"
            )
        model_ref, ids_ref = ray.put(model), ray.put(input_ids)
        actors = []
        for device in devices:
            gpu = torch.device(device).type == "cuda"
            options = {"num_cpus": 0, "num_gpus": 1 / per_device[device] if gpu else 0, "max_restarts": 0}
            remote = ray.remote(Worker).options(**options)
            actors.append(
                remote.remote(model_ref, ids_ref, "cuda" if gpu else device, torch.get_num_threads(), settings)
            )
        try:  # the first call waits for every actor: a model that cannot be sent fails here, in one line
            ray.get([actor.__ray_ready__.remote() for actor in actors])
        except ray.exceptions.RayError as exc:
            for actor in actors:
                ray.kill(actor)
            reason = str(exc).strip().splitlines()[-1]
            raise EvopError(f"the Ray actors could not take the model: {reason}") from None
        return actors

    def close(self) -> None:
        """Free the actors (and a Ray instance this evaluator started) now rather than when it is collected."""
        self._finalizer()

    def identity(self) -> list:
        return self.local.identity()

    def stage_base(self) -> SerialEvaluator:
        return self.local

    def evaluate(self, masks: Sequence[Mask], survivors: int | None = None) -> list[Fitness]:
        masks = checked(masks, self.num_blocks)
        unique = list(dict.fromkeys(masks))
        known = [self.memo[m] for m in unique if m in self.memo and self.memo[m].complete]
        pending = sorted(
            (m for m in unique if not (m in self.memo and self.memo[m].complete)),
            key=lambda m: keep_bits(m, self.num_blocks),
            reverse=True,
        )
        self.stats.memo_hits += len(known)
        self.stats.evaluations += sum(m not in self.memo for m in pending)
        for mask in pending:
            self.memo.setdefault(mask, Fitness(mask))
        share = math.ceil(len(pending) / len(self.actors)) or 1
        jobs = [[self.memo[m] for m in pending[i * share : (i + 1) * share]] for i in range(len(self.actors))]
        for fits, before, after in self._run("evaluate", [(job + known, survivors) for job in jobs if job]):
            self.memo.update((fit.mask, fit) for fit in fits)
            self.stats.add_work(after, before)
        return [self.memo[m] for m in masks]

    def layer_cosines(self, distance: int) -> list[float]:
        ((cosines, before, after),) = self._run("layer_cosines", [(distance,)])
        self.stats.add_work(after, before)
        return cosines

    def _submit(self, actor, method: str, args: tuple) -> Any:
        return getattr(actor, method).remote(*args)

    def _run(self, method: str, jobs: list[tuple]) -> list:
        """Each job on an idle actor, in order; a job whose actor died goes whole to another, so the answers are
        the same. An error raised inside an actor (a non-finite loss) is raised here as itself."""
        ray = _ray()
        results: list = [None] * len(jobs)
        queue, idle, running = list(range(len(jobs))), list(self.actors), {}
        while queue or running:
            while queue and idle:
                actor, index = idle.pop(0), queue.pop(0)
                running[self._submit(actor, method, jobs[index])] = (actor, index)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, index = running.pop(ref)
            try:
                results[index] = ray.get(ref)
            except ray.exceptions.RayActorError:
                self.actors.remove(actor)
                queue.append(index)
                if not self.actors:
                    raise EvopError("every Ray search actor died; see the Ray logs (/tmp/ray) for why") from None
                continue
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, EvopError):
                    raise exc.cause from None
                raise
            idle.append(actor)
        return results
