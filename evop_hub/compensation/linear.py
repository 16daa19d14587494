"""Training-free compensation after block removal, folded into weights the model already has.

Removing a run of blocks hands the next kept block a hidden state it was never trained on. ReplaceMe
(Shopkhoev et al., arXiv 2505.02819) replaces the run by a linear map applied to the MLP output of the
last kept block before it: for a block computing ``h = y + m`` (``y`` the attention-residual output, ``m``
the MLP output), a map ``T`` fitted in closed form so that ``y + m @ T`` approximates the dense model's
hidden state after the run. Because ``m`` leaves the MLP through one linear projection, ``m @ T`` is the
same projection with weight ``Tᵀ W`` (and bias ``b @ T``): the checkpoint keeps its class, its config
keys and its tensor shapes, and plain ``from_pretrained`` loads it.

The fit is exact to fold only where the block really is ``y + m`` with ``m`` the projection's output:
pre-norm sequential blocks (Llama, Mistral, Qwen, Gemma 1, Phi-3, GPT-2, pre-norm OPT). Blocks that
normalise the MLP output (Gemma 2/3's post-feedforward norm) or the sum (post-norm), and blocks that run
attention and MLP side by side (GPT-J, Falcon, Phi, GPT-NeoX), are refused: the fitted correction would
not be what the saved weights compute. The checks are numeric, on the model's own blocks, so an
architecture nobody listed is judged by what it does rather than by its name.

Everything here works on the model in its *current* numbering and before the blocks are removed: the
dense targets need the removed blocks, and the kept blocks are the same modules before and after.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import EvopError
from ..models import block_path, drop, input_device, validate_drop
from ..registry import Registry
from ..scoring import BlockContext, BlockRunner

log = logging.getLogger(__name__)

METHODS: Registry[str] = Registry("compensations", "--compensate", describe=str)
METHODS.register("none", "the kept weights stay as they are")
METHODS.register("linear", "ReplaceMe: a least-squares map per run of removed blocks, folded into the MLP before it")
# Ridge strength, relative to the mean eigenvalue of the MLP outputs' Gram matrix (tr(MᵀM) / hidden). It pulls the
# map toward the identity, i.e. toward the uncompensated model, along directions the calibration text barely
# excites; 0 is ReplaceMe's plain least squares. Not tuned yet (issue 24, item 4): a cautious default.
DEFAULT_RIDGE = 1e-2
# Where blocks keep the linear layer whose output is the whole MLP contribution to the residual stream.
PROJECTIONS = ("mlp.down_proj", "mlp.c_proj", "mlp.fc2", "fc2", "mlp.dense_4h_to_h", "mlp.w2", "feed_forward.w2")
_CHECK_TOLERANCE = 1e-2  # relative error above which a fold is not exact (at least 4 eps of the dtype: half precision)


@dataclass
class RunMap:
    """The map fitted for one run of removed blocks (current numbering) and how well it fits."""

    removed: list[int]
    block: int  # the kept block right before the run: its MLP projection takes the map
    transform: torch.Tensor  # [hidden, hidden], float64 on the CPU: new MLP output = old output @ transform
    tokens: int
    mse_before: float  # mean over tokens of |hidden after the run - dense|², uncompensated ...
    mse_after: float  # ... and with the map


def check_method(method: str) -> str:
    """Refuse an unknown ``--compensate`` before anything slow starts."""
    return METHODS.check(method)


def check_ridge(ridge: float) -> float:
    if not 0 <= ridge < float("inf"):  # NaN fails this too
        raise EvopError(f"--compensate-ridge must be 0 or more, not {ridge}")
    return ridge


def removed_runs(dropped: Sequence[int]) -> list[list[int]]:
    """Maximal runs of consecutive indices, in order: each run is replaced by one map."""
    runs: list[list[int]] = []
    for index in sorted(set(dropped)):
        if runs and runs[-1][-1] == index - 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def projection(block: torch.nn.Module, index: int) -> tuple[str, torch.nn.Module]:
    """(name inside the block, module) of the MLP's output projection, or one line on why there is none."""
    for name in PROJECTIONS:
        try:
            module = block.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            return name, module
    kind = " (a mixture of experts)" if any("expert" in n for n, _ in block.named_modules()) else ""
    raise EvopError(
        f"cannot compensate: block {index} ({type(block).__name__}) has no single MLP output "
        f"projection to fold a map into{kind}; use --compensate none"
    )


