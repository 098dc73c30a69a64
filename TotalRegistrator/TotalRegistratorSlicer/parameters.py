"""What to run, as one value: the settings of a registration and the command line they make.

Block names, output names, defaults and devices are the bundled library's
(:mod:`.library`); this file only chooses among them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .library import registry

PRESETS: dict[str, tuple[tuple[str, ...], bool]] = {  # name -> (cascade blocks, instance-optimisation refinement)
    "Cascade + refinement": (registry.BLOCKS, True),
    "Full cascade": (registry.BLOCKS, False),
    "Affine only": (("affine",), False),
    "Lungs/thorax": (("affine", "thorax"), False),
    "Abdomen": (("affine", "abdomen"), False),
    "Instance optimisation only": ((), True),
}
VOLUME_OUTPUTS = ("warped", "subtraction")  # the library outputs the module can load as volumes
TRANSFORM_SPACING_MM = 0.0  # 0: the library's compact, exact export (the field on its working grid)


class ParameterError(ValueError):
    """The settings cannot run (the message says why, for the user)."""


@dataclass(frozen=True)
class RegistrationParameters:
    """Settings of one run. ``blocks`` None: the library's default; () instance optimisation alone.

    ``outputs``: names of ``registry.OUTPUTS`` to write (the transform always). ``transformSpacing``:
    0 for the library's compact, exact transform (the field on the grid the registration computed it
    on), else the grid spacing (mm) over the fixed box. ``extraArguments`` go to ``register`` as they are.
    """

    blocks: tuple[str, ...] | None = None
    refine: bool = True
    iterations: tuple[int, int] | None = None
    device: str = "auto"
    outputs: tuple[str, ...] = ("transform",)
    transformSpacing: float = TRANSFORM_SPACING_MM
    extraArguments: tuple[str, ...] = field(default_factory=tuple)

    def check(self) -> None:
        """Raise :class:`ParameterError` when these settings cannot run."""
        if self.blocks is not None and set(self.blocks) - set(registry.BLOCKS):
            raise ParameterError(f"unknown blocks {sorted(set(self.blocks) - set(registry.BLOCKS))}; "
                                 f"choose from {', '.join(registry.BLOCKS)}")
        if self.blocks is not None and not self.blocks and not self.refine:
            raise ParameterError("nothing to run: choose cascade blocks or instance optimisation")
        if self.device not in registry.DEVICES:
            raise ParameterError(f"device must be one of {', '.join(registry.DEVICES)}, not {self.device!r}")
        unknown = set(self.outputs) - set(registry.OUTPUTS)
        if unknown:
            raise ParameterError(f"unknown outputs {sorted(unknown)}; choose from {', '.join(registry.OUTPUTS)}")
        if not self.transformSpacing >= 0:
            raise ParameterError(f"the transform spacing must be 0 (automatic) or more, not {self.transformSpacing}")

    def outputNames(self) -> tuple[str, ...]:
        """The outputs to write, in the library's order, the transform always among them."""
        wanted = {"transform", *self.outputs}
        return tuple(name for name in registry.OUTPUTS if name in wanted)

    def command(self, python: str, fixed: Path, moving: Path, folder: Path) -> list[str]:
        """``python -m TotalRegistratorLib register ...`` for these settings, writing into ``folder``."""
        self.check()
        command = [python, "-m", "TotalRegistratorLib", "register", str(fixed), str(moving), "-o", str(folder),
                   "--progress", "json", "--device", self.device, "--outputs", ",".join(self.outputNames())]
        if self.transformSpacing > 0:
            command += ["--export-spacing", f"{self.transformSpacing:g}"]
        if self.blocks is not None:
            command += ["--blocks", ",".join(self.blocks) or "none"]
        if not self.refine:
            command.append("--no-refine")
        if self.iterations is not None:
            command += ["--iterations", ",".join(str(int(i)) for i in self.iterations)]
        return command + [str(a) for a in self.extraArguments]

    def linear(self) -> bool:
        """Whether the result is an affine transform (only the affine block, no refinement)."""
        return self.blocks == ("affine",) and not self.refine


def preset_of(blocks: Sequence[str], refine: bool) -> str | None:
    """The preset with these blocks and refinement, or None (a custom choice)."""
    return next((name for name, preset in PRESETS.items() if preset == (tuple(blocks), refine)), None)


def available_presets(shipped: Sequence[str]) -> list[str]:
    """The presets this installation can run (all their blocks' weights shipped)."""
    return [name for name, (blocks, _) in PRESETS.items() if set(blocks) <= set(shipped)]
