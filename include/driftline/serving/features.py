"""What a scoring request may hold, and the feature row the model sees.

The request schema is generated from the model's spec: one strict field per entity key
(typed from the Feast entity) and per request feature (``float64``/``int64`` with the
spec's ``validation.ranges`` as bounds, ``category`` as the declared categories), plus an
optional ``transaction_id`` and ``event_timestamp``. Anything else is refused.

The Feast features come from the online store (the views of the spec's feature service,
resolved once; the store stays open), which holds one newest row per entity (whatever
materialization last wrote). Training joins the
offline store point-in-time: the newest row at or before the transaction, or nothing when
that row is older than the view's TTL. The service applies the same TTL against the
request's ``event_timestamp`` (default: now), so a value training would not have seen is
missing here too. A missing value (entity unknown to the online store, or expired) goes to
the model as NaN, which is how training presents a null from the point-in-time join; the
response names each such feature and why. The row becomes model input through
:func:`driftline.training.predict` — the code training and evaluation use.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from driftline.clock import utc
from driftline.errors import InvalidInput, Unavailable
from driftline.specs import ModelSpec

NOT_FOUND = "not_found"
EXPIRED = "expired"


def _entity_field(python_type: type) -> Any:
    return Annotated[python_type, Field(strict=True)]


def request_model(spec: ModelSpec, entity_types: dict[str, type]) -> type[BaseModel]:
    """The pydantic model of one row to score, generated from the spec."""
    fields: dict[str, Any] = {
        key: (_entity_field(entity_types[key]), ...) for key in spec.entity_keys
    }
    ranges = spec.validation.ranges
    for feature in spec.request_features:
        low, high = ranges.get(feature.name, (None, None))
        if feature.dtype == "category":
            annotation: Any = Literal[tuple(feature.categories)]
        elif feature.dtype == "int64":
            annotation = Annotated[int, Field(strict=True, ge=low, le=high)]
        else:
            annotation = Annotated[float, Field(strict=True, ge=low, le=high, allow_inf_nan=False)]
        fields[feature.name] = (annotation, ...)
    fields["transaction_id"] = (str | None, None)
    fields["event_timestamp"] = (datetime | None, None)
    return create_model(  # type: ignore[call-overload,no-any-return]
        f"{spec.name}_row",
        __config__=ConfigDict(extra="forbid", frozen=True),
        **fields,
    )


def batch_model(row: type[BaseModel], spec: ModelSpec) -> type[BaseModel]:
    """``{"rows": [row, ...]}``; the size limit is checked before this (413)."""
    return create_model(  # type: ignore[call-overload,no-any-return]
        f"{spec.name}_batch",
        __config__=ConfigDict(extra="forbid"),
        rows=(list[row], Field(min_length=1)),  # type: ignore[valid-type]
    )


_PYTHON_TYPES = {"INT64": int, "INT32": int, "STRING": str}
_PROTO_FIELDS = {"INT64": "int64_val", "INT32": "int32_val", "STRING": "string_val"}


def _python(values: dict[str, Any]) -> dict[str, Any]:
    """Feast ValueProtos as Python scalars (None for a null), as Feast's
    ``feast_value_type_to_python_type`` gives them for the scalar types features have."""
    from feast.type_map import feast_value_type_to_python_type

    out = {}
    for name, value in values.items():
        kind = value.WhichOneof("val")
        if kind in ("int64_val", "int32_val", "double_val", "float_val", "string_val", "bool_val"):
            out[name] = getattr(value, kind)
        else:  # null (None), or a type without a plain scalar: Feast's own conversion
            out[name] = feast_value_type_to_python_type(value)
    return out


def _entity_key(keys: list[tuple[str, Any]], row: dict[str, Any]) -> Any:
    """Feast's entity key of ``row`` for a view joined on ``keys`` (name, ValueType)."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import python_values_to_proto_values

    values = []
    for name, value_type in keys:
        field = _PROTO_FIELDS.get(value_type.name)
        if field is not None:
            values.append(Value(**{field: row[name]}))
        else:
            values.extend(python_values_to_proto_values([row[name]], value_type))
    return EntityKey(join_keys=[name for name, _ in keys], entity_values=values)


@dataclass(frozen=True)
class OnlineRows:
    """The model's input columns for some request rows (plain lists, what
    :func:`driftline.training.model_inputs` reads), and what was missing per row."""

    columns: dict[str, list[Any]]
    absent: list[dict[str, str]]

    def select(self, index: list[int]) -> dict[str, list[Any]]:
        return {name: [values[i] for i in index] for name, values in self.columns.items()}


