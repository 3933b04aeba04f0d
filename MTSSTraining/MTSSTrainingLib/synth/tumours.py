"""Lesions of a synthetic case: where they grow, their shapes and labels, and how they push the brain.

A lesion's core is a thresholded distance field roughened by smooth noise (an irregular blob grown from
a seed point); necrosis is a second threshold deeper inside, the enhancing share of the solid tumour a
third, noisy one. Edema is the set of parenchyma within a reach of the core that is longest in white
matter, so it spreads along the white matter and stops at the cortex and the ventricles. Everything is
drawn on a 2 mm grid fixed in millimetres, then interpolated and thresholded on the output grid, so a
case has the same lesions at every spacing.

Labels follow BraTS 2023: 1 NCR/NETC (necrosis, cysts, non-enhancing tumour), 2 ED/SNFH, 3 ET.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, special

from .anatomy import CHANNELS, AnatomyParams, Template, Tissues, warp
from .fields import AxisGrid, covering_grid, resample, smooth_noise, soft_step
from .populations import LESION_KINDS, LesionKind, PopulationTraits

WORK_MM = 2.0
"""Spacing (mm) of the grid lesion fields are drawn on."""
CLASSES: tuple[str, ...] = ("core", "nec", "et", "cyst", "edema", "cleft", "tex")
"""Per-voxel tumour maps: core fraction, the shares of necrosis, enhancing tumour and cyst within the
core, edema fraction, CSF cleft (meningioma), and tumour texture (unit-variance noise)."""


@dataclass
class Lesion:
    """One lesion of a case, in the case's frame mm."""

    kind: str
    centre: np.ndarray
    radius: float
    irregularity: float
    necrosis: float
    enhancing: float
    edema_mm: float
    push_mm: float
    seed: int
    normal: np.ndarray | None = None  # outward brain-surface normal (extra-axial lesions)
    cyst_centre: np.ndarray | None = None
    cyst_radius: float = 0.0

    def extent(self) -> float:
        """Half-size (mm) of the box that holds the lesion, its cyst and its edema."""
        reach = self.radius * (1.0 + 2.5 * self.irregularity) + 2.0 * self.edema_mm + 8.0
        if self.cyst_centre is not None:
            reach = max(reach, float(np.linalg.norm(self.cyst_centre - self.centre)) + 1.3 * self.cyst_radius + 4)
        return reach

    def summary(self) -> dict:
        return {"kind": self.kind, "centre_mm": [round(float(v), 1) for v in self.centre],
                "radius_mm": round(self.radius, 1), "necrosis": round(self.necrosis, 2),
                "enhancing": round(self.enhancing, 2), "edema_mm": round(self.edema_mm, 1),
                "cyst_radius_mm": round(self.cyst_radius, 1)}


def _pick(rng: np.random.Generator, options: tuple[tuple[str, float], ...]) -> str:
    names = [n for n, _ in options]
    weights = np.array([w for _, w in options], dtype=np.float64)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def _template_channel(template: Template, name: str, frame_pts: np.ndarray) -> np.ndarray:
    """Nearest-voxel value of one template channel at undeformed frame mm points (N, 3)."""
    shape = template.packed.shape
    abc = np.stack([217.0 - frame_pts[:, 0], 239.0 - frame_pts[:, 1], frame_pts[:, 2] + 8.0], 1)
    idx = [np.clip(np.rint(abc[:, d] - template.crop[d]), 0, shape[d] - 1).astype(np.intp) for d in range(3)]
    vals = template.packed[tuple(idx)].view(np.uint8).reshape(-1, 8)[:, CHANNELS.index(name)]
    return vals.astype(np.float32)


