-- Stack golden: the admin account pyinfra provisions with, then every tenant's database and user.
-- Rendered by the FLOps MLOps pyinfra deploy; holds passwords: mode 0600. Safe to run again.
CREATE USER IF NOT EXISTS 'root'@'localhost'
    IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('admin-pass');
ALTER USER 'root'@'localhost'
    IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('admin-pass');
GRANT ALL PRIVILEGES ON *.* TO 'root'@'localhost' WITH GRANT OPTION;
DROP USER IF EXISTS ''@'localhost';

-- Tenants' databases and users: two databases (utf8mb4, binary NO PAD collation: MariaDB utf8mb4_nopad_bin,
-- MySQL 8 utf8mb4_0900_bin) and one user each, with privileges on its own databases only: the tracking database
-- and <database>_auth, MLflow's basic-auth users and grants (tracking/auth_store.py). Safe to run again.

CREATE DATABASE IF NOT EXISTS `mlflow_acme` CHARACTER SET utf8mb4 COLLATE /*M! utf8mb4_nopad_bin */ /*!80000 utf8mb4_0900_bin */;
ALTER DATABASE `mlflow_acme` CHARACTER SET utf8mb4 COLLATE /*M! utf8mb4_nopad_bin */ /*!80000 utf8mb4_0900_bin */;
CREATE USER IF NOT EXISTS 'mlflow_acme'@'%' IDENTIFIED BY 'acme-db' REQUIRE SSL;
ALTER USER 'mlflow_acme'@'%' IDENTIFIED BY 'acme-db' REQUIRE SSL;
GRANT ALL PRIVILEGES ON `mlflow_acme`.* TO 'mlflow_acme'@'%';
CREATE DATABASE IF NOT EXISTS `mlflow_acme_auth` CHARACTER SET utf8mb4 COLLATE /*M! utf8mb4_nopad_bin */ /*!80000 utf8mb4_0900_bin */;
ALTER DATABASE `mlflow_acme_auth` CHARACTER SET utf8mb4 COLLATE /*M! utf8mb4_nopad_bin */ /*!80000 utf8mb4_0900_bin */;
GRANT ALL PRIVILEGES ON `mlflow_acme_auth`.* TO 'mlflow_acme'@'%';

CREATE DATABASE IF NOT EXISTS `mlflow_globex` CHARACTER SET utf8mb4 COLLATE /*M! utf8mb4_nopad_bin */ /*!80000 utf8mb4_0900_bin */;
ALTER DATABASE `mlflow_globex` CHARACTER SET utf8mb4 COLLATE /*M! utf8mb4_nopad_bin */ /*!80000 utf8mb4_0900_bin */;
CREATE USER IF NOT EXISTS 'mlflow_globex'@'%' IDENTIFIED BY 'it''s\\odd' REQUIRE SSL;
ALTER USER 'mlflow_globex'@'%' IDENTIFIED BY 'it''s\\odd' REQUIRE SSL;
GRANT ALL PRIVILEGES ON `mlflow_globex`.* TO 'mlflow_globex'@'%';
CREATE DATABASE IF NOT EXISTS `mlflow_globex_auth` CHARACTER SET utf8mb4 COLLATE /*M! utf8mb4_nopad_bin */ /*!80000 utf8mb4_0900_bin */;
ALTER DATABASE `mlflow_globex_auth` CHARACTER SET utf8mb4 COLLATE /*M! utf8mb4_nopad_bin */ /*!80000 utf8mb4_0900_bin */;
GRANT ALL PRIVILEGES ON `mlflow_globex_auth`.* TO 'mlflow_globex'@'%';
