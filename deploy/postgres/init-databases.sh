#!/usr/bin/env bash
# Least privilege on the first start of the PostgreSQL container (and idempotent when run again):
# one login role per component, owning its own database and nothing else; no database is open
# to PUBLIC. The drift-event writer for outside systems may connect to the monitoring database
# only; `driftline events grant-writer` (airflow-init, after the schema exists) lets it INSERT
# drift_events' model, source and payload and nothing else.
#
# Runs as $POSTGRES_USER. Values reach SQL as psql variables (:'name' quotes a literal, %I an
# identifier), never spliced into the statement text.
set -euo pipefail

psql_admin() {
  psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$POSTGRES_USER" --dbname postgres "$@"
}

# role LOGIN with password (created or its password reset)
login_role() {
  psql_admin -v role="$1" -v password="$2" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L',
              :'role', :'password') \gexec
SQL
}

# database owned by role, closed to everyone else
component() {
  login_role "$2" "$3"
  psql_admin -v db="$1" -v role="$2" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', :'db', :'role') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db') \gexec
SQL
  echo "database $1 owned by $2"
}

component "$AIRFLOW_DB" "$AIRFLOW_DB_USER" "$AIRFLOW_DB_PASSWORD"
component "$MLFLOW_DB" "$MLFLOW_DB_USER" "$MLFLOW_DB_PASSWORD"
component "$FEAST_REGISTRY_DB" "$FEAST_DB_USER" "$FEAST_DB_PASSWORD"
component "$MONITORING_DB" "$MONITORING_DB_USER" "$MONITORING_DB_PASSWORD"

login_role "$DRIFT_WRITER_USER" "$DRIFT_WRITER_PASSWORD"
psql_admin -v db="$MONITORING_DB" -v role="$DRIFT_WRITER_USER" <<'SQL'
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', :'db', :'role') \gexec
SQL
echo "role $DRIFT_WRITER_USER may connect to $MONITORING_DB (grant-writer gives it INSERT)"
