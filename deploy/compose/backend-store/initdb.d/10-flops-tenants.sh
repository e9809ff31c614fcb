# Generated from deploy/flops_mlops/stores/templates/tenants.sql.j2 for
# configs/compose.yaml (tenants: default) by
#     flops-mlops --config configs/compose.yaml render --target compose
# Do not edit.
# The MySQL image's entrypoint sources it on an empty data directory, ours again on every later start
# (FLOPS_RERUN_ON_START): every tenant's database (utf8mb4, binary NO PAD collation) and user, the
# passwords from this container's environment, never from argv.
if ! command -v docker_process_sql >/dev/null 2>&1; then
    # Executed rather than sourced: talk to the first-start server over its socket as root.
    docker_process_sql() { MYSQL_PWD="$MYSQL_ROOT_PASSWORD" mysql --protocol=socket -uroot "$@"; }
fi
case "$FLOPS_TENANT_DEFAULT_DB_PASSWORD" in ''|*[!A-Za-z0-9_-]*) echo "tenants.sql: FLOPS_TENANT_DEFAULT_DB_PASSWORD must be a URL-safe password (letters, digits, - and _)" >&2; exit 2;; esac
printf -- '-- Tenants'"'"' databases and users: two databases (utf8mb4, binary NO PAD collation: MariaDB utf8mb4_nopad_bin,
-- MySQL 8 utf8mb4_0900_bin) and one user each, with privileges on its own databases only: the tracking database
-- and <database>_auth, MLflow'"'"'s basic-auth users and grants (tracking/auth_store.py). Safe to run again.

CREATE DATABASE IF NOT EXISTS `mlflow_default` CHARACTER SET utf8mb4 COLLATE /*M! utf8mb4_nopad_bin */ /*!80000 utf8mb4_0900_bin */;
ALTER DATABASE `mlflow_default` CHARACTER SET utf8mb4 COLLATE /*M! utf8mb4_nopad_bin */ /*!80000 utf8mb4_0900_bin */;
CREATE USER IF NOT EXISTS '"'"'mlflow_default'"'"'@'"'"'%%'"'"' IDENTIFIED BY '"'"'%s'"'"' REQUIRE SSL;
ALTER USER '"'"'mlflow_default'"'"'@'"'"'%%'"'"' IDENTIFIED BY '"'"'%s'"'"' REQUIRE SSL;
GRANT ALL PRIVILEGES ON `mlflow_default`.* TO '"'"'mlflow_default'"'"'@'"'"'%%'"'"';
CREATE DATABASE IF NOT EXISTS `mlflow_default_auth` CHARACTER SET utf8mb4 COLLATE /*M! utf8mb4_nopad_bin */ /*!80000 utf8mb4_0900_bin */;
ALTER DATABASE `mlflow_default_auth` CHARACTER SET utf8mb4 COLLATE /*M! utf8mb4_nopad_bin */ /*!80000 utf8mb4_0900_bin */;
GRANT ALL PRIVILEGES ON `mlflow_default_auth`.* TO '"'"'mlflow_default'"'"'@'"'"'%%'"'"';
' "$FLOPS_TENANT_DEFAULT_DB_PASSWORD" "$FLOPS_TENANT_DEFAULT_DB_PASSWORD" | docker_process_sql --database=mysql
echo "10-flops-tenants.sh: databases and users of tenants default are in place"
