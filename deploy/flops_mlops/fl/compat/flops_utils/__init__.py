"""FLOps-compatible helpers for ML repositories (see ../README.md); only what a repository imports."""
