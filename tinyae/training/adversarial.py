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
    """Past fakes (uint8) with their latents (fp16), on the device the fakes come from; sampled uniformly,
    replaced at random once full.

    It lives where the discriminator does, so pushing and sampling never wait for the host: a
    host-side buffer moved every step's fakes and samples across PCIe (about 100 MB a step at
    1024 px) and stalled the GPU on each copy. Slots and samples are drawn by a CPU generator
    (the same draws on any device, and its state checkpoints as bytes); the indices cross to
    the device once per call, asynchronously. It takes capacity x 3 x R^2 bytes of device
    memory plus its latents: 1024 fakes of 96 px take 28 MB, of 512 px 805 MB, of 1024 px 3.2 GB.

    It is in the checkpoint (its filled slots only): the discriminator's batches depend on it,
    and a resume is promised to be exact, which nothing but the stored fakes can give (they were
    decoded by students that no longer exist). The cost is disk, not time: 3.2 GB per checkpoint
    in a 1024 px phase once full (4.3 GB with FLUX.2's latents), where the models, the EMA and
    both optimizers' states take about 0.15 GB. `loss.replay 0` leaves it (and its share of the
    checkpoint) out.
    A new crop size (the closing phase) starts it afresh.
    """

    def __init__(self, capacity: int, seed: int = 0, device: str | torch.device = "cpu"):
        self.capacity = capacity
        self.device = torch.device(device)
        self.images: torch.Tensor | None = None  # uint8 (capacity, 3, H, W)
        self.latents: torch.Tensor | None = None  # fp16 (capacity, C, h, w)
        self.count = 0
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.count

    def slots(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(which of `n` new fakes are kept, the slot of each), as pushing them one by one would do: the next
        free slots while there are any, then a random slot each; a slot drawn twice keeps the later fake."""
        free = max(0, min(n, self.capacity - self.count))
        slots = torch.cat([torch.arange(self.count, self.count + free),
                           torch.randint(self.capacity, (n - free,), generator=self.gen)])
        order = torch.arange(n)
        overwritten = ((slots[:, None] == slots[None, :]) & (order[None, :] > order[:, None])).any(1)
        return order[~overwritten], slots[~overwritten]

    def push(self, images: torch.Tensor, latents: torch.Tensor) -> None:
        """Add a batch of fakes (in [-1, 1]) with their latents, in one indexed write on their device."""
        images, latents = to_uint8(images.detach()), latents.detach().to(torch.float16)
        if self.images is None or self.images.shape[1:] != images.shape[1:]:
            self.images = images.new_zeros((self.capacity, *images.shape[1:]))
            self.latents = latents.new_zeros((self.capacity, *latents.shape[1:]))
            self.count = 0
        elif self.images.device != images.device:
            self.images, self.latents = self.images.to(images.device), self.latents.to(images.device)
        self.device = images.device
        rows, slots = (x.to(self.device, non_blocking=True) for x in self.slots(len(images)))
        self.images.index_copy_(0, slots, images.index_select(0, rows))
        self.latents.index_copy_(0, slots, latents.index_select(0, rows))
        self.count = min(self.count + len(images), self.capacity)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` past fakes (float, [-1, 1]) and their latents (float32), drawn uniformly with replacement."""
        picks = torch.randint(self.count, (n,), generator=self.gen).to(self.device, non_blocking=True)
        return from_uint8(self.images.index_select(0, picks)), self.latents.index_select(0, picks).float()

    def state_dict(self) -> dict:
        filled = None if self.images is None else slice(0, self.count)
        return {"images": None if filled is None else self.images[filled],
                "latents": None if filled is None else self.latents[filled],
                "count": self.count, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved buffer onto this buffer's device (older checkpoints stored every slot, filled or not)."""
        self.count, self.images, self.latents = int(state["count"]), None, None
        self.gen.set_state(state["gen"])
        if state["images"] is not None:
            images, latents = state["images"][: self.count], state["latents"][: self.count]
            self.images = torch.zeros((self.capacity, *images.shape[1:]), dtype=torch.uint8, device=self.device)
            self.latents = torch.zeros((self.capacity, *latents.shape[1:]), dtype=torch.float16, device=self.device)
            self.images[: self.count], self.latents[: self.count] = images.to(self.device), latents.to(self.device)


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
        self.buffer = ReplayBuffer(config.replay, seed, accelerator.device) if config.replay > 0 else None
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
        """((weight, term), the adversarial loss itself, for logging); `term` carries the sized gradient.

        `normalized` and `adaptive` go back through the discriminator once, to the image, and return a
        term whose gradient is the one they sized: the student's backward then stops at the image.
        """
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
            # VQGAN: as large at the decoder's last layer as the reconstruction terms' gradient. One pass back
            # through the discriminator gives the loss's gradient on the image; the returned term, <image, that
            # gradient>, hands the decoder exactly that gradient, so neither the balance below nor the student's
            # backward (nor the log steps' gradient ratio) goes through the discriminator again.
            (grad,) = torch.autograd.grad(loss, fake)
            term = (fake.float() * grad.float()).sum()
            rec_grad, = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)
            adv_grad, = torch.autograd.grad(term, last_layer, retain_graph=True)
            balance = (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0, 1e4).detach()
            return (weight * balance, term), loss.detach()
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
            is_real = (torch.randperm(len(real), generator=self.gen) < (len(real) + 1) // 2).to(real.device,
                                                                                       non_blocking=True)
            images = torch.where(is_real.view(-1, *[1] * (real.ndim - 1)), real, fakes.to(real.dtype))
            conds = torch.where(is_real.view(-1, *[1] * (latents.ndim - 1)), latents, fake_latents.to(latents.dtype))
        else:
            is_real = torch.arange(len(real) + len(fakes), device=real.device) < len(real)
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
