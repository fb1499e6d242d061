"""Synthetic card transactions whose drift can be switched on by scenario.

The shipped example use case is card-fraud detection. Each call appends whole UTC days to the
offline store, continuing after the newest day already there, so "new data arrives" is one
command. Everything is deterministic for a seed: a day's transactions depend only on
(seed, population, date, scenario), so generating six days at once writes the same bytes as
generating three and then three more.

Fraud comes from two mechanisms, both learnable and both noisy:

* compromised cards: a fraudster runs a short burst of transactions on a stolen card
  (online, expensive categories, at night, far from home) — visible in the transaction and
  in the card's velocity features;
* compromised merchants (skimming): ordinary-looking transactions at a few merchants turn
  out to be fraud — visible only through the merchant's matured fraud rate.

Labels mature: a transaction's label is known ``LABEL_DELAY`` after it happened (the
chargeback window), recorded in ``label_available_at``. Scenarios:

``baseline``
    the reference behaviour.
``covariate_shift``
    holiday season: higher amounts, more volume, a merchant mix tilted to retail,
    electronics, jewelry and travel, more online shopping. The fraud mechanism is unchanged.
``concept_drift``
    fraudsters change tactics: single small in-person transactions at everyday merchants,
    by day and near home, and a different set of skimmed merchants. The inputs look the same,
    the fraud pattern does not, so a model trained before it decays.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from driftline import offline
from driftline.errors import DriftlineError
from driftline.featurize import card_features, merchant_snapshot

log = logging.getLogger(__name__)

SCENARIOS = ("baseline", "covariate_shift", "concept_drift")
LABEL_DELAY = timedelta(days=7)
CARD_HISTORY = timedelta(days=7)
MERCHANT_HISTORY = timedelta(days=30)
MAX_DAYS = 3660

# category: (share of merchants and baseline spend, amount multiplier, online probability)
CATEGORIES: dict[str, tuple[float, float, float]] = {
    "grocery": (0.24, 0.8, 0.05),
    "restaurant": (0.16, 0.7, 0.10),
    "fuel": (0.10, 1.0, 0.02),
    "retail": (0.16, 1.3, 0.30),
    "electronics": (0.06, 3.0, 0.45),
    "travel": (0.05, 4.0, 0.60),
    "entertainment": (0.08, 0.9, 0.40),
    "online_services": (0.08, 0.6, 0.95),
    "jewelry": (0.02, 5.0, 0.25),
    "pharmacy": (0.05, 0.6, 0.05),
}
CATEGORY_NAMES = tuple(CATEGORIES)
CHANNELS = ("chip", "contactless", "online")

# Hour-of-day profiles (UTC), normalised below.
_LEGIT_HOURS = np.array(
    [
        1,
        0.6,
        0.4,
        0.3,
        0.3,
        0.5,
        1.2,
        2.5,
        4,
        5,
        5.5,
        6,
        7,
        6.5,
        6,
        6,
        6.5,
        7,
        7.5,
        7,
        6,
        4.5,
        3,
        1.8,
    ]
)
_NIGHT_HOURS = np.array(
    [6, 7, 7, 6.5, 6, 4, 2, 1.5, 1, 1, 1, 1, 1.2, 1.2, 1, 1, 1, 1.2, 1.5, 2, 3, 4, 5, 5.5]
)


@dataclass(frozen=True)
class Scenario:
    """How one day's world differs from the baseline."""

    volume: float = 1.0
    amount: float = 1.0
    category_tilt: dict[str, float] = field(default_factory=dict)
    online_shift: float = 0.0
    # compromised-card fraud
    cards_compromised_share: float = 0.0065
    burst_extra_mean: float = 1.5
    fraud_categories: tuple[str, ...] = ("electronics", "jewelry", "online_services", "travel")
    fraud_online: float = 0.8
    fraud_amount: float = 2.5
    fraud_far_share: float = 0.7
    fraud_night: bool = True
    # skimming at compromised merchants
    skimmed_merchant_set: int = 0
    skim_rate: float = 0.1


SCENARIO_PARAMS: dict[str, Scenario] = {
    "baseline": Scenario(),
    "covariate_shift": Scenario(
        volume=1.3,
        amount=1.5,
        category_tilt={"retail": 2.0, "electronics": 2.8, "jewelry": 3.0, "travel": 2.0},
        online_shift=0.2,
    ),
    "concept_drift": Scenario(
        cards_compromised_share=0.02,
        burst_extra_mean=0.0,
        fraud_categories=("grocery", "fuel", "restaurant", "pharmacy"),
        fraud_online=0.05,
        fraud_amount=0.35,
        fraud_far_share=0.0,
        fraud_night=False,
        skimmed_merchant_set=1,
    ),
}


