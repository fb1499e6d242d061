# driftline on the official Airflow image: the project's lock installed on top, the code baked in.
FROM apache/airflow:3.3.2-python3.11

# The base image runs as airflow (uid 50000) and already has curl for the health checks:
# nothing is installed as root.
WORKDIR /opt/airflow/driftline
COPY --chown=airflow:root requirements.lock pyproject.toml README.md ./
# The image already holds apache-airflow 3.3.2; the lock pins the same version, so this only
# adds driftline's dependencies (Feast, MLflow, Evidently, XGBoost, ...) at the locked versions.
RUN pip install --no-cache-dir uv==0.13.8 \
 && uv pip install --system --no-cache --require-hashes -r requirements.lock

COPY --chown=airflow:root include ./include
COPY --chown=airflow:root dags ./dags
COPY --chown=airflow:root plugins ./plugins
COPY --chown=airflow:root feature_repo ./feature_repo
RUN uv pip install --system --no-cache --no-deps -e .

ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/driftline/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/airflow/driftline/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    DRIFTLINE_FEAST_REPO=/opt/airflow/driftline/feature_repo \
    DRIFTLINE_MODELS_DIR=/opt/airflow/driftline/include/models \
    FEAST_FS_YAML_FILE_PATH=/opt/airflow/driftline/feature_repo/feature_store.production.yaml \
    MLFLOW_DISABLE_TELEMETRY=true
