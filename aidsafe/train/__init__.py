"""Training data and training recipes.

- :mod:`aidsafe.train.datasets` writes SFT (and the SFT_OG baseline) and DPO sets in TRL's
  conversational formats, with a dataset card (``aidsafe export --format sft|dpo``). It needs
  nothing beyond the base install.
- :mod:`aidsafe.train.config` reads a training config (``aidsafe.train/v1``) and
  :mod:`aidsafe.train.trainer` runs it on TRL + PEFT (``aidsafe train sft|dpo``, extra ``[train]``);
  :mod:`aidsafe.train.merge` folds a run's adapter into its base model (``aidsafe train merge``).
"""

from __future__ import annotations

from .datasets import CotPlacement, ExportCounts, assistant_message, cot_text, export_dpo, export_sft, export_sft_original

__all__ = ["CotPlacement", "ExportCounts", "assistant_message", "cot_text", "export_dpo", "export_sft", "export_sft_original"]
