"""Each loss term is a real training signal, and the adversarial machinery does what its docstring says."""

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from tinyae.config import LossConfig
from tinyae.data.images import list_images, load_eval_images, to_uint8
from tinyae.models.discriminator import MultiScaleDiscriminator, PatchDiscriminator, build_discriminator
from tinyae.models.student import Student
from tinyae.training.adversarial import Adversary, ReplayBuffer, discriminator_loss, generator_loss
from tinyae.training.checkpoints import read_training_state, save_training_state
from tinyae.training.health import HealthMonitor
from tinyae.training.losses import DistillLoss, weighted_total


@pytest.fixture
def batch(photos, small_teacher):
    images = load_eval_images(list_images(photos)[:2], 32)
    return images, small_teacher.encode(images)


def _steps(params, loss_fn, n=8, lr=3e-3):
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.9))
    values = []
    for _ in range(n):
        loss = loss_fn()
        values.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return values


def adversary(config: LossConfig, disc: torch.nn.Module, lr: float = 3e-3) -> Adversary:
    return Adversary(config, disc, disc, torch.optim.Adam(disc.parameters(), lr, betas=(0.5, 0.9)), Accelerator(),
                     seed=0)


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_latent_matching_decreases(batch, small_student_config, kind):
    torch.manual_seed(0)
    images, latents = batch
    student, loss = Student(small_student_config), DistillLoss(LossConfig(latent=kind))
    values = _steps(student.encoder.parameters(),
                    lambda: loss.encoder_terms(student.encode(images), latents)["latent"][1])
    assert values[-1] < values[0]


@pytest.mark.parametrize("term, config", [("pixel", LossConfig()), ("pixel", LossConfig(pixel_pool=8)),
                                          ("lpips", LossConfig(lpips_weight=1.0))], ids=["pixel", "pooled", "lpips"])
def test_decoder_reconstruction_terms_decrease(batch, small_student_config, term, config):
    torch.manual_seed(0)
    images, latents = batch
    student, loss = Student(small_student_config), DistillLoss(config)
    values = _steps(student.decoder.parameters(), lambda: loss.decoder_terms(student.decode(latents), images)[term][1])
    assert values[-1] < values[0]


def test_the_faint_pixel_term_sees_only_low_resolution(batch):
    """TAESD 1.2's 8x-pooled MSE: detail inside an 8x8 cell is left to the adversarial term."""
    images, _ = batch
    blocky = F.interpolate(F.avg_pool2d(images, 8), scale_factor=8, mode="nearest")  # every 8x8 cell's mean
    assert DistillLoss(LossConfig(pixel_pool=8)).decoder_terms(blocky, images)["pixel"][1] < 1e-10
    assert DistillLoss(LossConfig()).decoder_terms(blocky, images)["pixel"][1] > 1e-3


def test_each_term_carries_its_recipe_weight_into_the_total(batch, small_student_config):
    images, latents = batch
    student = Student(small_student_config)
    loss = DistillLoss(LossConfig(latent_weight=2, pixel_weight=3, lpips_weight=0.5))
    terms = loss.encoder_terms(student.encode(images), latents) | loss.decoder_terms(student.decode(latents), images)
    assert {name: weight for name, (weight, _) in terms.items()} == {"latent": 2, "pixel": 3, "lpips": 0.5}
    assert weighted_total(terms).item() == pytest.approx(sum(w * v for w, v in terms.values()).item())
    assert "lpips" not in DistillLoss(LossConfig(lpips_weight=0)).decoder_terms(images, images)  # off: not computed


@pytest.mark.parametrize("kind, width, params", [("patch", 64, None), ("multiscale", 64, 7.4e6)])
def test_discriminators_are_latent_conditioned(batch, kind, width, params):
    images, latents = batch
    disc = build_discriminator(kind, 4, width).eval()
    assert not torch.allclose(disc(images, latents), disc(images, latents + 1))
    if params:  # Seraena's size
        assert abs(sum(p.numel() for p in disc.parameters()) - params) < 0.2e6


