"""What was done to a model and where it was measured: ``evop_pruning.json`` and its provenance."""

from .provenance import cpu_name, hardware, versions
from .record import LINEAGE_KEYS, RECORD_NAME, SCHEMA_VERSION, STATE_DIR, PruningRecord, check_output_dir
from .scores import record_results

__all__ = [
    "LINEAGE_KEYS",
    "RECORD_NAME",
    "SCHEMA_VERSION",
    "STATE_DIR",
    "PruningRecord",
    "check_output_dir",
    "cpu_name",
    "hardware",
    "record_results",
    "versions",
]
