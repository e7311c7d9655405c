"""`rp_cleanup.clean()`: remove what the download and upload helpers leave behind."""
from __future__ import annotations

import os
import shutil


def clean(folder_list: list | None = None) -> None:
    """Remove input_objects/, output_objects/, job_files/, output.zip and `folder_list`
    (relative to the working directory), as the SDK does."""
    for folder in ("input_objects", "output_objects", "job_files", *(folder_list or ())):
        shutil.rmtree(folder, ignore_errors=True)
    if os.path.exists("output.zip"):
        os.remove("output.zip")
