"""The four MRI contrasts of a synthetic case, from its tissue and tumour maps.

Each sequence is a partial-volume mixture of class intensities (relative to white matter) drawn per case
from ranges that keep the sequence recognisable (T1: WM > GM > CSF; T2: CSF brightest; FLAIR: CSF dark,
edema brightest; T1c: enhancing tumour, veins and choroid plexus bright), then degraded like an
acquisition: tissue texture, a smooth intensity nonlinearity, a bias field, slice thickness and in-plane
blur, motion ghosts, Rician noise and a random scanner gain. Drawing the contrast itself at random, not
only its degradations, is the domain-randomisation idea of SynthSeg (Billot et al., Medical Image
Analysis 2023, doi:10.1016/j.media.2023.102789); here it stays within each sequence's physical ordering so
that a network trained on it reads real BraTS sequences.

The ratios are centred on measurements of the real BraTS case in ``../shared/real`` (grey/white/CSF
per sequence: T1 0.94/1/0.76, T1c 0.94/1/0.7, T2 1.7/1/3.2, FLAIR 1.19/1/0.75, FLAIR edema 2.3) and the
literature, and widened.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from MTSSSegmenterLib.constants import MODALITY_CODES

from .anatomy import FRAME_MM, Tissues
from .fields import covering_grid, resample, smooth_noise
from .populations import PopulationTraits
from .tumours import TumourMaps

Range = tuple[float, float]

# Class intensity ranges per sequence, relative to white matter. "edema" multiplies the parenchyma.
TISSUE_CONTRAST: dict[str, dict[str, Range]] = {
    "t1n": {"gm": (0.72, 0.93), "csf": (0.25, 0.6), "nec": (0.3, 0.6), "et": (0.7, 0.95), "net": (0.6, 0.85),
            "cyst": (0.25, 0.55), "edema": (0.72, 0.92), "vessel": (0.0, 0.1)},
    "t1c": {"gm": (0.74, 0.95), "csf": (0.25, 0.6), "nec": (0.3, 0.62), "et": (1.5, 2.6), "net": (0.6, 0.88),
            "cyst": (0.25, 0.6), "edema": (0.72, 0.92), "vessel": (0.8, 2.2)},
    "t2w": {"gm": (1.25, 1.7), "csf": (2.4, 4.0), "nec": (1.9, 3.4), "et": (1.2, 1.8), "net": (1.5, 2.4),
            "cyst": (2.4, 4.0), "edema": (1.7, 2.6), "vessel": (-0.5, -0.1)},
    "t2f": {"gm": (1.1, 1.45), "csf": (0.2, 0.55), "nec": (0.8, 1.7), "et": (1.15, 1.8), "net": (1.5, 2.3),
            "cyst": (0.5, 1.4), "edema": (1.7, 2.7), "vessel": (-0.1, 0.15)},
}
# Meningioma tissue differs from glioma rim: iso to slightly bright on T2/FLAIR, dark-ish on T1.
MENINGIOMA_CONTRAST: dict[str, dict[str, Range]] = {
    "t1n": {"et": (0.75, 0.95)}, "t2w": {"et": (1.2, 1.8)}, "t2f": {"et": (1.1, 1.6)},
}
# Relative noise per sequence: 3-D T1s are smooth, 2-D T2 and FLAIR noisier (as in the real case).
NOISE_FACTOR = {"t1n": 0.6, "t1c": 0.8, "t2w": 1.2, "t2f": 1.5}
# Small unlabelled white-matter hyperintensities (small-vessel disease), as a multiplier range.
WM_SPOTS = {"t1n": (0.85, 1.0), "t1c": (0.85, 1.0), "t2w": (1.15, 1.5), "t2f": (1.3, 1.9)}
# Normal periventricular FLAIR/T2 hyperintensity (caps and rims; not labelled), as a multiplier range.
PERIVENTRICULAR = {"t2w": (1.0, 1.3), "t2f": (1.0, 1.6)}
# Template T1 intensities (uint8 /255) of CSF, GM and WM, to map its fine detail into each contrast.
_T1_ANCHORS = (0.30, 0.655, 0.863)


@dataclass
class SequenceParams:
    """How one sequence of one case was 'acquired'."""

    code: str
    means: dict[str, float]
    template_blend: float
    spots: float
    gamma: float
    texture: float
    tumour_texture: float
    bias: float
    bias_coef: np.ndarray
    slice_mm: float
    slice_axis: int
    inplane_blur: float
    ghost: float
    ghost_axis: int
    noise: float
    gain: float

    def summary(self) -> dict:
        out = {k: round(v, 3) for k, v in self.means.items()}
        out.update(white_matter_spots=round(self.spots, 3), gamma=round(self.gamma, 3), bias=round(self.bias, 3),
                   slice_mm=round(self.slice_mm, 2),
                   slice_axis="xyz"[self.slice_axis], inplane_blur_mm=round(self.inplane_blur, 2),
                   ghost=round(self.ghost, 3), noise=round(self.noise, 4), gain=round(self.gain, 1))
        return out


def sample_imaging(rng: np.random.Generator, traits: PopulationTraits) -> dict[str, SequenceParams]:
    """Draw the contrast and acquisition of the four sequences of one case."""
    im = traits.imaging
    out = {}
    volumetric_t1 = rng.random() < im.volumetric_t1_prob
    contrast = rng.uniform(*im.contrast)
    blend = float(rng.uniform(0.2, 0.6))  # one case, one template: the same blend in every sequence
    spots = float(rng.uniform(*traits.white_matter_spots))
    for code in MODALITY_CODES:
        ranges = dict(TISSUE_CONTRAST[code])
        if traits.code == "MEN":
            ranges.update(MENINGIOMA_CONTRAST.get(code, {}))
        means = {"wm": 1.0}
        for name, (lo, hi) in ranges.items():
            means[name] = float(rng.uniform(lo, hi))
        if code == "t1c":
            means["et"] = float(rng.uniform(*traits.enhancement))
        lo, hi = PERIVENTRICULAR.get(code, (1.0, 1.0))
        means["pvent"] = float(rng.uniform(lo, hi))
        means["spots"] = float(rng.uniform(*WM_SPOTS[code]))
        for name, value in means.items():
            if name not in ("wm", "vessel"):
                means[name] = 1.0 + (value - 1.0) * contrast
        thick = code in ("t1n", "t1c") and volumetric_t1
        slice_mm = 1.0 if thick else float(rng.uniform(*im.slice_mm))
        axis = 2 if rng.random() < 0.8 else int(rng.integers(2))
        ghost = float(rng.uniform(0.03, 0.12)) if rng.random() < im.ghost_prob else 0.0
        out[code] = SequenceParams(
            code=code, means=means, template_blend=blend, spots=spots,
            gamma=float(np.exp(rng.normal(0.0, 0.15))), texture=float(rng.uniform(0.01, 0.05)),
            tumour_texture=float(rng.uniform(0.05, 0.15)), bias=float(rng.uniform(*im.bias)),
            bias_coef=rng.normal(size=(4, 4, 4)).astype(np.float32), slice_mm=slice_mm, slice_axis=axis,
            inplane_blur=float(rng.uniform(*im.inplane_blur)), ghost=ghost, ghost_axis=int(rng.integers(2)),
            noise=float(rng.uniform(*im.noise)) * NOISE_FACTOR[code],
            gain=float(np.exp(rng.uniform(np.log(300), np.log(4000)))))
    return out


def _bias_field(p: SequenceParams, tissues: Tissues) -> np.ndarray:
    """exp of a random cubic polynomial over the box, std about ``p.bias`` across the brain."""
    box = tissues.box
    polys = []
    for d in range(3):
        t = (box.axis(d) - FRAME_MM[d] / 2.0) / 90.0
        polys.append(np.stack([np.ones_like(t), t, t * t - 0.2, t**3 - 0.5 * t]))
    w = np.float32([1.0, 0.7, 0.45, 0.3])
    coef = p.bias_coef * (w[:, None, None] * w[None, :, None] * w[None, None, :])
    coef[0, 0, 0] = 0.0
    yz = np.einsum("ijk,jy,kz->iyz", coef, polys[1], polys[2])
    field = (polys[0].T @ yz.reshape(4, -1)).reshape(box.shape)
    sample = field[::3, ::3, ::3]
    field -= np.float32(sample.mean())
    field *= np.float32(p.bias / max(float(sample.std()), 1e-6))
    return field


def _texture(rng: np.random.Generator, tissues: Tissues) -> np.ndarray:
    grid = covering_grid((0, 0, 0), np.asarray(FRAME_MM, float) - 1.0, 2.0)
    return resample(smooth_noise(rng, grid.shape, 0.8), grid, tissues.box)


def _blur(img: np.ndarray, weight: np.ndarray, p: SequenceParams, spacing: float,
          cache: dict[tuple[float, ...], np.ndarray]) -> np.ndarray:
    """Slice thickness (Gaussian along the slice axis) and in-plane blur, normalised inside the brain."""
    sigma = [p.inplane_blur / spacing] * 3
    thick = max(p.slice_mm**2 - spacing**2, 0.0) ** 0.5
    sigma[p.slice_axis] = thick / 2.355 / spacing
    sig = tuple(round(s, 2) if s >= 0.4 else 0.0 for s in sigma)
    if max(sig) == 0.0:
        return img
    if sig not in cache:
        cache[sig] = np.maximum(ndimage.gaussian_filter(weight, sig, truncate=2.5), np.float32(1e-3))
    out = ndimage.gaussian_filter(img, sig, truncate=2.5)
    out /= cache[sig]
    return out


def _hats(t1: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Piecewise-linear weights (CSF, GM, WM) of template T1 intensities between the tissue anchors."""
    c, g, w = _T1_ANCHORS
    h_csf = np.clip((g - t1) / (g - c), 0.0, 1.0)
    h_wm = np.clip((t1 - g) / (w - g), 0.0, 1.0)
    return h_csf, 1.0 - h_csf - h_wm, h_wm


