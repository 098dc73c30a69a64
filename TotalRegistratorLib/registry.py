"""The library's tables: structures, cascade blocks, similarities, outputs and command-line defaults.

Pure Python (no torch, numpy or SimpleITK), so the Slicer module reads the
same tables from its bundled copy of the library without importing heavy
packages into Slicer's process. Adding a block, a similarity or an output
starts here; the modules that implement them look their names up in these
tables instead of restating them.
"""

from __future__ import annotations

from dataclasses import dataclass

PROGRAM = "totalregistrator"
ERROR_PREFIX = f"{PROGRAM}: error: "  # every refused input: one stderr line with this prefix, exit code 2
WARNING_PREFIX = f"{PROGRAM}: warning: "  # a questionable input that was still used: one stderr line each
AIR_HU = -1000.0  # CT air; the value outside a resampled image's field of view

# --- structures -------------------------------------------------------------------------------------------
STRUCTURES = ("lung", "heart", "liver", "kidney", "pancreas", "spleen", "stomach", "gallbladder", "prostate",
              "pelvis_bone", "vertebrae", "ribs")
LABELS: dict[str, int] = {name: i + 1 for i, name in enumerate(STRUCTURES)}  # label id per structure (0: none)
TRAINING_STRUCTURES = tuple(name for name in STRUCTURES if name != "prostate")  # prostate: out-of-distribution test
REGIONS: dict[str, tuple[str, ...]] = {
    "thorax": ("lung", "heart"),
    "abdomen": ("liver", "kidney", "pancreas", "spleen", "stomach", "gallbladder"),
    "bone": ("pelvis_bone", "vertebrae", "ribs"),
}


# --- cascade blocks ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """One block of the cascade: ``kind`` "affine" (12 parameters) or "deformable" (a UNet's field),
    the structures its training Dice uses, and the blocks that run before it (at training and inference)."""

    name: str
    kind: str
    structures: tuple[str, ...]
    preceding: tuple[str, ...]


BLOCK_TABLE: tuple[Block, ...] = (
    Block("affine", "affine", TRAINING_STRUCTURES, ()),
    Block("bone", "deformable", REGIONS["bone"], ("affine",)),
    Block("thorax", "deformable", REGIONS["thorax"], ("affine",)),
    Block("abdomen", "deformable", REGIONS["abdomen"], ("affine",)),
    Block("wholebody", "deformable", TRAINING_STRUCTURES, ("affine", "bone", "thorax", "abdomen")),
)
BLOCKS: tuple[str, ...] = tuple(b.name for b in BLOCK_TABLE)  # the cascade's fixed order
BLOCK: dict[str, Block] = {b.name: b for b in BLOCK_TABLE}


# --- similarities -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SimilaritySpec:
    """A similarity of instance optimisation: its command-line name, a description, and its reach (voxels
    around a voxel that its loss term looks at; "radius" means the NCC window radius setting)."""

    name: str
    description: str
    reach: int | str


SIMILARITY_TABLE: tuple[SimilaritySpec, ...] = (
    SimilaritySpec("ncc", "local normalised cross-correlation (default; CT to CT)", "radius"),
    SimilaritySpec("mind", "MIND-SSC self-similarity context, sum of squared differences", 2),
    SimilaritySpec("mi", "Parzen mutual information (contrast phases, multiphase)", 0),
)
SIMILARITIES: tuple[str, ...] = tuple(s.name for s in SIMILARITY_TABLE)


# --- outputs of ``register`` ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Output:
    """An output of ``register``: its ``--outputs`` name, the files it writes, and whether it is a default."""

    name: str
    files: tuple[str, ...]
    default: bool
    description: str


OUTPUT_TABLE: tuple[Output, ...] = (
    Output("transform", ("transform.h5",), True, "ITK transform, fixed -> moving points (LPS mm)"),
    Output("warped", ("warped.nii.gz",), True, "the moving image on the fixed grid"),
    Output("overview", ("overview.png",), True, "slices of fixed, moving, registered and subtractions"),
    Output("displacement", ("displacement.nii.gz",), False, "the displacement field as a vector image"),
    Output("subtraction", ("subtraction_before.nii.gz", "subtraction_after.nii.gz"), False,
           "|fixed - moving| before and after registration"),
    Output("labels", ("warped_labels.nii.gz",), False, "the moving label map on the fixed grid (needs labels)"),
)
OUTPUTS: dict[str, Output] = {o.name: o for o in OUTPUT_TABLE}
DEFAULT_OUTPUTS: tuple[str, ...] = tuple(o.name for o in OUTPUT_TABLE if o.default)
REPORT_FILE = "report.json"  # always written

# --- defaults of instance optimisation (mirrored by OptimizationSettings) ------------------------------------
DEFAULT_ITERATIONS: tuple[int, int] = (40, 25)  # deformable, coarse and fine level
DEFAULT_LEARNING_RATES: tuple[float, float] = (2.0, 0.75)  # mm per step of the deformable levels' Adam
DEFAULT_AFFINE_ITERATIONS: tuple[int, int] = (40, 20)
DEFAULT_SIMILARITY = "ncc"
DEVICES = ("auto", "cpu", "cuda")

# --- bounds of the numeric options ----------------------------------------------------------------------------
MAX_ITERATIONS = 10_000  # per level, for --iterations and --affine-iterations
SPACING_RANGE_MM = (0.1, 50.0)  # --spacing and --export-spacing
PHANTOM_SPACING_RANGE_MM = (0.5, 16.0)  # phantom --spacing and train.py --phantom-spacing
