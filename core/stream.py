"""StreamDiffusion: stream-batch denoising of live frames with an LCM schedule.

One call of `step_tensor` = VAE encode of the newest frame(s) -> ONE UNet call for every
denoising step of every frame in flight -> VAE decode of the frame(s) that just finished.
Slot k (k = 0..n-1) of the batch holds the frame that entered k calls ago, at timestep t_k;
each slot is `frame_buffer_size` (fbs) frames wide, so the batch is [slot0 x fbs, slot1 x fbs, ...].

`step_tensor` is a pure tensor function over persistent, preallocated state tensors that are
only ever updated in place (`copy_`), with no host syncs and no branching on tensor values,
so engines can capture it in a CUDA graph or torch.compile it. `shape_key` changes whenever
the state is reallocated (then a capture must be redone). Python decisions (similarity filter,
warm-up, live updates, prompt transitions) live in `__call__` and `update`, outside the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import blending
from . import frames as fr
from .config import StreamConfig
from .controlnet import ControlNetError, ControlNetStack, check_fits
from .loading import Components
from .modules import IMAGE_EMBEDS, Condition, StepModules, eager_modules, unet_conditions
from .prompts import PromptEncoder
from .schedule import slot_coefficients
from .similarity import SimilarityFilter

if TYPE_CHECKING:
    from .ip_adapter import IPAdapter

Tensor = torch.Tensor


@dataclass
class _Transition:
    start: Tensor
    target: Tensor
    start_pooled: Tensor | None
    target_pooled: Tensor | None
    frames: int
    method: str = "linear"
    done: int = 0


class StreamDiffusion:
    """Call with a uint8 HxWx3 frame (numpy or torch, any device); get a uint8 HxWx3 frame of the
    configured size back, of the same kind. With frame_buffer_size > 1 pass fbs x H x W x 3."""

    def __init__(self, components: Components, config: StreamConfig | None = None,
                 modules: StepModules | None = None, *, prompt_cache_size: int = 32) -> None:
        self.components = components
        self.config = config or StreamConfig()
        self.modules = modules or eager_modules(components)
        self.loras: Any = None  # LoraStack on the UNet (set_loras): its structure joins shape_key
        self.device, self.dtype = components.device, components.dtype
        self.prompts = PromptEncoder(components, prompt_cache_size)
        self.filter = SimilarityFilter(self.config.similarity_threshold, self.config.similarity_max_skip,
                                       seed=self.config.seed)
        self._v_prediction = components.prediction_type == "v_prediction"
        self._sdxl = components.family == "sdxl"
        self.conditions = unet_conditions(components)  # names and shapes of the UNet's extra inputs
        self.ip_adapter: IPAdapter | None = None  # set_ip_adapter
        self._ip_version = -1  # the adapter's image_version the image_embeds rows hold
        self._primed = False
        self._force_next = False
        self._transition: _Transition | None = None
        self._stager = fr.HostStager()
        self._control_stager = fr.HostStager()  # the external control images' uploads
        self.control = ControlNetStack()  # ControlNets: set_controlnets(stack) swaps in another
        # counts reallocations of tensors the step reads: part of shape_key (a graph of older ones never fits)
        self._allocation = 0
        self.last_output: Tensor | None = None
        self.frames_processed = 0
        self.frames_skipped = 0
        cond, pooled = self._prompt_embeds(self.config)
        uncond, upooled = self.prompts.encode_negative(self.config.negative_prompt)
        self._cond, self._pooled, self._uncond, self._upooled = cond, pooled, uncond, upooled
        self._allocate()
        self._write_all()

    # ------------------------------------------------------------------ shape and state
    @property
    def num_steps(self) -> int:
        return self.config.num_steps

    @property
    def fbs(self) -> int:
        return self.config.frame_buffer_size

    @property
    def unet_batch(self) -> int:
        return self.config.unet_batch

    @property
    def stateless(self) -> bool:
        """True when no frame's step reads state that an earlier frame's step wrote (one denoising
        step: the in-flight buffer and the RCFG residual are empty; no latent or image feedback),
        so frames may run concurrently."""
        return self.num_steps == 1 and not self._feedback_on

    @property
    def _feedback_on(self) -> bool:
        return self.config.mode == "img2img" and (self.config.latent_feedback > 0 or self.config.image_feedback > 0)

    @property
    def _layout_key(self) -> tuple:
        """Changes exactly when the state tensors are reallocated."""
        c = self.config
        return (c.mode, c.cfg_type, self.num_steps, c.frame_buffer_size, c.height, c.width, self.unet_batch)

    @property
    def shape_key(self) -> tuple:
        """Changes exactly when engines must recapture (or replay a graph they kept for this key): the
        state tensors are reallocated, the step's structure changes, or the feedback switches on or
        off (its mix and keep kernels run only while a share is above 0; in a 1-step stream that also
        flips `stateless`); never on a live scale or weight change (those are in-place tensor writes)."""
        return self._layout_key + (self._allocation, self.structure_key, self._feedback_on)

    @property
    def structure_key(self) -> tuple:
        """The set of extra nets and adapters the step runs: the ControlNets with a scale != 0, the
        attached IP-Adapter and the LoRA adapters (attaching, swapping or removing one changes the UNet's
        modules and inputs); the IP-Adapter's and the LoRAs' parts only while there are any."""
        ip = (self.ip_adapter.structure_key,) if self.ip_adapter is not None else ()
        loras = (self.loras.structure_key,) if self.loras is not None and self.loras.structure_key else ()
        return (self.control.structure_key, *ip, *loras)

    # ---- LoRAs (core/lora.py): the LoraStack on this stream's UNet; its adapters join structure_key
    def set_loras(self, stack: Any) -> None:
        """The LoraStack (core/lora.py) on this stream's UNet, or None."""
        self.loras = stack

    def set_lora_weights(self, weights: dict[str, float]) -> None:
        """Live LoRA weights by adapter name (in place: no recapture); the next frame shows them."""
        self.loras.set_weights(weights)
        self._force_next = True

    def set_lora_fused(self, fused: bool) -> None:
        """Fold the LoRAs into the UNet's weights (no per-frame cost; a weight change then refolds in
        place) or run them live again; flipping it changes `structure_key` (one recapture)."""
        self.loras.fuse() if fused else self.loras.unfuse()
        self._force_next = True

    def _allocate(self) -> None:
        c, dev = self.config, self.device
        n, fbs = self.num_steps, self.fbs
        b, h, w = n * fbs, c.height // 8, c.width // 8
        f32 = dict(device=dev, dtype=torch.float32)
        self.timesteps = torch.zeros(b, device=dev, dtype=torch.int64)
        self.alpha, self.beta, self.c_skip, self.c_out, self.alpha_next, self.beta_next = (
            torch.ones(b, 1, 1, 1, **f32) for _ in range(6))
        self.init_noise = torch.zeros(b, 4, h, w, **f32)
        self.noise_next = torch.zeros(b, 4, h, w, **f32)  # init_noise of the slot each slot moves to
        self.buffer = torch.zeros((n - 1) * fbs, 4, h, w, **f32)
        self.stock = torch.zeros(b, 4, h, w, **f32)  # RCFG residual noise per slot (after the shift)
        self.guidance = torch.ones((), **f32)
        self.delta = torch.ones((), **f32)
        self.noise_gain = torch.ones((), **f32)
        self._allocate_feedback()
        self.cond_embeds = torch.zeros_like(self._cond)
        self.unet_embeds = torch.zeros(self.unet_batch, *self._cond.shape[1:], device=dev, dtype=self.dtype)
        self.unet_timesteps = torch.zeros(self.unet_batch, device=dev, dtype=torch.int64)
        # the UNet's named extra inputs (SDXL: pooled text embeddings, size/crop ids), passed in every call
        self.unet_cond: dict[str, Tensor] = {cond.name: self._rows(cond) for cond in self.conditions}
        if self._sdxl:
            self.unet_pooled, self.unet_time_ids = self.unet_cond["text_embeds"], self.unet_cond["time_ids"]
            if self.unet_pooled.shape[-1] != self._pooled.shape[-1]:
                raise ValueError(f"model: the UNet expects pooled text embeddings of width {self.unet_pooled.shape[-1]}, "
                                 f"the second text encoder gives {self._pooled.shape[-1]}")
            self.unet_time_ids.copy_(torch.tensor([c.height, c.width, 0, 0, c.height, c.width], dtype=self.dtype))
        self._allocation += 1
        self.control.bind(fbs, c.height, c.width, device=dev, dtype=self.dtype)
        self._primed = False

    def _rows(self, cond: Condition) -> Tensor:
        return torch.zeros(self.unet_batch, *cond.row_shape, device=self.device, dtype=self.dtype)

    def step_state(self) -> list[Tensor]:
        """The persistent tensors `step_tensor` writes (the frames in flight and their RCFG noise).
        An engine that runs extra steps (warm-up before a capture) saves and restores exactly these;
        every other state tensor is only written by `update`/`prime`/`prepare`."""
        return [self.buffer, self.stock, *self.feedback_state]

    def _write_all(self) -> None:
        self._write_noise()
        self._write_schedule()
        self._write_embeds(self._cond, self._pooled)
        self._write_scalars()
        self._write_ip_image()

    def _write_noise(self) -> None:
        c, shape = self.config, self.init_noise.shape
        seeds = c.seed_items  # a seed blend replaces the seed
        noise = (blending.blend_seeds([s for s, _ in seeds], [w for _, w in seeds], shape, c.blend_method)
                 if seeds else blending.seed_noise(c.seed, shape))
        self.init_noise.copy_(noise)
        self.noise_next.copy_(torch.roll(noise, -self.fbs, dims=0))

    def _write_schedule(self) -> None:
        coef = slot_coefficients(self.components.scheduler_config, self.config.indexes)
        rep = lambda v: v.repeat_interleave(self.fbs)  # noqa: E731  [step0 x fbs, step1 x fbs, ...]
        shape = (-1, 1, 1, 1)
        self.timesteps.copy_(rep(coef.timesteps))
        self.alpha.copy_(rep(coef.alpha).view(shape))
        self.beta.copy_(rep(coef.beta).view(shape))
        self.c_skip.copy_(rep(coef.c_skip).view(shape))
        self.c_out.copy_(rep(coef.c_out).view(shape))
        one = torch.ones(1, dtype=torch.float64)
        self.alpha_next.copy_(rep(torch.cat([coef.alpha[1:], one])).view(shape))
        self.beta_next.copy_(rep(torch.cat([coef.beta[1:], one])).view(shape))
        ts = self.timesteps
        self.unet_timesteps.copy_({"full": lambda: torch.cat([ts, ts]),
                                   "initialize": lambda: torch.cat([ts[: self.fbs], ts])}.get(
            self.config.cfg_type, lambda: ts)())

    def _write_scalars(self) -> None:
        # as in diffusers and upstream, guidance acts only above 1 (<= 1: the conditional prediction alone)
        self.guidance.fill_(max(1.0, self.config.guidance_scale))
        self.delta.fill_(self.config.delta)
        self.noise_gain.fill_(1.0 if self.config.do_add_noise else 0.0)
        self.latent_share.fill_(self.config.latent_feedback)
        self.image_share.fill_(self.config.image_feedback)

    def _write_embeds(self, cond: Tensor, pooled: Tensor | None) -> None:
        """Lay the cond/uncond embeddings out in the UNet batch order of the guidance mode."""
        n_b, fbs = self.num_steps * self.fbs, self.fbs
        n_uncond = {"full": n_b, "initialize": fbs}.get(self.config.cfg_type, 0)
        self.cond_embeds.copy_(cond)
        rows = [self._uncond.expand(n_uncond, -1, -1), cond.expand(n_b, -1, -1)]
        self.unet_embeds.copy_(torch.cat(rows))
        if self._sdxl:
            self.unet_pooled.copy_(torch.cat([self._upooled.expand(n_uncond, -1), pooled.expand(n_b, -1)]))

    def _write_ip_image(self) -> None:
        """The IP-Adapter's image embeddings into the UNet batch rows: unconditional CFG rows (the
        first unet_batch - n*fbs) get its unconditional embeds, every other row the image's."""
        adapter = self.ip_adapter
        if adapter is None:
            return
        rows = self.unet_cond[IMAGE_EMBEDS]
        n_uncond = self.unet_batch - self.num_steps * self.fbs
        rows[:n_uncond].copy_(adapter.uncond_embeds.expand(n_uncond, *rows.shape[1:]))
        rows[n_uncond:].copy_(adapter.image_embeds.expand(rows.shape[0] - n_uncond, *rows.shape[1:]))
        self._ip_version = adapter.image_version

    # ------------------------------------------------------------------ the step (pure tensors)
    def _eps(self, out: Tensor, sample: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        out = out.float()
        return alpha * out + beta * sample if self._v_prediction else out

    def encode_latents(self, x_uint8: Tensor) -> Tensor:
        return self.modules.encode(fr.to_unit(x_uint8, self.dtype)).float()

    def _unet(self, sample: Tensor) -> Tensor:
        """One UNet call on the stream's batch, with the ControlNets' residuals (none: {}). Where the
        engine has the UNet in halves, the nets run beside its down half (core/unet_halves.py)."""
        args = (sample, self.unet_timesteps, self.unet_embeds)
        halves = self.modules.unet_halves
        if halves is not None and self.control.active:
            launched = self.control.launch(*args, beside_main=True, **self.unet_cond)
            state = halves.down(*args, **self.unet_cond)
            return halves.up(state, **self.control.collect(launched))
        return self.modules.unet(*args, **self.unet_cond, **self.control.residuals(*args, **self.unet_cond))

    @torch.no_grad()
    def step_tensor(self, x_uint8: Tensor | None) -> Tensor:
        """(fbs,H,W,3) uint8 on the device -> (fbs,H,W,3) uint8. In txt2img `x_uint8` is ignored
        (but a ControlNet's preprocessor still sees it; `external` ones read their own image)."""
        fbs, cfg = self.fbs, self.config.cfg_type
        wanted = self.config.mode == "img2img" or bool(self.control.active)  # txt2img without nets: no image
        images = fr.to_unit(x_uint8, self.dtype) if x_uint8 is not None and wanted else None
        self.control.prepare(images)
        feedback = self._feedback_on  # structural (in shape_key): shares of 0 run no feedback kernels
        if self.config.mode == "img2img":
            # the ControlNets read the frame itself; the VAE the frame with the image feedback mixed in
            z = self.modules.encode(self._mix_image(images) if feedback else images).float()
            z = self._mix_latent(z) if feedback else z
            x_t0 = self.alpha[:fbs] * z + self.beta[:fbs] * self.init_noise[:fbs]
        else:
            x_t0 = self.init_noise[:fbs]
        x = torch.cat([x_t0, self.buffer]) if self.num_steps > 1 else x_t0
        stock = torch.cat([self.init_noise[:fbs], self.stock[: x.shape[0] - fbs]])
        unet = self._unet
        if cfg == "full":
            out = unet(torch.cat([x, x]).to(self.dtype))
            eps_u, eps_c = self._eps(out, torch.cat([x, x]), self.alpha.repeat(2, 1, 1, 1),
                                     self.beta.repeat(2, 1, 1, 1)).chunk(2)
        elif cfg == "initialize":
            out = unet(torch.cat([x_t0, x]).to(self.dtype))
            neg = self._eps(out[:fbs], x_t0, self.alpha[:fbs], self.beta[:fbs])
            eps_c = self._eps(out[fbs:], x, self.alpha, self.beta)
            stock = torch.cat([neg, stock[fbs:]])
            eps_u = self.delta * stock
        else:
            eps_c = self._eps(unet(x.to(self.dtype)), x, self.alpha, self.beta)
            eps_u = self.delta * stock if cfg == "self" else eps_c
        eps = eps_c if cfg == "none" else eps_u + self.guidance * (eps_c - eps_u)
        x0 = self.c_out * (x - self.beta * eps) / self.alpha + self.c_skip * x
        if cfg in ("self", "initialize") and self.num_steps > 1:  # one step: nothing reads it (stateless)
            drift = self.c_out * (self.beta * stock - self.beta * eps) / self.alpha + self.c_skip * self.beta * stock
            self.stock.copy_(self.noise_next + self.alpha_next * drift / self.beta_next)
        if self.num_steps > 1:
            renoise = self.noise_gain * self.beta[fbs:] * self.init_noise[fbs:]
            self.buffer.copy_(self.alpha[fbs:] * x0[:-fbs] + renoise)
        images = self.modules.decode(x0[-fbs:].to(self.dtype))
        if feedback:
            self._keep_feedback(x0[-fbs:], images)
        return fr.from_unit(images)

    # ------------------------------------------------------------------ temporal feedback (in the step)
    def _allocate_feedback(self) -> None:
        """The previous output's latent and image (the feedback state), `feedback_valid` 0 until a
        step wrote them (the first frame after a reset mixes nothing in), and the two live shares."""
        c, fbs, f32 = self.config, self.fbs, dict(device=self.device, dtype=torch.float32)
        self.prev_latent = torch.zeros(fbs, 4, c.height // 8, c.width // 8, **f32)
        self.prev_image = torch.zeros(fbs, 3, c.height, c.width, device=self.device, dtype=self.dtype)
        self.feedback_valid = torch.zeros((), **f32)
        self.latent_share = torch.zeros((), **f32)
        self.image_share = torch.zeros((), **f32)

    @property
    def feedback_state(self) -> list[Tensor]:
        return [self.prev_latent, self.prev_image, self.feedback_valid]

    def _mix_image(self, images: Tensor) -> Tensor:
        """image = (1 - b) image + b previous output image (b = image_feedback; 0 before the first output)."""
        b = (self.image_share * self.feedback_valid).to(images.dtype)
        return (1 - b) * images + b * self.prev_image

    def _mix_latent(self, z: Tensor) -> Tensor:
        """z = (1 - a) z + a x0_prev (a = latent_feedback; 0 before the first output)."""
        a = self.latent_share * self.feedback_valid
        return (1 - a) * z + a * self.prev_latent

    def _keep_feedback(self, x0: Tensor, images: Tensor) -> None:
        self.prev_latent.copy_(x0)
        self.prev_image.copy_(images.clamp(-1, 1))
        self.feedback_valid.fill_(1.0)

    @torch.no_grad()
    def prime(self, x_uint8: Tensor | None) -> None:
        """Warm-up: fill the buffer so the very first outputs already show the input.

        img2img: slot k gets the first frame's latent noised to t_k with the slot's own noise
        (its RCFG residual is then exactly that noise). txt2img: run n-1 steps from noise."""
        fbs, n = self.fbs, self.num_steps
        if n > 1 and self.config.mode == "img2img":
            z = self.encode_latents(x_uint8).repeat(n - 1, 1, 1, 1)
            noise = self.init_noise[fbs:]
            self.buffer.copy_(self.alpha[fbs:] * z + self.noise_gain * self.beta[fbs:] * noise)
            self.stock[: (n - 1) * fbs].copy_(noise)
        elif n > 1:
            self.buffer.zero_()
            for _ in range(n - 1):
                self.step_tensor(None)
        self._primed = True

    # ------------------------------------------------------------------ per-frame driver
    @torch.no_grad()
    def __call__(self, frame: np.ndarray | Tensor | None = None) -> np.ndarray | Tensor:
        frame, x = self.prepare(frame)
        if x is None:
            return self.repeat_last(frame)
        return self.finish(self.step_tensor(x), frame)

    @torch.no_grad()
    def prepare(self, frame: np.ndarray | Tensor | None = None) -> tuple[np.ndarray | Tensor, Tensor | None]:
        """The host-side half of a frame: checks, similarity filter, upload, fit, prompt transition,
        warm-up. Returns the frame (txt2img without input: a blank one) and the fitted device tensor
        for `step_tensor`, or None when the filter skips the frame. Engines that keep frames in
        flight call prepare, run the step their way, then `finish` in frame order."""
        if self.config.mode == "txt2img" and frame is None:  # no input: host numpy out
            shape = (self.config.height, self.config.width, 3)
            frame = np.zeros((self.fbs, *shape) if self.fbs > 1 else shape, dtype=np.uint8)
        fr.check_frame(frame, self.fbs)
        batch = 1 if frame.ndim == 3 else frame.shape[0]
        if batch != self.fbs:
            raise ValueError(f"frame: expected {self.fbs} frames (frame_buffer_size), got {batch}")
        if self.ip_image_pending:  # a new style image: into the UNet rows, and this frame is not skipped
            self._write_ip_image()
            self._force_next = True
        if self._filter_on():
            small = fr.small_copy(frame)
            if self._must_process():
                self.filter.record(small)
            elif self.filter.should_skip(small):
                self.frames_skipped += 1
                return frame, None
        x = fr.to_tensor(frame, self.device, self._stager)
        if isinstance(frame, np.ndarray) and self.device.type == "cuda":
            self._stager.mark_uploaded()
        x = fr.fit(x, self.config.width, self.config.height, self.config.resize)
        self._advance_transition()
        if not self._primed:
            self.prime(x)
        return frame, x

    def finish(self, out: Tensor, frame: np.ndarray | Tensor, *,
               returned: np.ndarray | Tensor | None = None) -> np.ndarray | Tensor:
        """Keep `out` (uint8 fbs x H x W x 3, any device) as the last output; return it like `frame`.
        `returned`: the same values already in that form (`frames.like_input`, made by an engine
        from its own buffer), returned as they are: the caller then gets one copy, not two."""
        self.last_output = out
        self.frames_processed += 1
        self._force_next = False
        return returned if returned is not None else fr.like_input(out, frame)

    def repeat_last(self, frame: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """The output for a frame the similarity filter skipped: the last output again, like `frame`."""
        return fr.like_input(self.last_output, frame)

    @property
    def transition_active(self) -> bool:
        """A prompt transition is in progress: each prepare() rewrites the prompt embeddings."""
        return self._transition is not None

    @property
    def ip_image_pending(self) -> bool:
        """The IP-Adapter's image changed since the rows were written: the next prepare() rewrites them."""
        return self.ip_adapter is not None and self.ip_adapter.image_version != self._ip_version

    def _filter_on(self) -> bool:
        return self.config.mode == "img2img" and self.config.similarity_threshold is not None

    def _must_process(self) -> bool:
        return self.last_output is None or self._force_next or self._transition is not None

    def _advance_transition(self) -> None:
        tr = self._transition
        if tr is None:
            return
        tr.done += 1
        weight = tr.done / tr.frames
        cond = blending.transition(tr.start, tr.target, weight, tr.method).to(self.dtype)
        pooled = None
        if tr.target_pooled is not None:
            pooled = blending.transition(tr.start_pooled, tr.target_pooled, weight, tr.method).to(self.dtype)
        self._write_embeds(cond, pooled)
        if tr.done >= tr.frames:
            self._transition = None

    # ------------------------------------------------------------------ live updates
    def update(self, **changes: Any) -> None:
        """Apply setting changes between frames. Raises ValueError naming the bad field; on error
        nothing changes. Accepts every StreamConfig field (e.g. prompt, negative_prompt,
        guidance_scale, delta, seed, strength, steps, t_index_list, cfg_type, similarity_threshold,
        similarity_max_skip, transition_frames, do_add_noise, width, height). A shape the engine's
        modules cannot serve (`StepModules.fits`) is refused the same way."""
        if "similarity_max_skip_frames" in changes:
            changes["similarity_max_skip"] = changes.pop("similarity_max_skip_frames")
        old, new = self.config, self.config.replace(**changes)
        self._check_fits(old, new)
        cond, pooled = self._prompt_embeds(new)  # may raise: nothing changed yet
        uncond, upooled = self._encode("negative_prompt", self.prompts.encode_negative, new.negative_prompt)
        self._commit(old, new, (cond, pooled, uncond, upooled))

    def _check_fits(self, old: StreamConfig, new: StreamConfig) -> None:
        """ValueError naming the field when the modules cannot serve `new`'s shapes. The new size is
        asked about at the old batch first, so a change of size and steps together names the one refused."""
        size_field = "width" if new.width != old.width else "height"
        batch_field = ("frame_buffer_size" if new.frame_buffer_size != old.frame_buffer_size else
                       "cfg_type" if new.num_steps == old.num_steps else
                       "t_index_list" if new.t_index_list is not None else "steps")
        checked = {(old.height, old.width, old.unet_batch)}  # served now
        for field, shape in ((size_field, (new.height, new.width, old.unet_batch)),
                             (batch_field, (new.height, new.width, new.unet_batch))):
            if shape not in checked:
                checked.add(shape)
                reason = self.modules.fits(*shape)
                if reason:
                    raise ValueError(f"{field}: {reason}")

    @staticmethod
    def _encode(field: str, encode, prompt: str) -> tuple:
        """Encode a prompt; any failure (e.g. out of memory) is a ValueError naming the field,
        the error kind callers already handle while the stream keeps running."""
        try:
            return encode(prompt)
        except Exception as exc:
            raise ValueError(f"{field}: could not encode {prompt[:60]!r}: {type(exc).__name__}: {exc}") from exc

    def _prompt_embeds(self, config: StreamConfig) -> tuple[Tensor, Tensor | None]:
        """The conditional embeddings `config` asks for: its prompt blend (each prompt encoded
        through the cache, then `blending.blend_embeddings`, SDXL pooled too), else its prompt."""
        items = config.prompt_items
        if not items:
            return self._encode("prompt", self.prompts.encode, config.prompt)
        encoded = [self._encode("prompt_blend", self.prompts.encode, prompt) for prompt, _ in items]
        weights, method = [w for _, w in items], config.blend_method
        cond = blending.blend_embeddings([e for e, _ in encoded], weights, method).to(self.dtype)
        pooled = None
        if encoded[0][1] is not None:
            pooled = blending.blend_embeddings([p for _, p in encoded], weights, method).to(self.dtype)
        return cond, pooled

    @staticmethod
    def _prompt_key(c: StreamConfig) -> tuple:
        """Equal for two configs exactly when they ask for the same conditional embeddings."""
        items = c.prompt_items
        return ("blend", items, c.blend_method) if items else ("prompt", c.prompt)

    @staticmethod
    def _noise_key(c: StreamConfig) -> tuple:
        items = c.seed_items
        return ("blend", items, c.blend_method) if items else ("seed", c.seed)

    def _commit(self, old: StreamConfig, new: StreamConfig, embeds: tuple) -> None:
        old_shape, feedback_was_on = self._layout_key, self._feedback_on
        prompt_changed = self._prompt_key(new) != self._prompt_key(old)
        start = self.cond_embeds.clone()
        start_pooled = self.unet_pooled[-1:].clone() if self._sdxl else None
        self.config = new
        self._cond, self._pooled, self._uncond, self._upooled = embeds
        self.filter.configure(new.similarity_threshold, new.similarity_max_skip)
        if self._feedback_on and not feedback_was_on:
            self.feedback_valid.zero_()  # kept nothing while off: the first frame mixes in nothing
        if self._layout_key != old_shape:
            self._allocate()
            self._transition = None
            self._write_all()
            self._force_next = True
            return
        if self._noise_key(new) != self._noise_key(old):
            self._write_noise()
        if new.indexes != old.indexes or new.mode != old.mode:
            self._write_schedule()
            self._primed = False
        self._write_scalars()
        if prompt_changed and new.transition_frames > 0 and self._primed:
            self._transition = _Transition(start, self._cond, start_pooled, self._pooled, new.transition_frames,
                                           new.blend_method)
            self._write_embeds(start, start_pooled)
        elif prompt_changed or self._transition is None:
            self._transition = None
            self._write_embeds(self._cond, self._pooled)
        else:  # a transition in flight goes on (the negative prompt may have changed)
            self._write_embeds(start, start_pooled)
        self._force_next = True

    def set_ip_adapter(self, adapter: IPAdapter | None) -> None:
        """Attach an IP-Adapter (core/ip_adapter.py, loaded for these components) or, with None, remove
        the attached one; between two frames. While one is attached the UNet takes `image_embeds`
        (declared in `conditions`, held in `unet_cond`) and `shape_key` includes the adapter's
        `structure_key` (engines recapture); its scale and image change live without that. On an
        error nothing changes."""
        if adapter is self.ip_adapter:
            return
        if adapter is not None and adapter.components.unet is not self.components.unet:
            raise ValueError("ip_adapter: it was loaded for another model's UNet; load it for this stream's model")
        old = self.ip_adapter
        if old is not None:
            old.detach()
        try:
            if adapter is not None:
                adapter.attach()
        except Exception:
            if old is not None:
                old.attach()
            raise
        self.ip_adapter = adapter
        self.conditions = unet_conditions(self.components) + ((adapter.condition,) if adapter is not None else ())
        self.unet_cond.pop(IMAGE_EMBEDS, None)
        self._allocation += 1  # a new `image_embeds` tensor: no graph of the old one may replay
        if adapter is not None:
            self.unet_cond[IMAGE_EMBEDS] = self._rows(adapter.condition)
            self._write_ip_image()
        self._force_next = True

    # ------------------------------------------------------------------ ControlNets
    @property
    def controlnets(self) -> ControlNetStack:
        """The ControlNets in force (an empty stack by default). Live scales:
        `set_controlnet_scales`; another set of nets: `set_controlnets`."""
        return self.control

    def set_controlnets(self, stack: ControlNetStack | None) -> None:
        """Swap in another set of ControlNets between two frames (None or an empty stack: none).
        Everything is checked (family and blocks of each net, its device) and made ready (the
        engine's ControlNet call, the stack's tensors at the stream's size) on the new stack first;
        on an error (ControlNetError, naming the net) the stream keeps the stack it had."""
        stack = stack if stack is not None else ControlNetStack()
        if not isinstance(stack, ControlNetStack):
            raise ControlNetError(f"controlnets: expected a ControlNetStack, got {type(stack).__name__}")
        for unit in stack.units:
            check_fits(unit.name, unit.net.config, self.components)
            device = unit.scale_tensor.device
            if device.type != self.device.type:
                raise ControlNetError(f"ControlNet {unit.name!r}: it is on {device}, the stream on {self.device}; "
                                      f"load it with the stream's components")
        stack.use_engine(self.modules.controlnet)
        c = self.config
        stack.bind(self.fbs, c.height, c.width, device=self.device, dtype=self.dtype)
        self.control = stack
        self._force_next = True

    def set_controlnet_scales(self, scales: dict[str, float]) -> None:
        """Live conditioning scales by ControlNet name (in-place: no recapture unless a scale
        crosses 0, which changes `structure_key`); all checked first."""
        self.control.set_scales(scales)
        self._force_next = True

    def set_control_image(self, name: str, frame: np.ndarray | Tensor) -> None:
        """The app's image for the `external` ControlNet `name`: uint8 HxWx3 (or fbs x H x W x 3),
        numpy or torch, any size: fitted like the stream's frames (resize policy) and written in
        place into the stack's persistent control image (on the device, no host wait)."""
        fr.check_frame(frame)
        self.control.unit(name)  # an unknown name fails before any upload
        x = fr.to_tensor(frame, self.device, self._control_stager)
        if isinstance(frame, np.ndarray) and self.device.type == "cuda":
            self._control_stager.mark_uploaded()
        x = fr.fit(x, self.config.width, self.config.height, self.config.resize)
        self.control.set_external(name, x.permute(0, 3, 1, 2).to(self.dtype).div(255.0))

    def reset(self) -> None:
        """Forget the frames in flight (the next frame primes the buffer again)."""
        self._primed = False
        self.filter.reset()
        self.last_output = None
        self.feedback_valid.zero_()  # the next frame mixes in no output of before the reset
