"""fp16 and bf16 safety of a student on the evaluation images (tinyae.models.precision does the runs).

Per resolution, for each half of the student: the largest |activation| in fp32 and the
submodule it is in, and for each low-precision dtype how far the outputs move from fp32:
the largest absolute difference, non-finite values, and for decoded images (clamped to
[-1, 1], as a pipeline shows them) the PSNR against the fp32 decode. The decoder gets the
teacher's latents, what it decodes in a pipeline.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tinyae.evaluation import metrics
from tinyae.models.precision import FP16_MAX, LOW_PRECISION, PARTS, fp16_overflow, low_precision_outputs
from tinyae.utils.tables import fmt, markdown_table

PRECISION_NOTE = ("fp16/bf16: the largest |activation| is from the fp32 run (fp16 overflows past 65504); "
                  "low-precision outputs are native on CUDA and emulated on CPUs (every layer's output rounded).")


class PrecisionStats:
    """Accumulates `low_precision_outputs` over batches; `result()` is JSON-ready."""

    def __init__(self, dtypes: tuple[str, ...] = tuple(LOW_PRECISION)):
        self.dtypes = dtypes
        self.peaks = {part: (0.0, "") for part in PARTS}
        self.diffs = {(part, d): 0.0 for part in PARTS for d in dtypes}
        self.nonfinite = {(part, d): 0 for part in PARTS for d in dtypes}
        self.psnr: dict[str, list[float]] = {d: [] for d in dtypes}
        self.overflow: str | None = None

    def update(self, student: nn.Module, images: torch.Tensor, latents: torch.Tensor) -> None:
        outputs = low_precision_outputs(student, images, latents, self.dtypes)
        if "fp16" in self.dtypes and self.overflow is None:
            self.overflow = fp16_overflow(outputs)
        for part in PARTS:
            peak = outputs[part]["peak"]
            if not peak.value <= self.peaks[part][0]:
                self.peaks[part] = (peak.value, peak.where)
            reference = outputs[part]["fp32"]
            for d in self.dtypes:
                low = outputs[part][d]
                self.nonfinite[part, d] += int((~torch.isfinite(low)).sum())
                if part == "decoder":
                    reference, low = reference.clamp(-1, 1), low.clamp(-1, 1)
                    self.psnr[d] += metrics.psnr(low, reference).cpu().tolist()
                self.diffs[part, d] = max(self.diffs[part, d], float((low - reference).abs().max()))

    def result(self) -> dict:
        worst = max(value for value, _ in self.peaks.values())
        out: dict = {"fp16_max": FP16_MAX, "fp16_headroom": FP16_MAX / worst if worst else None,
                     "fp16_overflow": self.overflow}
        for part in PARTS:
            value, where = self.peaks[part]
            out[part] = {"max_abs_activation": value, "where": where}
            for d in self.dtypes:
                entry = {"max_abs_diff": self.diffs[part, d], "nonfinite": self.nonfinite[part, d]}
                if part == "decoder":
                    finite = [v for v in self.psnr[d] if not math.isnan(v)]
                    clean = finite and not self.nonfinite[part, d]
                    entry["psnr_vs_fp32"] = sum(finite) / len(finite) if clean else None
                out[part][d] = entry
        return out


def format_precision(results: dict) -> str:
    """One row per resolution, half and dtype: the eval.md table of fp16/bf16 safety."""
    rows = []
    for res, run in sorted(results["resolutions"].items(), key=lambda kv: int(kv[0])):
        precision = run.get("precision")
        if not precision:
            continue
        for part in PARTS:
            p = precision[part]
            for d in (k for k in LOW_PRECISION if k in p):
                rows.append([res, part, d, fmt(p["max_abs_activation"], ".4g"), p["where"],
                             fmt(p[d]["max_abs_diff"], ".2e"), fmt(p[d].get("psnr_vs_fp32"), ".2f"),
                             str(p[d]["nonfinite"])])
    if not rows:
        return ""
    header = ["px", "half", "dtype", "max |activation| (fp32)", "where", "max |diff| vs fp32", "PSNR vs fp32",
              "non-finite"]
    return markdown_table(header, rows)


def overflow_warnings(results: dict) -> list[str]:
    """One sentence per evaluated resolution at which the student overflows fp16."""
    return [f"fp16 overflow at {res} px: {run['precision']['fp16_overflow']}."
            for res, run in results["resolutions"].items() if (run.get("precision") or {}).get("fp16_overflow")]
