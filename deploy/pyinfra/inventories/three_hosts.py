"""Three Debian hosts, one role each. The tracking server host reaches the stores at the addresses given here;
in the stack configuration set backend_store.host and artifact_store.host to the address each store listens on
(for example 0.0.0.0 or the private address) and artifact_store.pasv_address to the FTP host's address.

    flops-mlops --config configs/native.yaml provision --inventory deploy/pyinfra/inventories/three_hosts.py
"""

backend = [("db.example.org", {"ssh_user": "root", "flops_address": "10.0.0.11",
                               "flops_roles": ["backend_store"]})]
artifacts = [("ftp.example.org", {"ssh_user": "root", "flops_address": "10.0.0.12",
                                  "flops_roles": ["artifact_store"]})]
tracking = [("mlflow.example.org", {"ssh_user": "root", "flops_address": "10.0.0.13",
                                    "flops_roles": ["tracking_server"]})]
