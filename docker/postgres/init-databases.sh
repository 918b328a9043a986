#!/bin/sh
# First start of the postgres volume only (docker-entrypoint-initdb.d): one database each for
# MLflow and Prefect, owned by POSTGRES_USER.
set -eu
for db in "${MLFLOW_DB:-mlflow}" "${PREFECT_DB:-prefect}"; do
  if ! psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
    psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\""
  fi
done
