"""One Debian host runs everything: backend store, artifact store and the tracking servers (native mode).

    flops-mlops --config configs/native.yaml provision --inventory deploy/pyinfra/inventories/single_host.py --dry
"""

mlops = [
    ("mlops.example.org", {
        "ssh_user": "root",
        "flops_roles": ["backend_store", "artifact_store", "tracking_server"],
    }),
]