def render(tissues: Tissues, tumour: TumourMaps, brain: np.ndarray, imaging: dict[str, SequenceParams],
           rng_fields: np.random.Generator, rng_noise: np.random.Generator) -> dict[str, np.ndarray]:
    """The four images (float32, zero outside ``brain``) on the tissue box.

    Intensities are computed on the list of brain voxels; the tumour terms only where a lesion is.
    """
    spacing = tissues.box.step[0]
    t = tissues.maps
    m = tumour.maps
    idx = np.flatnonzero(brain)

    def take(a: np.ndarray) -> np.ndarray:
        return a.reshape(-1)[idx]

    gm, wm, csf = take(t["gm"]), take(t["wm"]), take(t["csf"])
    cleft = take(m["cleft"])
    sub = np.flatnonzero(cleft > 0)
    if len(sub):
        c = cleft[sub]
        csf[sub] += c * (gm[sub] + wm[sub])
        gm[sub] *= 1 - c
        wm[sub] *= 1 - c
    total = gm + wm + csf
    # tissue mixture blended with the template T1's fine detail (deep grey nuclei, sharp sulci)
    beta = next(iter(imaging.values())).template_blend
    h_csf, h_gm, h_wm = _hats(take(t["t1"]))
    bt = np.float32(beta) * total
    comp = {"gm": (1 - beta) * gm + bt * h_gm, "wm": (1 - beta) * wm + bt * h_wm, "csf": (1 - beta) * csf + bt * h_csf}
    del h_csf, h_gm, h_wm, bt
    core_all = take(m["core"])
    edema_all = take(m["edema"])
    les = np.flatnonzero((core_all > 0) | (edema_all > 0))
    core, edema = core_all[les], edema_all[les]
    nec, et, cyst, ttex = (take(m[k])[les] for k in ("nec", "et", "cyst", "tex"))
    net = np.clip(1.0 - nec - et - cyst, 0.0, 1.0)
    par = (gm[les] + wm[les]) / np.maximum(total[les], 1e-3)
    ves = np.flatnonzero(take(t["vessel"]) > 0.02)
    vessel = take(t["vessel"])[ves] * (1 - core_all[ves])
    del core_all, edema_all
    tex = take(_texture(rng_fields, tissues))
    pv = np.flatnonzero(take(t["pvent"]) > 0.02)
    pvent = take(t["pvent"])[pv]
    # white-matter spots: peaks of the texture field inside white matter, more of them with more load
    load = next(iter(imaging.values())).spots
    threshold = np.float32(3.2 - 1.2 * load)
    sp = np.flatnonzero((tex > threshold) & (wm > 0.6)) if load > 0.05 else np.zeros(0, np.intp)
    spot = np.clip((tex[sp] - threshold) * 2.0, 0.0, 1.0)
    weight = brain.astype(np.float32)
    blur_cache: dict[tuple[float, ...], np.ndarray] = {}
    out = {}
    for code, p in imaging.items():
        mu = p.means
        img = comp["gm"] * np.float32(mu["gm"])
        img += comp["wm"]
        img += comp["csf"] * np.float32(mu["csf"])
        img *= 1.0 + np.float32(p.texture) * tex
        if mu["pvent"] != 1.0:
            img[pv] *= 1.0 + pvent * np.float32(mu["pvent"] - 1.0)
        img[sp] *= 1.0 + spot * np.float32(mu["spots"] - 1.0)
        lesion = (nec * mu["nec"] + et * mu["et"] + cyst * mu["cyst"] + net * mu["net"]) * (1 + p.tumour_texture * ttex)
        normal = img[les] * (1.0 + edema * par * np.float32(mu["edema"] - 1.0))
        img[les] = normal * (1 - core) + core * lesion
        img[ves] += vessel * np.float32(mu["vessel"])
        np.maximum(img, 0.0, out=img)
        img **= np.float32(p.gamma)
        img *= np.exp(take(_bias_field(p, tissues)))
        full = np.zeros(brain.shape, np.float32)
        full.reshape(-1)[idx] = img
        full = _blur(full, weight, p, spacing, blur_cache)
        if p.ghost > 0:
            shift = brain.shape[p.ghost_axis] // int(rng_fields.integers(2, 5))
            full += p.ghost * 0.5 * (np.roll(full, shift, p.ghost_axis) + np.roll(full, -shift, p.ghost_axis))
        img = full.reshape(-1)[idx]
        sigma = np.float32(p.noise)
        n1 = rng_noise.standard_normal(len(idx), dtype=np.float32)
        n1 *= sigma
        img += n1
        n2 = rng_noise.standard_normal(len(idx), dtype=np.float32)
        n2 *= sigma
        img *= img
        n2 *= n2
        img += n2
        np.sqrt(img, out=img)
        img *= np.float32(p.gain)
        np.rint(img, out=img)
        np.clip(img, 1.0, 32000.0, out=img)
        full = np.zeros(brain.shape, np.float32)
        full.reshape(-1)[idx] = img
        out[code] = full
    return out
