"""The local machine: every file written atomically (`AtomicFile`), the output folder's
paths (`OutFolder`), the batch lock, private files, the target files go to when `out` is an
object store's URL (`open_target`), and the disk's and SQLite's failures translated once
into errors.py.
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
from runner.disk._lock import BatchLock, lock_held, platform_problem
from runner.disk._out_folder import OutFolder, check_out_folder, image_path, out_folder_problem
from runner.disk._private import create_private, open_private
from runner.disk._target import LocalTarget, StoreTarget, Target, is_url, open_target

__all__ = [
    "BUSY_TIMEOUT_MS",
    "AtomicFile",
    "BatchLock",
    "FolderSyncs",
    "LocalTarget",
    "OutFolder",
    "StoreTarget",
    "Target",
    "atomic_write_bytes",
    "atomic_write_hashed",
    "check_out_folder",
    "create_private",
    "damaged",
    "database_error",
    "disk_error",
    "fsync_dir",
    "image_path",
    "is_url",
    "open_target",
    "open_private",
    "out_folder_problem",
    "sweep_batch_temps",
    "local_failure",
    "lock_held",
    "platform_problem",
]
