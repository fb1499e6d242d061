#!/usr/bin/env bash
# The production profile's MLflow tracking server, closed: MLflow's basic-auth app. Every
# request but /health needs a user; the users, their permissions and password hashes live in
# the auth tables (alembic_version_auth) beside the tracking tables in the same PostgreSQL
# database unless MLFLOW_AUTH_DATABASE_URI names another.
#
# MLflow reads the auth settings from an ini file (MLFLOW_AUTH_CONFIG_PATH) that cannot refer
# to the environment, and its database_uri holds a password: so the file is written here, at
# start, mode 0600, outside any volume. The admin account is created by MLflow on the first
# start from MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD; later starts leave it
# as it is (rotate it with MLflow's update-password API). Extra arguments go to `mlflow server`.
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI (the PostgreSQL tracking store)}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD (MLFLOW_ADMIN_PASSWORD in .env)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY (the CSRF key of the basic-auth app; MLFLOW_SECRET_KEY in .env)}"
: "${MLFLOW_ALLOWED_HOSTS:?set MLFLOW_ALLOWED_HOSTS (the Host headers the server answers)}"
if [[ ",${MLFLOW_ALLOWED_HOSTS// /}," == *",*,"* ]]; then
  echo "MLFLOW_ALLOWED_HOSTS holds '*' (every Host header): name the hosts that reach the server" >&2
  exit 2
fi
export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"

auth_database="${MLFLOW_AUTH_DATABASE_URI:-$MLFLOW_BACKEND_STORE_URI}"
config="${MLFLOW_AUTH_CONFIG_PATH:-${TMPDIR:-/tmp}/mlflow-basic-auth.ini}"
umask 077
# configparser interpolates '%': a URL-encoded password must reach MLflow unchanged
cat > "$config" <<INI
[mlflow]
default_permission = READ
database_uri = ${auth_database//%/%%}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$config"

exec mlflow server --app-name basic-auth \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --allowed-hosts "$MLFLOW_ALLOWED_HOSTS" \
  "$@"