class OnlineFeatures:
    """The spec's feature service on one open Feast store, resolved once.

    The store stays open for the life of the process; its registry cache is refreshed by
    the service's poller, never by a request.
    """

    def __init__(self, spec: ModelSpec, store: Any, lock: threading.Lock) -> None:
        self.spec = spec
        self.store = store
        try:
            self.service = store.get_feature_service(spec.feature_service, allow_cache=False)
        except Exception as exc:
            raise InvalidInput(
                f"feature service {spec.feature_service!r} of {spec.name} ({spec.source}) is "
                f"not in the Feast registry: {exc}; run `driftline feast apply`"
            ) from None
        self.views: dict[str, str] = {}
        entity_types: dict[str, type] = {}
        for projection in self.service.feature_view_projections:
            view = store.get_feature_view(projection.name)
            for feature in projection.features:
                self.views[feature.name] = view.name
            for column in view.entity_columns:
                entity_types[column.name] = _PYTHON_TYPES.get(
                    column.dtype.to_value_type().name, str
                )
        self.feast_names = [ref.split(":")[1] for ref in spec.feast_features]
        unknown = [name for name in self.feast_names if name not in self.views]
        if unknown:
            raise InvalidInput(
                f"{spec.name} ({spec.source}) reads {unknown}, which feature service "
                f"{spec.feature_service!r} does not serve; run `driftline feast apply`"
            )
        self.entity_types = {key: entity_types.get(key, int) for key in spec.entity_keys}
        # per view: its definition, join keys with their value types, the features wanted
        self._reads = []
        for projection in self.service.feature_view_projections:
            view = store.get_feature_view(projection.name)
            wanted = [f.name for f in projection.features if f.name in self.feast_names]
            if wanted:
                keys = [(c.name, c.dtype.to_value_type()) for c in view.entity_columns]
                self._reads.append((view, keys, wanted))
        # the store's online connection is shared by every model and thread (SQLite: one
        # connection); reads take turns
        self._lock = lock

    def read(self, rows: Sequence[dict[str, Any]], now: datetime) -> OnlineRows:
        """Online values for ``rows`` (validated request rows, as dicts).

        One ``online_read`` per feature view through the store's provider — the call
        ``FeatureStore.get_online_features`` makes underneath, without re-resolving the
        feature service and building a response proto on every request (measured: a third
        of its cost), once per distinct entity of the rows.
        """
        references = [utc(row.get("event_timestamp") or now) for row in rows]
        absent: list[dict[str, str]] = [{} for _ in rows]
        columns: dict[str, list[Any]] = {}
        for view, keys, wanted in self._reads:
            # one read per distinct entity (a batch repeats merchants and cards)
            distinct: dict[tuple[Any, ...], int] = {}
            slots = [
                distinct.setdefault(tuple(row[k] for k, _ in keys), len(distinct)) for row in rows
            ]
            entity_keys = [
                _entity_key(keys, dict(zip([k for k, _ in keys], key, strict=True)))
                for key in distinct
            ]
            try:
                with self._lock:
                    found = self.store.provider.online_read(
                        config=self.store.config,
                        table=view,
                        entity_keys=entity_keys,
                        # a copy: Feast's Redis store appends its timestamp key to the
                        # list it is given, which would make "_ts:<view>" a wanted feature
                        requested_features=list(wanted),
                    )
            except Exception as exc:
                raise Unavailable(f"Feast online store read of {view.name} failed: {exc}") from exc
            decoded = [
                (utc(written) if written else None, _python(values) if values else None)
                for written, values in found
            ]
            ttl = view.ttl or None
            for name in wanted:
                columns[name] = [None] * len(rows)
            for i, slot in enumerate(slots):
                written, values = decoded[slot]
                expired = ttl is not None and written is not None and references[i] - written > ttl
                for name in wanted:
                    if values is None or name not in values:
                        absent[i][name] = NOT_FOUND
                    elif expired:
                        absent[i][name] = EXPIRED
                    else:
                        columns[name][i] = values[name]
        for feature in self.spec.request_features:
            columns[feature.name] = [row[feature.name] for row in rows]
        return OnlineRows(columns=columns, absent=absent)

    def freshness(self) -> dict[str, datetime | None]:
        """Each feature view's last materialized end, as the registry records it."""
        project = self.store.project
        ends = {}
        for name in sorted(set(self.views.values())):
            view = self.store.registry.get_feature_view(name, project, allow_cache=False)
            end = view.most_recent_end_time
            ends[name] = utc(end) if end is not None else None
        return ends
