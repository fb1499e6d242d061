"""Pure parts of the evaluation: where a version's training rows end, and from when a fair
comparison becomes possible."""

from __future__ import annotations

from driftline.evaluation import fair_from, trained_until
from driftline.settings import REPO_ROOT
from driftline.specs import load_spec
from driftline.training_set import Window
from tests.frames import utc

SPEC = load_spec("fraud_detection", REPO_ROOT / "include" / "models")


def test_trained_until_prefers_the_tag_and_falls_back_to_the_window_end() -> None:
    tags = {"trained_until": "2026-11-15T00:00:00+00:00", "window_end": "2026-11-19T00:00:00"}
    assert trained_until(tags) == utc(2026, 11, 15)
    # a version made before the tag existed: conservatively, every row it saw
    assert trained_until({"window_end": "2026-11-19T10:38:29"}) == utc(2026, 11, 19, 10, 38, 29)
    assert trained_until({}) is None


def test_fair_comparison_date_follows_the_daily_rates() -> None:
    window = Window(start=utc(2026, 1, 1), end=utc(2026, 1, 29), as_of=utc(2026, 2, 5))
    # 28 days, 300 rows and 3 positives a day: 1000 rows need 4 days, 20 positives 7 days
    found = fair_from(SPEC, 300 * 28, 3 * 28, window, start=utc(2026, 1, 29))
    # labels of 2026-01-29 .. 02-04 exist after 02-04 and mature 7 days later
    assert found == utc(2026, 2, 12)
    assert fair_from(SPEC, 300 * 28, 0, window, utc(2026, 1, 29)) is None