def _surface_normal(template: Template, point: np.ndarray) -> np.ndarray:
    """Outward normal of the brain surface near an undeformed frame mm point (minus the depth gradient)."""
    offs = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32) * 4.0
    plus = _template_channel(template, "depth", point[None] + offs)
    minus = _template_channel(template, "depth", point[None] - offs)
    grad = plus - minus
    norm = float(np.linalg.norm(grad))
    if norm < 1e-3:
        grad = point - np.array([119.0, 122.0, 78.0], np.float32)
        norm = float(np.linalg.norm(grad))
    return (-grad / norm).astype(np.float32) if norm > 0 else np.array([0, 0, 1], np.float32)


def _lesion_count(rng: np.random.Generator, traits: PopulationTraits) -> int:
    lo, hi = traits.lesions
    n = lo
    while n < hi and rng.random() < traits.more_lesions:
        n += 1
    return n


def _draw(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def sample_lesions(rng: np.random.Generator, traits: PopulationTraits, template: Template,
                   anatomy: AnatomyParams) -> list[Lesion]:
    """Draw the lesions of one case: kind, position (case frame mm), size and structure."""
    kind = LESION_KINDS[_pick(rng, traits.kinds)]
    count = _lesion_count(rng, traits)
    size = _draw(rng, traits.size_scale)
    lesions: list[Lesion] = []
    for i in range(count):
        lo, hi = kind.radius
        if count > 1 and i < 2:  # the two largest of several lesions are never tiny
            lo = max(lo, 5.0)
        radius = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) * size
        for _attempt in range(60):
            lesion = _place(rng, kind, radius, template, anatomy)
            if all(np.linalg.norm(lesion.centre - o.centre) > lesion.radius + o.radius + 6.0 for o in lesions):
                break
        lesions.append(lesion)
    return lesions


def _place(rng: np.random.Generator, kind: LesionKind, radius: float, template: Template,
           anatomy: AnatomyParams) -> Lesion:
    region = _pick(rng, kind.regions)
    pts = template.seeds[region]
    point = pts[int(rng.integers(len(pts)))]
    centre = anatomy.forward(point[None])[0]
    irregularity = _draw(rng, kind.irregularity)
    necrosis = _draw(rng, kind.necrosis) if rng.random() < kind.necrosis_prob else 0.0
    if kind.name == "metastasis" and radius < 5.0:
        necrosis = 0.0  # small metastases enhance solidly
    enhancing = _draw(rng, kind.enhancing)
    edema = _draw(rng, kind.edema) if rng.random() < kind.edema_prob else 0.0
    if kind.name == "metastasis":
        edema *= float(np.clip(radius / 8.0, 0.4, 1.3))
    push = _draw(rng, kind.push) * radius
    normal = None
    if kind.extra_axial:
        normal = _surface_normal(template, point)
        normal = anatomy.matrix.astype(np.float32) @ normal
        normal /= float(np.linalg.norm(normal))
        # the centre sits inside the surface, so the mass reaches the surface and indents the brain
        centre = centre - normal * np.float32(radius * rng.uniform(0.85, 1.0))
    cyst_centre, cyst_radius = None, 0.0
    if rng.random() < kind.cyst_prob:
        direction = rng.normal(size=3).astype(np.float32)
        direction /= float(np.linalg.norm(direction))
        cyst_radius = radius * float(rng.uniform(0.7, 1.4))
        cyst_centre = centre + direction * np.float32(radius * rng.uniform(0.5, 0.9))
    return Lesion(kind.name, centre.astype(np.float32), radius, irregularity, necrosis, enhancing, edema,
                  push, int(rng.integers(2**31)), normal, cyst_centre, cyst_radius)


