"""Images built without a Docker daemon: Debian root filesystems per architecture (debian), Python wheels per
platform installed without emulation (wheels), and one OCI image index with a manifest per platform (oci)."""
