"""Guess which loaded volume is which MRI sequence from its name.

Names seen in practice: BraTS 2023 files (``BraTS-GLI-00001-000-t1c``), BraTS 2018-2022 files
(``BraTS2021_00000_t1ce``, ``_flair``), and DICOM series descriptions (``AX T1 MPRAGE POST GAD``,
``T2 FLAIR AXIAL``, ``t2_tse_tra``, ``T1+C``). Each name gets a score per modality; names that look like
other sequences (diffusion, perfusion, SWI, T2*, localisers) score nothing. The assignment takes the best
(name, modality) pairs first, so each name and each modality is used at most once.

Pure Python, no Slicer import: the widget calls :func:`assign_volumes` with the node names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .constants import MODALITY_CODES

_EXCLUDE = re.compile(
    r"(dwi|adc|diffusion|\bdti\b|trace|perf|\bdsc\b|\bdce\b|\bswi\b|\bswan\b|t2\s*\*|t2star|\bgre\b|hemo|"
    r"localizer|localiser|scout|survey|\bmip\b|\bseg\b|label|mask|subtraction|\bsub\b|\bmap\b)"
)
_CONTRAST = re.compile(
    r"(t1\s*[-_ ]?\s*c(e)?\b|t1c\b|t1ce|t1gd|t1\s*\+\s*c|\+\s*c\b|\+\s*gd|\bgad|gado|\bgd\b|\bpost\b|postcontrast|"
    r"post[-_ ]?contrast|contrast|\bce\b|\bc\+|enhanced|dotarem|gadavist|multihance|prohance|magnevist)"
)
_PRE = re.compile(r"(\bpre\b|precontrast|pre[-_ ]?contrast|\bnative\b|\bnon[-_ ]?contrast|\bt1n\b)")
_FLAIR = re.compile(r"(flair|\bt2f\b|dark[-_ ]?fluid|\btirm\b)")
_T2 = re.compile(r"(\bt2w?\b|t2[-_ ]?(tse|fse|weighted|ax|tra|cor|sag|space|spc|blade|propeller)|\bt2w\b)")
_T1 = re.compile(r"(\bt1w?\b|\bt1n\b|t1[-_ ]?(se|tse|fse|weighted|ax|tra|cor|sag|mprage|spgr|tfe|tfl|vibe|flash|3d)|"
                 r"mprage|\bspgr\b|\bbravo\b|\btfe\b|\btfl\b|\bvibe\b|\bfspgr\b)")
# BraTS file suffixes are exact and win over anything else.
_BRATS = {
    "t1n": re.compile(r"[-_]t1n$"), "t1c": re.compile(r"[-_](t1c|t1ce|t1gd)$"),
    "t2w": re.compile(r"[-_](t2w|t2)$"), "t2f": re.compile(r"[-_](t2f|flair)$"),
}
_BRATS_T1 = re.compile(r"[-_]t1$")


def _normalise(name: str) -> str:
    s = name.strip().lower()
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if s.endswith(ext):
            s = s[: -len(ext)]
    return s


def modality_scores(name: str) -> dict[str, int]:
    """Score (0 = not this sequence, higher = more certain) of ``name`` for each modality code."""
    s = _normalise(name)
    scores = dict.fromkeys(MODALITY_CODES, 0)
    for code, pattern in _BRATS.items():
        if pattern.search(s):
            scores[code] = 100
            return scores
    if _BRATS_T1.search(s):
        scores["t1n"] = 100
        return scores
    spaced = re.sub(r"[_\-.]+", " ", s)
    if _EXCLUDE.search(spaced):
        return scores
    if _FLAIR.search(spaced):
        scores["t2f"] = 50
        return scores
    t1 = bool(_T1.search(spaced)) or bool(re.search(r"\bt1", spaced))
    contrast = bool(_CONTRAST.search(spaced))
    if t1 or contrast:
        if contrast and not _PRE.search(spaced):
            scores["t1c"] = 40 if t1 else 20
        elif t1:
            scores["t1n"] = 40 if _PRE.search(spaced) else 30
    if _T2.search(spaced) and not t1:
        scores["t2w"] = 40
    return scores


def guess_modality(name: str) -> str | None:
    """The most likely modality code of a volume name, or None when the name says nothing clear."""
    scores = modality_scores(name)
    best = max(scores.values())
    if best == 0:
        return None
    winners = [code for code, score in scores.items() if score == best]
    return winners[0] if len(winners) == 1 else None


def assign_volumes(names: Sequence[str], already: dict[str, str] | None = None) -> dict[str, str]:
    """Assign names to modalities: ``{modality code: name}``.

    Args:
        names: candidate volume names, in the order they were loaded (earlier wins a tie).
        already: assignments to keep (e.g. chosen by the user); their names and modalities are not reused.

    Returns:
        The kept assignments plus the best new ones; modalities without a convincing name are absent.
    """
    result = dict(already or {})
    used_names = set(result.values())
    candidates: list[tuple[int, int, str, str]] = []
    for order, name in enumerate(names):
        if name in used_names:
            continue
        for code, score in modality_scores(name).items():
            if score > 0 and code not in result:
                candidates.append((-score, order, code, name))
    for _neg_score, _order, code, name in sorted(candidates):
        if code in result or name in used_names:
            continue
        result[code] = name
        used_names.add(name)
    return result


__all__ = ["modality_scores", "guess_modality", "assign_volumes"]
