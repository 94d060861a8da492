"""The adversarial half of distillation: how the discriminator learns and what it tells the decoder.

TAESD's decoder is "a standalone conditional GAN, not a distilled model" (its author,
github.com/madebyollin/taesd issue 11): adversarial-dominant, with only a faint low-res MSE
since TAESD 1.2. What makes that train stably, from madebyollin/seraena:

- objective `relativistic`: the discriminator regresses least-squares targets (+1 real, -1 fake)
  on one batch mixing real and fake images per sample (so BatchNorm cannot tell them apart by
  batch statistics), and the decoder is pushed to make the discriminator's scores of its image
  match those of the real image with the same latent; `hinge` is the classic alternative;
- a replay buffer of past fakes: the discriminator keeps seeing old failure modes;
- `adv_scale normalized`: the gradient the decoder receives is rescaled to unit std, so its size
  is fixed by `adv_weight` whatever the discriminator's scale ("blurry outputs mean the adversarial
  gradient is too small", issue 19); `adaptive` is VQGAN's balance against the reconstruction
  terms' gradient at the decoder's last layer instead; `raw` leaves it as the loss gives it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tinyae.config import LossConfig
from tinyae.data.images import from_uint8, to_uint8


class ReplayBuffer:
    """Past fakes (8-bit, in host memory) with their latents; sampled uniformly, replaced at random once full.

    Its contents and generator are part of the checkpoint, so a resumed run sees the same
    samples; a new crop size (the closing phase) starts it afresh. 4096 fakes of 96 px take
    113 MB (+ their latents), of 256 px 805 MB.
    """

    def __init__(self, capacity: int, seed: int = 0):
        self.capacity = capacity
        self.images: torch.Tensor | None = None  # uint8 (N, 3, H, W)
        self.latents: torch.Tensor | None = None
        self.count = 0
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.count

    def push(self, images: torch.Tensor, latents: torch.Tensor) -> None:
        images, latents = to_uint8(images.detach()).cpu(), latents.detach().to(torch.float16).cpu()
        if self.images is None or self.images.shape[1:] != images.shape[1:]:
            self.images = images.new_zeros((self.capacity, *images.shape[1:]))
            self.latents = latents.new_zeros((self.capacity, *latents.shape[1:]))
            self.count = 0
        for image, latent in zip(images, latents):
            slot = self.count if self.count < self.capacity else int(torch.randint(self.capacity, (),
                                                                                   generator=self.gen))
            self.images[slot], self.latents[slot] = image, latent
            self.count = min(self.count + 1, self.capacity)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        picks = torch.randint(self.count, (n,), generator=self.gen)
        return from_uint8(self.images[picks]), self.latents[picks].float()

    def state_dict(self) -> dict:
        return {"images": self.images, "latents": self.latents, "count": self.count, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.images, self.latents, self.count = state["images"], state["latents"], int(state["count"])
        self.gen.set_state(state["gen"])


def discriminator_loss(objective: str, scores: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean loss over the real samples plus mean loss over the fakes; `real` (B,) says which is which.

    hinge: relu(1 - s) on real, relu(1 + s) on fake; relativistic: least squares on targets +1 / -1.
    """
    s = scores.float().flatten(1)
    real_loss = F.relu(1 - s) if objective == "hinge" else (s - 1).square()
    fake_loss = F.relu(1 + s) if objective == "hinge" else (s + 1).square()
    return real_loss[real].mean().nan_to_num() + fake_loss[~real].mean().nan_to_num()


def generator_loss(objective: str, fake_scores: torch.Tensor, real_scores: torch.Tensor | None) -> torch.Tensor:
    """What the decoder minimises; `relativistic` pulls a fake's scores onto those of its real image."""
    if objective == "hinge":
        return -fake_scores.float().mean()
    return F.mse_loss(fake_scores.float(), real_scores.float().detach())


