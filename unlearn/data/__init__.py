"""Records in the TOFU schema: the embedded TinyFacts generator, the TOFU loader and validation."""

from unlearn.data.schema import Record, load_records, validate_record
from unlearn.data.tofu import TOFU_CONFIGS, load_tofu

__all__ = ["Record", "load_records", "validate_record", "TOFU_CONFIGS", "load_tofu"]