def test_the_multiscale_discriminator_scores_from_every_depth():
    scores = MultiScaleDiscriminator(4, width=8)(torch.zeros(2, 3, 64, 48), torch.zeros(2, 4, 8, 6))
    assert scores.shape == (2, 6, 8, 6)


@pytest.mark.parametrize("objective", ["hinge", "relativistic"])
@pytest.mark.parametrize("kind", ["patch", "multiscale"])
def test_the_discriminator_learns_to_tell_real_from_student_images(batch, small_student_config, objective, kind):
    torch.manual_seed(0)
    images, latents = batch
    images, latents = images.repeat(4, 1, 1, 1), latents.repeat(4, 1, 1, 1)  # a batch of 8: BatchNorm needs some
    fake = Student(small_student_config).decode(latents).detach()
    adv = adversary(LossConfig(adv_loss=objective, disc=kind, disc_width=8, replay=16), build_discriminator(kind, 4, 8))
    first = adv.step(images, fake, latents)
    for _ in range(30):
        last = adv.step(images, fake, latents)
    assert last["disc"] < first["disc"]
    assert (last["disc_real_acc"] + last["disc_fake_acc"]) / 2 > 0.7


def test_the_relativistic_generator_loss_pulls_a_fake_onto_its_real_image(batch):
    images, latents = batch
    disc = PatchDiscriminator(4, width=16).requires_grad_(False)
    fake = torch.zeros_like(images, requires_grad=True)
    values = _steps([fake], lambda: generator_loss("relativistic", disc(fake, latents), disc(images, latents)), n=30,
                    lr=3e-2)
    assert values[-1] < 0.5 * values[0]
    assert generator_loss("relativistic", disc(images, latents), disc(images, latents)) == 0


def test_discriminator_losses_average_real_and_fake_separately():
    scores, is_real = torch.tensor([[2.0], [0.5], [-3.0]]), torch.tensor([True, True, False])
    assert discriminator_loss("hinge", scores, is_real) == pytest.approx((0 + 0.5) / 2 + 0)
    assert discriminator_loss("relativistic", scores, is_real) == pytest.approx((1 + 0.25) / 2 + 4)


def _output_grad(config: LossConfig, disc, fake, images, latents, weight=1.0):
    fake = fake.clone().requires_grad_(True)
    (w, term), _ = adversary(config, disc).generator_term(fake, images, latents, weight)
    (grad,) = torch.autograd.grad(w * term, fake)
    return grad


@pytest.mark.parametrize("objective", ["hinge", "relativistic"])
def test_the_normalized_adversarial_gradient_has_a_fixed_size_whatever_the_discriminator_scale(batch, objective):
    images, latents = batch
    fake = images.flip(-1)
    disc = PatchDiscriminator(4, width=16)
    raw, normalized = LossConfig(adv_loss=objective), LossConfig(adv_loss=objective, adv_scale="normalized")
    g_raw, g_norm = _output_grad(raw, disc, fake, images, latents), _output_grad(normalized, disc, fake, images, latents)
    with torch.no_grad():
        disc.layers[-1].weight.mul_(100)  # a discriminator at another scale
    g_raw_100, g_norm_100 = (_output_grad(c, disc, fake, images, latents) for c in (raw, normalized))
    assert g_raw_100.norm() / g_raw.norm() > 50  # the raw gradient follows the discriminator's scale ...
    assert g_norm_100.norm().item() == pytest.approx(g_norm.norm().item(), rel=1e-4)  # ... the normalized one does not
    assert (g_norm * fake.numel() / 2).std().item() == pytest.approx(1.0, rel=1e-3)  # a unit-std correction, times weight
    assert _output_grad(normalized, disc, fake, images, latents, weight=3.0).norm().item() == pytest.approx(
        3 * g_norm_100.norm().item(), rel=1e-4)


