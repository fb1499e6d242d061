"""The canary contract shared by the scoring service and the ``<model>_rollout`` DAG.

A request goes to the ``candidate`` alias's version when the alias exists, that version
carries the model-version tag ``rollout_share`` (a float in [0, 1]), and
``stable_fraction(model, key) < share``, where ``key`` is the value of the spec's *first*
entity key (``card_id``: a card always sees one model while the share holds). No tag, no
candidate alias, or a candidate that failed to load: everything goes to the champion.
"""

from __future__ import annotations

import hashlib

from driftline.errors import InvalidInput

CHAMPION = "champion"
CANDIDATE = "candidate"
ROLLOUT_SHARE_TAG = "rollout_share"


def stable_fraction(model: str, key: object) -> float:
    """A number in [0, 1) fixed by the model and the entity key: the same card, the same arm."""
    digest = hashlib.sha256(f"{model}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def arm_for(model: str, key: object, share: float) -> str:
    """``candidate`` when the key falls inside the candidate's share, else ``champion``."""
    return CANDIDATE if share > 0 and stable_fraction(model, key) < share else CHAMPION


def parse_share(raw: str | None, *, model: str, version: str) -> float:
    """The ``rollout_share`` tag of a candidate version; absent means no traffic (0)."""
    if raw is None or raw == "":
        return 0.0
    try:
        share = float(raw)
    except ValueError:
        share = float("nan")
    if not 0.0 <= share <= 1.0:  # also refuses NaN
        raise InvalidInput(
            f"{model} version {version}: tag {ROLLOUT_SHARE_TAG}={raw!r} is not a number in "
            "[0, 1]; the candidate gets no traffic until it is"
        )
    return share
