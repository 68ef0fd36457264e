"""DPO stage: a fine-tuned model + preference data → a preference-tuned model, by launching ``trainer.dpo``.

    ref = dpo(sft_ref, dpo_data_ref, DPOStageConfig(dpo=DPOSection(beta=0.1)), store)

The same launch, resume and artifact layout as `tasks.sft` (final/ with the
tokenizer, adapter/ for LoRA, metrics, DONE.json); the trainer additionally stores
the reference log-probs of the starting model in ``reference_logps.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from storage.store import ArtifactRef, ArtifactStore, open_store
from tasks.sft import SFTStageConfig, train_into
from tasks.stage import Stage, reported
from trainer.dpo import DPOConfig, DPOSection

STAGE = "dpo"


@dataclass(frozen=True)
class DPOStageConfig(SFTStageConfig):
    """`tasks.sft.SFTStageConfig` plus the DPO settings (``[dpo.dpo]``: beta, label_smoothing)."""

    dpo: DPOSection = field(default_factory=DPOSection)

    def train_config(self, base_dir: str, data_dir: str, out_dir: str) -> DPOConfig:  # type: ignore[override]
        return DPOConfig(**self.sections(base_dir, data_dir, out_dir), dpo=self.dpo)


DPO = Stage(STAGE, "2", DPOStageConfig, inputs=("base", "data"))


def dpo(base: ArtifactRef, data: ArtifactRef, cfg: DPOStageConfig, store: ArtifactStore) -> ArtifactRef:
    """Preference-tune `base` (usually an sft artifact) on a ``dpo_data`` artifact; resumable."""
    return DPO.produce(store, cfg, {"base": base, "data": data},
                       lambda build: train_into(build, base, data, cfg, "trainer.dpo"))


@DPO.task
def dpo_task(base: ArtifactRef, data: ArtifactRef, cfg: DPOStageConfig, store_root: str) -> ArtifactRef:
    """Prefect wrapper: cached by artifact key; a rerun resumes from the trainer's checkpoint."""
    return reported(dpo(base, data, cfg, open_store(store_root)))