def _attention(block: torch.nn.Module) -> torch.nn.Module | None:
    """The block's attention module, by class name (LlamaAttention, GPT2Attention, FalconAttention ...)."""
    return next((m for m in block.children() if "attention" in type(m).__name__.lower()), None)


@contextmanager
def _hooked(module: torch.nn.Module, fn) -> Iterator[None]:
    handle = module.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


def _scaled_attention(_module, _inputs, output):
    """Rescales the attention output unevenly across features (a norm after the attention, as in Gemma 2/3, would
    undo a plain factor): whether the MLP then sees another input tells sequential from parallel blocks."""
    first = output[0] if isinstance(output, tuple) else output
    scaled = first * torch.linspace(0.5, 2.0, first.shape[-1], device=first.device, dtype=first.dtype)
    return (scaled, *output[1:]) if isinstance(output, tuple) else scaled


def check_fold_exact(runner: BlockRunner, ctx: BlockContext, index: int, hidden: torch.Tensor) -> None:
    """Refuse, in one line, a block where ``output = y + mlp_output`` does not hold, so a folded map would not
    compute what was fitted: parallel attention/MLP (the MLP never sees the attention output), and any norm or
    other operation after the MLP projection (Gemma 2/3's post-feedforward norm, post-norm blocks)."""
    block = runner.blocks[index]
    name, proj = projection(block, index)
    seen: dict[str, torch.Tensor] = {}
    with torch.no_grad(), _hooked(proj, lambda _m, args, out: seen.update(x=args[0], m=out)):
        out = runner.block(index, hidden, ctx)
    attention, plain_input, m = _attention(block), seen["x"], seen["m"]
    if attention is None:
        raise EvopError(
            f"cannot compensate: no attention module found in block {index} ({type(block).__name__}) "
            "to check that its MLP follows the attention; use --compensate none"
        )
    with (
        torch.no_grad(),
        _hooked(attention, _scaled_attention),
        _hooked(proj, lambda _m, args, _o: seen.update(x=args[0])),
    ):
        runner.block(index, hidden, ctx)
    if torch.equal(seen["x"], plain_input):
        raise EvopError(
            f"cannot compensate {type(runner.model).__name__}: its blocks run attention and MLP in "
            "parallel, so no map on the MLP output replaces the removed blocks exactly; use --compensate none"
        )
    probe = _probe(m, out)
    with torch.no_grad(), _hooked(proj, lambda _m, _a, o: _apply(o, probe)):
        changed = runner.block(index, hidden, ctx)
    delta = m.double() @ probe.to(m.device) - m.double()
    error = (changed.double() - out.double() - delta).norm() / delta.norm()
    if error > max(_CHECK_TOLERANCE, 4 * torch.finfo(m.dtype).eps):
        raise EvopError(
            f"cannot compensate {type(runner.model).__name__}: block {index} transforms its MLP output "
            f"({name}) before adding it to the residual (a post-MLP or post-residual norm), so a map "
            "folded into the projection would not be exact; use --compensate none"
        )