def mass_effect(lesions: list[Lesion], grid: AxisGrid) -> np.ndarray:
    """Backward displacement (3, ...) on ``grid`` that pushes the brain away from each lesion.

    Intra-axial lesions push radially (shift ``push_mm`` at the core's edge, decaying outside);
    extra-axial ones push the brain under them inward along the surface normal, indenting it where the
    mass sits while the surface around stays in place (as the skull holds it).
    """
    u = np.stack(np.meshgrid(*[grid.axis(d) for d in range(3)], indexing="ij"))
    disp = np.zeros_like(u)
    for les in lesions:
        if les.push_mm <= 0:
            continue
        rel = u - les.centre.reshape(3, 1, 1, 1)
        r = np.sqrt((rel**2).sum(0)) + 1e-3
        if les.normal is not None:
            n = les.normal.reshape(3, 1, 1, 1)
            along = (rel * n).sum(0)
            lateral2 = np.maximum(r * r - along * along, 0.0)
            width = les.radius + 1.0
            prof = np.exp(-lateral2 / width**2) * np.exp(-np.maximum(-along - 0.5 * les.radius, 0.0)
                                                         / (2.0 * les.radius))
            disp += n * (les.push_mm * prof)
        else:
            lam = les.radius + 10.0
            prof = np.where(r < les.radius, r / les.radius, np.exp(-(r - les.radius) / lam))
            disp -= rel / r * (les.push_mm * prof)
    return disp.astype(np.float32)


@dataclass
class TumourMaps:
    """Tumour maps (``CLASSES``) on the tissue box of a case; absent classes are zero."""

    maps: dict[str, np.ndarray] = field(default_factory=dict)


