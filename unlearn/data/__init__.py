"""Records in the TOFU schema: the embedded TinyFacts generator, the TOFU loader and validation."""

from unlearn.data.schema import Record, load_records, validate_record

__all__ = ["Record", "load_records", "validate_record"]
