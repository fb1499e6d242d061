#!/usr/bin/env bash
# Airflow's FAB auth manager for the production profile, run by airflow-init after
# `airflow db migrate` (which also migrates FAB's tables):
#   1. the Operator role, declared in fab-roles.json (FAB's User role without reading pools and
#      without deleting DAGs, runs or task instances), created by FAB's permission sync from
#      [fab] custom_roles; FAB leaves an existing role as it is (edits made in the UI stay);
#   2. the accounts `admin` (role Admin) and `operator` (role Operator) with the passwords
#      from .env; on a later start an existing account gets the password .env holds now, so
#      rotating a password is: change .env, run airflow-init again.
# Airflow masks --password in its audit log; the script prints no password.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD in .env}"
: "${AIRFLOW_OPERATOR_PASSWORD:?set AIRFLOW_OPERATOR_PASSWORD in .env}"

AIRFLOW__FAB__CUSTOM_ROLES="$(cat "$here/fab-roles.json")" airflow sync-perm

# --password=...: a generated password may start with "-", which argparse would take for an option
account() {
  local username="$1" role="$2" password="$3" created
  created="$(airflow users create --username "$username" --role "$role" \
    --firstname "$username" --lastname driftline --email "$username@driftline.invalid" \
    --password="$password")"
  echo "$created"
  if [[ "$created" == *"already exists"* ]]; then
    airflow users reset-password --username "$username" --password="$password"
  fi
}

account admin Admin "$AIRFLOW_ADMIN_PASSWORD"
account operator Operator "$AIRFLOW_OPERATOR_PASSWORD"
