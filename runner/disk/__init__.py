"""The local machine: every file written atomically (`AtomicFile`), the output folder's
paths (`OutFolder`), the batch lock, private files, and the disk's and SQLite's failures
translated once into errors.py.
"""

from runner.disk._atomic import (
    AtomicFile,
    atomic_write_bytes,
    atomic_write_hashed,
    fsync_dir,
    sweep_batch_temps,
)
from runner.disk._faults import BUSY_TIMEOUT_MS, damaged, database_error, disk_error, local_failure
from runner.disk._folder_syncs import FolderSyncs
from runner.disk._lock import BatchLock
from runner.disk._out_folder import OutFolder, check_out_folder, image_path, out_folder_problem
from runner.disk._private import create_private, open_private

__all__ = [
    "BUSY_TIMEOUT_MS",
    "AtomicFile",
    "BatchLock",
    "FolderSyncs",
    "OutFolder",
    "atomic_write_bytes",
    "atomic_write_hashed",
    "check_out_folder",
    "create_private",
    "damaged",
    "database_error",
    "disk_error",
    "fsync_dir",
    "image_path",
    "open_private",
    "out_folder_problem",
    "sweep_batch_temps",
    "local_failure",
]
