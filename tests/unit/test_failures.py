"""Error kinds become task outcomes: fail now on what retrying cannot mend, retry the rest."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from driftline_airflow.failures import by_kind

from driftline.errors import Conflict, InvalidInput, Unavailable
from driftline.promotion import ChampionMoved, PromotionInFlight


@pytest.mark.parametrize(
    "error",
    [InvalidInput("validation.ranges.amount: observed -3"), ChampionMoved("champion moved to v7")],
)
def test_bad_input_and_a_lost_compare_and_set_fail_without_retry(error: Exception) -> None:
    with pytest.raises(AirflowFailException, match=str(error)), by_kind():
        raise error


@pytest.mark.parametrize(
    "error", [Unavailable("MLflow at http://mlflow:5000 did not answer"), PromotionInFlight("v3")]
)
def test_an_outage_or_a_promotion_in_flight_is_retried(error: Exception) -> None:
    with pytest.raises(type(error)), by_kind():
        raise error


def test_other_outcomes_pass_through() -> None:
    assert issubclass(ChampionMoved, Conflict)
    with pytest.raises(AirflowSkipException), by_kind():
        raise AirflowSkipException("no champion yet")
    with by_kind():
        value = 1
    assert value == 1