# What each scenario claims to move, among the columns a drift check would watch. Tests hold
# the generator to it; the drift monitor's tests expect exactly these features to drift.
WATCHED_COLUMNS = (
    "amount",
    "merchant_category",
    "channel",
    "hour",
    "distance_from_home_km",
    "card_amount_mean_7d",
    "card_txn_count_24h",
)
SCENARIO_MOVES: dict[str, frozenset[str]] = {
    "baseline": frozenset(),
    "covariate_shift": frozenset(
        {"amount", "merchant_category", "channel", "card_amount_mean_7d", "card_txn_count_24h"}
    ),
    # the inputs keep their distributions; P(fraud | inputs) changes
    "concept_drift": frozenset(),
}


@dataclass(frozen=True)
class Population:
    """Cards and merchants, drawn from the seed alone so every day sees the same world."""

    card_weight: np.ndarray
    card_amount_mu: np.ndarray
    merchant_category: np.ndarray  # index into CATEGORY_NAMES
    merchant_popularity: np.ndarray
    skimmed: tuple[np.ndarray, np.ndarray]  # two disjoint sets of compromised merchants

    @classmethod
    def build(cls, seed: int, n_cards: int, n_merchants: int) -> Population:
        rng = np.random.default_rng([seed, 0])
        shares = np.array([spec[0] for spec in CATEGORIES.values()])
        categories = rng.choice(len(CATEGORIES), size=n_merchants, p=shares / shares.sum())
        # every category gets at least one merchant, so every tilt has somewhere to go
        categories[: len(CATEGORIES)] = np.arange(len(CATEGORIES))
        skim_pool = rng.permutation(n_merchants)
        n_skim = max(1, n_merchants // 33)
        return cls(
            card_weight=rng.gamma(2.0, 0.5, size=n_cards),
            card_amount_mu=np.log(35.0) + rng.normal(0.0, 0.45, size=n_cards),
            merchant_category=categories,
            merchant_popularity=rng.pareto(2.5, size=n_merchants) + 1.0,
            skimmed=(skim_pool[:n_skim], skim_pool[n_skim : 2 * n_skim]),
        )


@dataclass(frozen=True)
class GenerateResult:
    days: list[date]
    scenario: str
    rows: int
    frauds: int
    offline_dir: Path

    def summary(self) -> str:
        if not self.days:
            return "no days generated"
        rate = self.frauds / self.rows if self.rows else 0.0
        return (
            f"appended {len(self.days)} {self.scenario} day(s) "
            f"{self.days[0]}..{self.days[-1]}: {self.rows} transactions, "
            f"fraud rate {rate:.2%}, to {self.offline_dir}"
        )


def _day_seed(seed: int, day: date, scenario: str) -> list[int]:
    return [seed, day.toordinal(), SCENARIOS.index(scenario) + 1]


def _hours(rng: np.random.Generator, profile: np.ndarray, size: int) -> np.ndarray:
    return rng.choice(24, size=size, p=profile / profile.sum())


def _timestamps(rng: np.random.Generator, day: date, hours: np.ndarray) -> np.ndarray:
    start = np.datetime64(datetime(day.year, day.month, day.day), "us")
    micros = hours.astype(np.int64) * 3_600_000_000 + rng.integers(0, 3_600_000_000, len(hours))
    return start + micros.astype("timedelta64[us]")


def _merchants_for(
    rng: np.random.Generator,
    population: Population,
    category_weights: np.ndarray,
    size: int,
) -> np.ndarray:
    """Draw merchants so categories follow ``category_weights``, popular merchants more often."""
    category = population.merchant_category
    popularity = population.merchant_popularity
    category_total = np.bincount(category, weights=popularity, minlength=len(CATEGORIES))
    weights = popularity / category_total[category] * category_weights[category]
    return rng.choice(len(weights), size=size, p=weights / weights.sum())


# no place on Earth is farther than half its circumference (~20,015 km) from home; the
# lognormal's tail passes that about once in 75,000 far transactions (3 times in a 5M world,
# which the spec's range check then rightly refused)
MAX_DISTANCE_KM = 20_000.0


def _distance(rng: np.random.Generator, size: int, far_share: float) -> np.ndarray:
    near = rng.exponential(6.0, size)
    far = np.minimum(rng.lognormal(np.log(300.0), 1.0, size), MAX_DISTANCE_KM)
    return np.round(np.where(rng.random(size) < far_share, far, near), 2)


def _channels(rng: np.random.Generator, online_p: np.ndarray) -> np.ndarray:
    online = rng.random(len(online_p)) < online_p
    contactless = rng.random(len(online_p)) < 0.5
    return np.where(online, 2, np.where(contactless, 1, 0))


def simulate_day(day: date, scenario: str, population: Population, seed: int) -> pd.DataFrame:
    """One day of raw transactions, labels included, sorted by time."""
    params = SCENARIO_PARAMS[scenario]
    rng = np.random.default_rng(_day_seed(seed, day, scenario))
    n_cards = len(population.card_weight)
    amount_mult = np.array([spec[1] for spec in CATEGORIES.values()])
    online_p = np.array([spec[2] for spec in CATEGORIES.values()])
    spend = np.array([spec[0] for spec in CATEGORIES.values()])
    tilt = np.array([params.category_tilt.get(name, 1.0) for name in CATEGORY_NAMES])

    # legitimate spending
    n_legit = rng.poisson(n_cards * 1.4 * params.volume)
    cards = rng.choice(
        n_cards, size=n_legit, p=population.card_weight / population.card_weight.sum()
    )
    merchants = _merchants_for(rng, population, spend * tilt, n_legit)
    category = population.merchant_category[merchants]
    hours = _hours(rng, _LEGIT_HOURS, n_legit)
    amount = (
        np.exp(
            population.card_amount_mu[cards]
            + np.log(amount_mult[category])
            + rng.normal(0, 0.55, n_legit)
        )
        * params.amount
    )
    channel = _channels(rng, np.clip(online_p[category] + params.online_shift, 0.0, 0.98))
    distance = _distance(rng, n_legit, far_share=0.05)
    skimmed = np.isin(merchants, population.skimmed[params.skimmed_merchant_set])
    is_fraud = skimmed & (rng.random(n_legit) < params.skim_rate)
    legit = pd.DataFrame(
        {
            "card_id": cards,
            "merchant_id": merchants,
            "hours": hours,
            "amount": amount,
            "channel": channel,
            "distance_from_home_km": distance,
            "is_fraud": is_fraud,
        }
    )

    # stolen cards: a burst of one or more transactions each
    n_stolen = rng.poisson(n_cards * params.cards_compromised_share)
    stolen = rng.choice(n_cards, size=n_stolen, replace=False) if n_stolen else np.array([], int)
    burst = 1 + rng.poisson(params.burst_extra_mean, n_stolen)
    f_cards = np.repeat(stolen, burst)
    n_fraud = len(f_cards)
    fraud_cat_weights = np.array(
        [1.0 if name in params.fraud_categories else 0.0 for name in CATEGORY_NAMES]
    )
    f_merchants = _merchants_for(rng, population, fraud_cat_weights, n_fraud)
    f_category = population.merchant_category[f_merchants]
    start_hours = _hours(rng, _NIGHT_HOURS if params.fraud_night else _LEGIT_HOURS, n_stolen)
    f_amount = (
        np.exp(
            population.card_amount_mu[f_cards]
            + np.log(amount_mult[f_category] * params.fraud_amount)
            + rng.normal(0, 0.6, n_fraud)
        )
        * params.amount
    )
    fraud = pd.DataFrame(
        {
            "card_id": f_cards,
            "merchant_id": f_merchants,
            "hours": np.repeat(start_hours, burst),
            "amount": f_amount,
            "channel": _channels(rng, np.full(n_fraud, params.fraud_online)),
            "distance_from_home_km": _distance(rng, n_fraud, far_share=params.fraud_far_share),
            "is_fraud": np.ones(n_fraud, dtype=bool),
            "burst": np.repeat(np.arange(n_stolen), burst),
        }
    )

    # timestamps: legit anywhere in its hour; a burst's transactions minutes apart
    legit["event_timestamp"] = _timestamps(rng, day, legit.pop("hours").to_numpy())
    burst_start = _timestamps(rng, day, start_hours)
    gaps = rng.exponential(8 * 60 * 1_000_000, n_fraud).astype(np.int64)
    offsets = pd.Series(gaps).groupby(fraud["burst"].to_numpy()).cumsum().to_numpy()
    fraud["event_timestamp"] = burst_start[fraud.pop("burst").to_numpy()] + offsets.astype(
        "timedelta64[us]"
    )
    fraud.pop("hours")

    frame = _unique_card_times(pd.concat([legit, fraud], ignore_index=True))
    # a burst that runs past midnight is cut there: a day holds only its own transactions
    next_day = np.datetime64(datetime(day.year, day.month, day.day), "us") + np.timedelta64(1, "D")
    frame = frame[frame["event_timestamp"].to_numpy() < next_day].reset_index(drop=True)
    # noisy labels: a little friendly fraud, some fraud never charged back
    flip = rng.random(len(frame))
    label = frame["is_fraud"].to_numpy()
    label = np.where(label, flip >= 0.05, flip < 0.002)
    frame["is_fraud"] = label.astype(np.int64)
    frame["amount"] = np.round(frame["amount"].to_numpy(), 2).clip(0.5)
    frame["channel"] = np.asarray(CHANNELS, dtype=object)[frame["channel"].to_numpy()]
    frame["merchant_category"] = np.asarray(CATEGORY_NAMES, dtype=object)[
        population.merchant_category[frame["merchant_id"].to_numpy()]
    ]
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"]).dt.tz_localize(UTC)
    frame["hour"] = frame["event_timestamp"].dt.hour.astype(np.int64)
    frame["label_available_at"] = frame["event_timestamp"] + LABEL_DELAY
    frame = frame.sort_values(["event_timestamp", "card_id"], kind="stable", ignore_index=True)
    frame.insert(0, "transaction_id", [f"{day:%Y%m%d}-{i:07d}" for i in range(len(frame))])
    return frame


def _unique_card_times(frame: pd.DataFrame) -> pd.DataFrame:
    """Nudge a card's simultaneous transactions apart by a microsecond, so 'before' is exact."""
    frame = frame.sort_values(["card_id", "event_timestamp"], kind="stable", ignore_index=True)
    ts = frame["event_timestamp"].to_numpy().astype("datetime64[us]").astype(np.int64)
    cards = frame["card_id"].to_numpy()
    for _ in range(5):
        clash = np.zeros(len(ts), dtype=bool)
        clash[1:] = (cards[1:] == cards[:-1]) & (ts[1:] <= ts[:-1])
        if not clash.any():
            break
        ts[clash] = ts[np.flatnonzero(clash) - 1] + 1
    frame["event_timestamp"] = ts.astype("datetime64[us]")
    return frame


def corrupt_batch(raw: pd.DataFrame) -> pd.DataFrame:
    """A day of transactions as a broken upstream system would deliver it."""
    broken = raw.copy()
    broken.loc[broken.index[::3], "amount"] = -broken.loc[broken.index[::3], "amount"]
    broken.loc[broken.index[::5], "channel"] = "telepathy"
    return pd.concat([broken, broken.head(40)], ignore_index=True)


def _parse_start(start: str | date | None) -> date | None:
    if start is None or isinstance(start, date):
        return start
    try:
        return date.fromisoformat(start)
    except ValueError:
        raise DriftlineError(
            f"--start {start!r} is not a date; use YYYY-MM-DD, e.g. 2026-01-01"
        ) from None


def validate_arguments(scenario: str, days: int, seed: int, n_cards: int, n_merchants: int) -> None:
    """Reject bad arguments before anything is written."""
    if scenario not in SCENARIOS:
        raise DriftlineError(f"--scenario {scenario!r} is unknown; allowed: {', '.join(SCENARIOS)}")
    if not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise DriftlineError(f"--days {days!r} must be an integer from 1 to {MAX_DAYS}")
    if seed < 0:
        raise DriftlineError(f"--seed {seed!r} must be a non-negative integer")
    if n_cards < 10:
        raise DriftlineError(f"--cards {n_cards!r} must be at least 10")
    if n_merchants < len(CATEGORIES):
        raise DriftlineError(f"--merchants {n_merchants!r} must be at least {len(CATEGORIES)}")


def _clear_interrupted_days(offline_dir: Path) -> None:
    """Remove what a `generate` interrupted mid-day left behind, saying so.

    A day is written features first, transactions last, each file atomically, and counts as
    present once its transactions land. An interruption leaves partition directories holding
    only a temporary file, or feature partitions of a day without transactions. Neither is
    data anyone delivered: the day is generated again (the same seed writes the same bytes),
    so they are removed instead of blocking the next run with "partition already exists".
    """
    for table in offline.SCHEMAS:
        root = offline_dir / table
        for partition in sorted(root.glob("date=*")) if root.is_dir() else []:
            leftovers = list(partition.iterdir())
            if all(f.name.startswith(".") and f.name.endswith(".tmp") for f in leftovers):
                log.warning("removing %s, left by an interrupted write", partition)
                shutil.rmtree(partition)
    days = offline.list_days(offline_dir, "transactions")
    for table in ("card_features", "merchant_features"):
        for day in offline.list_days(offline_dir, table):
            if not days or day > days[-1]:
                log.warning(
                    "%s of %s was left by an interrupted `generate` (that day has no "
                    "transactions); removing it, the day is generated again",
                    table,
                    day,
                )
                shutil.rmtree(offline.partition_path(offline_dir, table, day).parent)


def generate(
    *,
    offline_dir: Path,
    scenario: str = "baseline",
    days: int = 1,
    start: str | date | None = None,
    seed: int = 42,
    n_cards: int = 2000,
    n_merchants: int = 300,
    today: date | None = None,
    corrupt: bool = False,
) -> GenerateResult:
    """Append ``days`` days of ``scenario`` after the newest day in the offline store.

    An empty store starts at ``start`` (default: ``days`` days before ``today``, so the data
    ends yesterday). A store that already holds data continues from its newest day; ``start``
    is then only accepted if it is exactly that next day. The seed and population size are
    recorded in the store's manifest and must match on later calls.

    ``corrupt`` makes the appended days a broken upstream batch (fault injection for the
    demo and tests): negative amounts, an undeclared channel, duplicated rows. Features are
    computed before the corruption; only the raw transactions are broken.
    """
    validate_arguments(scenario, days, seed, n_cards, n_merchants)
    start_day = _parse_start(start)
    manifest = offline.read_manifest(offline_dir)
    _clear_interrupted_days(offline_dir)
    existing = offline.list_days(offline_dir, "transactions")
    if manifest is not None:
        for key, value in (("seed", seed), ("cards", n_cards), ("merchants", n_merchants)):
            if manifest[key] != value:
                raise DriftlineError(
                    f"--{key} {value} differs from the {manifest[key]} this offline store "
                    f"({offline_dir}) was generated with; pass --{key} {manifest[key]} "
                    "or start a new state directory"
                )
    if existing:
        next_day = existing[-1] + timedelta(days=1)
        if start_day is not None and start_day != next_day:
            raise DriftlineError(
                f"--start {start_day} does not continue the offline store, whose newest day "
                f"is {existing[-1]}; omit --start or pass {next_day}"
            )
        start_day = next_day
    elif start_day is None:
        start_day = (today or datetime.now(UTC).date()) - timedelta(days=days)

    population = Population.build(seed, n_cards, n_merchants)
    manifest = manifest or {"seed": seed, "cards": n_cards, "merchants": n_merchants, "days": {}}
    history_days = [d for d in existing if d >= start_day - MERCHANT_HISTORY]
    history = offline.read_table(offline_dir, "transactions", history_days).to_pandas()

    written: list[date] = []
    rows = frauds = 0
    for offset in range(days):
        day = start_day + timedelta(days=offset)
        raw = simulate_day(day, scenario, population, seed)
        day_start = pd.Timestamp(day, tz=UTC)
        window = pd.concat(
            [history[history["event_timestamp"] >= day_start - MERCHANT_HISTORY], raw],
            ignore_index=True,
        )
        cards = card_features(window, since=day_start)
        merchants = merchant_snapshot(window, at=day_start, n_merchants=n_merchants)
        # features first, transactions last: a day counts as present once its raw data lands
        offline.write_partition(offline_dir, "card_features", day, pa.Table.from_pandas(cards))
        offline.write_partition(
            offline_dir, "merchant_features", day, pa.Table.from_pandas(merchants)
        )
        stored = corrupt_batch(raw) if corrupt else raw
        offline.write_partition(offline_dir, "transactions", day, pa.Table.from_pandas(stored))
        manifest["days"][day.isoformat()] = f"{scenario}+corrupted" if corrupt else scenario
        offline.write_manifest(offline_dir, manifest)
        history = window
        written.append(day)
        rows += len(raw)
        frauds += int(raw["is_fraud"].sum())
        log.info("generated %s (%s): %d transactions", day, scenario, len(raw))
    return GenerateResult(written, scenario, rows, frauds, offline_dir)
