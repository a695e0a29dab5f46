"""M3T-Bench data: modality/task spec, tokenisation, seeded splits, device partitions and device data files.

Importing this package needs only numpy; sktime and scikit-learn are imported when a bench task is loaded.
"""

from hffm_lab.data.m3t_bench import (
    TEST_FRACTION,
    TaskData,
    class_names,
    load_m3t_bench,
    to_tokens,
)
from hffm_lab.data.partition import DeviceShard, assign_modalities, partition
from hffm_model.files import load_task_file, save_task_file
from hffm_model.spec import (
    MODALITIES,
    TASKS,
    ModalitySpec,
    TaskSpec,
    modality_spec,
    task_spec,
    tasks_of,
)

__all__ = [
    "MODALITIES",
    "TASKS",
    "TEST_FRACTION",
    "DeviceShard",
    "ModalitySpec",
    "TaskData",
    "TaskSpec",
    "assign_modalities",
    "class_names",
    "load_m3t_bench",
    "load_task_file",
    "modality_spec",
    "partition",
    "save_task_file",
    "task_spec",
    "tasks_of",
    "to_tokens",
]
