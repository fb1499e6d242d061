#!/usr/bin/env bash
# Creates one database per component on the first start of the PostgreSQL container.
set -euo pipefail
for db in "$AIRFLOW_DB" "$MLFLOW_DB" "$FEAST_REGISTRY_DB" "$MONITORING_DB"; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -c "CREATE DATABASE \"$db\"" || echo "database $db exists"
done
