"""Analytic cost of a detector: parameters, MACs and peak activation memory (MCUNet / TinyEngine method).

Counts come from one forward pass with hooks on the real modules, so they follow the architecture spec
instead of a second hand-written table. MACs count convolutions and linear layers (BatchNorm folds into
the conv on a device). Peak activation, per layer: live input + output (+ the block input held for a
residual add), in elements, which are bytes at int8. For a detector we add what must stay alive across
the passes: the latent while the teacher tail runs, and the teacher's level features while the student
tail runs (the device runs the two tails one after the other).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

MIB = 2**20


def count_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _holds_residual(m: nn.Module) -> bool:
    spec = getattr(m, "spec", None)
    if spec is not None and getattr(spec, "residual", False):
        return True
    return bool(getattr(m, "use_res_connect", False)) or type(m).__name__ == "BasicBlock"


@dataclass
class PassCost:
    macs: int = 0
    peak_elements: int = 0
    output_elements: int = 0


def profile_pass(module: nn.Module, x: torch.Tensor, levels: tuple[int, ...] = (), held: int = 0) -> PassCost:
    """MACs and per-layer peak (elements) of one pass of `module` on x (batch 1); `held` is kept alive."""
    cost = PassCost()
    residual_stack: list[int] = []
    hooks = []

    def leaf_hook(m, inp, out):
        i, o = inp[0], out
        if isinstance(m, nn.Conv2d):
            cost.macs += o.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            cost.macs += m.in_features * m.out_features
        live = i.numel() + o.numel() + sum(residual_stack) + held
        cost.peak_elements = max(cost.peak_elements, live)

    def pre_block(m, inp):
        residual_stack.append(inp[0].numel())

    def post_block(m, inp, out):
        residual_stack.pop()

    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            hooks.append(m.register_forward_hook(leaf_hook))
        elif _holds_residual(m):
            hooks.append(m.register_forward_pre_hook(pre_block))
            hooks.append(m.register_forward_hook(post_block))
    try:
        with torch.no_grad():
            outs = module(x, levels) if levels else module(x)
    finally:
        for h in hooks:
            h.remove()
    outs = outs if isinstance(outs, list | tuple) else [outs]
    cost.output_elements = sum(o.numel() for o in outs)
    cost._outputs = outs  # type: ignore[attr-defined]
    return cost


def detector_cost(model, image_size: int | None = None) -> dict:
    """Parameters, bytes, MACs, latent shape and analytic int8 peak activation of a TeacherStudent."""
    cfg = model.config
    s = image_size or cfg.image_size
    x = torch.zeros(1, 3, s, s)
    trunk_cost = PassCost()
    z = x
    if model.trunk is not None:
        trunk_cost = profile_pass(model.trunk, x)
        z = trunk_cost._outputs[0]
    teacher_cost = profile_pass(model.teacher_tail, z, cfg.levels, held=z.numel())
    student_cost = profile_pass(model.student_tail, z, cfg.levels, held=teacher_cost.output_elements)

    shared = count_params(model.trunk)
    teacher = shared + count_params(model.teacher_tail)
    student_own = count_params(model.student_tail)
    total = teacher + student_own
    return {
        "model": cfg.model,
        "backbone": cfg.backbone,
        "levels": list(cfg.levels),
        "bootstrap": cfg.bootstrap,
        "image_size": s,
        "params": {"teacher": teacher, "student": student_own + shared, "shared": shared, "total": total},
        "architecture_bytes": {"fp32": 4 * total, "int8": total},
        "architecture_mib_fp32": 4 * total / MIB,
        "macs": {
            "trunk": trunk_cost.macs,
            "teacher_tail": teacher_cost.macs,
            "student_tail": student_cost.macs,
            "total": trunk_cost.macs + teacher_cost.macs + student_cost.macs,
        },
        "latent_shape": list(z.shape[1:]),
        "latent_bytes": {"fp32": 4 * z[0].numel(), "int8": z[0].numel()},
        "peak_activation_bytes_int8": max(trunk_cost.peak_elements, teacher_cost.peak_elements,
                                          student_cost.peak_elements),
        "notes": "params exclude BatchNorm running statistics; int8 bytes count 1 byte per parameter "
                 "(biases and per-channel scales add a few kB on a device); MACs count conv and linear "
                 "layers; the peak follows the MCUNet method at int8 (1 byte per element)",
    }
