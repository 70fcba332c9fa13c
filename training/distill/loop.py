"""The training loop: distillation stage 1 (reconstruction), stage 2 (+ adversarial) and the PC-GAN baseline.

One step, on every process with its own batch:

- distill: w from the teacher's mapping, a camera from the wide pose distribution (stage 2: for a `real_ratio`
  share of the batch, the camera of a real image instead); the teacher renders the target; the student renders
  the same (w, camera); loss = L1 + LPIPS (+ adv_weight * non-saturating GAN loss in stage 2). The student's
  mapping stays frozen: it is the teacher's, so both share one w space. With `edit_pairs`, half of each batch is
  the other half moved along edit directions, and pair_weight * L1(student's change - teacher's change) joins
  (in stage 2 a pair's partner repeats its first member's camera, real or not, and only the first members go to
  the discriminator: data.real_slots, data.judged).
- stage 2 and pcgan also train the DualDiscriminator: real set = real images (at `real_ratio`) mixed with teacher
  renders (pcgan: real images only), fakes = the student's images at the same cameras; R1 on the real set every
  `r1_interval` steps.
- pcgan: z -> the student's own (trainable) mapping -> synthesis at the cameras of real images; adversarial only.

Randomness is a pure function of (seed, rank, step): each step reseeds torch's default generator (which the
teacher's renderer draws from) and makes its own generator for the batch. So the step counter is the whole random
state a checkpoint needs, and a resumed run repeats exactly what an uninterrupted one does.
"""

import copy
import hashlib
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from editkit import cameras, checkpoints
from editkit.errors import EditkitError
from editkit.models.eg3d import DualDiscriminator
from editkit.models.student import Student
from training.distill.data import (RealImages, TeacherSampler, balancing_weights, edit_pairs, judged,
                                   load_pair_directions, real_slots, sample_cameras)
from training.distill.distributed import Distributed
from training.distill.losses import (ReconstructionLoss, change_loss, discriminator_inputs, discriminator_loss,
                                     generator_loss, r1_penalty)
from training.distill.runs import RunFolder, image_grid, to_uint8

# Options that may differ when a run is resumed; all others must match the run's run.json (the teacher is checked
# by its sha256, so it may move).
MAY_CHANGE = ("out", "teacher", "steps", "minutes", "ckpt_every", "sample_every", "log_every", "device")
ADAM_BETAS = (0.0, 0.99)  # StyleGAN2 / EG3D
SAMPLE_YAWS = (-35.0, -17.5, 0.0, 17.5, 35.0)
SAMPLE_LATENTS = 4
SAMPLE_TILE = 256  # sample grid tiles are at most this many pixels wide


class DistillError(EditkitError):
    """Options that do not fit together, or a network that does not fit the teacher."""


def ema_decay(step: int, beta: float) -> float:
    """EMA decay at `step` (0-based): (step + 1) / (step + 10), capped at `beta` (reached after ~9000 steps at
    0.999). A flat 0.999 would leave a short run's export mostly its initial weights (55% after 600 steps)."""
    return min(beta, (step + 1) / (step + 10))


