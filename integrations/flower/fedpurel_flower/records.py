"""Conversions between Flower's records and the fedpurel module's NumPy dictionaries."""

from pathlib import Path

from flwr.app import Array, ArrayRecord


def to_numpy(record: ArrayRecord) -> dict:
    """An ArrayRecord as {name: ndarray}."""
    return {name: array.numpy() for name, array in record.items()}


def to_record(params: dict) -> ArrayRecord:
    """{name: ndarray} as an ArrayRecord (names kept, so FedAvg averages by name)."""
    return ArrayRecord({name: Array(value) for name, value in params.items()})


def absolute(config, key: str) -> Path:
    """The absolute path under `key` of a Flower config, or a clear error."""
    value = str(config.get(key, ""))
    if not value or not Path(value).is_absolute():
        raise ValueError(
            f"the Flower run config `{key}` must be an absolute path, got {value!r} "
            f'(flwr run … --run-config "{key}=\'/abs/path\'")'
        )
    return Path(value)
