"""Attacks an audit runs identically on a candidate and on its control: relearning, in-context re-introduction,
weight quantization and prompt attacks. Each judges a checkpoint through its weights and prompts only; none knows
how the checkpoint was made."""
