"""Not imported as flops_mlops.fl.compat: this folder goes on the FL processes' sys.path, so that repositories
import ``flops_utils`` (FLOps-compatible; see README.md). A package only so that the wheel carries it."""