def check_options(args) -> None:
    """Refuse option combinations that cannot work, before anything is loaded."""
    if args.mode == "pcgan":
        if args.stage is not None:
            raise DistillError("--mode pcgan trains adversarially from the start; it has no --stage")
        if args.student is not None or args.warm_start is not None:
            raise DistillError("--student and --warm-start start from a distilled student; --mode pcgan starts "
                               "from --init")
        if args.edit_pairs:
            raise DistillError("--edit-pairs compares the student with the teacher; --mode pcgan has no teacher")
        if args.real is None:
            raise DistillError("--mode pcgan trains on real images: give --real FOLDER (EG3D dataset layout)")
    else:
        args.stage = args.stage or 1
        if args.student is not None and args.warm_start is not None:
            raise DistillError("give --student (a student of this teacher) or --warm-start (of an earlier one), "
                               "not both")
        if args.init == "fresh":
            raise DistillError("distillation needs the teacher's mapping network (a shared w space); "
                               "--init fresh is for --mode pcgan")
        if args.stage == 1 and args.real is not None:
            raise DistillError("--real is used by stage 2 and --mode pcgan; stage 1 learns from the teacher only")
        if args.edit_pairs and args.batch < 2:
            raise DistillError("--edit-pairs needs --batch 2 or more (each pair is two batch items)")
        if args.pair_mix and args.pair_balance:
            raise DistillError("--pair-balance weighs each pair by its one direction; --pair-mix moves every pair "
                               "along all of them: give one")
        if args.stage == 2 and args.real_ratio > 0 and args.real is None:
            raise DistillError(f"--real-ratio {args.real_ratio} needs real images: give --real FOLDER, "
                               "or --real-ratio 0 for teacher renders only")
    if args.init is None:
        args.init = "fresh" if args.mode == "pcgan" else "teacher"
    checks = [(0 <= args.real_ratio <= 1, "--real-ratio must lie in [0, 1]"),
              (args.batch >= 1, "--batch must be at least 1"), (args.steps >= 0, "--steps must be >= 0"),
              (args.minutes is None or args.minutes > 0, "--minutes must be positive"),
              (min(args.ckpt_every, args.log_every, args.r1_interval) >= 1,
               "--ckpt-every, --log-every and --r1-interval must be >= 1"),
              (args.sample_every >= 0, "--sample-every must be >= 0 (0: no sample grids)"),
              (0 <= args.ema_beta < 1, "--ema-beta must lie in [0, 1)")]
    for ok, message in checks:
        if not ok:
            raise DistillError(message)


def run_config(args, teacher_sha256: str) -> dict:
    """The options of a run as JSON-friendly data (run.json, checkpoints, the export's provenance)."""
    config = {k: str(v) if isinstance(v, Path) else v for k, v in sorted(vars(args).items()) if k != "argv"}
    return {**config, "teacher_sha256": teacher_sha256}


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """Reseed torch's default generator and return a batch generator, both derived from (seed, rank, step)."""
    words = np.random.SeedSequence([seed, rank, step]).generate_state(2)
    torch.manual_seed(int(words[0]))
    return torch.Generator().manual_seed(int(words[1]))


def has_discriminator(path: Path) -> bool:
    """True if the teacher's file also holds a discriminator D."""
    if path.suffix == ".pkl":
        return "D" in checkpoints.read_official_records(path)
    return "D" in checkpoints.read_config(path)["networks"]