def test_the_adaptive_weight_matches_the_reconstruction_gradient_at_the_last_layer(batch, small_student_config):
    images, latents = batch
    student = Student(small_student_config)
    recon = student.decode(latents)
    rec = DistillLoss(LossConfig()).decoder_terms(recon, images)["pixel"][1]
    last = student.decoder.layers[-1].weight
    (w, term), _ = adversary(LossConfig(adv_scale="adaptive"), PatchDiscriminator(4, width=16)).generator_term(
        recon, images, latents, 1.0, rec, last)
    (g_adv,) = torch.autograd.grad(w * term, last, retain_graph=True)
    (g_rec,) = torch.autograd.grad(rec, last)
    assert g_adv.norm().item() == pytest.approx(g_rec.norm().item(), rel=1e-3)


def test_the_replay_buffer_keeps_past_fakes_up_to_its_capacity_and_restores_exactly():
    buffer = ReplayBuffer(4, seed=0)
    for k in range(6):
        buffer.push(torch.full((1, 3, 8, 8), k / 10), torch.full((1, 2, 1, 1), float(k)))
    assert len(buffer) == 4
    images, latents = buffer.sample(8)
    assert images.shape == (8, 3, 8, 8) and set(latents.flatten().tolist()) <= set(map(float, range(6)))
    state = buffer.state_dict()
    again = ReplayBuffer(4)
    again.load_state_dict(state)
    a, b = buffer.sample(3), again.sample(3)  # same contents, same generator: same draws
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    buffer.push(torch.zeros(1, 3, 16, 16), torch.zeros(1, 2, 2, 2))  # a new crop size starts it afresh
    assert len(buffer) == 1


def test_the_adaptive_weight_goes_back_through_the_discriminator_once_for_the_same_gradient(batch,
                                                                                         small_student_config):
    images, latents = batch
    torch.manual_seed(0)
    student, disc = Student(small_student_config), PatchDiscriminator(4, width=16)
    last, params = student.decoder.layers[-1].weight, list(student.decoder.parameters())
    passes = []
    disc.register_full_backward_hook(lambda *args: passes.append(1))
    recon = student.decode(latents)
    rec = DistillLoss(LossConfig()).decoder_terms(recon, images)["pixel"][1]
    (w, term), _ = adversary(LossConfig(adv_scale="adaptive"), disc).generator_term(recon, images, latents, 1.0, rec,
                                                                                   last)
    ours = torch.autograd.grad(w * term, params)
    assert len(passes) == 1  # the balance and the student's gradient share one pass back through D
    # VQGAN's formulation, which goes back through D for the balance and again for the student's backward:
    recon = student.decode(latents)
    rec = DistillLoss(LossConfig()).decoder_terms(recon, images)["pixel"][1]
    loss = generator_loss("hinge", disc(recon, latents), None)
    (g_rec,), (g_adv,) = (torch.autograd.grad(x, last, retain_graph=True) for x in (rec, loss))
    theirs = torch.autograd.grad(g_rec.norm() / (g_adv.norm() + 1e-4) * loss, params)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-9) for a, b in zip(ours, theirs))


