-- Stack golden: the admin account pyinfra provisions with, then every tenant's database and user.
-- Rendered by the FLOps MLOps pyinfra deploy; holds passwords: mode 0600. Safe to run again.
CREATE USER IF NOT EXISTS 'root'@'localhost'
    IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('admin-pass');
ALTER USER 'root'@'localhost'
    IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('admin-pass');
GRANT ALL PRIVILEGES ON *.* TO 'root'@'localhost' WITH GRANT OPTION;
DROP USER IF EXISTS ''@'localhost';

-- Tenants' databases and users: one database (utf8mb4, binary NO PAD collation: MariaDB utf8mb4_nopad_bin,
-- MySQL 8 utf8mb4_0900_bin) and one user each, with privileges on its own database only. Safe to run again.

CREATE DATABASE IF NOT EXISTS `mlflow_acme` CHARACTER SET utf8mb4 COLLATE /*M! utf8mb4_nopad_bin */ /*!80000 utf8mb4_0900_bin */;
ALTER DATABASE `mlflow_acme` CHARACTER SET utf8mb4 COLLATE /*M! utf8mb4_nopad_bin */ /*!80000 utf8mb4_0900_bin */;
CREATE USER IF NOT EXISTS 'mlflow_acme'@'%' IDENTIFIED BY 'acme-db';
ALTER USER 'mlflow_acme'@'%' IDENTIFIED BY 'acme-db';
GRANT ALL PRIVILEGES ON `mlflow_acme`.* TO 'mlflow_acme'@'%';

CREATE DATABASE IF NOT EXISTS `mlflow_globex` CHARACTER SET utf8mb4 COLLATE /*M! utf8mb4_nopad_bin */ /*!80000 utf8mb4_0900_bin */;
ALTER DATABASE `mlflow_globex` CHARACTER SET utf8mb4 COLLATE /*M! utf8mb4_nopad_bin */ /*!80000 utf8mb4_0900_bin */;
CREATE USER IF NOT EXISTS 'mlflow_globex'@'%' IDENTIFIED BY 'it''s\\odd';
ALTER USER 'mlflow_globex'@'%' IDENTIFIED BY 'it''s\\odd';
GRANT ALL PRIVILEGES ON `mlflow_globex`.* TO 'mlflow_globex'@'%';
