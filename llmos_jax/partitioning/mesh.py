"""A device mesh with axes (data, fsdp, tensor), built from a validated config."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

from llmos_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes; exactly one may be -1 to take the remaining devices.

    Attributes:
      data: Pure data parallelism (parameters replicated).
      fsdp: Data parallelism with parameters and optimizer state sharded.
      tensor: Tensor (model) parallelism over heads, MLP and vocabulary.
    """

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def __post_init__(self) -> None:
        sizes = self.sizes
        if sum(size == -1 for size in sizes) > 1:
            raise UserError(
                f"MeshConfig{self._describe()} has more than one axis set to -1; "
                "only one axis can fill the remaining devices.")
        for name, size in zip(MESH_AXES, sizes):
            if size == 0 or size < -1:
                raise UserError(f"MeshConfig.{name}={size} must be a positive size or -1.")

    @property
    def sizes(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """Concrete axis sizes for `num_devices`, filling the -1 axis."""
        known = math.prod(size for size in self.sizes if size != -1)
        if -1 in self.sizes:
            if num_devices % known:
                raise UserError(
                    f"MeshConfig{self._describe()} cannot fill {num_devices} devices: "
                    f"the fixed axes multiply to {known}, which does not divide {num_devices}. "
                    f"Choose sizes whose product divides {num_devices}.")
            return tuple(num_devices // known if s == -1 else s for s in self.sizes)  # type: ignore[return-value]
        if known != num_devices:
            raise UserError(
                f"MeshConfig{self._describe()} needs {known} devices but {num_devices} are "
                f"available. Set the sizes so their product is {num_devices}, or set one axis "
                "to -1, e.g. --gin.MeshConfig.fsdp=-1.")
        return self.sizes

    def _describe(self) -> str:
        return f"(data={self.data}, fsdp={self.fsdp}, tensor={self.tensor})"


def build_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all devices of all hosts).

    `mesh_utils.create_device_mesh` orders devices so that the innermost axis
    (`tensor`) stays within fast interconnect and, on multi-host, each host's
    devices are contiguous along the data axes.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = config.resolve(len(devices))
    if len(devices) == 1:
        device_array = np.array(devices).reshape(shape)
    else:
        try:
            device_array = mesh_utils.create_device_mesh(shape, devices=devices)
        except (ValueError, AssertionError, NotImplementedError):
            device_array = np.array(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES)


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split: the product of the data and fsdp axes."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_global_batch_size(global_batch_size: int, mesh: Mesh, *, name: str) -> None:
    """Fails clearly when the batch cannot be split evenly over data-parallel devices."""
    dp = data_parallel_size(mesh)
    if global_batch_size % dp:
        raise UserError(
            f"{name}={global_batch_size} is not divisible by the data-parallel size {dp} "
            f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}). "
            f"Use a multiple of {dp}, or change the mesh.")
