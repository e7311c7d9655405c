"""The SDK's `runpod.serverless.utils`, written for this project: rp_validator,
rp_download, rp_cleanup, rp_cuda, rp_debugger, rp_upload. Each loads on first use."""
import importlib

_MODULES = ("rp_validator", "rp_download", "rp_cleanup", "rp_cuda", "rp_debugger",
            "rp_upload", "rp_ssrf")
_FUNCTIONS = {"download_files_from_urls": "rp_download",
              "upload_file_to_bucket": "rp_upload",
              "upload_in_memory_object": "rp_upload",
              "validate": "rp_validator"}

__all__ = [*_MODULES, *_FUNCTIONS]


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(f"{__name__}.{_FUNCTIONS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