def _probe(m: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """A random map ``I + αR`` whose change to the MLP output is ten times the block output, so that the half-
    precision rounding of the residual stream stays small beside it while a norm after the MLP cannot follow it."""
    d = m.shape[-1]
    r = torch.randn(d, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / d**0.5
    alpha = 10 * out.double().norm() / (m.double() @ r.to(m.device)).norm().clamp_min(1e-30)
    return torch.eye(d, dtype=torch.float64) + float(alpha) * r


def _apply(output: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    return output @ transform.to(device=output.device, dtype=output.dtype)


@contextmanager
def applied(model: torch.nn.Module, maps: Sequence[RunMap]) -> Iterator[None]:
    """The maps applied to their blocks' MLP outputs by forward hooks, weights untouched: what folding must equal."""
    blocks = model.get_submodule(block_path(model))
    handles = [
        projection(blocks[m.block], m.block)[1].register_forward_hook(
            lambda _mod, _args, out, t=m.transform: _apply(out, t)
        )
        for m in maps
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def fold(model: torch.nn.Module, index: int, transform: torch.Tensor) -> None:
    """Make block ``index``'s MLP projection output ``old output @ transform``: ``W <- Tᵀ W`` for a Linear
    (weight [out, in]), ``W <- W T`` for GPT-2's Conv1D (weight [in, out]); the bias goes to ``b T`` either way.
    Computed in float64 so that an identity map leaves the weights bit for bit."""
    _, proj = projection(model.get_submodule(block_path(model))[index], index)
    if proj.weight.device.type == "meta":
        raise EvopError(
            f"cannot compensate: block {index}'s weights are offloaded; load the model without disk offload"
        )
    t = transform.to(device=proj.weight.device, dtype=torch.float64)
    weight = proj.weight.double()
    new = t.T @ weight if isinstance(proj, torch.nn.Linear) else weight @ t
    proj.weight.copy_(new.to(proj.weight.dtype))
    if getattr(proj, "bias", None) is not None:
        proj.bias.copy_((proj.bias.double() @ t).to(proj.bias.dtype))


def solve(gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin_T |M T - R|² + λ |T - I|², λ = ridge · tr(MᵀM) / hidden: ``(MᵀM + λI)⁻¹ (MᵀR + λI)``.

    Shrinking toward I (not 0) means a strong ridge gives back the uncompensated model, never a zeroed MLP.
    ``gram`` = MᵀM and ``cross`` = MᵀR are float64 sums over the calibration tokens."""
    d = gram.shape[0]
    eye = torch.eye(d, dtype=torch.float64, device=gram.device)
    lam = ridge * gram.diagonal().sum() / d
    if lam <= 0:
        return torch.linalg.pinv(gram, hermitian=True) @ cross
    return torch.linalg.solve(gram + lam * eye, cross + lam * eye)


def _batches(input_ids: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, input_ids.shape[0], batch_size):
        yield input_ids[start : start + batch_size]


def _run_statistics(
    runner: BlockRunner, input_ids: torch.Tensor, run: list[int], maps: Sequence[RunMap], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Sums over the calibration tokens for one run: MᵀM, MᵀR and |R|², R = dense state after the run - y.
    The pruned states pass through the maps already fitted (earlier runs), as the folded model will."""
    j, last = run[0] - 1, run[-1]
    skip = {i for m in maps for i in m.removed}
    before = [i for i in range(j) if i not in skip]
    _, proj = projection(runner.blocks[j], j)
    gram = cross = None
    rr, tokens = 0.0, 0
    for ids in _batches(input_ids, batch_size):
        ctx = runner.prepare(ids)
        with applied(runner.model, maps):
            hidden = runner.run(ctx, before)
            if tokens == 0:
                check_fold_exact(runner, ctx, j, hidden)
            seen: dict[str, torch.Tensor] = {}
            with torch.no_grad(), _hooked(proj, lambda _m, _a, o: seen.update(m=o)):
                out = runner.block(j, hidden, ctx)
        dense = runner.run(ctx, range(last + 1))
        m = seen["m"].reshape(-1, seen["m"].shape[-1]).double()
        r = (dense - out).reshape(m.shape).double() + m  # dense - y, with y = out - m
        gram = m.T @ m if gram is None else gram + m.T @ m
        cross = m.T @ r if cross is None else cross + m.T @ r
        rr += float((r * r).sum())
        tokens += m.shape[0]
    return gram, cross, rr, tokens


def _mse(gram: torch.Tensor, cross: torch.Tensor, rr: float, tokens: int, t: torch.Tensor) -> float:
    """|M T - R|² / tokens from the sums, without keeping the activations."""
    value = float((t * (gram @ t)).sum() - 2 * (t * cross).sum()) + rr
    return max(value, 0.0) / tokens


def fit_linear(
    model: torch.nn.Module,
    dropped: Sequence[int],
    input_ids: torch.Tensor,
    *,
    ridge: float = DEFAULT_RIDGE,
    batch_size: int = 1,
) -> list[RunMap]:
    """One map per run of ``dropped`` (current numbering), fitted in order: run 2's inputs come from the model
    with run 1 already compensated, as they will in the saved checkpoint. Weights are not changed."""
    check_ridge(ridge)
    runs = removed_runs(dropped)
    if runs and runs[0][0] == 0:
        raise EvopError(
            f"cannot compensate the removal of block(s) {_span(runs[0])}: they start the model, so no kept "
            "block before them can take the map; use --compensate none or keep block 0"
        )
    runner = BlockRunner(model)
    ids = input_ids.to(input_device(model))
    maps: list[RunMap] = []
    for run in runs:
        gram, cross, rr, tokens = _run_statistics(runner, ids, run, maps, batch_size)
        t = solve(gram, cross, ridge)
        eye = torch.eye(t.shape[0], dtype=torch.float64, device=t.device)
        maps.append(
            RunMap(
                run, run[0] - 1, t.cpu(), tokens, _mse(gram, cross, rr, tokens, eye), _mse(gram, cross, rr, tokens, t)
            )
        )
        log.info(
            "compensation: blocks %s -> map on block %d's MLP output; hidden-state MSE %.4g -> %.4g",
            _span(run),
            run[0] - 1,
            maps[-1].mse_before,
            maps[-1].mse_after,
        )
    return maps


def _span(run: Sequence[int]) -> str:
    return f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0])


@torch.no_grad()
def calibration_losses(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    dropped: Sequence[int],
    maps: Sequence[RunMap] = (),
    batch_size: int = 1,
) -> dict[str, dict[str, float]]:
    """Mean next-token NLL of the dense, pruned and (with ``maps`` applied by hooks, which folding equals exactly)
    compensated model over the calibration set, and the mean KL(dense || model) of the pruned and compensated ones:
    one walk per batch, with the dense weights untouched, so the dense reference stays the dense model."""
    runner = BlockRunner(model)
    kept = [i for i in range(len(runner)) if i not in set(dropped)]
    sums = {"dense": 0.0, "pruned": 0.0, "compensated": 0.0}
    kl = {"pruned": 0.0, "compensated": 0.0}
    count = 0
    for batch in _batches(input_ids.to(input_device(model)), batch_size):
        ctx = runner.prepare(batch)
        dense = runner.run(ctx)
        states = {"dense": dense, "pruned": runner.run(ctx, kept)}
        with applied(model, maps):
            states["compensated"] = runner.run(ctx, kept)
        for name, hidden in states.items():
            nll, n = runner.nll(hidden, batch)
            sums[name] += float(nll)
            if name != "dense":
                kl[name] += float(runner.kl_rows(hidden, dense).sum())
        count += n
    return {"nll": {k: v / count for k, v in sums.items()}, "kl": {k: v / count for k, v in kl.items()}}


def check_compensable(model: torch.nn.Module, input_ids: torch.Tensor, tokens: int = 16) -> None:
    """Before a long search: refuse now a model none of whose maps could be folded exactly, checking every block
    that could precede a removed run on a few tokens of one calibration sample."""
    runner = BlockRunner(model)
    ids = input_ids[:1, :tokens].to(input_device(model))
    ctx = runner.prepare(ids)
    hidden = ctx.hidden
    for index in range(len(runner) - 1):
        check_fold_exact(runner, ctx, index, hidden)
        hidden = runner.block(index, hidden, ctx)


def compensate(
    model: torch.nn.Module,
    dropped: Sequence[int],
    input_ids: torch.Tensor,
    *,
    ridge: float = DEFAULT_RIDGE,
    batch_size: int = 1,
) -> tuple[list[RunMap], dict[str, dict[str, float]]]:
    """Fit the maps for removing ``dropped`` (current numbering) and fold them; the caller then removes the blocks.
    Returns the maps and the calibration losses (``calibration_losses``) before and after compensation."""
    maps = fit_linear(model, dropped, input_ids, ridge=ridge, batch_size=batch_size)
    losses = calibration_losses(model, input_ids, dropped, maps, batch_size)
    for m in maps:
        fold(model, m.block, m.transform)
    nll, kl = losses["nll"], losses["kl"]
    log.info(
        "compensation: calibration NLL %.4f -> %.4f (dense %.4f), KL to dense %.4f -> %.4f",
        nll["pruned"],
        nll["compensated"],
        nll["dense"],
        kl["pruned"],
        kl["compensated"],
    )
    return maps, losses


def calibration_info(calibration: Any) -> dict[str, Any]:
    """Which calibration text the maps were fitted on, compactly (the full draw is the record's ``calibration``)."""
    meta = getattr(calibration, "metadata", None) or {}
    keys = ("corpus", "split", "sampler", "seed", "tokenizer")
    return {key: meta[key] for key in keys if meta.get(key) is not None}


def _parameter_name(model: torch.nn.Module, index: int) -> str:
    """The folded projection's module name in the pruned checkpoint (new numbering), e.g. model.layers.11.mlp.down_proj."""
    path = block_path(model)
    return f"{path}.{index}.{projection(model.get_submodule(path)[index], index)[0]}"


def compensated_drop(
    loaded: Any,
    dropped: Sequence[int],
    input_ids: torch.Tensor,
    *,
    ridge: float = DEFAULT_RIDGE,
    batch_size: int = 1,
    calibration: dict[str, Any] | None = None,
) -> Any:
    """``models.drop`` with ReplaceMe compensation: blocks in the *original* numbering of the source; the maps are
    fitted on ``input_ids``, folded, the blocks removed, and ``loaded.record.compensation`` says what was done."""

    record = loaded.record
    original = validate_drop(list(dropped), record.num_blocks)
    current = {orig: i for i, orig in enumerate(record.kept_blocks)}
    missing = [i for i in original if i not in current]
    if missing:
        raise EvopError(f"block(s) {missing} were already removed from this model")
    maps, losses = compensate(
        loaded.model, [current[i] for i in original], input_ids, ridge=ridge, batch_size=batch_size
    )
    drop(loaded, original)
    to_original = {i: orig for orig, i in current.items()}
    runs = [
        {
            "removed_blocks": [to_original[i] for i in m.removed],
            "folded_into_block": to_original[m.block],
            "folded_into": _parameter_name(loaded.model, record.kept_blocks.index(to_original[m.block])),
            "hidden_mse": {"uncompensated": m.mse_before, "compensated": m.mse_after},
        }
        for m in maps
    ]
    record.compensation = {
        "method": "linear",
        "reference": "ReplaceMe (arXiv 2505.02819)",
        "objective": "least squares toward identity: T = (MᵀM + λI)⁻¹(MᵀR + λI), λ = ridge · tr(MᵀM) / hidden",
        "ridge": ridge,
        "calibration": calibration or {},
        "samples": int(input_ids.shape[0]),
        "tokens": int(input_ids.numel()),
        "runs": runs,
        "calibration_nll": losses["nll"],
        "calibration_kl": losses["kl"],
    }
    return loaded
