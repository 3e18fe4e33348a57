"""A fake diffusion step context for the ESD / All-but-One / DoCo step tests: ``encode`` hands out one id per
prompt, ``predict`` looks the prediction up by (prompt, trained or frozen), row for row with the pairs."""

import torch


class FakeCtx:
    def __init__(self, table: dict, concept: str = "circle", norm: dict | None = None, retain_mse=None):
        self.table = table  # (prompt, reference) -> (B, C, H, W): row i = pair i's prediction
        self.concept, self.norm, self.aux = concept, norm or {"forget_seqs": 4.0, "retain_seqs": 5.0}, {}
        self.ids: dict[str, int] = {}
        self.calls: list = []
        self.retain_mse = retain_mse

    def encode(self, prompts):
        return torch.tensor([float(self.ids.setdefault(p, len(self.ids))) for p in prompts]).view(-1, 1, 1)

    def predict(self, b, cond=None, reference=False, space="model"):
        prompts = b["prompt"] if cond is None else [self._prompt(float(i)) for i in cond.flatten()]
        self.calls.append((tuple(prompts), reference, space))
        rows = [self.table[(p, reference)][i] for i, p in enumerate(prompts)]
        return torch.stack(rows)

    def policy(self, b):
        self.calls.append(("policy", b["name"]))
        return self.retain_mse

    def _prompt(self, i: float) -> str:
        return next(p for p, j in self.ids.items() if j == i)