class Trainer:
    """The networks, optimisers and one training step."""

    def __init__(self, args, dist: Distributed, teacher_path: Path, log=print):
        self.args = args
        self.dist = dist
        self.device = dist.device
        self.teacher_path = teacher_path
        teacher = checkpoints.load_generator(self.teacher_path, self.device).requires_grad_(False)
        self.teacher = TeacherSampler(teacher, args.truncation)
        self.distill = args.mode == "distill"
        torch.manual_seed(args.seed)  # networks built from scratch get the same weights on every process
        self.student = self.build_student(teacher).train()
        self.ema = copy.deepcopy(self.student).eval().requires_grad_(False)
        self.resolution = self.student.img_resolution
        self.raw_resolution = args.raw_resolution or teacher.neural_rendering_resolution
        self.D = self.build_discriminator(teacher, log) if args.mode == "pcgan" or args.stage == 2 else None
        self.recon = None
        if self.distill:
            self.recon = ReconstructionLoss(args.l1_weight, args.lpips_weight, args.lpips_net,
                                            args.lpips_resolution).to(self.device)
        self.real = RealImages(args.real, self.resolution) if args.real is not None else None
        self.pair_directions, self.pair_balance = None, None
        if args.edit_pairs:
            self.pair_directions = load_pair_directions(args.edit_pairs, teacher.num_ws, teacher.w_dim)
            if args.pair_balance:
                self.pair_balance = balancing_weights(self.teacher, self.pair_directions)
                log(f"edit pairs balanced by direction: weights {[round(w, 2) for w in self.pair_balance.tolist()]}")
        self.g_params = [p for p in self.student.parameters() if p.requires_grad]
        self.opt_g = torch.optim.Adam(self.g_params, lr=args.lr_g, betas=ADAM_BETAS)
        self.opt_d = None
        if self.D is not None:
            self.opt_d = torch.optim.Adam(self.D.parameters(), lr=args.lr_d, betas=ADAM_BETAS)
        self.teacher_samples = None

    # ------------------------------------------------------------------------------------------------ networks

    def build_student(self, teacher) -> Student:
        args = self.args
        source = args.student or args.warm_start
        if source is not None:
            student = checkpoints.load_generator(source, self.device)
            self.check_student(student, teacher, source)
            if args.warm_start is not None:  # an earlier teacher's student: its synthesis, this teacher's mapping
                student.mapping_network.load_state_dict(teacher.backbone.mapping.state_dict())
            self.check_same_mapping(student, teacher, source)
        else:
            kwargs = {} if args.channel_max is None else {"channel_max": args.channel_max}
            student = Student.from_teacher(teacher, width=args.width, copy_weights=args.init == "teacher", **kwargs)
        if self.distill:
            student.mapping_network.requires_grad_(False)
        return student

    @staticmethod
    def check_student(student, teacher, source) -> None:
        """A student given with --student or --warm-start must be a Student of the teacher's shapes."""
        if not isinstance(student, Student):
            raise DistillError(f"{source}: holds a {type(student).__name__}, not an editkit Student")
        for name in ("z_dim", "w_dim", "num_ws", "img_resolution"):
            if getattr(student, name) != getattr(teacher, name):
                raise DistillError(f"{source}: {name} {getattr(student, name)} does not fit the teacher's "
                                   f"{getattr(teacher, name)}")

    def check_same_mapping(self, student, teacher, source) -> None:
        """The student must be in the teacher's w space (its mapping network is the teacher's)."""
        theirs = teacher.backbone.mapping.state_dict()
        if any(not torch.equal(v, theirs[k]) for k, v in student.mapping_network.state_dict().items()):
            raise DistillError(f"{source}: its mapping network differs from the teacher's, so it was not distilled "
                               f"from {self.args.teacher} (--warm-start starts from a student of an earlier "
                               "version of this teacher)")

    def build_discriminator(self, teacher, log) -> DualDiscriminator:
        """The teacher checkpoint's D (distillation, or --init teacher) when it has one, else a fresh one."""
        if self.args.init == "teacher" and has_discriminator(self.teacher_path):
            D = checkpoints.load_discriminator(self.teacher_path, self.device)
            source = f"the teacher's ({self.teacher_path.name})"
        else:
            kwargs = teacher.init_kwargs
            D = DualDiscriminator(c_dim=teacher.c_dim, img_resolution=self.resolution, img_channels=3,
                                  channel_base=kwargs.get("channel_base", 32768),
                                  channel_max=teacher.backbone.synthesis.b4.conv1.out_channels, num_fp16_res=0,
                                  conv_clamp=None, epilogue_kwargs=dict(mbstd_group_size=4)).to(self.device)
            source = "fresh"
        if D.img_resolution != self.resolution:
            raise DistillError(f"the teacher's discriminator reads {D.img_resolution} px images, the student makes "
                               f"{self.resolution} px")
        group = D.b4.mbstd.group_size if D.b4.mbstd is not None else None
        if group and self.args.batch % min(group, self.args.batch):
            raise DistillError(f"--batch {self.args.batch} must be a multiple of the discriminator's minibatch-std "
                               f"group size {group} (or smaller than it)")
        if self.dist.is_main:
            log(f"discriminator: {source}, {sum(p.numel() for p in D.parameters()):,} parameters")
        return D.train().requires_grad_(True)

    def broadcast(self) -> None:
        """Make every process start from rank 0's weights."""
        for module in (self.student, self.ema, self.D):
            self.dist.broadcast_module(module)

    # ----------------------------------------------------------------------------------------------- one step

    def sample_batch(self, gen: torch.Generator) -> dict:
        """Cameras, latents, teacher targets and the discriminator's real set for one step."""
        args, n, dev = self.args, self.args.batch, self.device
        if not self.distill:
            indices = torch.randint(len(self.real), (n,), generator=gen)
            real, c = self.real.batch(indices)
            z = torch.randn(n, self.student.z_dim, generator=gen)
            return {"z": z.to(dev), "c": c.to(dev), "real": real.to(dev), "judged": judged(n, False).to(dev)}
        ws = self.teacher.sample_ws(n, gen)
        c = sample_cameras(n, gen, args.yaw_range, args.pitch_range)
        if self.pair_directions is not None:
            ws, c, pick = edit_pairs(ws, c, self.pair_directions, args.pair_strength, gen, args.pair_mix)
        from_real, images = None, None
        if self.D is not None and self.real is not None:
            from_real = real_slots(n, args.real_ratio, self.pair_directions is not None, gen)
            indices = torch.randint(len(self.real), (n,), generator=gen)[from_real]
            if len(indices):
                images, labels = self.real.batch(indices)
                c[from_real] = labels
                if self.pair_directions is not None:  # a pair's partner repeats its first member's camera
                    c[n // 2:2 * (n // 2)] = c[:n // 2]
        c = c.to(dev)
        if self.pair_directions is None:
            target = self.teacher.render(ws, c)
        else:
            target = self.teacher.render_pairs(ws, c, seed=int(torch.randint(2 ** 31, (1,), generator=gen)))
        batch = {"ws": ws, "c": c, "target": target}
        if self.pair_balance is not None:
            batch["pair_weights"] = self.pair_balance[pick]
        if self.D is not None:
            batch["real"] = batch["target"].clone()
            if images is not None:
                batch["real"][from_real.to(dev)] = images.to(dev)
            batch["judged"] = judged(n, self.pair_directions is not None).to(dev)
        return batch

    def d_inputs(self, image: torch.Tensor) -> dict:
        return discriminator_inputs(image, self.raw_resolution, self.D.resample_filter)

    def generator_step(self, batch: dict):
        """One optimiser step of the student; returns its images (detached) and the loss parts."""
        parts = {}
        if self.D is not None:
            self.D.requires_grad_(False)
        if self.distill:
            ws = batch["ws"]
        else:
            cond = cameras.frontal_label().to(self.device).expand(len(batch["z"]), -1)
            ws = self.student.mapping(batch["z"], cond, update_emas=True)
        fake = self.student.synthesis(ws, batch["c"])["image"]
        loss = 0
        if self.recon is not None:
            loss, recon_parts = self.recon(fake, batch["target"])
            parts.update(recon_parts)
            if self.pair_directions is not None:
                pairs = change_loss(fake, batch["target"], batch["c"], batch.get("pair_weights"))
                loss = loss + self.args.pair_weight * pairs
                parts["pairs"] = pairs.detach()
        if self.D is not None:
            seen = batch["judged"]
            adv = generator_loss(self.D(self.d_inputs(fake[seen]), batch["c"][seen]))
            loss = loss + (self.args.adv_weight if self.distill else 1.0) * adv
            parts["g_adv"] = adv.detach()
        parts["g_loss"] = loss.detach()
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients(self.g_params)
        self.opt_g.step()
        if not self.distill:  # w_avg follows each process's batch: keep one value
            self.dist.average([self.student.mapping_network.w_avg])
        return fake.detach(), parts

    def discriminator_step(self, batch: dict, fake: torch.Tensor, step: int) -> dict:
        """One optimiser step of D on the real set against the student's images (R1 every r1_interval steps)."""
        args = self.args
        self.D.requires_grad_(True)
        with_r1 = args.r1_gamma > 0 and step % args.r1_interval == 0
        seen = batch["judged"]
        real = batch["real"][seen].detach().requires_grad_(with_r1)
        real_logits = self.D(self.d_inputs(real), batch["c"][seen])
        fake_logits = self.D(self.d_inputs(fake[seen]), batch["c"][seen])
        loss = discriminator_loss(real_logits, fake_logits)
        parts = {"d_loss": loss.detach(), "d_real": real_logits.detach().mean(), "d_fake": fake_logits.detach().mean()}
        if with_r1:
            penalty = r1_penalty(real_logits, real)
            loss = loss + penalty * (args.r1_gamma / 2 * args.r1_interval)
            parts["r1"] = penalty.detach()
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients(list(self.D.parameters()))
        self.opt_d.step()
        return parts

    def train_step(self, step: int) -> dict:
        """Step `step` (0-based): sample, update the student, then the discriminator. Returns float loss parts."""
        batch = self.sample_batch(step_generator(self.args.seed, self.dist.rank, step))
        fake, parts = self.generator_step(batch)
        self.update_ema(ema_decay(step, self.args.ema_beta))
        if self.D is not None:
            parts.update(self.discriminator_step(batch, fake, step))
        return {k: float(v) for k, v in parts.items()}

    @torch.no_grad()
    def update_ema(self, beta: float) -> None:
        for p_ema, p in zip(self.ema.parameters(), self.student.parameters()):
            p_ema.lerp_(p, 1 - beta)
        for b_ema, b in zip(self.ema.buffers(), self.student.buffers()):
            b_ema.copy_(b)

    # ------------------------------------------------------------------------------------------ state, samples

    def state(self) -> dict:
        return {"student": self.student.state_dict(), "student_ema": self.ema.state_dict(),
                "D": self.D.state_dict() if self.D is not None else {}, "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict() if self.opt_d is not None else {}}

    def restore(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.ema.load_state_dict(state["student_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        if self.D is not None:
            self.D.load_state_dict(state["D"])
            self.opt_d.load_state_dict(state["opt_d"])

    def fingerprint(self) -> str:
        """A hash of the trained weights (student and D), to check that the processes agree."""
        digest = hashlib.sha256()
        for module in (self.student, self.D):
            for tensor in (module.state_dict().values() if module is not None else []):
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def tiles(self, images: torch.Tensor) -> np.ndarray:
        size = min(self.resolution, SAMPLE_TILE)
        if images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="area")
        return to_uint8(images)

    @torch.no_grad()
    def sample_grid(self) -> np.ndarray:
        """Fixed latents (rows) across yaw: teacher views | student (EMA) views; student only for pcgan."""
        z = torch.randn(SAMPLE_LATENTS, self.student.z_dim, generator=torch.Generator().manual_seed(self.args.seed))
        labels = cameras.make_label(list(SAMPLE_YAWS), 0.0).to(self.device)
        cond = cameras.frontal_label().to(self.device).expand(SAMPLE_LATENTS, -1)
        ws = self.ema.mapping(z.to(self.device), cond)
        if self.distill and self.teacher_samples is None:
            torch.manual_seed(self.args.seed)
            self.teacher_samples = [self.tiles(self.teacher.render(w.expand(len(labels), -1, -1), labels))
                                    for w in ws.split(1)]
        rows = []
        for i, w in enumerate(ws.split(1)):
            student = self.tiles(self.ema.synthesis(w.expand(len(labels), -1, -1), labels)["image"])
            rows.append([self.teacher_samples[i], student] if self.distill else [student])
        return image_grid(rows)


class Run:
    """A training run in its folder: resume, the step loop, logging, checkpoints, samples, export."""

    def __init__(self, args, dist: Distributed):
        self.args = args
        self.dist = dist
        self.folder = RunFolder(args.out)
        self.log = (lambda message: tqdm.write(message, file=sys.stderr)) if dist.is_main else (lambda message: None)
        teacher_path = checkpoints.resolve_checkpoint(args.teacher)
        self.config = run_config(args, checkpoints.sha256_file(teacher_path))
        self.folder.check_config(self.config, MAY_CHANGE)
        self.trainer = Trainer(args, dist, teacher_path, log=self.log)
        self.step = 0
        self.elapsed_before = 0.0
        self.session_start = time.monotonic()
        self.last_checkpoint = None

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.session_start

    def resume(self) -> None:
        state = self.folder.load_checkpoint(log=self.log)
        if state is not None:
            self.trainer.restore(state)
            self.step = self.last_checkpoint = state["step"]
            self.elapsed_before = state["elapsed_s"]
            self.log(f"resuming {self.folder.path} at step {self.step}")
        self.trainer.broadcast()
        self.dist.barrier()  # every process has read the checkpoint before the main one writes anything
        if self.dist.is_main:
            self.folder.write_config(self.config)
            self.folder.truncate_log(self.step)

    def save_checkpoint(self) -> None:
        fingerprints = self.dist.gather(self.trainer.fingerprint())
        if self.dist.is_main:
            self.folder.save_checkpoint({"step": self.step, "elapsed_s": self.elapsed(), "config": self.config,
                                         **self.trainer.state()})
            self.folder.log({"step": self.step, "event": "checkpoint", "fingerprints": fingerprints})
        self.last_checkpoint = self.step

    def save_samples(self) -> None:
        if self.dist.is_main:
            self.folder.save_samples(self.step, self.trainer.sample_grid())

    def mean_over_processes(self, sums: dict, counts: dict) -> dict:
        """{name: mean over the steps that logged it and over the processes}."""
        keys = sorted(sums)
        values = torch.tensor([[sums[k], counts[k]] for k in keys], dtype=torch.float64, device=self.dist.device)
        self.dist.average([values])
        return {k: round(float(total / n), 6) for k, (total, n) in zip(keys, values.tolist())}

    def run(self) -> dict:
        """Train until --steps or --minutes, then checkpoint, sample and export. Returns the last logged losses."""
        args = self.args
        self.resume()
        metrics, sums, counts, steps = {}, defaultdict(float), defaultdict(int), 0
        interval_start = time.monotonic()
        bar = tqdm(total=args.steps, initial=self.step, disable=not self.dist.is_main, unit="step",
                   desc=f"{args.mode}" + (f" stage {args.stage}" if args.mode == "distill" else ""))
        while self.step < args.steps:
            if self.dist.decide(args.minutes is not None and self.elapsed() >= args.minutes * 60):
                self.log(f"stopping at step {self.step}: --minutes {args.minutes} used up")
                break
            for key, value in self.trainer.train_step(self.step).items():
                sums[key] += value
                counts[key] += 1
            steps += 1
            self.step += 1
            bar.update(1)
            if self.step % args.log_every == 0 or self.step == args.steps:
                metrics = self.mean_over_processes(sums, counts)
                seconds = time.monotonic() - interval_start
                if self.dist.is_main:
                    self.folder.log({"step": self.step, "elapsed_s": round(self.elapsed(), 2),
                                     "images_per_s": round(steps * args.batch * self.dist.world / seconds, 3),
                                     **metrics})
                bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items() if k in ("g_loss", "l1", "d_loss")})
                sums, counts, steps, interval_start = defaultdict(float), defaultdict(int), 0, time.monotonic()
            if self.step % args.ckpt_every == 0:
                self.save_checkpoint()
            if args.sample_every and self.step % args.sample_every == 0:
                self.save_samples()
        bar.close()
        if self.last_checkpoint != self.step:
            self.save_checkpoint()
        if args.sample_every and self.step % args.sample_every:
            self.save_samples()
        if self.dist.is_main:
            self.export(metrics)
        return metrics

    def export(self, metrics: dict) -> None:
        """The EMA student as student.safetensors + .json (editkit format) with provenance."""
        args = self.args
        provenance = {
            "command": shlex.join(["python", "-m", "training.distill", *args.argv]),
            "data": {"teacher": str(args.teacher), "teacher_sha256": self.config["teacher_sha256"],
                     "real": str(args.real) if args.real is not None else None,
                     "real_ratio": args.real_ratio if args.stage == 2 else None},
            "metrics": metrics,
            "training": {"mode": args.mode, "stage": args.stage, "steps": self.step,
                         "wall_time_s": round(self.elapsed(), 1), "processes": self.dist.world,
                         "device": str(self.dist.device), "options": self.config}}
        checkpoints.save_model(self.folder.export_path, {"G_ema": self.trainer.ema}, provenance, overwrite=True)
        self.log(f"wrote {self.folder.export_path} (step {self.step})")


def train(args) -> dict:
    """Check the options, join the process group (if started by torchrun) and run. Returns the last losses."""
    check_options(args)
    dist = Distributed(args.device)
    try:
        return Run(args, dist).run()
    finally:
        dist.close()