def _pushed_one_by_one(capacity: int, seed: int, batches: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The replay buffer's semantics, written as the per-sample loop it replaces."""
    gen, images, latents, count = torch.Generator().manual_seed(seed), None, None, 0
    for fakes, lats in batches:
        if images is None:
            images = torch.zeros((capacity, *fakes.shape[1:]), dtype=torch.uint8)
            latents = torch.zeros((capacity, *lats.shape[1:]), dtype=torch.float16)
        for image, latent in zip(fakes, lats):
            slot = count if count < capacity else int(torch.randint(capacity, (), generator=gen))
            images[slot], latents[slot] = to_uint8(image), latent.half()
            count = min(count + 1, capacity)
    return images, latents, count


def test_filling_the_replay_buffer_in_one_write_keeps_what_pushing_fakes_one_by_one_kept():
    torch.manual_seed(0)
    batches = [(torch.rand(3, 3, 4, 4) * 2 - 1, torch.randn(3, 2, 1, 1)) for _ in range(6)]
    buffer = ReplayBuffer(5, seed=7)
    for fakes, lats in batches:
        buffer.push(fakes, lats)
    images, latents, count = _pushed_one_by_one(5, 7, batches)
    assert len(buffer) == count == 5
    assert torch.equal(buffer.images, images) and torch.equal(buffer.latents, latents)


def test_a_slot_drawn_twice_in_one_push_keeps_the_later_fake():
    batches = [(torch.linspace(-1, 1, 16).view(16, 1, 1, 1).expand(16, 3, 2, 2), torch.arange(16.0).view(16, 1, 1, 1))]
    buffer = ReplayBuffer(2, seed=0)
    buffer.push(*batches[0])  # 14 random slots among 2: every slot is drawn several times
    images, latents, _ = _pushed_one_by_one(2, 0, batches)
    assert torch.equal(buffer.images, images) and torch.equal(buffer.latents, latents)


def test_the_replay_buffer_stays_on_the_fakes_device_as_uint8():
    # The meta device stands for a GPU: any copy to the host (.cpu(), .item(), .tolist()) fails on it.
    buffer = ReplayBuffer(4, seed=0, device="meta")
    buffer.push(torch.zeros(3, 3, 8, 8, device="meta"), torch.zeros(3, 2, 1, 1, device="meta"))
    buffer.push(torch.zeros(3, 3, 8, 8, device="meta"), torch.zeros(3, 2, 1, 1, device="meta"))
    images, latents = buffer.sample(5)
    assert buffer.images.device.type == buffer.latents.device.type == "meta"
    assert (buffer.images.dtype, buffer.latents.dtype) == (torch.uint8, torch.float16)
    assert images.device.type == latents.device.type == "meta" and images.shape == (5, 3, 8, 8)


def test_the_replay_buffer_round_trips_a_checkpoint_as_uint8_and_samples_the_same_after(tmp_path):
    torch.manual_seed(0)
    buffer = ReplayBuffer(8, seed=3)
    buffer.push(torch.rand(5, 3, 8, 8) * 2 - 1, torch.randn(5, 2, 1, 1))  # 5 of 8 slots filled
    save_training_state({"buffer": buffer}, tmp_path / "state.safetensors")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "state.safetensors").rename(tmp_path / "ckpt" / "training_state.safetensors")
    saved = read_training_state(tmp_path / "ckpt")["buffer"]
    assert saved["images"].dtype == torch.uint8 and saved["images"].shape == (5, 3, 8, 8)  # the filled slots only
    again = ReplayBuffer(8)
    again.load_state_dict(saved)
    for _ in range(2):
        fakes, lats = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 2, 1, 1)
        buffer.push(fakes, lats)
        again.push(fakes, lats)  # the same slots are replaced ...
        a, b = buffer.sample(6), again.sample(6)  # ... and the same fakes drawn
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(buffer.images, again.images)


def test_the_health_monitor_warns_once_when_a_bad_state_lasts():
    monitor = HealthMonitor(patience=2)
    wins = {"disc_real_acc": 1.0, "disc_fake_acc": 0.99, "adv_grad_ratio": 1.0}
    assert monitor.check(wins, 10) == []
    warned = monitor.check(wins, 20)
    assert len(warned) == 1 and "step 20" in warned[0] and "tells real from fake" in warned[0]
    assert monitor.check(wins, 30) == []  # once
    assert monitor.check({"disc_real_acc": 0.8, "disc_fake_acc": 0.7, "adv_grad_ratio": 1.0}, 40) == []
    assert "no better than chance" in monitor.diagnose({"disc_real_acc": 1.0, "disc_fake_acc": 0.0})["disc_lost"]
    assert "drowns them" in monitor.diagnose({"adv_grad_ratio": 500.0})["adv_scale"]