class Adversary:
    """The discriminator, its optimizer and replay buffer, and the adversarial terms of the student's step."""

    def __init__(self, config: LossConfig, disc: nn.Module, raw_disc: nn.Module, opt: torch.optim.Optimizer,
                 accelerator, seed: int = 0):
        self.config, self.disc, self.raw_disc, self.opt, self.accelerator = config, disc, raw_disc, opt, accelerator
        self.buffer = ReplayBuffer(config.replay, seed) if config.replay > 0 else None
        self.gen = torch.Generator().manual_seed(seed + 1)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), **({"buffer": self.buffer.state_dict()} if self.buffer else {})}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        if self.buffer is not None:
            self.buffer.load_state_dict(state["buffer"])

    def _scores(self, images: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        with self.accelerator.autocast():
            return self.raw_disc(images, latents)

    def generator_term(self, fake: torch.Tensor, real: torch.Tensor, latents: torch.Tensor, weight: float,
                       reconstruction: torch.Tensor | None = None, last_layer: torch.Tensor | None = None
                       ) -> tuple[tuple[float, torch.Tensor], torch.Tensor]:
        """((weight, term), the adversarial loss itself, for logging); `term` carries the sized gradient."""
        c = self.config
        self.raw_disc.requires_grad_(False)  # the student's step must not train the discriminator
        self.raw_disc.eval()  # BatchNorm: score with running statistics, as Seraena's corrections do
        real_scores = None
        if c.adv_loss == "relativistic":
            with torch.no_grad():
                real_scores = self._scores(real, latents)
        loss = generator_loss(c.adv_loss, self._scores(fake, latents), real_scores)
        if c.adv_scale == "normalized":
            # The loss's gradient on the image, rescaled to unit std: a fixed-size push, whatever D's scale.
            (grad,) = torch.autograd.grad(loss, fake, retain_graph=False)
            correction = -grad / grad.float().std().clamp_min(1e-12)
            return (weight, F.mse_loss(fake.float(), (fake.detach() + correction).float())), loss.detach()
        if c.adv_scale == "adaptive" and reconstruction is not None and last_layer is not None:
            # VQGAN: as large at the decoder's last layer as the reconstruction terms' gradient.
            rec_grad, = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)
            adv_grad, = torch.autograd.grad(loss, last_layer, retain_graph=True)
            balance = (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0, 1e4).detach()
            return (weight * balance, loss), loss.detach()
        return (weight, loss), loss.detach()

    def step(self, real: torch.Tensor, fake: torch.Tensor, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """One discriminator update on real and (current and replayed) fake images; returns loss and accuracies.

        `relativistic` scores one batch holding, per sample, the real or a fake image (so BatchNorm
        statistics cannot give the answer away; Seraena flips a coin per sample, this takes exactly
        half of each so both accuracies are always measured); `hinge` scores a batch of real images
        and one of fakes, the classic way.
        """
        c = self.config
        fake, latents = fake.detach(), latents.detach()
        fakes, fake_latents = fake, latents
        if self.buffer is not None:  # as Seraena: add the new fakes, then take half of the batch from the buffer
            self.buffer.push(fake, latents)
            n = len(fake) // 2
            old, old_latents = self.buffer.sample(len(fake) - n)
            fakes = torch.cat([fake[:n], old.to(fake)], 0)
            fake_latents = torch.cat([latents[:n], old_latents.to(latents)], 0)
        self.raw_disc.requires_grad_(True)
        self.raw_disc.train()
        if c.adv_loss == "relativistic":
            # Half the samples (chosen at random) real, the others fake: both classes in every batch.
            is_real = (torch.randperm(len(real), generator=self.gen) < (len(real) + 1) // 2).to(real.device)
            images = torch.where(is_real.view(-1, *[1] * (real.ndim - 1)), real, fakes.to(real.dtype))
            conds = torch.where(is_real.view(-1, *[1] * (latents.ndim - 1)), latents, fake_latents.to(latents.dtype))
        else:
            is_real = torch.cat([torch.ones(len(real), dtype=torch.bool), torch.zeros(len(fakes), dtype=torch.bool)])
            is_real = is_real.to(real.device)
            images, conds = torch.cat([real, fakes.to(real.dtype)]), torch.cat([latents, fake_latents.to(latents)])
        with self.accelerator.autocast():
            scores = self.disc(images, conds) if c.adv_loss == "relativistic" else torch.cat(
                [self.disc(images[: len(real)], conds[: len(real)]), self.disc(images[len(real):], conds[len(real):])])
        loss = discriminator_loss(c.adv_loss, scores, is_real)
        self.accelerator.backward(loss)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        said_real = scores.float().mean(dim=tuple(range(1, scores.ndim))) > 0
        return {"disc": loss.detach(),
                "disc_real_acc": (said_real & is_real).sum() / is_real.sum().clamp_min(1),
                "disc_fake_acc": (~said_real & ~is_real).sum() / (~is_real).sum().clamp_min(1)}
