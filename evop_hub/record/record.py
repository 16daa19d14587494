"""The ``evop_pruning.json`` record written next to every pruned checkpoint.

It is the single source of truth for what was done to a model: the model card, the Hub
push, the Space and the reports all read it, so it holds plain JSON-able data only and
never secrets (no tokens, no absolute home paths of the user beyond what they typed).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EvopError
from ..files import atomic_path
from .provenance import versions

RECORD_NAME = "evop_pruning.json"
# What a pruned model's record keeps of its source's record when that source was itself pruned by evop-hub.
LINEAGE_KEYS = (
    "source_model",
    "source_hub_id",
    "source_revision",
    "source_format",
    "num_blocks",
    "dropped_blocks",
    "method",
    "sparsity",
    "sparsity_unit",
    "derived_from",
)
STATE_DIR = ".evop"  # run state inside an output directory; never published
SCHEMA_VERSION = 1


@dataclass
class PruningRecord:
    """What was pruned, how, and how well the result does.

    ``dropped_blocks`` and ``kept_blocks`` use the *original* block numbering;
    block ``kept_blocks[i]`` of the source is block ``i`` of the pruned checkpoint.
    """

    source_model: str
    architecture: str  # the model class
    num_blocks: int
    dropped_blocks: list[int]
    model_type: str | None = None  # the config's, e.g. gpt_neox: the Hub's architecture tag
    source_revision: str | None = None
    source_hub_id: str | None = None  # the Hub repo the weights come from, when known
    source_format: str = "transformers"  # or "gguf:<quant>" when dequantized from a GGUF file
    source_relative: str | None = None  # a local source directory, as a path relative to the output directory
    derived_from: dict[str, Any] | None = None  # the source's own record (LINEAGE_KEYS), when it is an evop-hub output
    license: str | None = None  # the base's terms, as its card metadata states them
    license_name: str | None = None
    license_link: str | None = None
    method: str = "manual"
    sparsity: float | None = None  # in the method's own unit (see sparsity_unit)
    sparsity_unit: str = "blocks"
    parameters_before: int | None = None
    parameters_after: int | None = None
    calibration: dict[str, Any] | None = None
    search: dict[str, Any] | None = None
    compensation: dict[str, Any] | None = None  # a linear map folded into kept weights (--compensate), if any
    scores: dict[str, Any] = field(default_factory=dict)
    command: str | None = None
    versions: dict[str, str] = field(default_factory=versions)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION

    def source_spec(self, output_dir: str | Path) -> str:
        """What loads the source from here: a local source directory at its recorded place seen from the output
        directory (the name as typed may be a relative path meaning another folder in this working directory),
        else the name as typed (a Hub id, or a local source moved together with the output)."""
        if self.source_relative:
            beside = Path(output_dir) / self.source_relative
            if beside.is_dir():
                return str(beside)
        return self.source_model

    def lineage(self) -> dict[str, Any]:
        """What this record says of its source, in the form ``derived_from`` keeps for the next pruning of it."""
        return {key: getattr(self, key) for key in LINEAGE_KEYS}

    def chain(self) -> list[dict[str, Any]]:
        """This record's source, then its source's source ... while they were evop-hub outputs."""
        links = [self.lineage()]
        while links[-1].get("derived_from"):
            links.append(links[-1]["derived_from"])
        return links

    def hub_base(self) -> tuple[str | None, str | None]:
        """(Hub id, revision) of the nearest model of the chain on the Hub: the card's base_model, and where a
        license link points, when this model was pruned from a local evop-hub output."""
        return next(
            ((link["source_hub_id"], link["source_revision"]) for link in self.chain() if link.get("source_hub_id")),
            (None, None),
        )

    @property
    def kept_blocks(self) -> list[int]:
        dropped = set(self.dropped_blocks)
        return [i for i in range(self.num_blocks) if i not in dropped]

    @property
    def parameter_reduction(self) -> float | None:
        if not self.parameters_before or self.parameters_after is None:
            return None
        return 1.0 - self.parameters_after / self.parameters_before

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["kept_blocks"] = self.kept_blocks
        data["block_mapping"] = {str(new): old for new, old in enumerate(self.kept_blocks)}
        data["parameter_reduction"] = self.parameter_reduction
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / RECORD_NAME
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> PruningRecord:
        path = Path(directory) / RECORD_NAME
        if not path.is_file():
            raise EvopError(
                f"{directory} is not an evop-hub output (no {RECORD_NAME}); "
                "point at a directory written by `evop-hub prune` or `evop-hub drop`."
            )
        problem = None
        try:
            record = cls.from_dict(json.loads(path.read_text()))
            if not isinstance(record.num_blocks, int) or not all(isinstance(i, int) for i in record.dropped_blocks):
                problem = "num_blocks and dropped_blocks must be integers"
        except (ValueError, TypeError, AttributeError) as exc:  # bad UTF-8 or JSON, missing fields, not an object
            problem = exc
        if problem is not None:
            raise EvopError(f"{path} is not a valid evop-hub record ({problem}); re-run the pruning.")
        return record


def check_output_dir(output_dir: str | Path) -> PruningRecord:
    """The record of an evop-hub output, or one line saying why this is not one."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise EvopError(f"{output_dir} is not a directory; point at the output of `evop-hub prune` or `evop-hub drop`.")
    record = PruningRecord.load(output_dir)
    if not (output_dir / "config.json").is_file():
        raise EvopError(f"{output_dir} has no config.json: the checkpoint is incomplete; re-run the pruning.")
    return record