def _lesion_fields(les: Lesion, work: AxisGrid, tissue: dict[str, np.ndarray],
                   midline: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """The continuous fields of one lesion on its 2 mm work grid (mm or z units).

    ``midline`` (normal, point) is the case's mid-sagittal plane: edema crosses it only a little (the
    falx separates the hemispheres; only the corpus callosum joins them).
    """
    rng = np.random.default_rng(les.seed)
    u = np.meshgrid(*[work.axis(d) for d in range(3)], indexing="ij")
    r = np.sqrt(sum((u[d] - les.centre[d]) ** 2 for d in range(3)))
    sig = max(1.2, 0.3 * les.radius / WORK_MM)
    f = les.radius - r + les.radius * les.irregularity * smooth_noise(rng, work.shape, sig)
    # every field ends inside its box: distance (mm) to the box border caps it
    border = np.minimum.reduce([np.minimum(u[d] - work.origin[d], work.origin[d] + WORK_MM * (work.shape[d] - 1) - u[d])
                                for d in range(3)]) - np.float32(3 * WORK_MM)
    np.minimum(f, border, out=f)
    lab, n = ndimage.label(f > 0)
    if n > 1:
        centre_idx = tuple(np.clip(np.rint((les.centre[d] - work.origin[d]) / WORK_MM), 0, work.shape[d] - 1)
                           .astype(int) for d in range(3))
        keep = lab[centre_idx]
        if keep == 0:
            keep = 1 + int(np.argmax(ndimage.sum(f > 0, lab, range(1, n + 1))))
        f[(lab > 0) & (lab != keep)] = -1.0
    out = {"f": f}
    if les.necrosis > 0:
        rim = les.radius * (1.0 - les.necrosis)
        out["nec"] = f - rim * (1.0 + 0.35 * smooth_noise(rng, work.shape, max(1.0, sig * 0.7)))
    share = float(np.clip(les.enhancing, 1e-4, 1 - 1e-4))
    out["et"] = smooth_noise(rng, work.shape, max(1.0, sig * 0.6)) + np.float32(special.ndtri(share))
    core = f > 0
    if les.cyst_centre is not None:
        rc = np.sqrt(sum((u[d] - les.cyst_centre[d]) ** 2 for d in range(3)))
        out["cyst"] = les.cyst_radius - rc + 0.08 * les.cyst_radius * smooth_noise(rng, work.shape, 1.5)
        core |= out["cyst"] > 0
    if les.edema_mm > 0 and core.any():
        dist = ndimage.distance_transform_edt(~core, sampling=WORK_MM).astype(np.float32) - WORK_MM / 2
        wm = ndimage.gaussian_filter(tissue["wm"], 1.0)
        reach = les.edema_mm * (0.15 + 0.85 * np.clip(wm * 1.3, 0, 1)) * (1 + 0.3 * smooth_noise(rng, work.shape, 2.0))
        normal, point = midline
        side = float(np.dot(normal, les.centre - point))
        if abs(side) > 4.0:
            across = sum((u[d] - point[d]) * normal[d] for d in range(3)) * np.float32(np.sign(side))
            reach *= np.where(across < 0, np.float32(0.25), np.float32(1.0))
        out["edema"] = np.minimum(reach - dist, border)
    out["tex"] = smooth_noise(rng, work.shape, 0.8)
    if les.normal is not None:
        out["cleft"] = 1.0 - np.abs(f + 1.6) / 1.3
    return out


def render_lesions(lesions: list[Lesion], template: Template, anatomy: AnatomyParams, src_map: np.ndarray,
                   tissues: Tissues) -> TumourMaps:
    """Draw every lesion on the tissue box of the case (maps in ``CLASSES``)."""
    box = tissues.box
    spacing = box.step[0]
    maps = {c: np.zeros(box.shape, np.float32) for c in CLASSES}
    midline = anatomy.midline()
    for les in lesions:
        ext = les.extent()
        work = covering_grid(les.centre - ext, les.centre + ext, WORK_MM)
        wt = warp(template, anatomy, src_map, work, (0, 0, 0), work.shape)
        fields = _lesion_fields(les, work, wt.maps, midline)
        lo, hi = box.index_box(np.array(work.origin) + WORK_MM,
                               np.array(work.origin) + WORK_MM * (np.array(work.shape) - 2))
        if any(h <= l for l, h in zip(lo, hi)):
            continue
        sub = box.sub(lo, hi)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        at = {k: resample(v, work, sub) for k, v in fields.items()}
        f = at["f"]
        cyst = soft_step(at["cyst"], spacing) if "cyst" in at else np.zeros_like(f)
        core = np.maximum(soft_step(f, spacing), cyst)
        if les.normal is None:  # intra-axial: stays inside the brain
            t = tissues.maps
            core = np.minimum(core, soft_step(t["gm"][sl] + t["wm"][sl] + t["csf"][sl] - 0.5, 0.5))
        nec = soft_step(at["nec"], spacing) * (1 - cyst) if "nec" in at else np.zeros_like(f)
        solid = 1.0 - cyst - nec
        et = solid * soft_step(at["et"], 0.4)
        inside = core > 0
        m = maps
        m["core"][sl] = np.maximum(m["core"][sl], core)
        for name, val in (("nec", nec), ("et", et), ("cyst", cyst)):
            m[name][sl] = np.where(inside, np.maximum(m[name][sl], val), m[name][sl])
        m["tex"][sl] = np.where(inside | (m["tex"][sl] == 0), at["tex"], m["tex"][sl])
        if "edema" in at:
            edema = soft_step(at["edema"], max(3.0, spacing)) * (1.0 - core)
            m["edema"][sl] = np.maximum(m["edema"][sl], edema)
        if "cleft" in at:
            m["cleft"][sl] = np.maximum(m["cleft"][sl], np.clip(at["cleft"], 0, 1) * (1.0 - core))
    return TumourMaps(maps)


def labels(tumour: TumourMaps, tissues: Tissues, brain: np.ndarray) -> np.ndarray:
    """BraTS 2023 label map (uint8) on the tissue box from the tumour maps and the brain mask."""
    m = tumour.maps
    lab = np.zeros(brain.shape, np.uint8)
    parenchyma = tissues.maps["gm"] + tissues.maps["wm"]
    edema = (m["edema"] >= 0.5 * (1.0 - m["core"])) & (m["edema"] > 0.05) & (parenchyma >= 0.5)
    lab[edema & brain] = 2
    core = (m["core"] >= 0.5) & brain
    enhancing = m["et"] >= 0.5
    lab[core] = 1
    lab[core & enhancing] = 3
    return lab
