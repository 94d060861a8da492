"""Training health: is the discriminator still useful, and is the adversarial push the size it should be?

A GAN can fail quietly: a discriminator that tells every fake apart gives a hinge-trained
decoder no gradient; one that is no better than chance gives it noise; an adversarial
gradient hundreds of times the reconstruction terms' (or a hundredth of it) means the
weights are off. The loop logs the signals every `log_every` steps (TensorBoard `health/*`
and the progress bar) and this monitor turns a state that lasts into one warning.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

HEALTH_KEYS = ("disc_real_acc", "disc_fake_acc", "adv_grad_ratio")


class HealthMonitor:
    """Warns once when a bad state lasts `patience` log intervals; warns again only after it recovered."""

    def __init__(self, patience: int = 3, ratio_bounds: tuple[float, float] = (0.01, 100.0)):
        self.patience, self.ratio_bounds = patience, ratio_bounds
        self.streaks: dict[str, int] = {}
        self.warned: set[str] = set()

    def diagnose(self, means: dict[str, float]) -> dict[str, str]:
        """The bad states visible in one interval's means, each with its explanation."""
        found = {}
        real, fake = means.get("disc_real_acc"), means.get("disc_fake_acc")
        if real is not None and fake is not None:
            if real >= 0.98 and fake >= 0.98:
                found["disc_wins"] = (
                    f"the discriminator tells real from fake almost always (accuracy {real:.0%} real, {fake:.0%} fake): "
                    "a raw or hinge adversarial gradient may be vanishing; try loss.adv_scale normalized, a larger "
                    "loss.adv_weight or a smaller optim.disc_lr")
            elif real + fake <= 1.05:
                found["disc_lost"] = (
                    f"the discriminator is no better than chance (accuracy {real:.0%} real, {fake:.0%} fake): it has "
                    "collapsed or is fooled completely, so the adversarial term carries no information; check "
                    "optim.disc_lr and loss.disc, or start it later (loss.adv_start)")
        ratio = means.get("adv_grad_ratio")
        if ratio is not None and not self.ratio_bounds[0] <= ratio <= self.ratio_bounds[1]:
            found["adv_scale"] = (
                f"the adversarial gradient on the decoder's output is {ratio:.3g}x the reconstruction terms': "
                f"{'it drowns them' if ratio > 1 else 'it barely counts'}; adjust loss.adv_weight or use "
                "loss.adv_scale normalized")
        return found

    def check(self, means: dict[str, float], step: int) -> list[str]:
        """Update the streaks with one interval's means; returns (and logs) the warnings issued now."""
        found = self.diagnose(means)
        issued = []
        for kind in set(self.streaks) | set(found):
            if kind not in found:
                self.streaks.pop(kind, None)
                self.warned.discard(kind)
                continue
            self.streaks[kind] = self.streaks.get(kind, 0) + 1
            if self.streaks[kind] >= self.patience and kind not in self.warned:
                self.warned.add(kind)
                issued.append(f"step {step}: {found[kind]}.")
                logger.warning(issued[-1])
        return issued
