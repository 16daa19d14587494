"""The Ray evaluator gives the serial evaluator's numbers, bit for bit, and loses nothing when an actor dies.

A local Ray instance with CPU actors stands in for a cluster of GPUs: one actor per entry of
``--search-devices`` (``cpu,cpu,cpu`` for three GPUs), each with its own copy of the model in its
own process. What is tested is the sharing out, the merge, the exactness of early stopping and the
re-running of a dead actor's masks; ``ray.kill`` mid-call stands in for a lost GPU node. Ray starts
once for the module; the actors are started once and shared by the tests, in file order. Everything
runs on one intra-op thread (actors take the driver's count): CPU actors side by side on a 2-core
machine, each with the default threads, would spend their time waiting for each other.
"""

from __future__ import annotations

import itertools
import os
import subprocess

import pytest
import ray
import torch

from evop_hub.errors import EvopError
from evop_hub.scoring import EvaluatorStats
from evop_hub.scoring.distributed import _reachable
from evop_hub.search import RayEvaluator, SearchConfig, SerialEvaluator, StagedEvaluator, run_search

from ..models.conftest import build
from ..models.test_save_and_load import llama_dir  # noqa: F401  (fixture)
from .test_evaluator import calibration
from .test_resume import bests, calibration_file, prune_cmd  # noqa: F401  (calibration_file: a fixture)


@pytest.fixture(scope="module")
def setup():
    """A local Ray instance, two CPU actors on an 8-block Llama, and the serial evaluator they must match
    (KL: its head's reductions are the ones a thread count could change)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    model = build("llama", layers=8)
    ids = calibration(model, n=6)
    pool = RayEvaluator(model, ids, ["cpu"] * 2, fitness="kl", batch_size=1)
    yield model, ids, pool
    pool.close()
    ray.shutdown()
    torch.set_num_threads(threads)


def killing(monkeypatch, pool, at: int) -> list:
    """Make the ``at``-th job submitted (counting from 1) kill its actor while it runs; returns the victims."""
    submit, calls, victims = pool._submit, [], []

    def submit_then_kill(actor, method, args):
        ref = submit(actor, method, args)
        calls.append(actor)
        if len(calls) == at:
            ray.kill(actor)
            victims.append(actor)
        return ref

    monkeypatch.setattr(pool, "_submit", submit_then_kill)
    return victims


def test_ray_actors_give_the_serial_values_bit_for_bit(setup):
    model, ids, pool = setup
    masks = list(itertools.combinations(range(8), 2))
    serial = SerialEvaluator(model, ids, fitness="kl", batch_size=1)
    assert [f.loss for f in pool.evaluate(masks)] == [f.loss for f in serial.evaluate(masks)]
    assert pool.stats.evaluations == len(masks) and pool.stats.block_forwards > 0
    assert pool.layer_cosines(2) == serial.layer_cosines(2)
    assert pool.identity() == serial.identity()  # a run saved serially resumes on actors, and back


def test_actors_stop_early_as_exactly_as_one_evaluator(setup):
    # Each actor sees its slice and the call's known masks: it stops a mask only when `survivors` of those beat it.
    model, ids, pool = setup
    masks = list(itertools.combinations(range(8), 3))
    serial = SerialEvaluator(model, ids, fitness="kl", batch_size=1)
    top = sorted(pool.evaluate(masks, survivors=4), key=lambda f: (f.loss, f.mask))[:4]
    assert top == sorted(serial.evaluate(masks, survivors=4), key=lambda f: (f.loss, f.mask))[:4]
    assert pool.stats.early_stops > 0
    assert [f.loss for f in pool.evaluate(masks)] == [f.loss for f in serial.evaluate(masks)]


def test_staged_selection_runs_its_stages_here_and_the_rest_on_the_actors(setup):
    model, ids, pool = setup
    masks = list(itertools.combinations(range(8), 4))
    staged = StagedEvaluator.build(pool, [(6, 6)])
    assert staged.stages[0][1].model is model  # the cheap stage: in this process, on the model as loaded
    serial = StagedEvaluator.build(SerialEvaluator(model, ids, fitness="kl", batch_size=1), [(6, 6)])
    assert [f.loss for f in staged.evaluate(masks, survivors=2)] == [
        f.loss for f in serial.evaluate(masks, survivors=2)
    ]
    assert staged.stats.screened_out == len(masks) - 6


def test_a_search_with_an_actor_killed_ends_as_the_serial_search(setup, monkeypatch):
    model, ids, pool = setup
    pool.memo, pool.stats = {}, EvaluatorStats()  # a fresh search on the same actors
    config = SearchConfig(population=8, generations=4, seed=1, fitness="kl")
    serial = run_search(SerialEvaluator(model, ids, fitness="kl", batch_size=1), 3, config, progress=False)
    victims = killing(monkeypatch, pool, at=4)  # in the first generations, after the seeds
    alive = len(pool.actors)
    ended = run_search(pool, 3, config, progress=False)
    assert victims and len(pool.actors) == alive - 1 and victims[0] not in pool.actors
    assert ended.mask == serial.mask and ended.loss == serial.loss and ended.dense_loss == serial.dense_loss
    assert [row["best"] for row in ended.trace] == [row["best"] for row in serial.trace]


def test_the_evaluator_state_round_trips(setup):
    _, _, pool = setup
    copy = SerialEvaluator(*setup[:2], fitness="kl", batch_size=1)
    copy.load_state_dict(pool.state_dict())
    assert copy.memo == pool.memo and copy.stats == pool.stats


def test_bad_addresses_and_models_are_one_line(setup):
    model, ids, _ = setup
    with pytest.raises(EvopError, match="cannot reach the Ray cluster at --ray-address 127.0.0.1:1"):
        _reachable("127.0.0.1:1")
    with pytest.raises(EvopError, match="is not local, auto or HOST:PORT"):
        _reachable("nohost")
    with pytest.raises(EvopError, match="--ray-address needs --search-devices"):
        RayEvaluator(model, ids, [])
    with pytest.raises(EvopError, match="'gpu0' is not cpu, cuda or cuda:N"):
        RayEvaluator(model, ids, ["gpu0"], "auto")  # a cluster's devices: checked by name, before joining it
    spread = build("llama")
    spread.hf_device_map = {"model.layers.0": 0, "model.layers.1": "cpu"}
    with pytest.raises(EvopError, match="spread over several devices"):
        RayEvaluator(spread, calibration(spread), ["cpu", "cpu"])


def test_the_cli_on_two_local_cpu_actors_ends_as_the_serial_run(llama_dir, calibration_file, tmp_path):  # noqa: F811
    # Its own process starts (and shuts down) its own local Ray instance: two CPU actors stand in for two GPUs.
    serial, pooled = tmp_path / "serial", tmp_path / "pooled"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # both runs: actors take the driver's thread count
    short = ("--generations", "3")
    extra = (*short, "--ray-address", "local", "--search-devices", "cpu,cpu")
    # Side by side: Ray's start is mostly waiting, which the serial run fills.
    runs = [
        subprocess.Popen(prune_cmd(llama_dir, calibration_file, out, *args), stderr=subprocess.PIPE, text=True, env=env)
        for out, args in ((pooled, extra), (serial, short))
    ]
    for run in runs:
        stderr = run.communicate()[1]
        assert run.returncode == 0 and "Traceback" not in stderr, stderr[-2000:]
    assert bests(pooled) == bests(serial)
